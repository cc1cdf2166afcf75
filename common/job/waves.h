// Layer-major execution of one wave of packed forwards (internal to common/job, used by execute.cc): every forward
// of the wave goes through layer l before any goes through layer l+1, on residual streams carried between layers
// (model::ForwardRun). Each forward sees exactly what it would see run alone (same packing, same hooks in the same
// order per prompt), so every accumulator observes the same prompts in the same order per layer as a prompt-major
// run: the numbers do not move, they only become final sooner.
#ifndef SINKSCOPE_COMMON_JOB_WAVES_H_
#define SINKSCOPE_COMMON_JOB_WAVES_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/analysis/analysis.h"
#include "common/job/plan.h"
#include "common/model/llama.h"

namespace sinkscope::job {

// One packed forward of the wave: its prompts' ids back to back, their lengths and hook sets (one per prompt).
struct WaveForward {
  std::vector<int32_t> ids;
  std::vector<int64_t> lengths;
  std::vector<const model::HookSet*> hooks;
  std::string what;  // error context, e.g. "model tiny-rope, baseline, prompts 0-7"
};

// The forwards of baseline passes [first, last) of one model over `prompts`, with one hook set per prompt, each
// filled by `reg` (the analyses' observers) in prompt order. `ctx` lists the prompts in that order.
struct WaveInputs {
  std::vector<std::vector<model::HookSet>> hooks;  // per forward, per prompt (forwards[k].hooks point into it)
  std::vector<analysis::PromptCtx> ctx;
  std::vector<WaveForward> forwards;
};
void BuildWave(const std::string& model, const std::vector<std::vector<int32_t>>& prompts, const Pass* first,
               const Pass* last, const std::function<void(const analysis::PromptCtx&, model::HookSet*)>& reg,
               WaveInputs* out);

// Each prompt's target NLLs (T - 1 of them) from a (packed) forward's concatenated ones.
std::vector<at::Tensor> SplitNll(const at::Tensor& nll, const std::vector<int64_t>& lengths);

struct WaveCallbacks {
  // Before forward k is begun (embedded); a non-OK status (cancellation) stops the wave.
  std::function<absl::Status(size_t k)> before_forward;
  // Before the wave runs layer l: the residual entering l of every forward (kept by prefix reuse if wanted).
  std::function<void(int l, const std::vector<const at::Tensor*>& entering)> before_layer;
  // After forward k has run layer l (flush deferred work, progress, cancellation).
  std::function<absl::Status(size_t k, int l)> after_forward_layer;
  // After every forward of the wave has run layer l: layer l's accumulators have seen the whole wave.
  std::function<void(int l)> layer_done;
  // After forward k's final norm and head (ln_final hooks have run).
  std::function<void(size_t k)> after_finish;
};

// A job's forward over prompts of these lengths, each with its hook set (`hooks` may be empty: none): no logits, the
// target NLL when want_nll, NaN/Inf checked after every layer (a job fails naming the layer rather than reporting
// plausible zeros), attention grouped by `attention`.
model::ForwardOptions JobForwardOptions(const std::vector<int64_t>& lengths,
                                        const std::vector<const model::HookSet*>& hooks, bool want_nll,
                                        model::AttentionBatching attention);

// Runs the wave, each forward's attention grouped by `attention`; returns each forward's ForwardResult (target_nll
// when want_nll). Errors carry the forward's `what`; cancellation statuses pass through unchanged.
absl::StatusOr<std::vector<model::ForwardResult>> RunWave(const model::LlamaModel& model,
                                                          const std::vector<WaveForward>& forwards, bool want_nll,
                                                          model::AttentionBatching attention,
                                                          const WaveCallbacks& cb);

}  // namespace sinkscope::job

#endif  // SINKSCOPE_COMMON_JOB_WAVES_H_
