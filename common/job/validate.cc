// The rules of a JobSpec (see validate.h). Torch-free: geometry comes from the models' configs.
#include "common/job/validate.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/analysis/activation_stats.h"
#include "common/util/overloaded.h"
#include "common/model/hooks.h"
#include "common/model/llama.h"
#include "common/util/status_macros.h"

namespace sinkscope::job {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

bool Finite(double x) { return std::isfinite(x); }

// Runs `check` for every model; the first error wins.
absl::Status ForEachModel(const std::vector<ModelHandle>& models,
                          const std::function<absl::Status(const ModelHandle&, const model::LlamaConfig&)>& check) {
  for (const ModelHandle& m : models) RETURN_IF_ERROR(check(m, m.model->config()));
  return absl::OkStatus();
}

// A hook name that activation statistics or edits can use: valid for every model, with a feature axis.
absl::StatusOr<model::HookRef> CheckHook(const std::string& hook, const std::string& field,
                                         const std::vector<ModelHandle>& models) {
  model::HookRef ref;
  RETURN_IF_ERROR(ForEachModel(models, [&](const ModelHandle& m, const model::LlamaConfig& c) -> absl::Status {
    absl::StatusOr<model::HookRef> r = model::ParseHookName(hook, c.num_hidden_layers);
    if (!r.ok()) return Invalid(field, absl::StrCat(r.status().message(), " (model ", m.name, ")"));
    ref = *r;
    return absl::OkStatus();
  }));
  if (!ref.editable())
    return Invalid(field, absl::StrCat("\"", hook, "\" (attn.hook_pattern) is observe-only and has no feature axis; ",
                                       "use the sink_rate analysis for attention patterns"));
  return ref;
}

absl::Status ValidateInputs(const Inputs& in, const std::string& where, const std::vector<ModelHandle>& models,
                            const RunLimits& limits, DatasetCache* datasets) {
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
    absl::StatusOr<const Dataset*> d = datasets->Get(in.dataset);
    if (!d.ok()) return absl::Status(d.status().code(), absl::StrCat(where, ".dataset: ", d.status().message()));
    n = static_cast<int64_t>((*d)->prompts.size());
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

absl::Status ValidateEdits(const std::vector<ActivationEdit>& edits, const std::string& where,
                           const std::vector<ModelHandle>& models) {
  if (edits.empty()) return Invalid(where + ".edits", "empty list");
  for (size_t i = 0; i < edits.size(); ++i) {
    const ActivationEdit& e = edits[i];
    const std::string f = absl::StrCat(where, ".edits[", i, "]");
    if (e.hook.empty()) return Invalid(f + ".hook", "empty");
    ASSIGN_OR_RETURN(const model::HookRef ref, CheckHook(e.hook, f + ".hook", models));
    if (!Finite(e.value)) return Invalid(f + ".value", "not finite");
    if (!e.heads.empty() && !ref.per_head())
      return Invalid(f + ".heads",
                     absl::StrCat("\"", e.hook, "\" has no head axis (heads apply to hook_q/k/v/rot_q/rot_k/z)"));
    RETURN_IF_ERROR(ForEachModel(models, [&](const ModelHandle& m, const model::LlamaConfig& c) -> absl::Status {
      const int64_t H = model::HeadsOf(ref.layout, c), D = model::FeaturesOf(ref.layout, c);
      for (int32_t h : e.heads)
        if (h < 0 || h >= H) return Invalid(f + ".heads", absl::StrCat(h, " out of range [0, ", H, ") of model ", m.name));
      for (int32_t x : e.dims)
        if (x < 0 || x >= D) return Invalid(f + ".dims", absl::StrCat(x, " out of range [0, ", D, ") of model ", m.name));
      return absl::OkStatus();
    }));
  }
  return absl::OkStatus();
}

absl::Status ValidateIntervention(const Intervention& iv, const std::string& where,
                                  const std::vector<ModelHandle>& models, const RunLimits& limits,
                                  DatasetCache* datasets) {
  return std::visit(
      Overloaded{
          [&](const BosMlpAblation& b) -> absl::Status {
            if (!b.layer) return absl::OkStatus();
            return ForEachModel(models, [&](const ModelHandle& m, const model::LlamaConfig& c) -> absl::Status {
              if (*b.layer < 0 || *b.layer >= c.num_hidden_layers)
                return Invalid(where + ".bos_mlp.layer",
                               absl::StrCat(*b.layer, " out of range [0, ", c.num_hidden_layers, ") of model ", m.name));
              return absl::OkStatus();
            });
          },
          [&](const QkMassiveDisruption& q) -> absl::Status {
            if (!(q.lambda > 0) || !Finite(q.lambda))
              return Invalid(where + ".qk_massive.lambda", absl::StrCat(q.lambda, " must be > 0"));
            if (!q.q && !q.k) return Invalid(where + ".qk_massive", "neither q nor k selected");
            if (q.control_seeds.size() > 100)
              return Invalid(where + ".qk_massive.control_seeds", absl::StrCat(q.control_seeds.size(), " > 100 seeds"));
            if (q.identify_on)
              return ValidateInputs(*q.identify_on, where + ".qk_massive.identify_on", models, limits, datasets);
            return absl::OkStatus();
          },
          [&](const TopPerHeadMeanReplacement& t) -> absl::Status {
            if (t.lambda && (!(*t.lambda > 0) || !Finite(*t.lambda)))
              return Invalid(where + ".top_per_head.lambda", absl::StrCat(*t.lambda, " must be > 0"));
            return ForEachModel(models, [&](const ModelHandle& m, const model::LlamaConfig& c) -> absl::Status {
              if (t.k < 1 || t.k > c.head_dim)
                return Invalid(where + ".top_per_head.k",
                               absl::StrCat(t.k, " not in [1, head_dim=", c.head_dim, "] of model ", m.name));
              return absl::OkStatus();
            });
          },
          [&](const HeadAblation& h) -> absl::Status {
            if (h.heads.empty()) return Invalid(where + ".heads.heads", "empty list");
            return ForEachModel(models, [&](const ModelHandle& m, const model::LlamaConfig& c) -> absl::Status {
              for (size_t i = 0; i < h.heads.size(); ++i) {
                const std::string f = absl::StrCat(where, ".heads.heads[", i, "]");
                if (h.heads[i].layer < 0 || h.heads[i].layer >= c.num_hidden_layers)
                  return Invalid(f + ".layer", absl::StrCat(h.heads[i].layer, " out of range [0, ",
                                                            c.num_hidden_layers, ") of model ", m.name));
                if (h.heads[i].head < 0 || h.heads[i].head >= c.num_attention_heads)
                  return Invalid(f + ".head", absl::StrCat(h.heads[i].head, " out of range [0, ",
                                                           c.num_attention_heads, ") of model ", m.name));
              }
              return absl::OkStatus();
            });
          },
          [&](const std::vector<ActivationEdit>& edits) -> absl::Status {
            return ValidateEdits(edits, where, models);
          },
      },
      iv.kind);
}

absl::Status ValidatePerplexity(const PerplexitySpec& p, const std::string& where,
                                const std::vector<ModelHandle>& models, const RunLimits& limits,
                                DatasetCache* datasets) {
  std::set<std::string> labels;
  for (size_t j = 0; j < p.interventions.size(); ++j) {
    const std::string w = absl::StrCat(where, ".perplexity.interventions[", j, "]");
    RETURN_IF_ERROR(ValidateIntervention(p.interventions[j], w, models, limits, datasets));
    const std::string& label = p.interventions[j].label;
    if (label == "baseline") return Invalid(w + ".label", "\"baseline\" is reserved");
    if (!label.empty() && !labels.insert(label).second)
      return Invalid(w + ".label", absl::StrCat("duplicate label \"", label, "\""));
  }
  return absl::OkStatus();
}

absl::Status TopK(int32_t k, const std::string& field) {
  if (k < 1 || k > 64) return Invalid(field, absl::StrCat(k, " not in [1,64]"));
  return absl::OkStatus();
}

absl::Status ValidateAnalysis(const AnalysisSpec& a, const std::string& where, const std::vector<ModelHandle>& models,
                              const RunLimits& limits, DatasetCache* datasets) {
  return std::visit(
      Overloaded{
          [&](const SinkRateSpec& s) -> absl::Status {
            if (!(s.tau >= 0 && s.tau <= 1)) return Invalid(where + ".sink_rate.tau", absl::StrCat(s.tau, " not in [0,1]"));
            return absl::OkStatus();
          },
          [&](const MassiveValuesSpec& s) -> absl::Status {
            if (!(s.lambda > 0) || !Finite(s.lambda))
              return Invalid(where + ".massive_values.lambda", absl::StrCat(s.lambda, " must be > 0"));
            if (s.tensors.empty()) return Invalid(where + ".massive_values.tensors", "empty list");
            return TopK(s.top_k, where + ".massive_values.top_k");
          },
          [&](const ResidualStatsSpec&) -> absl::Status { return absl::OkStatus(); },
          [&](const MatrixEntropySpec&) -> absl::Status { return absl::OkStatus(); },
          [&](const PerplexitySpec& p) -> absl::Status {
            return ValidatePerplexity(p, where, models, limits, datasets);
          },
          [&](const ActivationStatsSpec& s) -> absl::Status {
            if (s.hooks.empty()) return Invalid(where + ".activation_stats.hooks", "empty list");
            RETURN_IF_ERROR(TopK(s.top_k, where + ".activation_stats.top_k"));
            for (size_t i = 0; i < s.hooks.size(); ++i) {
              const std::string f = absl::StrCat(where, ".activation_stats.hooks[", i, "]");
              // A "{L}" template is valid iff its layer-0 expansion is (every model has at least one layer).
              const std::vector<std::string> one = analysis::ExpandHooks({s.hooks[i]}, 1);
              if (one.empty()) return Invalid(f, "empty");
              RETURN_IF_ERROR(CheckHook(one[0], f, models).status());
            }
            return absl::OkStatus();
          },
      },
      a);
}

}  // namespace

absl::StatusOr<const Dataset*> DatasetCache::Get(const std::string& name) {
  auto it = loaded_.find(name);
  if (it == loaded_.end()) it = loaded_.emplace(name, LoadDataset(name, data_dir_)).first;
  if (!it->second.ok()) return it->second.status();
  return &*it->second;
}

absl::Status ValidateModelNames(const std::vector<std::string>& names) {
  if (names.empty()) return Invalid("models", "at least one model is required");
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i].empty()) return Invalid(absl::StrCat("models[", i, "]"), "empty name");
    for (size_t j = 0; j < i; ++j)
      if (names[j] == names[i]) return Invalid(absl::StrCat("models[", i, "]"), "duplicate '" + names[i] + "'");
  }
  return absl::OkStatus();
}

absl::Status ValidateJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits,
                         DatasetCache* datasets) {
  RETURN_IF_ERROR(ValidateModelNames(spec.models));
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
  RETURN_IF_ERROR(ValidateInputs(spec.inputs, "inputs", models, limits, datasets));
  if (spec.analyses.empty()) return Invalid("analyses", "at least one analysis is required");
  std::set<std::string> kinds;
  for (size_t i = 0; i < spec.analyses.size(); ++i) {
    const std::string where = absl::StrCat("analyses[", i, "]");
    const char* kind = KindName(spec.analyses[i]);
    if (!kinds.insert(kind).second)
      return Invalid(where, absl::StrCat("a second ", kind, " analysis; a job takes at most one of each kind ",
                                         "(results have one slot per kind)"));
    RETURN_IF_ERROR(ValidateAnalysis(spec.analyses[i], where, models, limits, datasets));
  }
  return absl::OkStatus();
}

absl::Status ValidateJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits) {
  DatasetCache datasets(limits.data_dir);
  return ValidateJob(spec, models, limits, &datasets);
}

}  // namespace sinkscope::job
