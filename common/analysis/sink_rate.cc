// Attention sink rate; formulas in sink_rate.h. Compiled through analyses_unity.cc.
#include "common/analysis/sink_rate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sinkscope::analysis {
namespace sink_rate_internal {

class SinkRate final : public LayerAnalysis {
 public:
  SinkRate(const job::SinkRateSpec& spec, const ModelDims& dims)
      : spec_(spec),
        dims_(dims),
        rate_(dims.n_layers),
        head_sum_(dims.n_layers, std::vector<double>(dims.n_heads)),
        head_n_(dims.n_layers, 0) {}

  // Observers reduce each prompt's layer to [H] BOS-attention sums on the device; Flush copies a forward's pending
  // sums to the host at once and accumulates them in the order the observers ran.
  void Register(const PromptCtx& p, model::HookSet* hooks) override {
    const bool exclude = spec_.query_rows == job::QueryRows::kExcludeBos;
    // Per-prompt scratch: in a packed forward, prompts' pattern chunks (and their q/k hooks) interleave.
    auto cur = std::make_shared<Current>();
    for (int64_t l = 0; l < dims_.n_layers; ++l) {
      if (spec_.source == job::AttentionSource::kModel) {
        hooks->Observe(model::HookName(l, model::HookId::kPattern),
                       [this, l, p, exclude, cur](const model::HookPoint& hp, const at::Tensor& P) {
                         // P: [H, tq, T] float32, query rows [q_offset, q_offset + tq).
                         if (hp.q_offset == 0) *cur = Current{};
                         const int64_t tq = P.size(1);
                         at::Tensor col0 = P.select(2, 0);  // [H, tq]
                         if (exclude && hp.q_offset == 0) col0 = col0.narrow(1, 1, tq - 1);
                         if (col0.size(1) > 0) {
                           cur->parts.push_back(col0.to(at::kDouble).sum(1));
                           cur->rows += col0.size(1);
                         }
                         if (hp.q_offset + tq == p.T) pending_.push_back({l, p.index, std::move(*cur)});
                       });
      } else {
        hooks->Observe(model::HookName(l, model::HookId::kQ),
                       [cur](const model::HookPoint&, const at::Tensor& q) { cur->q = q; });  // not modified later
        hooks->Observe(model::HookName(l, model::HookId::kK),
                       [this, l, exclude, cur, prompt = p.index](const model::HookPoint&, const at::Tensor& k) {
                         Current done;
                         done.parts.push_back(PreRotaryBosAttentionSums(cur->q, k, exclude, &done.rows));
                         cur->q = at::Tensor();
                         pending_.push_back({l, prompt, std::move(done)});
                       });
      }
    }
  }

  void Flush() override {
    if (pending_.empty()) return;
    // Accumulate in prompt order, as one prompt per forward does: padded attention groups (model::AttentionBatching)
    // run a forward's prompts longest first.
    std::stable_sort(pending_.begin(), pending_.end(), [](const Pending& a, const Pending& b) {
      return std::make_pair(a.layer, a.prompt) < std::make_pair(b.layer, b.prompt);
    });
    std::vector<at::Tensor> parts;
    for (const Pending& pd : pending_) parts.insert(parts.end(), pd.cur.parts.begin(), pd.cur.parts.end());
    const std::vector<at::Tensor> host = ToHost(parts);
    size_t next = 0;
    std::vector<double> sum(dims_.n_heads);
    for (const Pending& pd : pending_) {
      std::fill(sum.begin(), sum.end(), 0.0);
      for (size_t c = 0; c < pd.cur.parts.size(); ++c) {  // the chunks' sums, in query-row order
        const double* ps = host[next++].data_ptr<double>();
        for (int64_t h = 0; h < dims_.n_heads; ++h) sum[h] += ps[h];
      }
      Finish(pd.layer, pd.prompt, sum, pd.cur.rows);
    }
    pending_.clear();
  }

  void Fill(int32_t layer, job::LayerResult* out) const override {
    if (layer < 0) return;
    job::SinkRateLayer r;
    r.sink_rate = rate_[layer].Get();
    r.tau = spec_.tau;
    r.head_scores.resize(dims_.n_heads, 0.0);
    if (head_n_[layer] > 0)
      for (int64_t h = 0; h < dims_.n_heads; ++h) r.head_scores[h] = head_sum_[layer][h] / head_n_[layer];
    out->sink_rate = std::move(r);
  }

  void FillPrompt(int32_t prompt, int32_t layer, job::PromptLayer* out) const override {
    auto it = prompt_.find({prompt, layer});
    if (it == prompt_.end()) return;
    out->sink_rate = it->second.first;
    out->head_scores = it->second.second;
  }

  void Summarize(std::map<std::string, double>* m) const override {
    double sum = 0;
    int n = 0;
    for (const auto& r : rate_)
      if (r.n() > 0) sum += r.mean(), ++n;
    (*m)["sink_rate.mean"] = n > 0 ? sum / n : 0.0;
  }

 private:
  // One prompt's layer: its BOS-attention sums over the selected query rows, per chunk of rows, on the device.
  struct Current {
    std::vector<at::Tensor> parts;  // [H] float64 each
    int64_t rows = 0;
    at::Tensor q;  // pre-rotary source: hook_q, kept until the layer's hook_k
  };
  struct Pending {  // a finished prompt's layer, waiting for Flush
    int64_t layer;
    int32_t prompt;
    Current cur;
  };

  void Finish(int64_t l, int32_t prompt, const std::vector<double>& sum, int64_t rows) {
    if (rows == 0) return;  // T = 1 with EXCLUDE_BOS: no query rows
    int64_t sinks = 0;
    std::vector<double> scores(dims_.n_heads);
    for (int64_t h = 0; h < dims_.n_heads; ++h) {
      scores[h] = sum[h] / static_cast<double>(rows);
      head_sum_[l][h] += scores[h];
      if (scores[h] >= spec_.tau) ++sinks;
    }
    ++head_n_[l];
    const double rate = static_cast<double>(sinks) / static_cast<double>(dims_.n_heads);
    rate_[l].Add(rate);
    if (per_prompt_) prompt_[{prompt, static_cast<int32_t>(l)}] = {rate, std::move(scores)};
  }

  job::SinkRateSpec spec_;
  ModelDims dims_;
  std::vector<StatAcc> rate_;
  std::vector<std::vector<double>> head_sum_;
  std::vector<int64_t> head_n_;
  std::map<std::pair<int32_t, int32_t>, std::pair<double, std::vector<double>>> prompt_;  // (prompt, layer) -> rate, scores
  std::vector<Pending> pending_;
};

}  // namespace sink_rate_internal

std::unique_ptr<LayerAnalysis> MakeSinkRate(const job::SinkRateSpec& spec, const ModelDims& dims) {
  return std::make_unique<sink_rate_internal::SinkRate>(spec, dims);
}

at::Tensor PreRotaryBosAttentionSums(const at::Tensor& q, const at::Tensor& k, bool exclude_bos, int64_t* rows) {
  const int64_t T = q.size(0), H = q.size(1), hd = q.size(2), Hkv = k.size(1), rep = H / Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));  // the study's 128^-0.5 for Llama-2-7B
  at::Tensor qf = q.to(at::kFloat).permute({1, 0, 2});            // [H, T, hd]
  at::Tensor kf = k.to(at::kFloat).permute({1, 2, 0});            // [Hkv, hd, T]
  if (rep > 1) kf = kf.unsqueeze(1).expand({Hkv, rep, hd, T}).reshape({H, hd, T});
  kf = kf.contiguous();
  const int64_t start = exclude_bos ? 1 : 0;
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, H * T));
  auto ilong = at::TensorOptions().dtype(at::kLong).device(q.device());
  at::Tensor sums = at::zeros({H}, at::TensorOptions().dtype(at::kDouble).device(q.device()));
  for (int64_t q0 = start; q0 < T; q0 += chunk) {
    const int64_t q1 = std::min(q0 + chunk, T), tq = q1 - q0;
    at::Tensor s = at::bmm(qf.narrow(1, q0, tq), kf.narrow(2, 0, q1)) * scale;  // [H, tq, q1] fp32
    at::Tensor mask = at::arange(q1, ilong).unsqueeze(0) > at::arange(q0, q1, ilong).unsqueeze(1);
    s = s.masked_fill(mask, -std::numeric_limits<float>::infinity());
    sums += at::softmax(s, -1).select(2, 0).to(at::kDouble).sum(1);
  }
  *rows = std::max<int64_t>(0, T - start);
  return sums;
}

}  // namespace sinkscope::analysis
