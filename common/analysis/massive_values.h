// Massive values in Q/K/V (Jin et al. 2025 as implemented by the study; docs/study.md §4.1, §4.2, §5.1, §6.6).
//
//   X ∈ R^{T×H×D}  blocks.l.attn.hook_q | hook_k | hook_v          (pre-rotary: the study's q_proj/k_proj hooks)
//                  blocks.l.attn.hook_rot_q | hook_rot_k | hook_v  (post_rotary: Jin's location; V has no rotary)
//   M[h,d] = ‖X[:,h,d]‖₂ = sqrt(Σ_t X[t,h,d]²)     float64, over all T positions (BOS included)
//   thr    = λ · mean_{h,d} M                       THRESHOLD_SCOPE_LAYER (study: one mean over all H·D entries)
//          = λ · mean_d M[h,:]   for head h         THRESHOLD_SCOPE_HEAD  (per-head reading, docs/study.md §4.1)
//   count  = #{(h,d) : M[h,d] > thr}                strict >, λ = 5 by default
//   gini   = Gini(M over all H·D entries), float64 (analysis.h)
// (The study's analyze_massive_values divides M by √T; that scales M and thr alike, so counts are identical; we
//  report M without it, as Jin's norm matrix and the disruption experiment do.)
// Per layer and tensor over prompts: count mean ± population std; threshold = mean over prompts of λ·mean(M)
// (for HEAD scope the mean over heads of the per-head thresholds, which is the same number); gini mean;
// top-k (head, dim, value) of M averaged over prompts, descending.
// Summary: "massive_values.<q|k|v>.total" = mean over prompts of Σ_l count (study Exp. 1 totals, docs/study.md §5.1.2),
//          "massive_values.<q|k|v>.total_std" its population std.
#pragma once

#include <memory>

#include "common/analysis/analysis.h"

namespace sinkscope::analysis {

class QkIdentifier;

// `feed` (may be null): when the spec is pre-rotary with Q and K, the observers also hand each prompt's Q and K norm
// matrices to it (QkIdentifier::Add), so that a job with both does not compute them twice.
std::unique_ptr<LayerAnalysis> MakeMassiveValues(const job::MassiveValuesSpec& spec, const ModelDims& dims,
                                                 QkIdentifier* feed = nullptr);
// Whether MakeMassiveValues(spec, dims, feed) feeds `feed` every norm matrix QkIdentifier::Register would compute.
bool MassiveValuesCanFeed(const job::MassiveValuesSpec& spec);

// M[h,d] = ‖x[:,h,d]‖₂ for x [T, H, D] (any float dtype), float64, on x's device. Rows are converted in chunks.
at::Tensor NormMatrix(const at::Tensor& x);
// Elementwise M > thr with thr per the scope (see above); M [H, D]. Returns a bool tensor [H, D].
at::Tensor MassiveMask(const at::Tensor& M, double lambda, job::ThresholdScope scope);
// λ·mean(M) (the layer threshold; also the mean of the per-head thresholds).
double MassiveThreshold(const at::Tensor& M, double lambda);

}  // namespace sinkscope::analysis
