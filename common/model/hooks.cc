// Hook names (TransformerLens convention) and HookSet::Run. Only needs <ATen/core/Tensor.h>.
#include "common/model/hooks.h"

#include <algorithm>
#include <array>
#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sinkscope::model {
namespace {

// Per-layer hook suffixes in forward order (see hooks.h for layouts and docs/hooks.md for the HF equivalents).
constexpr std::array<const char*, 15> kLayerHooks = {
    "hook_resid_pre",    "ln1.hook_normalized", "attn.hook_q",     "attn.hook_k",        "attn.hook_v",
    "attn.hook_rot_q",   "attn.hook_rot_k",     "attn.hook_pattern", "attn.hook_z",      "hook_attn_out",
    "hook_resid_mid",    "ln2.hook_normalized", "mlp.hook_post",   "hook_mlp_out",       "hook_resid_post",
};

// Levenshtein distance, for "did you mean" suggestions on typos.
size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::vector<std::string> AllHookNames(int64_t n_layers) {
  std::vector<std::string> names;
  names.reserve(2 + kLayerHooks.size() * static_cast<size_t>(std::max<int64_t>(n_layers, 0)));
  names.emplace_back("hook_embed");
  for (int64_t l = 0; l < n_layers; ++l)
    for (const char* s : kLayerHooks) names.push_back(absl::StrCat("blocks.", l, ".", s));
  names.emplace_back("ln_final.hook_normalized");
  return names;
}

absl::Status ValidateHookName(const std::string& name, int64_t n_layers) {
  if (name == "hook_embed" || name == "ln_final.hook_normalized") return absl::OkStatus();
  auto unknown = [&]() {
    // Suggest the closest valid name (layer kept if it parsed).
    std::string best;
    size_t best_d = std::string::npos;
    for (const std::string& cand : AllHookNames(std::min<int64_t>(n_layers, 64))) {
      size_t d = EditDistance(name, cand);
      if (d < best_d) best_d = d, best = cand;
    }
    std::string hint = best_d <= 4 ? absl::StrCat(" (did you mean \"", best, "\"?)") : "";
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown hook name \"", name, "\"", hint, "; valid names: hook_embed, blocks.{0..", n_layers - 1, "}.{",
        absl::StrJoin(kLayerHooks, ","), "}, ln_final.hook_normalized"));
  };
  constexpr std::string_view kPrefix = "blocks.";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0) return unknown();
  size_t dot = name.find('.', kPrefix.size());
  if (dot == std::string::npos || dot == kPrefix.size()) return unknown();
  int64_t layer = -1;
  const char* first = name.data() + kPrefix.size();
  const char* last = name.data() + dot;
  auto [ptr, ec] = std::from_chars(first, last, layer);
  if (ec != std::errc() || ptr != last || (last - first > 1 && *first == '0')) return unknown();
  std::string suffix = name.substr(dot + 1);
  if (std::find_if(kLayerHooks.begin(), kLayerHooks.end(), [&](const char* s) { return suffix == s; }) ==
      kLayerHooks.end())
    return unknown();
  if (layer < 0 || layer >= n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("hook name \"", name, "\": layer ", layer, " is out of range [0, ", n_layers, ")"));
  return absl::OkStatus();
}

at::Tensor HookSet::Run(const std::string& name, int layer, const at::Tensor& x, int64_t q_offset) const {
  HookPoint hp{name, layer, q_offset};
  at::Tensor y = x;
  if (auto it = interventions_.find(name); it != interventions_.end())
    for (const auto& fn : it->second) y = fn(hp, y);
  if (auto it = observers_.find(name); it != observers_.end())
    for (const auto& fn : it->second) fn(hp, y);
  return y;
}

}  // namespace sinkscope::model
