// The engine's job runner: validates a JobSpec against the loaded models and runs it, streaming events.
// Torch-free header (the server includes it).
//
// Planning (docs/analyses.md "How a job runs"):
//   per model, in JobSpec.models order:
//     1. baseline pass: ONE forward per prompt serves every observational analysis (sink_rate, massive_values,
//        residual_stats, matrix_entropy, activation_stats), the baseline NLL of the perplexity analysis, the
//        residual statistics used for spike detection and the Q/K massive-dim identification on the job's
//        inputs. Per-layer results are emitted (EventSink::OnLayer) during the last prompt's forward, right after
//        each layer (the last layer after the forward when it is read after the final norm; layer -1 after it).
//     2. "identify" passes only for QkMassiveDisruption with its own identify_on prompts (no logits).
//     3. one pass per prompt per intervention condition (each control seed is a condition), NLL only.
//   Only one prompt's activations exist at a time; every accumulator is O(layers × heads × dims).
// Events: OnStarted, then OnProgress (at each prompt start, at most every ~1 s after a layer, 1.0 at the end),
// OnLayer, OnPerplexity (baseline as soon as the baseline pass ends, then each intervention), OnSummary last.
// Cancellation: `cancel` is called after every layer and between passes; its non-OK status ends RunJob with it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job/job_spec.h"

namespace sinkscope::model {
class LlamaModel;
}
namespace sinkscope::tokenizer {
class Tokenizer;
}

namespace sinkscope::job {

struct ModelHandle {
  std::string name;
  std::shared_ptr<const model::LlamaModel> model;
  // May be null for models used with token_ids inputs only (texts and datasets need it).
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
};

struct RunLimits {
  int32_t max_tokens_per_prompt = 4096;  // truncation length (BOS included) and upper bound of JobSpec.max_tokens
  int32_t max_prompts = 1000;            // prompts per job after Inputs.max_prompts
  std::string data_dir;                  // built-in dataset files (brown-heldout.txt)
};

// Cheap checks before queueing (no forward pass, no tokenisation). `models[i]` must be the handle of
// spec.models[i]. InvalidArgument / NotFound / FailedPrecondition with a message naming the field, e.g.
// "analyses[0].sink_rate.tau: 1.5 not in [0,1]".
absl::Status ValidateJob(const JobSpec& spec, const std::vector<ModelHandle>& models, const RunLimits& limits);

// Runs the job (calls ValidateJob first). `sink` may be null. Returns the summary (also sent to OnSummary), or the
// first error / the cancel status.
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
