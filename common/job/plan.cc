// BuildPlan: validation, prompt resolution and the ordered pass list (see plan.h). Torch-free.
#include "common/job/plan.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/job/packing.h"
#include "common/job/validate.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/overloaded.h"
#include "common/util/sha256.h"
#include "common/util/status_macros.h"

namespace sinkscope::job {
namespace {

// The prompts of `inputs` for one model: texts and datasets tokenised with BOS, token ids verbatim; the first
// Inputs.max_prompts prompts, each cut to `max_tokens` tokens (counted in *truncated).
absl::StatusOr<std::vector<std::vector<int32_t>>> Resolve(const Inputs& inputs, const ModelHandle& model,
                                                          int64_t max_tokens, DatasetCache* datasets,
                                                          int32_t* truncated) {
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
    ASSIGN_OR_RETURN(const Dataset* d, datasets->Get(inputs.dataset));
    RETURN_IF_ERROR(encode(d->prompts));
  }
  for (auto& ids : out)
    if (max_tokens > 0 && static_cast<int64_t>(ids.size()) > max_tokens) {
      ids.resize(max_tokens);
      if (truncated) ++*truncated;
    }
  return out;
}

// A prompt longer than the model's context is refused unless the job asked to cut it (then it is cut and counted):
// silently cutting would report numbers for text the user did not send.
absl::Status FitContext(std::vector<std::vector<int32_t>>* prompts, const ModelHandle& h, bool truncate,
                        const std::string& where, int32_t* truncated) {
  const int64_t context = h.model->config().max_position_embeddings;
  for (size_t i = 0; i < prompts->size(); ++i) {
    std::vector<int32_t>& ids = (*prompts)[i];
    if (static_cast<int64_t>(ids.size()) <= context) continue;
    if (!truncate)
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": prompt ", i, " has ", ids.size(), " tokens, more than model ", h.name,
          "'s context (max_position_embeddings=", context, "); set truncate_to_context (or max_tokens) to cut it"));
    ids.resize(context);
    if (truncated) ++*truncated;
  }
  return absl::OkStatus();
}

// Each edit position must exist in at least one prompt of every model (−T ≤ p < T for the longest prompt): an edit
// that touches nothing would quietly report the baseline as the intervention's result. Shorter prompts that lack
// the position are left unedited at it (the study's prompts differ in length).
absl::Status CheckEditPositions(const Plan& plan) {
  const PerplexitySpec* ppl = plan.perplexity();
  if (ppl == nullptr) return absl::OkStatus();
  for (size_t j = 0; j < ppl->interventions.size(); ++j) {
    const auto* edits = std::get_if<std::vector<ActivationEdit>>(&ppl->interventions[j].kind);
    if (edits == nullptr) continue;
    for (size_t e = 0; e < edits->size(); ++e)
      for (int32_t p : (*edits)[e].positions)
        for (const ModelPlan& mp : plan.models) {
          // A position applies to the prompts long enough to have it (prompts differ in length); one that no
          // prompt has would silently do nothing.
          int64_t longest = 0;
          for (const auto& ids : mp.prompts) longest = std::max<int64_t>(longest, static_cast<int64_t>(ids.size()));
          if (p >= -longest && p < longest) continue;
          return absl::InvalidArgumentError(absl::StrCat(
              "analyses[", plan.perplexity_index, "].perplexity.interventions[", j, "].edits[", e, "].positions: ", p,
              " is outside every prompt of model ", mp.handle.name, " (the longest has ", longest, " tokens)"));
        }
  }
  return absl::OkStatus();
}

// Bytes per element of a model's compute dtype.
int64_t ElementBytes(const ModelHandle& h) {
  const std::string dt = h.model->dtype();
  return dt == "float64" ? 8 : (dt == "float32" ? 4 : 2);
}

std::string InputsDigest(const std::vector<ModelPlan>& models) {
  util::Sha256 h;
  for (const ModelPlan& m : models) {
    h.Update(m.handle.name);
    h.Update("\n");
    for (const auto& ids : m.prompts) {
      h.Update(absl::StrJoin(ids, ","));
      h.Update("\n");
    }
  }
  return h.HexDigest();
}

// Unique condition labels: a generated label that repeats gets "#2", "#3", ... (explicit labels are unique by
// validation).
std::vector<std::string> Labels(const PerplexitySpec* ppl) {
  std::vector<std::string> labels;
  if (ppl == nullptr) return labels;
  std::set<std::string> used;
  for (const Intervention& iv : ppl->interventions) {
    std::string base = InterventionLabel(iv), label = base;
    for (int k = 2; used.count(label); ++k) label = absl::StrCat(base, "#", k);
    used.insert(label);
    labels.push_back(label);
  }
  return labels;
}

// Appends the passes over a prompt list, packed under the budget (packing.h).
absl::Status AddPasses(Pass::Kind kind, int32_t model, int32_t intervention, int32_t control,
                       const std::vector<std::vector<int32_t>>& prompts, const ModelHandle& h, const PackBudget& budget,
                       std::vector<Pass>* passes) {
  std::vector<int64_t> lengths;
  for (const auto& p : prompts) lengths.push_back(static_cast<int64_t>(p.size()));
  std::vector<std::pair<int32_t, int32_t>> packs;
  absl::Status st = PackPrompts(h.model->config(), lengths, ElementBytes(h), budget, &packs);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat("model ", h.name, ": ", st.message()));
  for (const auto& [first, count] : packs) passes->push_back(Pass{kind, model, intervention, control, first, count});
  return absl::OkStatus();
}

// Groups the model's baseline passes passes[first..] into waves: consecutive passes whose carried residuals
// (ResidualBytes) fit `budget` together; a pass that alone exceeds it runs as a wave of its own (its forward
// memory is the pack budget's business). budget <= 0: one wave.
void AssignWaves(const ModelHandle& h, const std::vector<std::vector<int32_t>>& prompts, int64_t budget,
                 size_t first, std::vector<Pass>* passes) {
  int32_t wave = 0;
  int64_t held = 0;
  for (size_t i = first; i < passes->size(); ++i) {
    Pass& p = (*passes)[i];
    int64_t tokens = 0;
    for (int32_t k = 0; k < p.num_prompts; ++k) tokens += static_cast<int64_t>(prompts[p.first_prompt + k].size());
    const int64_t bytes = ResidualBytes(h.model->config(), tokens, ElementBytes(h));
    if (budget > 0 && held > 0 && held + bytes > budget) ++wave, held = 0;
    held += bytes;
    p.wave = wave;
  }
}

}  // namespace

const PerplexitySpec* Plan::perplexity() const {
  return perplexity_index < 0 ? nullptr : &std::get<PerplexitySpec>(spec.analyses[perplexity_index]);
}

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
  DatasetCache datasets(limits.data_dir);
  return Resolve(inputs, model, max_tokens, &datasets, nullptr);
}

absl::StatusOr<Plan> BuildPlan(JobSpec spec, std::vector<ModelHandle> models, const RunLimits& limits) {
  DatasetCache datasets(limits.data_dir);
  RETURN_IF_ERROR(ValidateJob(spec, models, limits, &datasets));
  Plan plan;
  plan.spec = std::move(spec);
  for (size_t i = 0; i < plan.spec.analyses.size(); ++i)
    if (std::holds_alternative<PerplexitySpec>(plan.spec.analyses[i])) plan.perplexity_index = static_cast<int32_t>(i);
  const PerplexitySpec* ppl = plan.perplexity();
  plan.labels = Labels(ppl);
  const size_t num_iv = plan.labels.size();

  // Prompts per model: tokenised per model, cut to the job's (or the server's) max_tokens, fitted to the context.
  const int64_t max_tokens = plan.spec.max_tokens > 0 ? plan.spec.max_tokens : limits.max_tokens_per_prompt;
  for (ModelHandle& h : models) {
    ModelPlan mp;
    ASSIGN_OR_RETURN(mp.prompts, Resolve(plan.spec.inputs, h, max_tokens, &datasets, &mp.truncated));
    RETURN_IF_ERROR(FitContext(&mp.prompts, h, plan.spec.truncate_to_context, "inputs", &mp.truncated));
    mp.identify_prompts.resize(num_iv);
    for (size_t j = 0; j < num_iv; ++j) {
      const auto* q = std::get_if<QkMassiveDisruption>(&ppl->interventions[j].kind);
      if (q && q->identify_on) {
        ASSIGN_OR_RETURN(mp.identify_prompts[j], Resolve(*q->identify_on, h, max_tokens, &datasets, nullptr));
        RETURN_IF_ERROR(FitContext(&mp.identify_prompts[j], h, plan.spec.truncate_to_context,
                                   absl::StrCat("interventions[", j, "].qk_massive.identify_on"), nullptr));
      }
    }
    mp.handle = std::move(h);
    plan.models.push_back(std::move(mp));
  }
  RETURN_IF_ERROR(CheckEditPositions(plan));

  // Passes, in execution order (plan.h).
  for (size_t m = 0; m < plan.models.size(); ++m) {
    ModelPlan& mp = plan.models[m];
    using Attention = RunLimits::Attention;
    using HostWork = RunLimits::HostWork;
    const bool gpu = mp.handle.model->device() != "cpu";
    const bool pad = limits.attention == Attention::kAuto ? gpu : limits.attention == Attention::kPadded;
    mp.attention = pad ? model::AttentionBatching::kPadded : model::AttentionBatching::kEqualLength;
    mp.background_host_work = limits.host_work == HostWork::kAuto ? gpu : limits.host_work == HostWork::kBackground;
    const PackBudget budget{limits.pack_tokens, ForwardMemoryBudget(mp.handle, limits), mp.attention};
    mp.residual_budget = ResidualMemoryBudget(mp.handle, limits);
    const int32_t mi = static_cast<int32_t>(m);
    auto add = [&](Pass::Kind kind, int32_t j, int32_t c, const std::vector<std::vector<int32_t>>& prompts) {
      return AddPasses(kind, mi, j, c, prompts, mp.handle, budget, &plan.passes);
    };
    const size_t first_baseline = plan.passes.size();
    RETURN_IF_ERROR(add(Pass::Kind::kBaseline, -1, -1, mp.prompts));
    AssignWaves(mp.handle, mp.prompts, mp.residual_budget, first_baseline, &plan.passes);
    for (size_t j = 0; j < num_iv; ++j) {
      const int32_t ji = static_cast<int32_t>(j);
      RETURN_IF_ERROR(add(Pass::Kind::kIdentify, ji, -1, mp.identify_prompts[j]));
      RETURN_IF_ERROR(add(Pass::Kind::kCondition, ji, -1, mp.prompts));
      if (const auto* q = std::get_if<QkMassiveDisruption>(&ppl->interventions[j].kind))
        for (size_t c = 0; c < q->control_seeds.size(); ++c)
          RETURN_IF_ERROR(add(Pass::Kind::kCondition, ji, static_cast<int32_t>(c), mp.prompts));
    }
  }

  plan.inputs_digest = InputsDigest(plan.models);
  plan.estimate.forwards = static_cast<int64_t>(plan.passes.size());
  for (const Pass& p : plan.passes) {
    const ModelPlan& mp = plan.models[p.model];
    const auto& list = p.kind == Pass::Kind::kIdentify ? mp.identify_prompts[p.intervention] : mp.prompts;
    for (int32_t i = 0; i < p.num_prompts; ++i) {
      const int64_t n = static_cast<int64_t>(list[p.first_prompt + i].size());
      plan.estimate.tokens += n;
      plan.estimate.longest_prompt = std::max(plan.estimate.longest_prompt, n);
    }
  }
  // Work caps: a job that would run for hours is refused before it takes a queue slot.
  if (plan.estimate.forwards > limits.max_planned_passes)
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job plans ", plan.estimate.forwards, " forward passes, more than the server's max_planned_passes=",
        limits.max_planned_passes, " (use fewer prompts, conditions or control seeds, or split the job)"));
  if (plan.estimate.tokens > limits.max_tokens_per_job)
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job runs ", plan.estimate.tokens, " tokens through its forwards, more than the server's "
        "max_tokens_per_job=", limits.max_tokens_per_job, " (use fewer or shorter prompts, or split the job)"));
  return plan;
}

absl::StatusOr<Summary> RunJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits,
                               EventSink* sink, const CancelCheck& cancel) {
  ASSIGN_OR_RETURN(const Plan plan, BuildPlan(spec, models, limits));
  return Execute(plan, sink, cancel);
}

}  // namespace sinkscope::job
