// Llama / DroPE forward pass in LibTorch (batch 1, no padding), with named hook points.
// Weights come from a Hugging Face snapshot directory (config.json + model.safetensors or sharded
// model.safetensors.index.json). Attention is computed in query chunks with fp32 scores and softmax, so DroPE's
// large Q/K norms cannot overflow (seed-spec §4.1) and T=4096 never materialises all heads' T×T scores at once.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/config.h"
#include "common/model/hooks.h"

namespace sinkscope::model {

struct LoadOptions {
  std::string device = "cpu";     // "cpu", "cuda", "cuda:1" (cuda only when LibTorch was built with CUDA)
  std::string dtype = "float32";  // compute dtype: "float32" | "bfloat16" | "float16"
  // (float16 needs a CUDA device: LibTorch 1.13 has no CPU Half matmul, so Load rejects it on CPU.)
  bool compute_digest = true;     // SHA-256 of the safetensors bytes (reads every byte once; ~1-2 GB/s)
};

// Weights as plain tensors, HF naming mapped to fields. Used by the forward and by the trainer (tools/), which
// creates them with requires_grad. q_norm/k_norm are undefined unless the attention type needs them.
struct LayerWeights {
  at::Tensor input_layernorm, q_proj, k_proj, v_proj, o_proj, q_norm, k_norm;
  at::Tensor post_attention_layernorm, gate_proj, up_proj, down_proj;
};
struct LlamaWeights {
  at::Tensor embed_tokens;  // [V, d]
  std::vector<LayerWeights> layers;
  at::Tensor norm;     // [d]
  at::Tensor lm_head;  // [V, d] (== embed_tokens when tied)
};

struct ForwardOptions {
  const HookSet* hooks = nullptr;      // may be null
  bool return_logits = true;           // full [T, V] float32 logits
  bool return_target_nll = false;      // [T-1] float32: -log p(ids[t+1] | ids[..t]), computed in row chunks
  int64_t attn_query_chunk = 512;      // query rows per attention chunk (<=0: all rows at once)
  // Called after each decoder layer finishes (all its hooks have run). A non-OK status aborts the forward and is
  // returned (used for cancellation between layers).
  std::function<absl::Status(int layer)> after_layer;
  // By default T > config.max_position_embeddings is an InvalidArgument. DroPE/NoPE context-extension studies may
  // set this to run longer sequences (RoPE models then extrapolate positions beyond training).
  bool allow_beyond_max_positions = false;
};

struct ForwardResult {
  at::Tensor logits;      // [T, V] float32 (float64 if the weights are float64), or undefined
  at::Tensor target_nll;  // [T-1] float32 (float64 if the weights are float64), or undefined
};

// Checks that `w` has every tensor `cfg` needs with the expected shapes (q_norm/k_norm only when the attention
// type uses them), all of one floating dtype on one device. InvalidArgument naming the tensor otherwise.
absl::Status ValidateWeights(const LlamaConfig& cfg, const LlamaWeights& w);

// Pure function over weights: usable with autograd (trainer) when called without NoGradGuard.
// Errors: InvalidArgument for bad ids / hook names / interventions returning a wrong shape; the after_layer
// status as is; Internal for LibTorch exceptions (message included). Never throws.
absl::StatusOr<ForwardResult> LlamaForward(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids,
                                           const ForwardOptions& opts);

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
  int64_t weight_bytes() const;     // bytes held by weight tensors
  const std::string& weights_digest() const { return digest_; }  // SHA-256 over the safetensors files' bytes
  // Informational notes from loading (ignored unexpected tensors such as rotary_emb.inv_freq, tied lm_head, ...).
  const std::vector<std::string>& load_notes() const { return notes_; }

  // ids: int64 [T] with T >= 1. Thread-safe: the model is read-only during forward.
  absl::StatusOr<ForwardResult> Forward(const at::Tensor& ids, const ForwardOptions& opts) const;
  absl::StatusOr<ForwardResult> Forward(const std::vector<int32_t>& ids, const ForwardOptions& opts) const;

 private:
  LlamaModel() = default;
  LlamaConfig config_;
  LlamaWeights weights_;
  std::string dir_;
  std::string digest_;
  std::shared_ptr<void> storage_;  // unused: each zero-copy tensor's deleter keeps its own file mapping alive
  std::vector<std::string> notes_;
};

}  // namespace sinkscope::model
