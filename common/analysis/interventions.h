// Interventions (write hooks) used by PerplexityAnalysis. Each adds model::HookSet interventions for one forward;
// the forward continues with the returned tensor. Activations keep the model's dtype; means are taken in fp32.
//
// BOS-MLP ablation (docs/study.md §4.9):  blocks.L.hook_mlp_out[0, :] ← 0   (MLP output of the BOS
//   position before the residual add; attention output untouched). L explicit, or the spike layer of the model
//   (residual_stats.h: argmax_ratio = the study's rule, argmax_jump = where the BOS norm jumps, docs/study.md §6.5).
//
// Q/K massive-dimension disruption (docs/study.md §4.3, run_disruption_rigorous.py):
//   identification on a prompt set P (pre-rotary blocks.l.attn.hook_q / hook_k, flat index j = h·hd + d):
//     N_l[h,d] = ‖X_l[:,h,d]‖₂ over all T positions (BOS included, no /√T), per prompt, float64
//     N̄_l = elementwise mean over P ;  mask_l = N̄_l > λ·mean_{h,d}(N̄_l)  (LAYER scope; HEAD: per-head mean)
//     kept layers: mask_q_l.any() or mask_k_l.any()
//   disruption: at every kept layer, hook_q (mask_q) and hook_k (mask_k) separately: selected dims ← 0 (ZERO,
//     study) or ← their mean over the prompt's positions (MEAN), at ALL positions, PRE-rotary (RoPE then rotates
//     the edited vector).
//   random control (create_random_dims): generator = CPU mt19937 seeded with `seed` (what torch.manual_seed /
//     torch::manual_seed do to the default CPU generator); for each kept layer ascending, for q then k:
//     n = |mask|, idx = randperm(F)[:n] (F = heads·hd of that projection) → same per-layer, per-tensor counts.
//
// Jin-style top-k per head mean replacement (docs/study.md §4.5): in EVERY layer, for Q and K separately
//   (pre-rotary hook_q/hook_k, or post-rotary hook_rot_q/hook_rot_k): norms[h,d] = ‖X[:,h,d]‖₂ (fp32);
//   per head the k dims with the largest norm (smallest with `smallest`, Jin's control); with λ only those with
//   norms[h,d] > λ·mean_d norms[h,:] (run_phase_metrics' QKMassiveDisruptionHook); X[:,h,d] ← mean_t X[t,h,d].
//
// Head ablation: blocks.L.attn.hook_z[:, h, :] ← 0 or ← its mean over positions (per dim), before o_proj.
//
// Generic activation edits at any hook (except hook_pattern) on the cartesian product of the selected positions
//   (negative = from the end; positions outside [−T, T) of a prompt are ignored for that prompt), heads (per-head
//   hooks only) and feature dims; empty selection = all:
//   ZERO x←0 | SCALE x←v·x | ADD x←x+v | SET x←v | MEAN x←mean over ALL positions of the prompt (per feature).
#pragma once

#include <cstdint>
#include <vector>

#include "common/analysis/analysis.h"

namespace sinkscope::analysis {

void AddBosMlpAblation(int64_t layer, model::HookSet* hooks);

// Selected flat dims (h·hd + d) per layer for Q and K.
struct QkMasks {
  std::vector<std::vector<int64_t>> q, k;  // [n_layers], each sorted ascending
  std::vector<int64_t> kept_layers;        // layers with any q or k dim, ascending
  int64_t count(bool use_q, bool use_k) const;
  int64_t num_layers(bool use_q, bool use_k) const;  // layers with any selected dim among the used tensors
};

// Accumulates the identification norms N_l over prompts (pre-rotary hook_q / hook_k).
class QkIdentifier {
 public:
  explicit QkIdentifier(const ModelDims& dims);
  // Observes pre-rotary hook_q and hook_k and Adds their norm matrices (NormMatrix).
  void Register(model::HookSet* hooks);
  // One prompt's norm matrix N = NormMatrix(hook_q or hook_k) at `layer`, float64 on the model's device, summed
  // there. Prompts are counted at layer 0's Q. Register's observers call it, or massive values' observers, which
  // compute the same matrices (MakeMassiveValues' feed).
  void Add(int64_t layer, bool k, const at::Tensor& N);
  int32_t num_prompts() const { return n_prompts_; }
  QkMasks Masks(double lambda, job::ThresholdScope scope) const;
  // Whether Masks(lambda, scope) selects any dim of layer l among the used tensors; depends on layer l's norms only,
  // so it is final as soon as every prompt has passed layer l (prefix reuse asks it while the baseline runs).
  bool SelectsInLayer(int64_t l, double lambda, job::ThresholdScope scope, bool use_q, bool use_k) const;
  // N̄_l for Q (use_k = false) or K, [heads, hd] float64 (tests).
  at::Tensor MeanNorms(int64_t layer, bool use_k) const;

 private:
  ModelDims dims_;
  std::vector<at::Tensor> q_sum_, k_sum_;  // Σ over prompts of N, float64 on the model's device
  int32_t n_prompts_ = 0;
};

QkMasks RandomControlMasks(const QkMasks& m, const ModelDims& dims, uint64_t seed);

void AddQkDisruption(const QkMasks& m, job::Replacement replacement, bool use_q, bool use_k, model::HookSet* hooks);
void AddTopPerHead(const job::TopPerHeadMeanReplacement& spec, const ModelDims& dims, model::HookSet* hooks);
void AddHeadAblation(const job::HeadAblation& spec, const ModelDims& dims, model::HookSet* hooks);
void AddActivationEdits(const std::vector<job::ActivationEdit>& edits, const ModelDims& dims, model::HookSet* hooks);

}  // namespace sinkscope::analysis
