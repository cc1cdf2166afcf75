#include "common/job/observers.h"

#include "common/analysis/activation_stats.h"
#include "common/analysis/massive_values.h"
#include "common/analysis/matrix_entropy.h"
#include "common/analysis/sink_rate.h"
#include "common/util/overloaded.h"

namespace sinkscope::job {

std::vector<ComparisonRow> Compare(const std::vector<ModelSummary>& ms) {
  std::vector<ComparisonRow> rows;
  for (const auto& [metric, v0] : ms[0].metrics) {
    ComparisonRow r;
    r.metric = metric;
    bool all = true;
    for (const ModelSummary& s : ms) {
      auto it = s.metrics.find(metric);
      if (it == s.metrics.end()) {
        all = false;
        break;
      }
      r.values.push_back(it->second);
      r.diffs.push_back(it->second - v0);
      r.ratios.push_back(v0 != 0 ? it->second / v0 : 0.0);
    }
    if (all) rows.push_back(std::move(r));
  }
  return rows;
}

Observers::Observers(const Plan& plan, const analysis::ModelDims& dims, bool overlap) {
  bool need_spike = false, need_ident = false;
  if (const PerplexitySpec* ppl = plan.perplexity())
    for (const Intervention& iv : ppl->interventions) {
      if (const auto* b = std::get_if<BosMlpAblation>(&iv.kind); b && !b->layer) need_spike = true;
      if (const auto* q = std::get_if<QkMassiveDisruption>(&iv.kind); q && !q->identify_on) need_ident = true;
    }
  if (need_ident) ident = std::make_unique<analysis::QkIdentifier>(dims);
  for (const AnalysisSpec& a : plan.spec.analyses) {
    std::visit(Overloaded{[&](const SinkRateSpec& s) { emitted.push_back(analysis::MakeSinkRate(s, dims)); },
                          [&](const MassiveValuesSpec& s) {
                            // The identification's norm matrices are this analysis' own Q and K ones (one feeder).
                            analysis::QkIdentifier* feed = nullptr;
                            if (ident && !ident_fed && analysis::MassiveValuesCanFeed(s)) {
                              feed = ident.get();
                              ident_fed = true;
                            }
                            emitted.push_back(analysis::MakeMassiveValues(s, dims, feed));
                          },
                          [&](const ResidualStatsSpec& s) {
                            auto r = analysis::MakeResidualStats(s, dims, /*emit=*/true);
                            resid = r.get();
                            emitted.push_back(std::move(r));
                          },
                          [&](const MatrixEntropySpec& s) {
                            emitted.push_back(analysis::MakeMatrixEntropy(s, dims, overlap));
                            overlapped = overlap;
                          },
                          [&](const PerplexitySpec&) {},
                          [&](const ActivationStatsSpec& s) {
                            emitted.push_back(analysis::MakeActivationStats(s, dims));
                          }},
               a);
  }
  if (need_spike && resid == nullptr) {
    hidden_resid = analysis::MakeResidualStats(ResidualStatsSpec{}, dims, /*emit=*/false);
    resid = hidden_resid.get();
  }
  const bool per_prompt = plan.spec.per_prompt || plan.spec.emit_token_ids;
  for (const auto& a : emitted) {
    if (per_prompt) a->KeepPerPrompt();
    last_after_norm |= a->LastLayerAfterFinalNorm();
    model_level |= a->HasModelLevel();
  }
}


void Observers::Register(const analysis::PromptCtx& ctx, model::HookSet* hooks) const {
  for (const auto& a : emitted) a->Register(ctx, hooks);
  if (hidden_resid) hidden_resid->Register(ctx, hooks);
  if (ident && !ident_fed) ident->Register(hooks);
}


void Observers::Flush() const {
  for (const auto& a : emitted) a->Flush();
  if (hidden_resid) hidden_resid->Flush();
}

void Observers::Settle(int64_t through_layer) const {
  for (const auto& a : emitted) a->Settle(through_layer);
}

std::optional<LayerResult> Observers::Layer(const std::string& model, int32_t l, int32_t done, int32_t total) const {
  LayerResult lr;
  lr.model = model;
  lr.layer = l;
  lr.prompts_done = done;
  lr.prompts_total = total;
  lr.partial = done < total;
  for (const auto& a : emitted) a->Fill(l, &lr);
  const bool any =
      lr.sink_rate || lr.massive_values || lr.residual_stats || lr.matrix_entropy || !lr.activation_stats.empty();
  if (!any) return std::nullopt;
  return lr;
}

PromptResult Observers::Prompt(const std::string& model, int32_t p, const std::vector<int32_t>& ids, bool ids_too,
                               int32_t n_layers) const {
  PromptResult r;
  r.model = model;
  r.prompt = p;
  r.num_tokens = static_cast<int32_t>(ids.size());
  if (ids_too) r.token_ids = ids;
  for (int32_t l = 0; l < n_layers; ++l) {
    PromptLayer pl;
    pl.layer = l;
    for (const auto& a : emitted) a->FillPrompt(p, l, &pl);
    const bool any = pl.sink_rate || pl.bos_norm || pl.entropy || !pl.massive_counts.empty();
    if (any) r.layers.push_back(std::move(pl));
  }
  return r;
}

}  // namespace sinkscope::job
