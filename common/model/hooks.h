// Named hook points (TransformerLens names) and per-forward hook sets.
//
// A HookSet is built per forward call (never stored in the model), so one loaded model serves concurrent jobs.
// Observers read activations; interventions return a replacement. Activation layout (batch is always 1 and
// dropped):
//   hook_embed, blocks.L.hook_resid_pre|mid|post, blocks.L.hook_attn_out, blocks.L.hook_mlp_out,
//   blocks.L.ln1.hook_normalized, blocks.L.ln2.hook_normalized, ln_final.hook_normalized   : [T, d_model]
//   blocks.L.attn.hook_q|hook_rot_q                          : [T, n_heads, head_dim]  (q: pre-rotary, post-QK-norm)
//   blocks.L.attn.hook_k|hook_v|hook_rot_k                   : [T, n_kv_heads, head_dim]
//   blocks.L.attn.hook_z                                      : [T, n_heads, head_dim]  (attention-weighted values)
//   blocks.L.mlp.hook_post                                    : [T, d_mlp]              (silu(gate)*up)
//   blocks.L.attn.hook_pattern                                : [n_heads, Tq_chunk, T]  float32 probabilities for
//        query rows [q_offset, q_offset+Tq_chunk); delivered once per query chunk; observe-only; masked entries 0.
// All tensors passed to hooks are on the model's device in its compute dtype, except hook_pattern (float32).
// Observers must not keep references that they later modify; clone if you need to keep data.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sinkscope::model {

struct HookPoint {
  const std::string& name;  // full TransformerLens name, e.g. "blocks.3.attn.hook_q"
  int layer;                // -1 for hook_embed and ln_final.hook_normalized
  int64_t q_offset = 0;     // hook_pattern only: first query row of this chunk
};

using Observer = std::function<void(const HookPoint&, const at::Tensor&)>;
using Intervention = std::function<at::Tensor(const HookPoint&, const at::Tensor&)>;

// All hook names the model exposes, in forward order, for a model with n_layers layers.
std::vector<std::string> AllHookNames(int64_t n_layers);
// OK if `name` is a valid hook name for a model with n_layers layers; InvalidArgument naming it otherwise.
absl::Status ValidateHookName(const std::string& name, int64_t n_layers);

class HookSet {
 public:
  void Observe(const std::string& name, Observer fn) { observers_[name].push_back(std::move(fn)); }
  // Interventions on one hook point run in registration order, each on the previous one's output.
  // hook_pattern does not accept interventions (Forward fails with InvalidArgument).
  void Intervene(const std::string& name, Intervention fn) { interventions_[name].push_back(std::move(fn)); }

  bool Wants(const std::string& name) const { return observers_.count(name) || interventions_.count(name); }
  bool empty() const { return observers_.empty() && interventions_.empty(); }

  // Applies interventions (if any) then observers (which see the post-intervention value). Returns the value
  // the forward continues with.
  at::Tensor Run(const std::string& name, int layer, const at::Tensor& x, int64_t q_offset = 0) const;

  const std::map<std::string, std::vector<Observer>>& observers() const { return observers_; }
  const std::map<std::string, std::vector<Intervention>>& interventions() const { return interventions_; }

 private:
  std::map<std::string, std::vector<Observer>> observers_;
  std::map<std::string, std::vector<Intervention>> interventions_;
};

}  // namespace sinkscope::model
