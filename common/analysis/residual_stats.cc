// Residual-stream BOS statistics; formulas in residual_stats.h. Compiled through analyses_unity.cc.
#include "common/analysis/residual_stats.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace sinkscope::analysis {

at::Tensor RowNorms(const at::Tensor& x) {
  const int64_t T = x.size(0);
  at::Tensor x2 = x.reshape({T, -1});
  const int64_t F = std::max<int64_t>(1, x2.size(1));
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 21) / F);
  std::vector<at::Tensor> parts;
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    parts.push_back(x2.narrow(0, t0, n).to(at::kDouble).pow(2).sum(1).sqrt());
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

namespace residual_stats_internal {

// BosStats from the row norms n[0..T) of one prompt's X.
BosStats FromNorms(const double* p, int64_t T) {
  BosStats s;
  s.bos_norm = p[0];
  if (T > 1) {
    double sum = 0;
    for (int64_t t = 1; t < T; ++t) sum += p[t];
    s.mean_other_norm = sum / static_cast<double>(T - 1);
    s.ratio = s.bos_norm / (s.mean_other_norm + 1e-8);
  }
  return s;
}

}  // namespace residual_stats_internal

BosStats ComputeBosStats(const at::Tensor& x) {
  at::Tensor n = RowNorms(x).cpu().contiguous();
  return residual_stats_internal::FromNorms(n.data_ptr<double>(), n.numel());
}

namespace residual_stats_internal {

class Impl final : public ResidualStats {
 public:
  Impl(const job::ResidualStatsSpec& spec, const ModelDims& dims, bool emit)
      : spec_(spec), dims_(dims), emit_(emit), layers_(dims.n_layers) {}

  // Observers keep each prompt's row norms on the device; Flush copies a forward's pending norms to the host at once
  // and accumulates them in the order the observers ran.
  void Register(const PromptCtx& p, model::HookSet* hooks) override {
    hooks->Observe(model::kEmbedHook, [this, prompt = p.index](const model::HookPoint&, const at::Tensor& x) {
      pending_.push_back({kEmbed, prompt, RowNorms(x.narrow(0, 0, 1))});
    });
    for (int64_t l = 0; l < dims_.n_layers; ++l) {
      const bool final_norm = spec_.final_norm_last_layer && l == dims_.n_layers - 1;
      hooks->Observe(final_norm ? std::string(model::kFinalNormHook) : model::HookName(l, model::HookId::kResidPost),
                     [this, l, prompt = p.index](const model::HookPoint&, const at::Tensor& x) {
                       pending_.push_back({l, prompt, RowNorms(x)});
                     });
    }
  }

  void Flush() override {
    MergePending(&pending_, &Pending::norms, [this](const Pending& pd, const at::Tensor& norms) {
      const double* n = norms.data_ptr<double>();
      if (pd.layer == kEmbed) {
        embed_.Add(n[0]);
        return;
      }
      const BosStats s = FromNorms(n, norms.numel());
      layers_[pd.layer].bos.Add(s.bos_norm);
      layers_[pd.layer].other.Add(s.mean_other_norm);
      layers_[pd.layer].ratio.Add(s.ratio);
      if (per_prompt_) prompt_[{pd.prompt, static_cast<int32_t>(pd.layer)}] = s;
    });
  }

  bool LastLayerAfterFinalNorm() const override { return spec_.final_norm_last_layer; }

  void Fill(int32_t layer, job::LayerResult* out) const override {
    if (!emit_ || layer < 0) return;
    job::ResidualStatsLayer r;
    r.bos_norm = layers_[layer].bos.Get();
    r.mean_other_norm = layers_[layer].other.Get();
    r.ratio = layers_[layer].ratio.Get();
    r.post_final_norm = spec_.final_norm_last_layer && layer == dims_.n_layers - 1;
    out->residual_stats = std::move(r);
  }

  void FillPrompt(int32_t prompt, int32_t layer, job::PromptLayer* out) const override {
    auto it = prompt_.find({prompt, layer});
    if (!emit_ || it == prompt_.end()) return;
    out->bos_norm = it->second.bos_norm;
    out->mean_other_norm = it->second.mean_other_norm;
    out->bos_ratio = it->second.ratio;
  }

  int32_t SpikeLayer(job::SpikeRule rule, int32_t last_layer = -1) const override {
    if (layers_.empty() || layers_[0].bos.n() == 0) return -1;
    int32_t best = 0;
    double best_v = -std::numeric_limits<double>::infinity();
    const int32_t n = static_cast<int32_t>(layers_.size());
    for (int32_t l = 0; l < (last_layer < 0 ? n : std::min(n, last_layer + 1)); ++l) {
      double v;
      if (rule == job::SpikeRule::kArgmaxRatio) {
        v = layers_[l].ratio.mean();
      } else {
        const double prev = l == 0 ? embed_.mean() : layers_[l - 1].bos.mean();
        v = layers_[l].bos.mean() - prev;
      }
      if (v > best_v) best_v = v, best = l;  // first maximum wins, like np.argmax
    }
    return best;
  }

  void Summarize(std::map<std::string, double>* m) const override {
    if (layers_.empty() || layers_[0].bos.n() == 0) return;
    (*m)["bos_spike_layer.argmax_ratio"] = SpikeLayer(job::SpikeRule::kArgmaxRatio);
    (*m)["bos_spike_layer.argmax_jump"] = SpikeLayer(job::SpikeRule::kArgmaxJump);
    if (!emit_) return;
    const int32_t n = static_cast<int32_t>(layers_.size());
    const int32_t peak = ArgBest(n, [&](int32_t l) { return layers_[l].bos.mean(); });
    const int32_t rpeak = ArgBest(n, [&](int32_t l) { return layers_[l].ratio.mean(); });
    (*m)["bos_norm.peak"] = layers_[peak].bos.mean();
    (*m)["bos_norm.peak_layer"] = peak;
    (*m)["bos_ratio.peak"] = layers_[rpeak].ratio.mean();
  }

 private:
  struct Layer {
    StatAcc bos, other, ratio;
  };
  static constexpr int64_t kEmbed = -1;  // Pending::layer of hook_embed's BOS norm
  struct Pending {  // one prompt's layer, waiting for Flush
    int64_t layer;
    int32_t prompt;
    at::Tensor norms;  // [T] float64 on the model's device
  };
  job::ResidualStatsSpec spec_;
  ModelDims dims_;
  bool emit_;
  std::vector<Layer> layers_;
  StatAcc embed_;
  std::map<std::pair<int32_t, int32_t>, BosStats> prompt_;  // (prompt, layer), with KeepPerPrompt()
  std::vector<Pending> pending_;
};

}  // namespace residual_stats_internal

std::unique_ptr<ResidualStats> MakeResidualStats(const job::ResidualStatsSpec& spec, const ModelDims& dims, bool emit) {
  return std::make_unique<residual_stats_internal::Impl>(spec, dims, emit);
}

}  // namespace sinkscope::analysis
