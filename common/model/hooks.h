// Named hook points (TransformerLens names) — the ONE table the forward, the analyses and the job validation
// query — and per-forward hook sets.
//
// Names: hook_embed, blocks.{L}.<suffix> for the 15 per-layer points below, ln_final.hook_normalized. Layouts
// (batch dropped; a forward over several packed prompts delivers each prompt's slice separately, so T is always
// one prompt's length):
//   kResidual  [T, d_model]                 hook_embed, resid_pre/mid/post, attn_out, mlp_out, ln*.hook_normalized
//   kHeads     [T, n_heads, head_dim]       attn.hook_q (pre-rotary, post-QK-norm), attn.hook_rot_q, attn.hook_z
//   kKvHeads   [T, n_kv_heads, head_dim]    attn.hook_k, attn.hook_v, attn.hook_rot_k
//   kMlp       [T, d_mlp]                   mlp.hook_post (silu(gate) * up)
//   kPattern   [n_heads, Tq_chunk, T]       attn.hook_pattern: float32 probabilities of query rows
//              [q_offset, q_offset + Tq_chunk), delivered once per query chunk, masked entries 0; observe-only.
// Tensors passed to hooks are on the model's device in its compute dtype, except hook_pattern (float32). They may be
// views that are not contiguous (a packed forward's slices; a padded attention group's rows and keys). HF module
// equivalents are in docs/hooks.md.
//
// A HookSet is built per forward call (never stored in the model), so one loaded model serves concurrent jobs.
// Observers read activations; interventions return a replacement of the same shape. Observers must not keep
// references that they later modify; clone to keep data.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/config.h"

namespace sinkscope::model {

enum class HookLayout { kResidual, kHeads, kKvHeads, kMlp, kPattern };

// Per-layer hook points, in forward order.
enum class HookId : uint8_t {
  kResidPre, kLn1, kQ, kK, kV, kRotQ, kRotK, kPattern, kZ, kAttnOut, kResidMid, kLn2, kMlpPost, kMlpOut, kResidPost,
};
inline constexpr size_t kNumLayerHooks = 15;

struct HookInfo {
  HookId id;
  const char* suffix;  // after "blocks.{L}."
  HookLayout layout;
  bool editable() const { return layout != HookLayout::kPattern; }
  bool per_head() const { return layout == HookLayout::kHeads || layout == HookLayout::kKvHeads; }
};

inline constexpr std::array<HookInfo, kNumLayerHooks> kLayerHooks = {{
    {HookId::kResidPre, "hook_resid_pre", HookLayout::kResidual},
    {HookId::kLn1, "ln1.hook_normalized", HookLayout::kResidual},
    {HookId::kQ, "attn.hook_q", HookLayout::kHeads},
    {HookId::kK, "attn.hook_k", HookLayout::kKvHeads},
    {HookId::kV, "attn.hook_v", HookLayout::kKvHeads},
    {HookId::kRotQ, "attn.hook_rot_q", HookLayout::kHeads},
    {HookId::kRotK, "attn.hook_rot_k", HookLayout::kKvHeads},
    {HookId::kPattern, "attn.hook_pattern", HookLayout::kPattern},
    {HookId::kZ, "attn.hook_z", HookLayout::kHeads},
    {HookId::kAttnOut, "hook_attn_out", HookLayout::kResidual},
    {HookId::kResidMid, "hook_resid_mid", HookLayout::kResidual},
    {HookId::kLn2, "ln2.hook_normalized", HookLayout::kResidual},
    {HookId::kMlpPost, "mlp.hook_post", HookLayout::kMlp},
    {HookId::kMlpOut, "hook_mlp_out", HookLayout::kResidual},
    {HookId::kResidPost, "hook_resid_post", HookLayout::kResidual},
}};
// The table is indexed by HookId: an entry out of place is a compile error, not a silent mix-up.
constexpr bool LayerHookTableIsIndexed() {
  for (size_t i = 0; i < kLayerHooks.size(); ++i)
    if (static_cast<size_t>(kLayerHooks[i].id) != i) return false;
  return true;
}
static_assert(LayerHookTableIsIndexed());

inline constexpr const char* kEmbedHook = "hook_embed";
inline constexpr const char* kFinalNormHook = "ln_final.hook_normalized";

inline const HookInfo& Info(HookId id) { return kLayerHooks[static_cast<size_t>(id)]; }
std::string HookName(int64_t layer, HookId id);  // "blocks.{layer}.{suffix}"

// A parsed, valid hook name: layer -1 for the model-level hooks (hook_embed, ln_final.hook_normalized).
struct HookRef {
  int64_t layer = -1;
  HookLayout layout = HookLayout::kResidual;
  const HookInfo* info = nullptr;  // per-layer hooks only
  bool editable() const { return layout != HookLayout::kPattern; }
  bool per_head() const { return layout == HookLayout::kHeads || layout == HookLayout::kKvHeads; }
};
// InvalidArgument with a "did you mean" hint for unknown names, or naming the layer out of [0, n_layers).
absl::StatusOr<HookRef> ParseHookName(std::string_view name, int64_t n_layers);
absl::Status ValidateHookName(std::string_view name, int64_t n_layers);
// All hook names of a model with n_layers layers, in forward order.
std::vector<std::string> AllHookNames(int64_t n_layers);

// Size of the head axis (0 without one) and of the feature (last) axis (0 for hook_pattern) of a layout.
int64_t HeadsOf(HookLayout layout, const LlamaConfig& c);
int64_t FeaturesOf(HookLayout layout, const LlamaConfig& c);

struct HookPoint {
  const std::string& name;  // full name, e.g. "blocks.3.attn.hook_q"
  int layer;                // -1 for hook_embed and ln_final.hook_normalized
  int64_t q_offset = 0;     // hook_pattern only: first query row of this chunk
};

using ObserveFn = std::function<void(const HookPoint&, const at::Tensor&)>;
using InterveneFn = std::function<at::Tensor(const HookPoint&, const at::Tensor&)>;

class HookSet {
 public:
  void Observe(const std::string& name, ObserveFn fn) { observers_[name].push_back(std::move(fn)); }
  // Interventions on one hook point run in registration order, each on the previous one's output.
  // hook_pattern does not accept interventions (the forward fails with InvalidArgument).
  void Intervene(const std::string& name, InterveneFn fn) { interventions_[name].push_back(std::move(fn)); }

  bool Wants(const std::string& name) const { return observers_.count(name) || interventions_.count(name); }
  bool Intervenes(const std::string& name) const { return interventions_.count(name) > 0; }
  bool empty() const { return observers_.empty() && interventions_.empty(); }

  // Applies interventions (if any) then observers (which see the post-intervention value). Returns the value
  // the forward continues with.
  at::Tensor Run(const std::string& name, int layer, const at::Tensor& x, int64_t q_offset = 0) const;
  // The first decoder layer any hook of the set acts at or reads: 0 when hook_embed is used (or a name does not
  // parse), n_layers when only ln_final.hook_normalized is, n_layers for an empty set. A forward whose hooks all
  // sit at layer >= FirstLayer() computes layers below it exactly as a hook-free forward does.
  int64_t FirstLayer(int64_t n_layers) const;
  // OK if every name is valid for n_layers layers and no intervention targets an observe-only point.
  absl::Status Validate(int64_t n_layers) const;

 private:
  std::map<std::string, std::vector<ObserveFn>> observers_;
  std::map<std::string, std::vector<InterveneFn>> interventions_;
};

}  // namespace sinkscope::model
