// A job's plan: built once at submission, stored with the job, executed by a worker. Torch-free header.
//
//   JobSpec ──BuildPlan──▶ Plan ──Execute──▶ events (EventSink) + Summary
//
// BuildPlan validates the spec against the models (the only place where range rules live, one message per rule),
// resolves every prompt to token ids (texts and datasets tokenised per model, truncated), labels the
// interventions and lists the forward passes in the order Execute runs them. Nothing in a Plan is recomputed
// later: the pass count streamed in Started is plan.passes.size(), and the inputs digest is fixed here.
//
// Pass order per model (JobSpec.models order):
//   1. kBaseline, one per pack of prompts: ONE forward serves every observational analysis, the baseline NLL, the
//      residual statistics used for spike detection and the Q/K massive-dim identification on the job's inputs.
//      Baseline passes run layer-major in waves (Pass.wave): every pass of a wave goes through layer l before any
//      goes through layer l+1, so layer l's result is streamed as soon as the wave leaves it.
//   2. for each perplexity intervention, in spec order:
//        kIdentify passes (QkMassiveDisruption with its own identify_on prompts), then
//        kCondition passes, one per prompt: the intervention itself, then each random control seed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job/job_spec.h"
#include "common/job/model_handle.h"
#include "common/job/validate.h"
#include "common/model/attention_groups.h"

namespace sinkscope::job {

// One forward of one model over a contiguous range of prompts (one prompt unless prompts are packed).
struct Pass {
  enum class Kind { kBaseline, kIdentify, kCondition };
  Kind kind = Kind::kBaseline;
  int32_t model = 0;          // index into Plan.models
  int32_t intervention = -1;  // index into Plan::perplexity()->interventions (kIdentify, kCondition)
  int32_t control = -1;       // kCondition: -1 = the intervention itself, k = its control_seeds[k]
  int32_t first_prompt = 0;   // into the pass's prompt list (ModelPlan.prompts, or .identify_prompts[intervention])
  int32_t num_prompts = 1;
  int32_t wave = 0;  // kBaseline: the wave it runs in (consecutive passes, run layer-major; see Plan.waves)
};

struct ModelPlan {
  ModelHandle handle;
  std::vector<std::vector<int32_t>> prompts;                        // the job's inputs, as token ids
  std::vector<std::vector<std::vector<int32_t>>> identify_prompts;  // per intervention (empty unless identify_on)
  int32_t truncated = 0;                                            // prompts cut to the token cap
  // ResidualMemoryBudget of the model (0 = none): its baseline passes are grouped into waves whose carried residuals
  // fit it; what its largest wave leaves is where clean residuals are kept for prefix reuse.
  int64_t residual_budget = 0;
  // RunLimits::attention and host_work, resolved for the model's device.
  model::AttentionBatching attention = model::AttentionBatching::kEqualLength;
  bool background_host_work = false;
};

// What a job will cost, known before it is queued (admission control hangs here).
struct Estimate {
  int64_t forwards = 0;         // = passes.size()
  int64_t tokens = 0;           // tokens through all forwards
  int64_t longest_prompt = 0;   // tokens of the longest prompt of any model
};

struct Plan {
  JobSpec spec;                     // validated; every default applied (job_spec.h holds the defaults)
  int32_t perplexity_index = -1;    // index of the PerplexitySpec in spec.analyses, or -1
  std::vector<std::string> labels;  // per perplexity intervention: unique condition label ("bos_mlp@spike", ...)
  std::vector<ModelPlan> models;    // spec.models order
  std::vector<Pass> passes;         // execution order (see the file comment)
  std::string inputs_digest;        // SHA-256 over model names and every prompt's ids
  Estimate estimate;

  const PerplexitySpec* perplexity() const;  // null when the job has no perplexity analysis
};

// Validates `spec` against `models` (models[i] is the handle of spec.models[i]) and plans it. Errors:
// InvalidArgument / NotFound / FailedPrecondition with a message naming the field, e.g.
// "analyses[0].sink_rate.tau: 1.5 not in [0,1]".
absl::StatusOr<Plan> BuildPlan(JobSpec spec, std::vector<ModelHandle> models, const RunLimits& limits);

// Runs the plan's passes in order, streaming events to `sink` (may be null); `cancel` is checked after every
// layer and between passes. Returns the summary (also sent to OnSummary), or the first error / the cancel status.
absl::StatusOr<Summary> Execute(const Plan& plan, EventSink* sink, const CancelCheck& cancel);

// BuildPlan + Execute, for tests, benches and tools that run a job in-process.
absl::StatusOr<Summary> RunJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits,
                               EventSink* sink, const CancelCheck& cancel);

// The prompts of `inputs` as token ids for one model: tokenised with BOS (texts, datasets) or verbatim (token_ids),
// first Inputs.max_prompts prompts, each truncated to `max_tokens` tokens.
absl::StatusOr<std::vector<std::vector<int32_t>>> ResolvePrompts(const Inputs& inputs, const ModelHandle& model,
                                                                 int64_t max_tokens, const RunLimits& limits);

// Label of an intervention: its own label, else a generated one ("bos_mlp@spike", "bos_mlp@jump", "bos_mlp@L3",
// "qk_massive", "qk_massive_mean", "top1_per_head", "top1_per_head_smallest", "head_ablation", "edits").
std::string InterventionLabel(const Intervention& iv);

}  // namespace sinkscope::job
