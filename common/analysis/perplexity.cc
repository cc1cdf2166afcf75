// Perplexity accumulator; formulas in perplexity.h. Compiled through analyses_unity.cc.
#include "common/analysis/perplexity.h"

#include <ATen/ATen.h>

#include <cmath>

namespace sinkscope::analysis {

void NllAccumulator::Add(const at::Tensor& target_nll) {
  const int64_t n = target_nll.numel();
  if (n == 0) return;  // T < 2
  const double s = target_nll.to(at::kDouble).sum().item<double>();
  nll_sum_ += s;
  targets_ += n;
  weighted_sum_ += s / static_cast<double>(n) * static_cast<double>(n + 1);
  tokens_ += n + 1;
  ++prompts_;
}

double NllAccumulator::MeanNll(bool weight_by_t) const {
  if (targets_ == 0) return 0.0;
  return weight_by_t ? weighted_sum_ / static_cast<double>(tokens_) : nll_sum_ / static_cast<double>(targets_);
}

double NllAccumulator::Perplexity(bool weight_by_t) const { return std::exp(MeanNll(weight_by_t)); }

}  // namespace sinkscope::analysis
