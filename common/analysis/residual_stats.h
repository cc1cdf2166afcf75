// Residual-stream BOS statistics (Queipo-style, as the study; docs/study.md §4.7, §3.4, §6.5).
//
//   X = blocks.l.hook_resid_post ∈ R^{T×d}   (output of decoder layer l, before the next layer)
//       for the last layer with final_norm_last_layer: X = ln_final.hook_normalized (the study's hidden_states[-1]
//       is after the final RMSNorm, docs/study.md §3.4; LayerResult.post_final_norm marks it)
//   bos_norm        = ‖X[0]‖₂                                      (float64)
//   mean_other_norm = (1/(T−1)) Σ_{t=1}^{T−1} ‖X[t]‖₂               (0 when T = 1)
//   ratio           = bos_norm / (mean_other_norm + 1e-8)           (1 when T = 1, as the study)
// Per layer over prompts: mean ± population std of each.
// Spike layer (docs/study.md §4.7, §6.5), from the per-layer means over prompts:
//   argmax_ratio: argmax_l mean(ratio_l)                            (the study's find_bos_spike_layer)
//   argmax_jump:  argmax_l (mean bos_norm_l − mean bos_norm_{l−1}), bos_norm_{−1} = mean ‖hook_embed[0]‖₂
// Summary: "bos_spike_layer.argmax_ratio", "bos_spike_layer.argmax_jump", "bos_norm.peak", "bos_norm.peak_layer",
//          "bos_ratio.peak".
#pragma once

#include <memory>

#include "common/analysis/analysis.h"

namespace sinkscope::analysis {

struct BosStats {
  double bos_norm = 0, mean_other_norm = 0, ratio = 1;
};
// x: [T, d] any float dtype.
BosStats ComputeBosStats(const at::Tensor& x);
// Per-position L2 norms of x [T, F] in float64 (rows converted in chunks), on x's device.
at::Tensor RowNorms(const at::Tensor& x);

class ResidualStats : public LayerAnalysis {
 public:
  // Spike layer by `rule` from the accumulated means (-1 before any prompt), among layers [0, last_layer] (all
  // when last_layer < 0): the layer-major runner asks after each layer which one is the spike so far.
  virtual int32_t SpikeLayer(job::SpikeRule rule, int32_t last_layer = -1) const = 0;
};

// `emit`: false for the runner's hidden instance (spike detection without a residual_stats analysis): Fill() then
// adds nothing to layer results and Summarize() only the spike layers.
std::unique_ptr<ResidualStats> MakeResidualStats(const job::ResidualStatsSpec& spec, const ModelDims& dims,
                                                 bool emit = true);

}  // namespace sinkscope::analysis
