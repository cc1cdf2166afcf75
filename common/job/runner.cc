// Job validation and the runner/planner (see runner.h and docs/analyses.md). Includes only the cheap
// <ATen/core/Tensor.h> (through the model and analysis headers); all tensor math lives in common/analysis/.
#include "common/job/runner.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <set>
#include <type_traits>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/analysis/activation_stats.h"
#include "common/analysis/analysis.h"
#include "common/analysis/interventions.h"
#include "common/analysis/massive_values.h"
#include "common/analysis/matrix_entropy.h"
#include "common/analysis/perplexity.h"
#include "common/analysis/residual_stats.h"
#include "common/analysis/sink_rate.h"
#include "common/job/datasets.h"
#include "common/model/hooks.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/sha256.h"
#include "common/util/status_macros.h"

namespace sinkscope::job {
namespace {

using Clock = std::chrono::steady_clock;

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// Re-wraps an error with context, keeping its code (Cancelled / DeadlineExceeded pass through unchanged).
absl::Status WithContext(const absl::Status& st, const std::string& ctx) {
  if (st.ok() || st.code() == absl::StatusCode::kCancelled || st.code() == absl::StatusCode::kDeadlineExceeded)
    return st;
  return absl::Status(st.code(), absl::StrCat(ctx, ": ", st.message()));
}

const char* KindName(const AnalysisSpec& a) {
  return std::visit(Overloaded{[](const SinkRateSpec&) { return "sink_rate"; },
                               [](const MassiveValuesSpec&) { return "massive_values"; },
                               [](const ResidualStatsSpec&) { return "residual_stats"; },
                               [](const MatrixEntropySpec&) { return "matrix_entropy"; },
                               [](const PerplexitySpec&) { return "perplexity"; },
                               [](const ActivationStatsSpec&) { return "activation_stats"; }},
                    a);
}

bool Finite(double x) { return std::isfinite(x); }

// ---------------------------------------------------------------------------------------------------- validation

absl::Status ValidateInputs(const Inputs& in, const std::string& where, const std::vector<ModelHandle>& models,
                            const RunLimits& limits) {
  const int sources = (!in.texts.empty() ? 1 : 0) + (!in.token_ids.empty() ? 1 : 0) + (!in.dataset.empty() ? 1 : 0);
  if (sources == 0) return Invalid(where, "no source set (texts, token_ids or dataset)");
  if (sources > 1) return Invalid(where, "more than one source set (texts, token_ids, dataset)");
  if (in.max_prompts < 0) return Invalid(where + ".max_prompts", absl::StrCat(in.max_prompts, " < 0"));
  int64_t n = 0;
  if (!in.texts.empty()) {
    for (size_t i = 0; i < in.texts.size(); ++i)
      if (in.texts[i].empty()) return Invalid(absl::StrCat(where, ".texts[", i, "]"), "empty text");
    n = static_cast<int64_t>(in.texts.size());
  } else if (!in.token_ids.empty()) {
    for (size_t i = 0; i < in.token_ids.size(); ++i) {
      const auto& ids = in.token_ids[i];
      if (ids.empty()) return Invalid(absl::StrCat(where, ".token_ids[", i, "]"), "empty prompt");
      for (size_t j = 0; j < ids.size(); ++j)
        for (const ModelHandle& mh : models) {
          const int64_t V = mh.model->config().vocab_size;
          if (ids[j] < 0 || ids[j] >= V)
            return Invalid(absl::StrCat(where, ".token_ids[", i, "][", j, "]"),
                           absl::StrCat("token id ", ids[j], " not in [0, ", V, ") of model ", mh.name));
        }
    }
    n = static_cast<int64_t>(in.token_ids.size());
  } else {
    absl::StatusOr<Dataset> d = LoadDataset(in.dataset, limits.data_dir);
    if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(where, ".dataset: ", d.status().message()));
    n = static_cast<int64_t>(d->prompts.size());
  }
  if (!in.texts.empty() || !in.dataset.empty())
    for (const ModelHandle& mh : models)
      if (!mh.tokenizer)
        return absl::FailedPreconditionError(
            absl::StrCat(where, ": model ", mh.name, " has no tokenizer; use token_ids inputs"));
  if (in.max_prompts > 0) n = std::min<int64_t>(n, in.max_prompts);
  if (n > limits.max_prompts)
    return Invalid(where, absl::StrCat(n, " prompts exceed the limit max_prompts=", limits.max_prompts, " (set ", where,
                                       ".max_prompts to use the first N)"));
  return absl::OkStatus();
}

// Runs `check` for every model; the first error wins.
absl::Status ForEachModel(const std::vector<ModelHandle>& models,
                          const std::function<absl::Status(const ModelHandle&, const analysis::ModelDims&)>& check) {
  for (const ModelHandle& m : models) RETURN_IF_ERROR(check(m, analysis::ModelDims::From(m.model->config())));
  return absl::OkStatus();
}

absl::Status CheckHook(const std::string& hook, const std::string& field, const std::vector<ModelHandle>& models) {
  if (hook.size() >= 17 && hook.compare(hook.size() - 17, 17, "attn.hook_pattern") == 0)
    return Invalid(field, absl::StrCat("\"", hook, "\" (attn.hook_pattern) is observe-only and has no feature axis; ",
                                       "use the sink_rate analysis for attention patterns"));
  return ForEachModel(models, [&](const ModelHandle& m, const analysis::ModelDims& d) -> absl::Status {
    absl::Status st = model::ValidateHookName(hook, d.n_layers);
    if (!st.ok()) return Invalid(field, absl::StrCat(st.message(), " (model ", m.name, ")"));
    return absl::OkStatus();
  });
}

absl::Status ValidateIntervention(const Intervention& iv, const std::string& where,
                                  const std::vector<ModelHandle>& models, const RunLimits& limits) {
  return std::visit(
      Overloaded{
          [&](const BosMlpAblation& b) -> absl::Status {
            if (!b.layer) return absl::OkStatus();
            return ForEachModel(models, [&](const ModelHandle& m, const analysis::ModelDims& d) -> absl::Status {
              if (*b.layer < 0 || *b.layer >= d.n_layers)
                return Invalid(where + ".bos_mlp.layer",
                               absl::StrCat(*b.layer, " out of range [0, ", d.n_layers, ") of model ", m.name));
              return absl::OkStatus();
            });
          },
          [&](const QkMassiveDisruption& q) -> absl::Status {
            if (!(q.lambda > 0) || !Finite(q.lambda))
              return Invalid(where + ".qk_massive.lambda", absl::StrCat(q.lambda, " must be > 0"));
            if (!q.q && !q.k) return Invalid(where + ".qk_massive", "neither q nor k selected");
            if (q.control_seeds.size() > 100)
              return Invalid(where + ".qk_massive.control_seeds", absl::StrCat(q.control_seeds.size(), " > 100 seeds"));
            if (q.identify_on) return ValidateInputs(*q.identify_on, where + ".qk_massive.identify_on", models, limits);
            return absl::OkStatus();
          },
          [&](const TopPerHeadMeanReplacement& t) -> absl::Status {
            if (t.lambda && (!(*t.lambda > 0) || !Finite(*t.lambda)))
              return Invalid(where + ".top_per_head.lambda", absl::StrCat(*t.lambda, " must be > 0"));
            return ForEachModel(models, [&](const ModelHandle& m, const analysis::ModelDims& d) -> absl::Status {
              if (t.k < 1 || t.k > d.head_dim)
                return Invalid(where + ".top_per_head.k",
                               absl::StrCat(t.k, " not in [1, head_dim=", d.head_dim, "] of model ", m.name));
              return absl::OkStatus();
            });
          },
          [&](const HeadAblation& h) -> absl::Status {
            if (h.heads.empty()) return Invalid(where + ".heads.heads", "empty list");
            return ForEachModel(models, [&](const ModelHandle& m, const analysis::ModelDims& d) -> absl::Status {
              for (size_t i = 0; i < h.heads.size(); ++i) {
                const std::string f = absl::StrCat(where, ".heads.heads[", i, "]");
                if (h.heads[i].layer < 0 || h.heads[i].layer >= d.n_layers)
                  return Invalid(f + ".layer", absl::StrCat(h.heads[i].layer, " out of range [0, ", d.n_layers,
                                                            ") of model ", m.name));
                if (h.heads[i].head < 0 || h.heads[i].head >= d.n_heads)
                  return Invalid(f + ".head",
                                 absl::StrCat(h.heads[i].head, " out of range [0, ", d.n_heads, ") of model ", m.name));
              }
              return absl::OkStatus();
            });
          },
          [&](const std::vector<ActivationEdit>& edits) -> absl::Status {
            if (edits.empty()) return Invalid(where + ".edits", "empty list");
            for (size_t i = 0; i < edits.size(); ++i) {
              const ActivationEdit& e = edits[i];
              const std::string f = absl::StrCat(where, ".edits[", i, "]");
              if (e.hook.empty()) return Invalid(f + ".hook", "empty");
              RETURN_IF_ERROR(CheckHook(e.hook, f + ".hook", models));
              if (!Finite(e.value)) return Invalid(f + ".value", "not finite");
              if (!e.heads.empty() && !analysis::IsPerHeadHook(e.hook))
                return Invalid(f + ".heads", absl::StrCat("\"", e.hook, "\" has no head axis (heads apply to ",
                                                          "hook_q/k/v/rot_q/rot_k/z)"));
              RETURN_IF_ERROR(
                  ForEachModel(models, [&](const ModelHandle& m, const analysis::ModelDims& d) -> absl::Status {
                    const int64_t H = analysis::HeadsOfHook(e.hook, d), D = analysis::FeatureDimOfHook(e.hook, d);
                    for (int32_t h : e.heads)
                      if (h < 0 || h >= H)
                        return Invalid(f + ".heads", absl::StrCat(h, " out of range [0, ", H, ") of model ", m.name));
                    for (int32_t x : e.dims)
                      if (x < 0 || x >= D)
                        return Invalid(f + ".dims", absl::StrCat(x, " out of range [0, ", D, ") of model ", m.name));
                    return absl::OkStatus();
                  }));
            }
            return absl::OkStatus();
          },
      },
      iv.kind);
}

absl::Status ValidateAnalysis(const AnalysisSpec& a, const std::string& where, const std::vector<ModelHandle>& models,
                              const RunLimits& limits) {
  return std::visit(Overloaded{
                        [&](const SinkRateSpec& s) -> absl::Status {
                          if (!(s.tau >= 0 && s.tau <= 1))
                            return Invalid(where + ".sink_rate.tau", absl::StrCat(s.tau, " not in [0,1]"));
                          return absl::OkStatus();
                        },
                        [&](const MassiveValuesSpec& s) -> absl::Status {
                          if (!(s.lambda > 0) || !Finite(s.lambda))
                            return Invalid(where + ".massive_values.lambda", absl::StrCat(s.lambda, " must be > 0"));
                          if (s.tensors.empty()) return Invalid(where + ".massive_values.tensors", "empty list");
                          if (s.top_k < 1 || s.top_k > 64)
                            return Invalid(where + ".massive_values.top_k", absl::StrCat(s.top_k, " not in [1,64]"));
                          return absl::OkStatus();
                        },
                        [&](const ResidualStatsSpec&) -> absl::Status { return absl::OkStatus(); },
                        [&](const MatrixEntropySpec&) -> absl::Status { return absl::OkStatus(); },
                        [&](const PerplexitySpec& p) -> absl::Status {
                          std::set<std::string> labels;
                          for (size_t j = 0; j < p.interventions.size(); ++j) {
                            const std::string w = absl::StrCat(where, ".perplexity.interventions[", j, "]");
                            RETURN_IF_ERROR(ValidateIntervention(p.interventions[j], w, models, limits));
                            const std::string& label = p.interventions[j].label;
                            if (label == "baseline") return Invalid(w + ".label", "\"baseline\" is reserved");
                            if (!label.empty() && !labels.insert(label).second)
                              return Invalid(w + ".label", absl::StrCat("duplicate label \"", label, "\""));
                          }
                          return absl::OkStatus();
                        },
                        [&](const ActivationStatsSpec& s) -> absl::Status {
                          if (s.hooks.empty()) return Invalid(where + ".activation_stats.hooks", "empty list");
                          if (s.top_k < 1 || s.top_k > 64)
                            return Invalid(where + ".activation_stats.top_k", absl::StrCat(s.top_k, " not in [1,64]"));
                          for (size_t i = 0; i < s.hooks.size(); ++i) {
                            const std::string f = absl::StrCat(where, ".activation_stats.hooks[", i, "]");
                            // A "{L}" template is valid iff its layer-0 expansion is (all models have at least one layer).
                            const std::vector<std::string> one = analysis::ExpandHooks({s.hooks[i]}, 1);
                            if (one.empty()) return Invalid(f, "empty");
                            RETURN_IF_ERROR(CheckHook(one[0], f, models));
                          }
                          return absl::OkStatus();
                        },
                    },
                    a);
}

// ------------------------------------------------------------------------------------------------------ helpers

std::string InputsDigest(const std::vector<std::string>& names,
                         const std::vector<std::vector<std::vector<int32_t>>>& p) {
  util::Sha256 h;
  for (size_t m = 0; m < names.size(); ++m) {
    h.Update(names[m]);
    h.Update("\n");
    for (const auto& ids : p[m]) {
      h.Update(absl::StrJoin(ids, ","));
      h.Update("\n");
    }
  }
  return h.HexDigest();
}

std::string Fmt(double x) { return absl::StrFormat("%g", x); }

// ------------------------------------------------------------------------------------------------------- runner

class Runner {
 public:
  Runner(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits, EventSink* sink,
         const CancelCheck& cancel)
      : spec_(spec), models_(models), limits_(limits), sink_(sink), cancel_(cancel) {}

  absl::StatusOr<Summary> Run() {
    const auto t0 = Clock::now();
    for (const AnalysisSpec& a : spec_.analyses) {
      if (const auto* p = std::get_if<PerplexitySpec>(&a)) ppl_ = p;
    }
    if (ppl_ != nullptr) {
      std::set<std::string> used;
      for (size_t j = 0; j < ppl_->interventions.size(); ++j) {
        std::string base = InterventionLabel(ppl_->interventions[j]), label = base;
        for (int k = 2; used.count(label); ++k) label = absl::StrCat(base, "#", k);
        used.insert(label);
        labels_.push_back(label);
      }
    }
    // Inputs per model (tokenised per model, truncated to the job's limit and the model's context).
    const int64_t max_tokens = spec_.max_tokens > 0 ? spec_.max_tokens : limits_.max_tokens_per_prompt;
    prompts_.resize(models_.size());
    identify_prompts_.resize(models_.size());
    for (size_t m = 0; m < models_.size(); ++m) {
      const int64_t cap = std::min<int64_t>(max_tokens, models_[m].model->config().max_position_embeddings);
      ASSIGN_OR_RETURN(prompts_[m], ResolvePrompts(spec_.inputs, models_[m], cap, limits_));
      identify_prompts_[m].resize(labels_.size());
      for (size_t j = 0; j < labels_.size(); ++j) {
        const auto* q = std::get_if<QkMassiveDisruption>(&ppl_->interventions[j].kind);
        if (q && q->identify_on) {
          ASSIGN_OR_RETURN(identify_prompts_[m][j], ResolvePrompts(*q->identify_on, models_[m], cap, limits_));
        }
      }
    }
    // Plan.
    for (size_t m = 0; m < models_.size(); ++m) {
      const int64_t P = static_cast<int64_t>(prompts_[m].size());
      planned_ += P;
      for (size_t j = 0; j < labels_.size(); ++j) {
        const Intervention& iv = ppl_->interventions[j];
        int64_t conditions = 1;
        if (const auto* q = std::get_if<QkMassiveDisruption>(&iv.kind)) {
          conditions += static_cast<int64_t>(q->control_seeds.size());
          planned_ += static_cast<int64_t>(identify_prompts_[m][j].size());
        }
        planned_ += P * conditions;
      }
    }
    if (sink_) sink_->OnStarted(Started{static_cast<int32_t>(planned_), static_cast<int32_t>(prompts_[0].size())});

    Summary summary;
    summary.seed = spec_.seed;
    for (size_t m = 0; m < models_.size(); ++m) {
      ModelSummary ms;
      RETURN_IF_ERROR(RunModel(m, &ms, &summary.perplexity));
      summary.models.push_back(std::move(ms));
    }
    std::vector<std::string> names;
    for (const auto& m : models_) names.push_back(m.name);
    summary.inputs_digest = InputsDigest(names, prompts_);
    if (models_.size() >= 2) summary.comparison = Compare(summary.models);
    summary.elapsed_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (sink_) {
      Progress p;
      p.fraction = 1.0;
      p.model = models_.back().name;
      p.condition = "done";
      p.layer = -1;
      sink_->OnProgress(p);
      sink_->OnSummary(summary);
    }
    return summary;
  }

 private:
  // ---- one model
  absl::Status RunModel(size_t m, ModelSummary* ms, std::vector<PerplexityResult>* ppl_out) {
    const ModelHandle& mh = models_[m];
    const model::LlamaModel& model = *mh.model;
    const analysis::ModelDims dims = analysis::ModelDims::From(model.config());
    const std::vector<std::vector<int32_t>>& prompts = prompts_[m];
    ms->model = mh.name;
    ms->weights_digest = model.weights_digest();
    ms->tokenizer_digest = mh.tokenizer ? mh.tokenizer->digest() : "";
    ms->dtype = model.dtype();
    ms->device = model.device();
    ms->num_prompts = static_cast<int32_t>(prompts.size());
    for (const auto& p : prompts) ms->num_tokens += static_cast<int64_t>(p.size());
    passes_this_model_ = 0;

    // Observational analyses.
    std::vector<std::unique_ptr<analysis::LayerAnalysis>> obs;
    analysis::ResidualStats* resid = nullptr;
    for (const AnalysisSpec& a : spec_.analyses) {
      std::visit(
          Overloaded{[&](const SinkRateSpec& s) { obs.push_back(analysis::MakeSinkRate(s, dims)); },
                     [&](const MassiveValuesSpec& s) { obs.push_back(analysis::MakeMassiveValues(s, dims)); },
                     [&](const ResidualStatsSpec& s) {
                       auto r = analysis::MakeResidualStats(s, dims, /*emit=*/true);
                       resid = r.get();
                       obs.push_back(std::move(r));
                     },
                     [&](const MatrixEntropySpec& s) { obs.push_back(analysis::MakeMatrixEntropy(s, dims)); },
                     [&](const PerplexitySpec&) {},
                     [&](const ActivationStatsSpec& s) { obs.push_back(analysis::MakeActivationStats(s, dims)); }},
          a);
    }
    // Hidden helpers on the baseline pass: residual stats for spike detection, Q/K identification.
    bool need_spike = false, need_ident = false;
    for (size_t j = 0; j < labels_.size(); ++j) {
      const Intervention& iv = ppl_->interventions[j];
      if (const auto* b = std::get_if<BosMlpAblation>(&iv.kind); b && !b->layer) need_spike = true;
      if (const auto* q = std::get_if<QkMassiveDisruption>(&iv.kind); q && !q->identify_on) need_ident = true;
    }
    std::unique_ptr<analysis::ResidualStats> hidden_resid;
    if (need_spike && resid == nullptr) {
      hidden_resid = analysis::MakeResidualStats(ResidualStatsSpec{}, dims, /*emit=*/false);
      resid = hidden_resid.get();
    }
    std::unique_ptr<analysis::QkIdentifier> ident;
    if (need_ident) ident = std::make_unique<analysis::QkIdentifier>(dims);

    bool last_after_norm = false, model_level = false;
    for (const auto& a : obs) {
      last_after_norm |= a->LastLayerAfterFinalNorm();
      model_level |= a->HasModelLevel();
    }
    auto emit_layer = [&](int32_t l) {
      LayerResult lr;
      lr.model = mh.name;
      lr.layer = l;
      for (const auto& a : obs) a->Fill(l, &lr);
      const bool any =
          lr.sink_rate || lr.massive_values || lr.residual_stats || lr.matrix_entropy || !lr.activation_stats.empty();
      if (any && sink_) sink_->OnLayer(lr);
    };

    // ---- 1. baseline pass: one forward per prompt for everything observational + the baseline NLL.
    analysis::NllAccumulator base;
    const int32_t P = static_cast<int32_t>(prompts.size());
    for (int32_t p = 0; p < P; ++p) {
      const analysis::PromptCtx ctx{p, static_cast<int64_t>(prompts[p].size())};
      model::HookSet hooks;
      for (const auto& a : obs) a->Register(ctx, &hooks);
      if (hidden_resid) hidden_resid->Register(ctx, &hooks);
      if (ident) ident->Register(&hooks);
      const bool last = p == P - 1;
      std::function<void(int)> on_layer;
      if (last)
        on_layer = [&](int l) {
          if (!(last_after_norm && l == dims.n_layers - 1)) emit_layer(l);
        };
      ASSIGN_OR_RETURN(at::Tensor nll, Forward(m, "baseline", p, P, prompts[p], &hooks, ppl_ != nullptr, on_layer));
      for (const auto& a : obs) RETURN_IF_ERROR(WithContext(a->status(), absl::StrCat("model ", mh.name)));
      for (const auto& a : obs) a->EndPrompt(ctx);
      if (ppl_ != nullptr) base.Add(nll);
    }
    if (last_after_norm) emit_layer(static_cast<int32_t>(dims.n_layers - 1));
    if (model_level) emit_layer(-1);
    for (const auto& a : obs) a->Summarize(&ms->metrics);
    if (hidden_resid) hidden_resid->Summarize(&ms->metrics);

    // ---- 2./3. perplexity conditions.
    if (ppl_ != nullptr) {
      const bool wt = ppl_->weight_by_t;
      const double base_ppl = base.Perplexity(wt);
      PerplexityResult b;
      b.model = mh.name;
      b.condition = "baseline";
      b.perplexity = base_ppl;
      b.mean_nll = base.MeanNll(wt);
      b.num_targets = base.num_targets();
      b.ratio_to_baseline = 1.0;
      b.detail = absl::StrCat(base.num_prompts(), " prompts, ", base.num_targets(), " targets, ",
                              wt ? "weighted by T" : "weighted by T-1");
      Emit(b, ppl_out);
      ms->metrics["perplexity.baseline"] = base_ppl;

      for (size_t j = 0; j < labels_.size(); ++j) {
        const Intervention& iv = ppl_->interventions[j];
        const std::string& label = labels_[j];
        PerplexityResult r;
        r.model = mh.name;
        r.condition = label;
        const std::string key = "perplexity." + label;
        analysis::NllAccumulator acc;
        absl::Status st = std::visit(
            Overloaded{
                [&](const BosMlpAblation& a) -> absl::Status {
                  int32_t layer = a.layer ? *a.layer : resid->SpikeLayer(a.spike_rule);
                  if (layer < 0) return absl::InternalError("spike layer unavailable (no baseline prompt)");
                  r.resolved_layer = layer;
                  r.detail = a.layer ? absl::StrCat("layer ", layer, " (explicit)")
                                     : absl::StrCat("layer ", layer, " (", Name(a.spike_rule), ")");
                  ms->metrics[key + ".layer"] = layer;
                  return NllPasses(
                      m, label, prompts, [layer](model::HookSet* h) { analysis::AddBosMlpAblation(layer, h); }, &acc);
                },
                [&](const QkMassiveDisruption& q) -> absl::Status {
                  const analysis::QkIdentifier* id = ident.get();
                  std::unique_ptr<analysis::QkIdentifier> own;
                  if (q.identify_on) {
                    own = std::make_unique<analysis::QkIdentifier>(dims);
                    RETURN_IF_ERROR(IdentifyPasses(m, identify_prompts_[m][j], own.get()));
                    id = own.get();
                  }
                  const analysis::QkMasks masks = id->Masks(q.lambda, q.scope);
                  r.disrupted_dims = static_cast<int32_t>(masks.count(q.q, q.k));
                  r.detail = absl::StrCat(r.disrupted_dims, " dims in ", masks.num_layers(q.q, q.k), " layers (",
                                          q.q && q.k ? "q+k" : (q.q ? "q" : "k"), ", identified on ", id->num_prompts(),
                                          " prompts, lambda=", Fmt(q.lambda), ", ",
                                          q.scope == ThresholdScope::kLayer ? "layer" : "head", " scope, ",
                                          q.replacement == Replacement::kZero ? "zeroed" : "mean-replaced", ")");
                  ms->metrics[key + ".dims"] = r.disrupted_dims;
                  RETURN_IF_ERROR(NllPasses(
                      m, label, prompts,
                      [&](model::HookSet* h) { analysis::AddQkDisruption(masks, q.replacement, q.q, q.k, h); }, &acc));
                  analysis::StatAcc ctrl;
                  analysis::StatAcc ctrl_pct;
                  for (uint64_t seed : q.control_seeds) {
                    const analysis::QkMasks rm = analysis::RandomControlMasks(masks, dims, seed);
                    analysis::NllAccumulator cacc;
                    RETURN_IF_ERROR(NllPasses(
                        m, absl::StrCat(label, "/control_seed_", seed), prompts,
                        [&](model::HookSet* h) { analysis::AddQkDisruption(rm, q.replacement, q.q, q.k, h); }, &cacc));
                    const double cp = cacc.Perplexity(wt);
                    r.control_perplexities.push_back(cp);
                    ctrl.Add(cp);
                    ctrl_pct.Add(base_ppl > 0 ? (cp - base_ppl) / base_ppl * 100.0 : 0.0);
                  }
                  if (!q.control_seeds.empty()) {
                    r.control = ctrl.Get();
                    ms->metrics[key + ".control_mean"] = ctrl.mean();
                    ms->metrics[key + ".control_std"] = ctrl.std();
                    ms->metrics[key + ".control_increase_pct"] = ctrl_pct.mean();
                  }
                  return absl::OkStatus();
                },
                [&](const TopPerHeadMeanReplacement& t) -> absl::Status {
                  r.detail = absl::StrCat("top-", t.k, t.smallest ? " smallest" : "", " dims per head, ",
                                          t.post_rotary ? "post-rotary" : "pre-rotary", ", q and k, all layers",
                                          t.lambda ? absl::StrCat(", only > ", Fmt(*t.lambda), " x head mean") : "");
                  return NllPasses(
                      m, label, prompts, [&](model::HookSet* h) { analysis::AddTopPerHead(t, dims, h); }, &acc);
                },
                [&](const HeadAblation& ha) -> absl::Status {
                  r.detail = absl::StrCat(ha.heads.size(), " heads ",
                                          ha.replacement == Replacement::kZero ? "zeroed" : "mean-replaced");
                  return NllPasses(
                      m, label, prompts, [&](model::HookSet* h) { analysis::AddHeadAblation(ha, dims, h); }, &acc);
                },
                [&](const std::vector<ActivationEdit>& e) -> absl::Status {
                  r.detail = absl::StrCat(e.size(), " edits");
                  return NllPasses(
                      m, label, prompts, [&](model::HookSet* h) { analysis::AddActivationEdits(e, dims, h); }, &acc);
                },
            },
            iv.kind);
        RETURN_IF_ERROR(st);
        r.perplexity = acc.Perplexity(wt);
        r.mean_nll = acc.MeanNll(wt);
        r.num_targets = acc.num_targets();
        r.ratio_to_baseline = base_ppl > 0 ? r.perplexity / base_ppl : 0.0;
        ms->metrics[key] = r.perplexity;
        ms->metrics[key + ".ratio"] = r.ratio_to_baseline;
        const double pct = base_ppl > 0 ? (r.perplexity - base_ppl) / base_ppl * 100.0 : 0.0;
        ms->metrics[key + ".increase_pct"] = pct;
        if (!r.control_perplexities.empty())
          ms->metrics[key + ".massive_minus_random_pct"] = pct - ms->metrics[key + ".control_increase_pct"];
        Emit(r, ppl_out);
      }
    }
    ms->num_forward_passes = passes_this_model_;
    return absl::OkStatus();
  }

  void Emit(const PerplexityResult& r, std::vector<PerplexityResult>* out) {
    if (sink_) sink_->OnPerplexity(r);
    out->push_back(r);
  }

  // One pass over `prompts` with the hooks added by `add`, accumulating the NLL.
  absl::Status NllPasses(size_t m, const std::string& condition, const std::vector<std::vector<int32_t>>& prompts,
                         const std::function<void(model::HookSet*)>& add, analysis::NllAccumulator* acc) {
    const int32_t P = static_cast<int32_t>(prompts.size());
    for (int32_t p = 0; p < P; ++p) {
      model::HookSet hooks;
      add(&hooks);
      ASSIGN_OR_RETURN(at::Tensor nll, Forward(m, condition, p, P, prompts[p], &hooks, true, nullptr));
      acc->Add(nll);
    }
    return absl::OkStatus();
  }

  absl::Status IdentifyPasses(size_t m, const std::vector<std::vector<int32_t>>& prompts, analysis::QkIdentifier* id) {
    const int32_t P = static_cast<int32_t>(prompts.size());
    for (int32_t p = 0; p < P; ++p) {
      model::HookSet hooks;
      id->Register(&hooks);
      ASSIGN_OR_RETURN(at::Tensor unused, Forward(m, "identify", p, P, prompts[p], &hooks, false, nullptr));
      (void)unused;
    }
    return absl::OkStatus();
  }

  // One forward with progress, cancellation between layers and `on_layer` after each layer. Returns the target NLL
  // (undefined unless want_nll).
  absl::StatusOr<at::Tensor> Forward(size_t m, const std::string& condition, int32_t p, int32_t P,
                                     const std::vector<int32_t>& ids, const model::HookSet* hooks, bool want_nll,
                                     const std::function<void(int)>& on_layer) {
    RETURN_IF_ERROR(Cancelled());
    const ModelHandle& mh = models_[m];
    const int64_t L = mh.model->config().num_hidden_layers;
    ReportProgress(mh.name, condition, p, P, -1, L, /*force=*/p == 0);
    model::ForwardOptions o;
    o.hooks = hooks;
    o.return_logits = false;
    o.return_target_nll = want_nll;
    o.after_layer = [&](int l) -> absl::Status {
      if (on_layer) on_layer(l);
      ReportProgress(mh.name, condition, p, P, l, L, /*force=*/false);
      return Cancelled();
    };
    absl::StatusOr<model::ForwardResult> r = mh.model->Forward(ids, o);
    if (!r.ok()) return WithContext(r.status(), absl::StrCat("model ", mh.name, ", ", condition, ", prompt ", p));
    ++done_;
    ++passes_this_model_;
    return std::move(r->target_nll);
  }

  absl::Status Cancelled() const { return cancel_ ? cancel_() : absl::OkStatus(); }

  void ReportProgress(const std::string& model, const std::string& condition, int32_t p, int32_t P, int32_t layer,
                      int64_t L, bool force) {
    if (!sink_) return;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_progress_).count();
    // Prompt starts at most every 0.25 s (always for the first prompt of a condition); layers at most every 1 s.
    if (!force && since < (layer < 0 ? 0.25 : 1.0)) return;
    last_progress_ = now;
    Progress pr;
    const double within =
        layer < 0 ? 0.0 : static_cast<double>(layer + 1) / static_cast<double>(std::max<int64_t>(L, 1));
    pr.fraction =
        planned_ > 0 ? std::min(1.0, (static_cast<double>(done_) + within) / static_cast<double>(planned_)) : 0.0;
    pr.model = model;
    pr.condition = condition;
    pr.prompt = p;
    pr.num_prompts = P;
    pr.layer = layer;
    sink_->OnProgress(pr);
  }

  static std::vector<ComparisonRow> Compare(const std::vector<ModelSummary>& ms) {
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

  const JobSpec& spec_;
  const std::vector<ModelHandle>& models_;
  const RunLimits& limits_;
  EventSink* sink_;
  const CancelCheck& cancel_;
  const PerplexitySpec* ppl_ = nullptr;
  std::vector<std::string> labels_;
  std::vector<std::vector<std::vector<int32_t>>> prompts_;                        // [model][prompt]
  std::vector<std::vector<std::vector<std::vector<int32_t>>>> identify_prompts_;  // [model][intervention][prompt]
  int64_t planned_ = 0, done_ = 0;
  int32_t passes_this_model_ = 0;
  Clock::time_point last_progress_{};
};

}  // namespace

std::string InterventionLabel(const Intervention& iv) {
  if (!iv.label.empty()) return iv.label;
  return std::visit(Overloaded{[](const BosMlpAblation& b) -> std::string {
                                 if (b.layer) return absl::StrCat("bos_mlp@L", *b.layer);
                                 return b.spike_rule == SpikeRule::kArgmaxRatio ? "bos_mlp@spike" : "bos_mlp@jump";
                               },
                               [](const QkMassiveDisruption& q) -> std::string {
                                 std::string s = "qk_massive";
                                 if (!(q.q && q.k)) s = q.q ? "q_massive" : "k_massive";
                                 if (q.replacement == Replacement::kMean) s += "_mean";
                                 return s;
                               },
                               [](const TopPerHeadMeanReplacement& t) -> std::string {
                                 return absl::StrCat("top", t.k, "_per_head", t.smallest ? "_smallest" : "",
                                                     t.post_rotary ? "_post_rotary" : "");
                               },
                               [](const HeadAblation&) -> std::string { return "head_ablation"; },
                               [](const std::vector<ActivationEdit>&) -> std::string { return "edits"; }},
                    iv.kind);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ResolvePrompts(const Inputs& inputs, const ModelHandle& model,
                                                                 int64_t max_tokens, const RunLimits& limits) {
  std::vector<std::vector<int32_t>> out;
  auto cap = [&](size_t n) { return inputs.max_prompts > 0 ? std::min<size_t>(n, inputs.max_prompts) : n; };
  auto encode = [&](const std::vector<std::string>& texts) -> absl::Status {
    if (!model.tokenizer)
      return absl::FailedPreconditionError(absl::StrCat("model ", model.name, " has no tokenizer; use token_ids"));
    for (size_t i = 0; i < cap(texts.size()); ++i) out.push_back(model.tokenizer->Encode(texts[i], /*add_bos=*/true));
    return absl::OkStatus();
  };
  if (!inputs.texts.empty()) {
    RETURN_IF_ERROR(encode(inputs.texts));
  } else if (!inputs.token_ids.empty()) {
    for (size_t i = 0; i < cap(inputs.token_ids.size()); ++i) out.push_back(inputs.token_ids[i]);
  } else {
    ASSIGN_OR_RETURN(Dataset d, LoadDataset(inputs.dataset, limits.data_dir));
    RETURN_IF_ERROR(encode(d.prompts));
  }
  for (auto& ids : out)
    if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(max_tokens);
  return out;
}

absl::Status ValidateJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits) {
  if (spec.models.empty()) return Invalid("models", "at least one model is required");
  if (models.size() != spec.models.size())
    return Invalid("models", absl::StrCat(models.size(), " model handles for ", spec.models.size(), " model names"));
  for (size_t m = 0; m < models.size(); ++m) {
    if (!models[m].model)
      return absl::FailedPreconditionError(absl::StrCat("models[", m, "]: model ", spec.models[m], " is not loaded"));
    if (models[m].name != spec.models[m])
      return Invalid(absl::StrCat("models[", m, "]"),
                     absl::StrCat("handle \"", models[m].name, "\" does not match \"", spec.models[m], "\""));
  }
  if (spec.max_tokens < 0) return Invalid("max_tokens", absl::StrCat(spec.max_tokens, " < 0"));
  if (spec.max_tokens == 1) return Invalid("max_tokens", "must be >= 2 (BOS plus one token)");
  if (spec.max_tokens > limits.max_tokens_per_prompt)
    return Invalid("max_tokens", absl::StrCat(spec.max_tokens, " exceeds the server limit max_tokens_per_prompt=",
                                              limits.max_tokens_per_prompt));
  RETURN_IF_ERROR(ValidateInputs(spec.inputs, "inputs", models, limits));
  if (spec.analyses.empty()) return Invalid("analyses", "at least one analysis is required");
  std::set<std::string> kinds;
  for (size_t i = 0; i < spec.analyses.size(); ++i) {
    const std::string where = absl::StrCat("analyses[", i, "]");
    const char* kind = KindName(spec.analyses[i]);
    if (!kinds.insert(kind).second)
      return Invalid(where, absl::StrCat("a second ", kind, " analysis; a job takes at most one of each kind ",
                                         "(results have one slot per kind)"));
    RETURN_IF_ERROR(ValidateAnalysis(spec.analyses[i], where, models, limits));
  }
  return absl::OkStatus();
}

absl::StatusOr<Summary> RunJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits,
                               EventSink* sink, const CancelCheck& cancel) {
  RETURN_IF_ERROR(ValidateJob(spec, models, limits));
  c10::AutoGradMode no_grad(false);
  try {
    Runner r(spec, models, limits, sink, cancel);
    return r.Run();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("engine error: ", e.what()));
  }
}

}  // namespace sinkscope::job
