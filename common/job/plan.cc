// BuildPlan: validation, prompt resolution and the ordered pass list (see plan.h). Torch-free.
#include "common/job/plan.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// Appends the passes over a prompt list: consecutive prompts packed greedily into forwards of at most
// `pack_tokens` tokens (in order, so accumulators see the prompts in the same order as one prompt per forward).
void AddPasses(Pass::Kind kind, int32_t model, int32_t intervention, int32_t control,
               const std::vector<std::vector<int32_t>>& prompts, int64_t pack_tokens, std::vector<Pass>* passes) {
  const int32_t n = static_cast<int32_t>(prompts.size());
  for (int32_t first = 0; first < n;) {
    int32_t count = 1;
    int64_t tokens = static_cast<int64_t>(prompts[first].size());
    while (first + count < n && tokens + static_cast<int64_t>(prompts[first + count].size()) <= pack_tokens)
      tokens += static_cast<int64_t>(prompts[first + count++].size());
    passes->push_back(Pass{kind, model, intervention, control, first, count});
    first += count;
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

  // Prompts per model: tokenised per model, cut to the job's token cap and the model's context.
  const int64_t max_tokens = plan.spec.max_tokens > 0 ? plan.spec.max_tokens : limits.max_tokens_per_prompt;
  for (ModelHandle& h : models) {
    ModelPlan mp;
    const int64_t cap = std::min<int64_t>(max_tokens, h.model->config().max_position_embeddings);
    ASSIGN_OR_RETURN(mp.prompts, Resolve(plan.spec.inputs, h, cap, &datasets, &mp.truncated));
    mp.identify_prompts.resize(num_iv);
    for (size_t j = 0; j < num_iv; ++j) {
      const auto* q = std::get_if<QkMassiveDisruption>(&ppl->interventions[j].kind);
      if (q && q->identify_on) {
        ASSIGN_OR_RETURN(mp.identify_prompts[j], Resolve(*q->identify_on, h, cap, &datasets, nullptr));
      }
    }
    mp.handle = std::move(h);
    plan.models.push_back(std::move(mp));
  }

  // Passes, in execution order (plan.h).
  for (size_t m = 0; m < plan.models.size(); ++m) {
    const ModelPlan& mp = plan.models[m];
    const int32_t mi = static_cast<int32_t>(m);
    const int64_t budget = limits.pack_tokens;
    AddPasses(Pass::Kind::kBaseline, mi, -1, -1, mp.prompts, budget, &plan.passes);
    for (size_t j = 0; j < num_iv; ++j) {
      const int32_t ji = static_cast<int32_t>(j);
      AddPasses(Pass::Kind::kIdentify, mi, ji, -1, mp.identify_prompts[j], budget, &plan.passes);
      AddPasses(Pass::Kind::kCondition, mi, ji, -1, mp.prompts, budget, &plan.passes);
      if (const auto* q = std::get_if<QkMassiveDisruption>(&ppl->interventions[j].kind))
        for (size_t c = 0; c < q->control_seeds.size(); ++c)
          AddPasses(Pass::Kind::kCondition, mi, ji, static_cast<int32_t>(c), mp.prompts, budget, &plan.passes);
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
  return plan;
}

absl::StatusOr<Summary> RunJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits,
                               EventSink* sink, const CancelCheck& cancel) {
  ASSIGN_OR_RETURN(const Plan plan, BuildPlan(spec, models, limits));
  return Execute(plan, sink, cancel);
}

}  // namespace sinkscope::job
