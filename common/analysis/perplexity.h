// Token-weighted perplexity (docs/study.md §4.4; §6.10 "T vs T−1").
//
//   NLL_t = −log p(ids[t+1] | ids[0..t]),  t = 0..T−2        the forward's target_nll (fp32 log-softmax of fp32
//                                                            logits); BOS is context only, never a target
//   default (T−1 weighting, run_disruption_rigorous):  PPL = exp( Σ_i Σ_t NLL_{i,t} / Σ_i (T_i − 1) )
//   weight_by_t (run_phase_metrics):                    PPL = exp( Σ_i mean_t(NLL_{i,t}) · T_i / Σ_i T_i )
// Sums in float64. Prompts with T < 2 have no target and are skipped (as the study).
// One accumulator per (model, condition); the runner reports baseline and every intervention (PerplexityResult).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sinkscope::analysis {

class NllAccumulator {
 public:
  // target_nll: [T−1] (float32/float64), any device.
  void Add(const at::Tensor& target_nll);
  // Mean NLL (nats per token) under the chosen weighting; 0 with no targets.
  double MeanNll(bool weight_by_t) const;
  double Perplexity(bool weight_by_t) const;
  int64_t num_targets() const { return targets_; }
  int32_t num_prompts() const { return prompts_; }

 private:
  double nll_sum_ = 0;       // Σ_i Σ_t NLL
  int64_t targets_ = 0;      // Σ_i (T_i − 1)
  double weighted_sum_ = 0;  // Σ_i mean_i · T_i
  int64_t tokens_ = 0;       // Σ_i T_i (prompts with targets only)
  int32_t prompts_ = 0;
};

}  // namespace sinkscope::analysis
