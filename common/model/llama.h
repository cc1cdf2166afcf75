// Llama / DroPE forward pass in LibTorch, over one prompt or several prompts packed into one forward, with named
// hook points (hooks.h). Attention is computed in query chunks with fp32 scores and softmax, so DroPE's large Q/K
// norms cannot overflow (docs/study.md §6.1) and T=4096 never materialises all heads' T×T scores at once.
// Loading (config.json + safetensors → weights) lives in weights.h; this file only computes.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/attention_groups.h"
#include "common/model/config.h"
#include "common/model/hooks.h"
#include "common/model/weights.h"

namespace sinkscope::model {

struct LoadOptions {
  std::string device = "cpu";     // "cpu", "cuda", "cuda:1" (cuda only when LibTorch was built with CUDA)
  std::string dtype = "float32";  // compute dtype: "float32" | "bfloat16" | "float16"
  // (float16 needs a CUDA device: LibTorch 1.13 has no CPU Half matmul, so Load rejects it on CPU.)
  bool compute_digest = true;     // SHA-256 of the safetensors bytes (reads every byte once; ~1-2 GB/s)
  // Check every weight for NaN/Inf at load (one pass over the weights); a non-finite weight fails the load naming the
  // tensor, instead of a model that answers every job with NaN-derived numbers.
  bool check_finite = true;
  // CPU weights in the checkpoint's dtype alias the file mapping (no copy, no extra RAM). A server that must survive
  // a checkpoint truncated or rewritten under it sets this false: the weights are then copied, the file unmapped.
  bool zero_copy = true;
};

struct ForwardOptions {
  // Hooks of a one-prompt forward (may be null).
  const HookSet* hooks = nullptr;
  // Packed forward: `ids` holds several prompts back to back, segments[i] tokens each (they sum to T). Prompts
  // never attend to each other (block-diagonal causal attention), positions restart at 0 at every prompt, and
  // prompt i's hooks (segment_hooks[i], may be null; the vector may be empty) see only prompt i's slice with
  // T = segments[i] — what prompt i alone would give. Empty: one prompt, with `hooks`.
  std::vector<int64_t> segments;
  std::vector<const HookSet*> segment_hooks;
  bool return_logits = true;       // [T, V] float32 logits
  bool return_target_nll = false;  // −log p(ids[t+1] | the prompt's ids[..t]) for every prompt's t < T_i − 1,
                                   // concatenated over prompts: [Σ (T_i − 1)] float32, computed in row chunks
  bool return_hidden = false;      // final-norm hidden states [T, d] in the compute dtype (the lm_head input)
  int64_t attn_query_chunk = 512;  // query rows per attention chunk (<=0: all rows at once)
  AttentionBatching attn_batching = AttentionBatching::kEqualLength;
  // Called after each decoder layer finishes (all its hooks have run). A non-OK status aborts the forward and is
  // returned (used for cancellation between layers).
  std::function<absl::Status(int layer)> after_layer;
  // Check the residual stream for NaN/Inf after every layer (one reduction per layer): a non-finite activation ends
  // the forward with FailedPrecondition naming the layer, instead of analyses reporting NaN-derived numbers.
  bool check_finite = false;
  // By default a prompt longer than config.max_position_embeddings is an InvalidArgument. DroPE/NoPE
  // context-extension studies may set this to run longer prompts (RoPE models then extrapolate positions).
  bool allow_beyond_max_positions = false;
  // Start at decoder layer `start_layer` from `start_residual` ([T, d] in the compute dtype: the residual stream
  // entering that layer, e.g. kept from an earlier forward of the same prompts) instead of embedding ids. Layers
  // below it and hook_embed do not run; ids still give the targets. Hooks of the skipped layers never fire, so the
  // result equals a full forward only when nothing acts below start_layer.
  int64_t start_layer = 0;
  at::Tensor start_residual;
};

struct ForwardResult {
  at::Tensor logits;      // [T, V] float32 (float64 if the weights are float64), or undefined
  at::Tensor target_nll;  // [Σ (T_i − 1)] float32 (float64 if the weights are float64), or undefined
  at::Tensor hidden;      // [T, d] compute dtype, or undefined
};

// Pure function over weights: usable with autograd (the trainer) when called without NoGradGuard.
// Errors: InvalidArgument for bad ids / segments / hook names / interventions returning a wrong shape; the
// after_layer status as is; Internal for LibTorch exceptions (message included). Never throws.
absl::StatusOr<ForwardResult> LlamaForward(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids,
                                           const ForwardOptions& opts);

// One forward in stages, for layer-major execution: Begin validates and embeds (or takes opts.start_residual),
// RunLayers runs decoder layers on the carried residual stream, Finish applies the final norm and the head.
// Begin + RunLayers(L) + Finish is LlamaForward (it is implemented so: one forward, not a copy); several runs over
// different prompts can advance layer by layer in turn. The run refers to cfg, w and the hook sets in opts: they
// must outlive it. Errors as LlamaForward's; a failed run must not be continued.
class ForwardRun {
 public:
  static absl::StatusOr<ForwardRun> Begin(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids,
                                          ForwardOptions opts);
  ForwardRun();
  ~ForwardRun();
  ForwardRun(ForwardRun&&) noexcept;
  ForwardRun& operator=(ForwardRun&&) noexcept;

  int64_t next_layer() const;  // the layer RunLayers runs next (num_hidden_layers when done)
  // Runs layers [next_layer(), end) (end is capped at num_hidden_layers), after_layer after each.
  absl::Status RunLayers(int64_t end);
  // The residual stream entering next_layer(), [T, d] compute dtype. Never modified in place by later layers: a
  // caller may keep it (e.g. to start another forward there).
  const at::Tensor& residual() const;
  // Final norm and head, once every layer has run; releases the run's tensors.
  absl::StatusOr<ForwardResult> Finish();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

class LlamaModel {
 public:
  // Loads config.json + safetensors weights from a HF snapshot directory.
  static absl::StatusOr<std::shared_ptr<LlamaModel>> Load(const std::string& model_dir, const LoadOptions& opts);
  // Wraps in-memory weights (benchmarks, trainer evaluation). Runs ValidateWeights; `name` is reported by dir();
  // weights_digest() is empty.
  static absl::StatusOr<std::shared_ptr<LlamaModel>> FromWeights(const LlamaConfig& cfg, LlamaWeights weights,
                                                                  const std::string& name);

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  const std::string& dir() const { return dir_; }
  std::string device() const;       // e.g. "cpu"
  std::string dtype() const;        // compute dtype name
  int64_t weight_bytes() const { return WeightBytes(weights_); }
  const std::string& weights_digest() const { return digest_; }  // SHA-256 over the safetensors files' bytes
  // Informational notes from loading (ignored unexpected tensors such as rotary_emb.inv_freq, tied lm_head, ...).
  const std::vector<std::string>& load_notes() const { return notes_; }

  // ids: int64 [T] with T >= 1. Thread-safe: the model is read-only during forward.
  absl::StatusOr<ForwardResult> Forward(const at::Tensor& ids, const ForwardOptions& opts) const;
  absl::StatusOr<ForwardResult> Forward(const std::vector<int32_t>& ids, const ForwardOptions& opts) const;
  // A staged forward (ForwardRun) over this model; the model must outlive the run.
  absl::StatusOr<ForwardRun> Begin(const std::vector<int32_t>& ids, ForwardOptions opts) const;

 private:
  LlamaModel() = default;
  LlamaConfig config_;
  LlamaWeights weights_;
  std::string dir_;
  std::string digest_;
  std::vector<std::string> notes_;
};

}  // namespace sinkscope::model
