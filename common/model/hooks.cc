// Hook names (the table in hooks.h) and HookSet. Only needs <ATen/core/Tensor.h>.
#include "common/model/hooks.h"

#include <algorithm>
#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sinkscope::model {
namespace {

// Levenshtein distance, for "did you mean" suggestions on typos.
size_t EditDistance(std::string_view a, std::string_view b) {
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

absl::Status Unknown(std::string_view name, int64_t n_layers) {
  // Suggest the closest valid name.
  std::string best;
  size_t best_d = std::string::npos;
  for (const std::string& cand : AllHookNames(std::min<int64_t>(n_layers, 64))) {
    const size_t d = EditDistance(name, cand);
    if (d < best_d) best_d = d, best = cand;
  }
  std::vector<const char*> suffixes;
  for (const HookInfo& h : kLayerHooks) suffixes.push_back(h.suffix);
  const std::string hint = best_d <= 4 ? absl::StrCat(" (did you mean \"", best, "\"?)") : "";
  return absl::InvalidArgumentError(absl::StrCat("unknown hook name \"", std::string(name), "\"", hint, "; valid names: ", kEmbedHook,
                                                 ", blocks.{0..", n_layers - 1, "}.{", absl::StrJoin(suffixes, ","),
                                                 "}, ", kFinalNormHook));
}

}  // namespace

std::string HookName(int64_t layer, HookId id) { return absl::StrCat("blocks.", layer, ".", Info(id).suffix); }

std::vector<std::string> AllHookNames(int64_t n_layers) {
  std::vector<std::string> names;
  names.reserve(2 + kLayerHooks.size() * static_cast<size_t>(std::max<int64_t>(n_layers, 0)));
  names.emplace_back(kEmbedHook);
  for (int64_t l = 0; l < n_layers; ++l)
    for (const HookInfo& h : kLayerHooks) names.push_back(HookName(l, h.id));
  names.emplace_back(kFinalNormHook);
  return names;
}

absl::StatusOr<HookRef> ParseHookName(std::string_view name, int64_t n_layers) {
  if (name == std::string_view(kEmbedHook) || name == std::string_view(kFinalNormHook)) return HookRef{};
  constexpr std::string_view kPrefix = "blocks.";
  if (!name.starts_with(kPrefix)) return Unknown(name, n_layers);
  const size_t dot = name.find('.', kPrefix.size());
  if (dot == std::string_view::npos || dot == kPrefix.size()) return Unknown(name, n_layers);
  int64_t layer = -1;
  const char* first = name.data() + kPrefix.size();
  const char* last = name.data() + dot;
  auto [ptr, ec] = std::from_chars(first, last, layer);
  if (ec != std::errc() || ptr != last || (last - first > 1 && *first == '0')) return Unknown(name, n_layers);
  const std::string_view suffix = name.substr(dot + 1);
  const auto it = std::find_if(kLayerHooks.begin(), kLayerHooks.end(),
                               [&](const HookInfo& h) { return std::string_view(h.suffix) == suffix; });
  if (it == kLayerHooks.end()) return Unknown(name, n_layers);
  if (layer < 0 || layer >= n_layers)
    return absl::InvalidArgumentError(
        absl::StrCat("hook name \"", std::string(name), "\": layer ", layer, " is out of range [0, ", n_layers, ")"));
  return HookRef{layer, it->layout, &*it};
}

absl::Status ValidateHookName(std::string_view name, int64_t n_layers) { return ParseHookName(name, n_layers).status(); }

int64_t HeadsOf(HookLayout layout, const LlamaConfig& c) {
  switch (layout) {
    case HookLayout::kHeads: return c.num_attention_heads;
    case HookLayout::kKvHeads: return c.num_key_value_heads;
    default: return 0;
  }
}

int64_t FeaturesOf(HookLayout layout, const LlamaConfig& c) {
  switch (layout) {
    case HookLayout::kResidual: return c.hidden_size;
    case HookLayout::kHeads:
    case HookLayout::kKvHeads: return c.head_dim;
    case HookLayout::kMlp: return c.intermediate_size;
    case HookLayout::kPattern: return 0;
  }
  return 0;
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

int64_t HookSet::FirstLayer(int64_t n_layers) const {
  int64_t first = n_layers;
  auto visit = [&](const std::string& name) {
    absl::StatusOr<HookRef> ref = ParseHookName(name, n_layers);
    if (!ref.ok() || name == kEmbedHook) first = 0;
    else if (ref->layer >= 0) first = std::min(first, ref->layer);
  };
  for (const auto& entry : observers_) visit(entry.first);
  for (const auto& entry : interventions_) visit(entry.first);
  return first;
}

absl::Status HookSet::Validate(int64_t n_layers) const {
  for (const auto& [name, fns] : observers_) {
    absl::Status st = ValidateHookName(name, n_layers);
    if (!st.ok()) return st;
  }
  for (const auto& [name, fns] : interventions_) {
    absl::StatusOr<HookRef> ref = ParseHookName(name, n_layers);
    if (!ref.ok()) return ref.status();
    if (!ref->editable())
      return absl::InvalidArgumentError(
          absl::StrCat("hook ", name, " is observe-only: interventions on attention patterns are not supported"));
  }
  return absl::OkStatus();
}

}  // namespace sinkscope::model
