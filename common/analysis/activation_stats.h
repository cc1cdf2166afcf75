// Generic streaming activation statistics at any hook point (except attn.hook_pattern).
//
// For each requested hook (after "{L}" expansion) and position class c ∈ {BOS = row 0, REST = rows 1..T−1,
// ALL = every row}, with the activation viewed as x ∈ R^{T×F} (F = d_model, d_mlp, or heads·head_dim for the
// per-head hooks hook_q/k/v/rot_q/rot_k/z), over the class's rows of every prompt:
//   count    = number of elements
//   mean     = Σ x / count ;  std = sqrt(Σ (x − mean)² / count)          (population; float64, merged per row
//              chunk with the parallel Welford update of Chan et al.: δ = m_b − m_a, n = n_a + n_b,
//              m = m_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a·n_b/n)
//   max_abs  = max |x|
//   mean_norm, max_norm = mean / max over rows of ‖x[t,:]‖₂
//   top-k    = the k feature indices f with the largest mean_t |x[t,f]| (per-head index = head·head_dim + dim)
// Memory: O(F) per hook and class, independent of the number of prompts (activations are reduced as they pass).
// Results go to the LayerResult of the hook's layer (-1 for hook_embed and ln_final.hook_normalized), one entry
// per hook and class in the order BOS, REST, ALL.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/analysis/analysis.h"

namespace sinkscope::analysis {

// Expands "{L}" to every layer 0..n_layers−1 and removes duplicates (first occurrence kept). Torch-free.
std::vector<std::string> ExpandHooks(const std::vector<std::string>& hooks, int64_t n_layers);

std::unique_ptr<LayerAnalysis> MakeActivationStats(const job::ActivationStatsSpec& spec, const ModelDims& dims);

}  // namespace sinkscope::analysis
