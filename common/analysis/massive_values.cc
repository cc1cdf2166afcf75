// Massive values; formulas in massive_values.h. Compiled through analyses_unity.cc.
#include "common/analysis/massive_values.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/analysis/interventions.h"

namespace sinkscope::analysis {

at::Tensor NormMatrix(const at::Tensor& x) {
  const int64_t T = x.size(0);
  const int64_t per_row = std::max<int64_t>(1, x.numel() / std::max<int64_t>(T, 1));
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 21) / per_row);  // ≤ 16 MiB of float64 at a time
  at::Tensor sq;
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    at::Tensor part = x.narrow(0, t0, n).to(at::kDouble).pow(2).sum(0);
    sq = sq.defined() ? sq + part : part;
  }
  return sq.sqrt();
}

double MassiveThreshold(const at::Tensor& M, double lambda) { return lambda * M.mean().item<double>(); }

at::Tensor MassiveMask(const at::Tensor& M, double lambda, job::ThresholdScope scope) {
  if (scope == job::ThresholdScope::kHead) return M > M.mean({1}, /*keepdim=*/true) * lambda;
  return M > M.mean() * lambda;
}

namespace massive_values_internal {

model::HookId HookOf(job::QkvTensor t, bool post_rotary) {
  switch (t) {
    case job::QkvTensor::kQ:
      return post_rotary ? model::HookId::kRotQ : model::HookId::kQ;
    case job::QkvTensor::kK:
      return post_rotary ? model::HookId::kRotK : model::HookId::kK;
    case job::QkvTensor::kV:
      return model::HookId::kV;
  }
  return model::HookId::kV;
}

class MassiveValues final : public LayerAnalysis {
 public:
  MassiveValues(const job::MassiveValuesSpec& spec, const ModelDims& dims, QkIdentifier* feed)
      : spec_(spec), dims_(dims), feed_(MassiveValuesCanFeed(spec) ? feed : nullptr) {
    for (job::QkvTensor t : spec.tensors)
      if (std::find(tensors_.begin(), tensors_.end(), t) == tensors_.end()) tensors_.push_back(t);
    per_.resize(tensors_.size());
    for (auto& pt : per_) {
      pt.layers.resize(dims.n_layers);
    }
  }

  // Observers reduce each prompt's activation to its norm matrix M on the device; Flush copies a forward's pending
  // matrices to the host at once and accumulates them in the order the observers ran.
  void Register(const PromptCtx& p, model::HookSet* hooks) override {
    // Per-prompt totals are keyed by prompt: a packed forward registers several prompts before running them.
    prompt_totals_[p.index].assign(tensors_.size(), 0);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      for (int64_t l = 0; l < dims_.n_layers; ++l)
        hooks->Observe(model::HookName(l, HookOf(tensors_[i], spec_.post_rotary)),
                       [this, i, l, prompt = p.index](const model::HookPoint&, const at::Tensor& x) {
                         at::Tensor M = NormMatrix(x);
                         if (feed_ != nullptr && tensors_[i] != job::QkvTensor::kV)
                           feed_->Add(l, tensors_[i] == job::QkvTensor::kK, M);
                         pending_.push_back({i, l, prompt, std::move(M)});
                       });
    }
  }

  void Flush() override {
    MergePending(&pending_, &Pending::M, [this](const Pending& pd, const at::Tensor& M) {
      const int64_t count = Observe(pd.tensor, pd.layer, M);
      std::vector<int64_t>& totals = prompt_totals_[pd.prompt];
      totals.resize(tensors_.size());
      totals[pd.tensor] += count;
      if (per_prompt_) {
        auto& counts = prompt_counts_[{pd.prompt, static_cast<int32_t>(pd.layer)}];
        counts.resize(tensors_.size());
        counts[pd.tensor] = static_cast<int32_t>(count);
      }
    });
  }

  void EndPrompt(const PromptCtx& p) override {
    auto it = prompt_totals_.find(p.index);
    if (it == prompt_totals_.end()) return;
    for (size_t i = 0; i < per_.size(); ++i) per_[i].total.Add(static_cast<double>(it->second[i]));
    prompt_totals_.erase(it);
  }

  void Fill(int32_t layer, job::LayerResult* out) const override {
    if (layer < 0) return;
    job::MassiveValuesLayer r;
    r.lambda = spec_.lambda;
    r.post_rotary = spec_.post_rotary;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Layer& L = per_[i].layers[layer];
      job::MassiveValuesTensor t;
      t.tensor = tensors_[i];
      t.count = L.count.Get();
      t.threshold = L.threshold.mean();
      t.gini = L.gini.mean();
      if (L.m_sum.defined() && L.count.n() > 0) {
        at::Tensor mean = (L.m_sum / static_cast<double>(L.count.n())).flatten();
        const int64_t k = std::min<int64_t>(spec_.top_k, mean.numel());
        auto [vals, idx] = mean.topk(k);
        const int64_t D = L.m_sum.size(1);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t f = idx[j].item<int64_t>();
          t.top.push_back(
              job::DimEntry{static_cast<int32_t>(f / D), static_cast<int32_t>(f % D), vals[j].item<double>()});
        }
      }
      r.tensors.push_back(std::move(t));
    }
    out->massive_values = std::move(r);
  }

  void FillPrompt(int32_t prompt, int32_t layer, job::PromptLayer* out) const override {
    auto it = prompt_counts_.find({prompt, layer});
    if (it != prompt_counts_.end()) out->massive_counts = it->second;
  }

  void Summarize(std::map<std::string, double>* m) const override {
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const std::string base = std::string("massive_values.") + job::Name(tensors_[i]);
      (*m)[base + ".total"] = per_[i].total.mean();
      (*m)[base + ".total_std"] = per_[i].total.std();
    }
  }

 private:
  struct Layer {
    StatAcc count, threshold, gini;
    at::Tensor m_sum;  // Σ over prompts of M, [H, D] float64 on the CPU
  };
  struct PerTensor {
    std::vector<Layer> layers;
    StatAcc total;
  };

  struct Pending {  // one prompt's activation at one layer, waiting for Flush
    size_t tensor;
    int64_t layer;
    int32_t prompt;
    at::Tensor M;  // NormMatrix, float64 on the model's device
  };

  // Accumulates one prompt's norm matrix M (on the host) at one layer; returns its count of massive entries.
  int64_t Observe(size_t i, int64_t l, const at::Tensor& M) {
    const int64_t count = MassiveMask(M, spec_.lambda, spec_.scope).sum().item<int64_t>();
    Layer& L = per_[i].layers[l];
    L.count.Add(static_cast<double>(count));
    L.threshold.Add(MassiveThreshold(M, spec_.lambda));
    at::Tensor flat = M.flatten().contiguous();
    L.gini.Add(Gini(std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel())));
    L.m_sum = L.m_sum.defined() ? L.m_sum + M : M.clone();
    return count;
  }

  job::MassiveValuesSpec spec_;
  ModelDims dims_;
  QkIdentifier* feed_;  // the Q/K identification fed with the same norm matrices, or null
  std::vector<job::QkvTensor> tensors_;
  std::vector<PerTensor> per_;
  std::map<int32_t, std::vector<int64_t>> prompt_totals_;  // prompt index -> count per tensor, until EndPrompt
  std::map<std::pair<int32_t, int32_t>, std::vector<int32_t>> prompt_counts_;  // (prompt, layer), KeepPerPrompt()
  std::vector<Pending> pending_;
};

}  // namespace massive_values_internal

bool MassiveValuesCanFeed(const job::MassiveValuesSpec& spec) {
  auto has = [&](job::QkvTensor t) {
    return std::find(spec.tensors.begin(), spec.tensors.end(), t) != spec.tensors.end();
  };
  return !spec.post_rotary && has(job::QkvTensor::kQ) && has(job::QkvTensor::kK);
}

std::unique_ptr<LayerAnalysis> MakeMassiveValues(const job::MassiveValuesSpec& spec, const ModelDims& dims,
                                                 QkIdentifier* feed) {
  return std::make_unique<massive_values_internal::MassiveValues>(spec, dims, feed);
}

}  // namespace sinkscope::analysis
