// Layer-major waves (see waves.h).
#include "common/job/waves.h"

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace sinkscope::job {
namespace {

absl::Status WithContext(const absl::Status& st, const std::string& ctx) {
  if (st.ok() || st.code() == absl::StatusCode::kCancelled || st.code() == absl::StatusCode::kDeadlineExceeded)
    return st;
  return absl::Status(st.code(), absl::StrCat(ctx, ": ", st.message()));
}

}  // namespace

void BuildWave(const std::string& model, const std::vector<std::vector<int32_t>>& prompts, const Pass* first,
               const Pass* last, const std::function<void(const analysis::PromptCtx&, model::HookSet*)>& reg,
               WaveInputs* out) {
  const size_t n = static_cast<size_t>(last - first);
  out->hooks.resize(n);
  out->forwards.resize(n);
  for (size_t k = 0; k < n; ++k) {
    const Pass& p = first[k];
    WaveForward& f = out->forwards[k];
    out->hooks[k].resize(p.num_prompts);  // sized once: f.hooks points into it
    for (int32_t i = 0; i < p.num_prompts; ++i) {
      const std::vector<int32_t>& prompt = prompts[p.first_prompt + i];
      out->ctx.push_back({p.first_prompt + i, static_cast<int64_t>(prompt.size())});
      reg(out->ctx.back(), &out->hooks[k][i]);
      f.ids.insert(f.ids.end(), prompt.begin(), prompt.end());
      f.lengths.push_back(static_cast<int64_t>(prompt.size()));
      f.hooks.push_back(&out->hooks[k][i]);
    }
    f.what = absl::StrCat("model ", model, ", baseline, ",
                          p.num_prompts == 1 ? absl::StrCat("prompt ", p.first_prompt)
                                             : absl::StrCat("prompts ", p.first_prompt, "-",
                                                            p.first_prompt + p.num_prompts - 1));
  }
}

std::vector<at::Tensor> SplitNll(const at::Tensor& nll, const std::vector<int64_t>& lengths) {
  if (lengths.size() == 1) return {nll};
  std::vector<int64_t> targets;
  for (int64_t n : lengths) targets.push_back(n - 1);
  return nll.split_with_sizes(targets);
}

model::ForwardOptions JobForwardOptions(const std::vector<int64_t>& lengths,
                                        const std::vector<const model::HookSet*>& hooks, bool want_nll,
                                        model::AttentionBatching attention) {
  model::ForwardOptions o;
  if (lengths.size() == 1) {
    o.hooks = hooks.empty() ? nullptr : hooks[0];
  } else {
    o.segments = lengths;
    o.segment_hooks = hooks;
  }
  o.return_logits = false;
  o.return_target_nll = want_nll;
  o.check_finite = true;
  o.attn_batching = attention;
  return o;
}

absl::StatusOr<std::vector<model::ForwardResult>> RunWave(const model::LlamaModel& model,
                                                          const std::vector<WaveForward>& forwards, bool want_nll,
                                                          model::AttentionBatching attention,
                                                          const WaveCallbacks& cb) {
  const int64_t L = model.config().num_hidden_layers;
  std::vector<model::ForwardRun> runs;
  runs.reserve(forwards.size());
  for (size_t k = 0; k < forwards.size(); ++k) {
    if (cb.before_forward) RETURN_IF_ERROR(cb.before_forward(k));
    const WaveForward& f = forwards[k];
    absl::StatusOr<model::ForwardRun> run =
        model.Begin(f.ids, JobForwardOptions(f.lengths, f.hooks, want_nll, attention));
    if (!run.ok()) return WithContext(run.status(), f.what);
    runs.push_back(std::move(*run));
  }
  std::vector<const at::Tensor*> entering(runs.size());
  for (int64_t l = 0; l < L; ++l) {
    if (cb.before_layer) {
      for (size_t k = 0; k < runs.size(); ++k) entering[k] = &runs[k].residual();
      cb.before_layer(static_cast<int>(l), entering);
    }
    for (size_t k = 0; k < runs.size(); ++k) {
      RETURN_IF_ERROR(WithContext(runs[k].RunLayers(l + 1), forwards[k].what));
      if (cb.after_forward_layer) RETURN_IF_ERROR(cb.after_forward_layer(k, static_cast<int>(l)));
    }
    if (cb.layer_done) cb.layer_done(static_cast<int>(l));
  }
  std::vector<model::ForwardResult> out;
  for (size_t k = 0; k < runs.size(); ++k) {
    absl::StatusOr<model::ForwardResult> r = runs[k].Finish();
    if (!r.ok()) return WithContext(r.status(), forwards[k].what);
    out.push_back(std::move(*r));
    if (cb.after_finish) cb.after_finish(k);
  }
  return out;
}

}  // namespace sinkscope::job
