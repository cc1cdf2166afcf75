// Streaming activation statistics; definitions in activation_stats.h. Compiled through analyses_unity.cc.
#include "common/analysis/activation_stats.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace sinkscope::analysis {

std::vector<std::string> ExpandHooks(const std::vector<std::string>& hooks, int64_t n_layers) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto add = [&](std::string s) {
    if (seen.insert(s).second) out.push_back(std::move(s));
  };
  for (const std::string& h : hooks) {
    if (h.find("{L}") == std::string::npos) {
      add(h);
      continue;
    }
    for (int64_t l = 0; l < n_layers; ++l) add(absl::StrReplaceAll(h, {{"{L}", absl::StrCat(l)}}));
  }
  return out;
}

namespace activation_stats_internal {

// Streaming statistics of one (hook, position class).
struct Acc {
  int64_t count = 0;
  double mean = 0, m2 = 0, max_abs = 0;
  int64_t rows = 0;
  double norm_sum = 0, norm_max = 0;
  at::Tensor abs_sum;  // [F] float64, CPU

  void MergeMoments(int64_t nb, double mb, double m2b) {
    if (nb == 0) return;
    const int64_t n = count + nb;
    const double delta = mb - mean;
    mean += delta * static_cast<double>(nb) / static_cast<double>(n);
    m2 += m2b + delta * delta * static_cast<double>(count) * static_cast<double>(nb) / static_cast<double>(n);
    count = n;
  }
  void Merge(const Acc& o) {
    MergeMoments(o.count, o.mean, o.m2);
    max_abs = std::max(max_abs, o.max_abs);
    rows += o.rows;
    norm_sum += o.norm_sum;
    norm_max = std::max(norm_max, o.norm_max);
    if (o.abs_sum.defined()) abs_sum = abs_sum.defined() ? abs_sum + o.abs_sum : o.abs_sum.clone();
  }
  // Merges one chunk of rows from its ChunkStats (on the host): nb values in `nrows` rows of F features.
  void AddChunk(int64_t nb, int64_t nrows, const at::Tensor& stats) {
    const double* p = stats.data_ptr<double>();
    MergeMoments(nb, p[0], p[1]);
    max_abs = std::max(max_abs, p[2]);
    rows += nrows;
    norm_sum += p[3];
    norm_max = std::max(norm_max, p[4]);
    const at::Tensor as = stats.narrow(0, 5, stats.numel() - 5);
    abs_sum = abs_sum.defined() ? abs_sum + as : as.clone();
  }
  job::ActivationStatsEntry Entry(const std::string& hook, job::PositionClass pc, int32_t top_k) const {
    job::ActivationStatsEntry e;
    e.hook = hook;
    e.positions = pc;
    e.count = count;
    e.mean = mean;
    e.std = count > 0 ? std::sqrt(std::max(0.0, m2 / static_cast<double>(count))) : 0.0;
    e.max_abs = max_abs;
    e.mean_norm = rows > 0 ? norm_sum / static_cast<double>(rows) : 0.0;
    e.max_norm = norm_max;
    if (abs_sum.defined() && rows > 0) {
      at::Tensor m = abs_sum / static_cast<double>(rows);
      const int64_t k = std::min<int64_t>(top_k, m.numel());
      auto [vals, idx] = m.topk(k);
      for (int64_t j = 0; j < k; ++j) {
        e.top_dims.push_back(static_cast<int32_t>(idx[j].item<int64_t>()));
        e.top_values.push_back(vals[j].item<double>());
      }
    }
    return e;
  }
};

// One chunk xd [n, F] float64 (n·F > 0) reduced on its device to [5 + F]: mean, Σ(x − mean)², max |x|, Σ of the row
// norms, max row norm, then Σ over rows of |x| per feature.
at::Tensor ChunkStats(const at::Tensor& xd) {
  const at::Tensor mb = xd.mean();
  const at::Tensor a = xd.abs();
  const at::Tensor norms = xd.pow(2).sum(1).sqrt();
  return at::cat({at::stack({mb, (xd - mb).pow(2).sum(), a.max(), norms.sum(), norms.max()}), a.sum(0)});
}

class ActivationStats final : public LayerAnalysis {
 public:
  ActivationStats(const job::ActivationStatsSpec& spec, const ModelDims& dims)
      : spec_(spec),
        dims_(dims),
        hooks_(ExpandHooks(spec.hooks, dims.n_layers)),
        bos_(hooks_.size()),
        rest_(hooks_.size()) {}

  // Observers reduce chunks of rows to ChunkStats on the device; Flush copies a forward's pending ones to the host
  // at once and merges them in the order the observers ran.
  void Register(const PromptCtx&, model::HookSet* hooks) override {
    for (size_t i = 0; i < hooks_.size(); ++i)
      hooks->Observe(hooks_[i], [this, i](const model::HookPoint&, const at::Tensor& x) {
        const int64_t T = x.size(0);
        at::Tensor x2 = x.reshape({T, -1});
        AddRows(i, /*bos=*/true, x2.narrow(0, 0, 1));
        if (T > 1) AddRows(i, /*bos=*/false, x2.narrow(0, 1, T - 1));
      });
  }

  void Flush() override {
    MergePending(&pending_, &Pending::stats, [this](const Pending& pd, const at::Tensor& stats) {
      (pd.bos ? bos_ : rest_)[pd.hook].AddChunk(pd.nb, pd.rows, stats);
    });
  }

  bool HasModelLevel() const override {
    for (const auto& h : hooks_)
      if (LayerOf(h) < 0) return true;
    return false;
  }

  void Fill(int32_t layer, job::LayerResult* out) const override {
    for (size_t i = 0; i < hooks_.size(); ++i) {
      if (LayerOf(hooks_[i]) != layer) continue;
      Acc all = bos_[i];
      if (all.abs_sum.defined()) all.abs_sum = all.abs_sum.clone();
      all.Merge(rest_[i]);
      out->activation_stats.push_back(bos_[i].Entry(hooks_[i], job::PositionClass::kBos, spec_.top_k));
      out->activation_stats.push_back(rest_[i].Entry(hooks_[i], job::PositionClass::kRest, spec_.top_k));
      out->activation_stats.push_back(all.Entry(hooks_[i], job::PositionClass::kAll, spec_.top_k));
    }
  }

 private:
  struct Pending {  // one chunk of rows, waiting for Flush
    size_t hook;
    bool bos;
    int64_t nb, rows;
    at::Tensor stats;  // ChunkStats, on the model's device
  };

  // Rows x [n, F] (any dtype/device) of hook i, in chunks of ≤ 16 MiB of float64.
  void AddRows(size_t i, bool bos, const at::Tensor& x) {
    const int64_t R = x.size(0), F = std::max<int64_t>(1, x.size(1));
    const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 21) / F);
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
      at::Tensor xd = x.narrow(0, r0, std::min(chunk, R - r0)).to(at::kDouble);
      if (xd.numel() == 0) continue;
      pending_.push_back({i, bos, xd.numel(), xd.size(0), ChunkStats(xd)});
    }
  }

  // Hooks are validated (job/validate.cc), so the name parses.
  int64_t LayerOf(const std::string& hook) const { return model::ParseHookName(hook, dims_.n_layers)->layer; }

  job::ActivationStatsSpec spec_;
  ModelDims dims_;
  std::vector<std::string> hooks_;
  std::vector<Acc> bos_, rest_;
  std::vector<Pending> pending_;
};

}  // namespace activation_stats_internal

std::unique_ptr<LayerAnalysis> MakeActivationStats(const job::ActivationStatsSpec& spec, const ModelDims& dims) {
  return std::make_unique<activation_stats_internal::ActivationStats>(spec, dims);
}

}  // namespace sinkscope::analysis
