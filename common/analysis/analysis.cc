// Common helpers of the analyses (see analysis.h). Compiled through analyses_unity.cc.
#include "common/analysis/analysis.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace sinkscope::analysis {

ModelDims ModelDims::From(const model::LlamaConfig& c) {
  ModelDims d;
  d.n_layers = c.num_hidden_layers;
  d.n_heads = c.num_attention_heads;
  d.n_kv_heads = c.num_key_value_heads;
  d.head_dim = c.head_dim;
  d.d_model = c.hidden_size;
  d.d_mlp = c.intermediate_size;
  d.vocab = c.vocab_size;
  d.rope = c.uses_rope();
  return d;
}

std::string LayerHook(int64_t layer, std::string_view suffix) {
  return absl::StrCat("blocks.", layer, ".", std::string(suffix));
}

bool IsPerHeadHook(std::string_view h) {
  for (const char* s :
       {"attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_z"})
    if (h.ends_with(s)) return true;
  return false;
}

int64_t HeadsOfHook(std::string_view h, const ModelDims& d) {
  if (h.ends_with("attn.hook_q") || h.ends_with("attn.hook_rot_q") || h.ends_with("attn.hook_z")) return d.n_heads;
  if (h.ends_with("attn.hook_k") || h.ends_with("attn.hook_v") || h.ends_with("attn.hook_rot_k")) return d.n_kv_heads;
  return 0;
}

int64_t FeatureDimOfHook(std::string_view h, const ModelDims& d) {
  if (h.ends_with("attn.hook_pattern")) return 0;
  if (IsPerHeadHook(h)) return d.head_dim;
  if (h.ends_with("mlp.hook_post")) return d.d_mlp;
  return d.d_model;
}

int64_t LayerOfHook(std::string_view h) {
  constexpr std::string_view kPrefix = "blocks.";
  if (!h.starts_with(kPrefix)) return -1;
  const size_t dot = h.find('.', kPrefix.size());
  int64_t layer = -1;
  if (dot == std::string_view::npos) return -1;
  std::from_chars(h.data() + kPrefix.size(), h.data() + dot, layer);
  return layer;
}

void StatAcc::Add(double x) {
  ++n_;
  const double delta = x - mean_;
  mean_ += delta / n_;
  m2_ += delta * (x - mean_);
}

double StatAcc::std() const { return n_ > 0 ? std::sqrt(std::max(0.0, m2_ / n_)) : 0.0; }

double Gini(std::vector<double> v) {
  const size_t n = v.size();
  if (n == 0) return 0.0;
  std::sort(v.begin(), v.end());
  double sum = 0, weighted = 0;
  for (size_t i = 0; i < n; ++i) {
    sum += v[i];
    weighted += static_cast<double>(i + 1) * v[i];
  }
  if (!(sum > 0)) return 0.0;
  const double nn = static_cast<double>(n);
  return 2.0 * weighted / (nn * sum) - (nn + 1.0) / nn;
}

}  // namespace sinkscope::analysis
