// Common helpers of the analyses (see analysis.h). Compiled through analyses_unity.cc.
#include "common/analysis/analysis.h"

#include <ATen/ATen.h>

#include <algorithm>
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

std::vector<at::Tensor> ToHost(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> out(tensors.size());
  std::vector<at::Tensor> flat;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].is_cpu())
      out[i] = tensors[i].to(at::kDouble).contiguous();
    else
      flat.push_back(tensors[i].to(at::kDouble).reshape({-1}));
  }
  if (flat.empty()) return out;
  const at::Tensor host = at::cat(flat).cpu();  // the one device -> host copy (and wait)
  int64_t off = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (out[i].defined()) continue;
    const int64_t n = tensors[i].numel();
    out[i] = host.narrow(0, off, n).view(tensors[i].sizes());
    off += n;
  }
  return out;
}

void StatAcc::Add(double x) {
  ++n_;
  const double delta = x - mean_;
  mean_ += delta / n_;
  m2_ += delta * (x - mean_);
}

double StatAcc::std() const { return n_ > 0 ? std::sqrt(std::max(0.0, m2_ / n_)) : 0.0; }

int32_t ArgBest(int32_t n, const std::function<double(int32_t)>& value, bool lowest) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i)
    if (lowest ? value(i) < value(best) : value(i) > value(best)) best = i;
  return best;
}

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
