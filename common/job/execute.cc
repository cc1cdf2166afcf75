// Execute: runs a Plan's passes in order and streams events (see plan.h). Includes only the cheap
// <ATen/core/Tensor.h> (through the model and analysis headers); the tensor math lives in common/analysis/.
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/analysis/analysis.h"
#include "common/analysis/interventions.h"
#include "common/analysis/perplexity.h"
#include "common/job/conditions.h"
#include "common/job/observers.h"
#include "common/job/plan.h"
#include "common/job/prefix_reuse.h"
#include "common/job/waves.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/status_macros.h"

namespace sinkscope::job {
namespace {

using Clock = std::chrono::steady_clock;

// Re-wraps an error with context, keeping its code (Cancelled / DeadlineExceeded pass through unchanged).
absl::Status WithContext(const absl::Status& st, const std::string& ctx) {
  if (st.ok() || st.code() == absl::StatusCode::kCancelled || st.code() == absl::StatusCode::kDeadlineExceeded)
    return st;
  return absl::Status(st.code(), absl::StrCat(ctx, ": ", st.message()));
}

class Executor {
 public:
  Executor(const Plan& plan, EventSink* sink, const CancelCheck& cancel) : plan_(plan), sink_(sink), cancel_(cancel) {}

  absl::StatusOr<Summary> Run() {
    const auto t0 = Clock::now();
    if (sink_) {
      sink_->OnStarted(Started{static_cast<int32_t>(plan_.passes.size()),
                               static_cast<int32_t>(plan_.models[0].prompts.size())});
    }
    Summary summary;
    summary.seed = plan_.spec.seed;
    const std::vector<Pass>& passes = plan_.passes;
    // Models with no pass (no prompt) still get a summary entry.
    for (size_t m = 0, i = 0; m < plan_.models.size(); ++m) {
      size_t baseline_end = i;  // the model's baseline passes are [i, baseline_end), run layer-major in waves
      while (baseline_end < passes.size() && passes[baseline_end].model == static_cast<int32_t>(m) &&
             passes[baseline_end].kind == Pass::Kind::kBaseline)
        ++baseline_end;
      BeginModel(m, baseline_end > i && passes[i].wave == passes[baseline_end - 1].wave);
      if (baseline_end > i) RETURN_IF_ERROR(RunBaseline(i, baseline_end));
      for (i = baseline_end; i < passes.size() && passes[i].model == static_cast<int32_t>(m); ++i) {
        const Pass& p = passes[i];
        const Pass* next = i + 1 < passes.size() ? &passes[i + 1] : nullptr;
        const bool group_ends = next == nullptr || next->model != p.model || next->kind != p.kind ||
                                next->intervention != p.intervention || next->control != p.control;
        RETURN_IF_ERROR(RunPass(p, group_ends, next));
      }
      RETURN_IF_ERROR(EndModel(&summary));
    }
    summary.inputs_digest = plan_.inputs_digest;
    if (plan_.models.size() >= 2) summary.comparison = Compare(summary.models);
    summary.elapsed_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (sink_) {
      Progress p;
      p.fraction = 1.0;
      p.model = plan_.models.back().handle.name;
      p.condition = "done";
      p.layer = -1;
      sink_->OnProgress(p);
      sink_->OnSummary(summary);
    }
    return summary;
  }

 private:
  // ---- per model

  void BeginModel(size_t m, bool one_wave) {
    const ModelPlan& mp = plan_.models[m];
    const model::LlamaModel& model = *mp.handle.model;
    m_ = m;
    dims_ = analysis::ModelDims::From(model.config());
    ms_ = ModelSummary{};
    ms_.model = mp.handle.name;
    ms_.weights_digest = model.weights_digest();
    ms_.tokenizer_digest = mp.handle.tokenizer ? mp.handle.tokenizer->digest() : "";
    ms_.dtype = model.dtype();
    ms_.device = model.device();
    ms_.num_prompts = static_cast<int32_t>(mp.prompts.size());
    ms_.truncated_prompts = mp.truncated;
    for (const auto& p : mp.prompts) ms_.num_tokens += static_cast<int64_t>(p.size());
    // Host work in the background where the device can go on meanwhile: a GPU model (RunLimits::HostWork).
    obs_ = std::make_unique<Observers>(plan_, dims_, mp.background_host_work);
    prompt_ppl_.assign(mp.prompts.size(), {});
    base_ = analysis::NllAccumulator{};
    base_ppl_ = 0;
    passes_ = 0;
    layers_ = 0;
    keeper_ = std::make_unique<ResidualKeeper>(plan_, mp, model.config(), dims_, one_wave);
  }

  absl::Status EndModel(Summary* summary) {
    if (PerPrompt()) EmitPrompts();
    ms_.num_forward_passes = passes_;
    ms_.layers_computed = layers_;
    keeper_.reset();
    summary->models.push_back(std::move(ms_));
    summary->perplexity.insert(summary->perplexity.end(), ppl_.begin(), ppl_.end());
    ppl_.clear();
    return absl::OkStatus();
  }

  bool PerPrompt() const { return plan_.spec.per_prompt || plan_.spec.emit_token_ids; }

  // One PromptResult per prompt of the current model, in prompt order (JobSpec.per_prompt).
  void EmitPrompts() {
    const ModelPlan& mp = plan_.models[m_];
    for (size_t p = 0; p < mp.prompts.size(); ++p) {
      PromptResult r = obs_->Prompt(mp.handle.name, static_cast<int32_t>(p), mp.prompts[p], plan_.spec.emit_token_ids,
                                    static_cast<int32_t>(dims_.n_layers));
      r.perplexity = std::move(prompt_ppl_[p]);
      if (sink_) sink_->OnPrompt(r);
    }
  }

  // Records prompt `p`'s NLL under `condition` (JobSpec.per_prompt).
  void RecordPromptNll(int32_t p, const std::string& condition, const at::Tensor& nll) {
    if (!PerPrompt()) return;
    PromptPerplexity pp;
    pp.condition = condition;
    pp.num_targets = static_cast<int32_t>(nll.numel());
    pp.nll_sum = pp.num_targets > 0 ? nll.to(at::kDouble).sum().item<double>() : 0.0;
    pp.perplexity = pp.num_targets > 0 ? std::exp(pp.nll_sum / pp.num_targets) : 0.0;
    prompt_ppl_[p].push_back(std::move(pp));
  }

  // Layer l's result over the first `done` prompts (partial until the last wave has passed the layer).
  void EmitLayer(int32_t l, int32_t done) {
    std::optional<LayerResult> lr =
        obs_->Layer(plan_.models[m_].handle.name, l, done, static_cast<int32_t>(plan_.models[m_].prompts.size()));
    if (lr && sink_) sink_->OnLayer(*lr);
  }

  // ---- passes

  absl::Status RunPass(const Pass& p, bool group_ends, const Pass* next) {
    const ModelPlan& mp = plan_.models[p.model];
    switch (p.kind) {
      case Pass::Kind::kBaseline:
        return absl::InternalError("baseline passes run in waves (RunBaseline)");
      case Pass::Kind::kIdentify: {
        if (p.first_prompt == 0) own_ident_ = std::make_unique<analysis::QkIdentifier>(dims_);
        model::HookSet hooks;  // one set serves every prompt of the pack: the identifier sums over prompts
        own_ident_->Register(&hooks);
        return Forward("identify", p, mp.identify_prompts[p.intervention],
                       std::vector<const model::HookSet*>(p.num_prompts, &hooks), false, 0, at::Tensor())
            .status();
      }
      case Pass::Kind::kCondition: {
        if (p.first_prompt == 0) RETURN_IF_ERROR(BeginCondition(p));
        model::HookSet hooks;  // an intervention does the same to every prompt
        cond_.install(&hooks);
        // Prefix reuse: layers below the first one the intervention touches are the clean pass's.
        at::Tensor start_x;
        const int32_t start = keeper_->Find(hooks.FirstLayer(dims_.n_layers), p, &start_x);
        ASSIGN_OR_RETURN(std::vector<at::Tensor> nll,
                         Forward(cond_.name, p, mp.prompts, std::vector<const model::HookSet*>(p.num_prompts, &hooks),
                                 true, start, start_x));
        for (size_t i = 0; i < nll.size(); ++i) {
          cond_acc_.Add(nll[i]);
          RecordPromptNll(p.first_prompt + static_cast<int32_t>(i), cond_.name, nll[i]);
        }
        if (group_ends) EndCondition(p, next);
        return absl::OkStatus();
      }
    }
    return absl::InternalError("unknown pass kind");
  }

  // The model's baseline passes [i, end), wave by wave.
  absl::Status RunBaseline(size_t i, size_t end) {
    const std::vector<Pass>& passes = plan_.passes;
    for (size_t w = i; w < end;) {
      size_t w_end = w;
      while (w_end < end && passes[w_end].wave == passes[w].wave) ++w_end;
      RETURN_IF_ERROR(RunBaselineWave(w, w_end));
      w = w_end;
    }
    EndBaseline();
    return absl::OkStatus();
  }

  // One wave, layer-major (waves.h): one hook set per prompt (the analyses' observers are per prompt), deferred work
  // flushed after every forward's layer as in a prompt-major run, and layer l streamed once the wave has left it
  // (the last layer after the final norms when an analysis reads it there). With background host work
  // (Observers::overlapped), layer l streams once the wave has left layer l + 1: its host work ran meanwhile.
  absl::Status RunBaselineWave(size_t w, size_t w_end) {
    const ModelPlan& mp = plan_.models[m_];
    const std::vector<Pass>& passes = plan_.passes;
    const int32_t P = static_cast<int32_t>(mp.prompts.size()), L = static_cast<int32_t>(dims_.n_layers);
    const size_t n = w_end - w;
    WaveInputs in;
    BuildWave(mp.handle.name, mp.prompts, &passes[w], &passes[w] + n,
              [this](const analysis::PromptCtx& c, model::HookSet* h) { obs_->Register(c, h); }, &in);
    std::vector<const Pass*> packs;
    for (size_t k = 0; k < n; ++k) packs.push_back(&passes[w + k]);
    const int32_t done = passes[w_end - 1].first_prompt + passes[w_end - 1].num_prompts;
    WaveCallbacks cb;
    cb.before_forward = [&](size_t k) -> absl::Status {
      RETURN_IF_ERROR(Cancelled());
      ReportProgress("baseline", passes[w + k].first_prompt, P, -1, L, /*force=*/passes[w + k].first_prompt == 0);
      return absl::OkStatus();
    };
    cb.before_layer = [&](int l, const std::vector<const at::Tensor*>& entering) {
      keeper_->BeforeLayer(l, packs, entering);
    };
    // A wave works on all its prompts at once: its layers report the last of them.
    cb.after_forward_layer = [&](size_t, int l) -> absl::Status {
      obs_->Flush();
      done_ += 1.0 / std::max(L, 1);
      ReportProgress("baseline", done - 1, P, l, L, /*force=*/false);
      return Cancelled();
    };
    int32_t emitted = -1;  // this wave's layers streamed so far
    auto emit_through = [&](int32_t last) {
      obs_->Settle(last);
      for (int32_t e = emitted + 1; e <= last; ++e)
        if (!(obs_->last_after_norm && e == L - 1)) EmitLayer(e, done);
      emitted = std::max(emitted, last);
    };
    cb.layer_done = [&](int l) {
      emit_through(obs_->overlapped ? l - 1 : l);
      keeper_->AfterLayer(l, obs_->resid, obs_->ident.get());
    };
    cb.after_finish = [&](size_t) { obs_->Flush(); };
    const bool want_nll = plan_.perplexity() != nullptr;
    ASSIGN_OR_RETURN(std::vector<model::ForwardResult> results,
                     RunWave(*mp.handle.model, in.forwards, want_nll, mp.attention, cb));
    emit_through(L - 1);
    for (const auto& a : obs_->emitted)
      RETURN_IF_ERROR(WithContext(a->status(), absl::StrCat("model ", mp.handle.name)));
    for (const analysis::PromptCtx& c : in.ctx)
      for (const auto& a : obs_->emitted) a->EndPrompt(c);
    if (want_nll)
      for (size_t k = 0; k < n; ++k) {
        const std::vector<at::Tensor> nll = SplitNll(results[k].target_nll, in.forwards[k].lengths);
        for (size_t i = 0; i < nll.size(); ++i) {
          base_.Add(nll[i]);
          RecordPromptNll(packs[k]->first_prompt + static_cast<int32_t>(i), "baseline", nll[i]);
        }
      }
    if (obs_->last_after_norm) EmitLayer(L - 1, done);
    passes_ += static_cast<int32_t>(n);
    layers_ += static_cast<int64_t>(n) * L;
    return absl::OkStatus();
  }

  // After the last baseline pass: deferred layers, per-model metrics, the baseline perplexity.
  void EndBaseline() {
    if (obs_->model_level) EmitLayer(-1, static_cast<int32_t>(plan_.models[m_].prompts.size()));
    keeper_->EndBaseline(obs_->resid);
    for (const auto& a : obs_->emitted) a->Summarize(&ms_.metrics);
    if (obs_->hidden_resid) obs_->hidden_resid->Summarize(&ms_.metrics);
    const PerplexitySpec* ppl = plan_.perplexity();
    if (ppl == nullptr) return;
    const bool wt = ppl->weight_by_t;
    base_ppl_ = base_.Perplexity(wt);
    PerplexityResult b;
    b.model = plan_.models[m_].handle.name;
    b.condition = "baseline";
    b.perplexity = base_ppl_;
    b.mean_nll = base_.MeanNll(wt);
    b.num_targets = base_.num_targets();
    b.ratio_to_baseline = 1.0;
    b.detail = absl::StrCat(base_.num_prompts(), " prompts, ", base_.num_targets(), " targets, ",
                            wt ? "weighted by T" : "weighted by T-1");
    Emit(b);
    ms_.metrics["perplexity.baseline"] = base_ppl_;
  }

  // First pass of an intervention (control -1) or of one of its random controls.
  absl::Status BeginCondition(const Pass& p) {
    const Intervention& iv = plan_.perplexity()->interventions[p.intervention];
    const std::string& label = plan_.labels[p.intervention];
    cond_acc_ = analysis::NllAccumulator{};
    if (p.control < 0) {
      result_ = PerplexityResult{};
      result_.model = plan_.models[m_].handle.name;
      result_.condition = label;
      controls_ = analysis::StatAcc{};
      controls_pct_ = analysis::StatAcc{};
      const analysis::QkIdentifier* ident =
          own_ident_ ? own_ident_.get() : obs_->ident.get();  // identify_on passes ran just before, if any
      ASSIGN_OR_RETURN(cond_, ResolveCondition(iv, label, dims_, obs_->resid, ident, &result_, &ms_.metrics));
      own_ident_.reset();
    } else {
      cond_ = ControlCondition(cond_, std::get<QkMassiveDisruption>(iv.kind), label,
                               std::get<QkMassiveDisruption>(iv.kind).control_seeds[p.control], dims_);
    }
    return absl::OkStatus();
  }

  // Last pass of a condition: a control adds to the intervention's control statistics; the intervention's result
  // is emitted once its last control (if any) is done.
  void EndCondition(const Pass& p, const Pass* next) {
    const bool wt = plan_.perplexity()->weight_by_t;
    const double ppl = cond_acc_.Perplexity(wt);
    const std::string key = "perplexity." + plan_.labels[p.intervention];
    if (p.control < 0) {
      result_.perplexity = ppl;
      result_.mean_nll = cond_acc_.MeanNll(wt);
      result_.num_targets = cond_acc_.num_targets();
    } else {
      result_.control_perplexities.push_back(ppl);
      controls_.Add(ppl);
      controls_pct_.Add(base_ppl_ > 0 ? (ppl - base_ppl_) / base_ppl_ * 100.0 : 0.0);
    }
    const bool more_controls = next != nullptr && next->model == p.model && next->kind == Pass::Kind::kCondition &&
                               next->intervention == p.intervention;
    if (more_controls) return;
    FinishConditionResult(key, base_ppl_, controls_, controls_pct_, &result_, &ms_.metrics);
    Emit(result_);
  }

  void Emit(const PerplexityResult& r) {
    if (sink_) sink_->OnPerplexity(r);
    ppl_.push_back(r);
  }

  // One forward over the pass's prompts (packed when there are several) with progress, cancellation between
  // layers and `on_layer` after each layer. hooks[i] are prompt i's. Returns each prompt's target NLL (empty
  // unless want_nll).
  absl::StatusOr<std::vector<at::Tensor>> Forward(const std::string& condition, const Pass& pass,
                                                  const std::vector<std::vector<int32_t>>& prompts,
                                                  const std::vector<const model::HookSet*>& hooks, bool want_nll,
                                                  int32_t start_layer, const at::Tensor& start_residual) {
    RETURN_IF_ERROR(Cancelled());
    const ModelHandle& mh = plan_.models[m_].handle;
    const int64_t L = mh.model->config().num_hidden_layers;
    const int32_t p = pass.first_prompt, P = static_cast<int32_t>(prompts.size());
    ReportProgress(condition, p, P, -1, L, /*force=*/p == 0);
    std::vector<int32_t> ids;
    std::vector<int64_t> lens;
    for (int32_t i = 0; i < pass.num_prompts; ++i) {
      const std::vector<int32_t>& prompt = prompts[p + i];
      ids.insert(ids.end(), prompt.begin(), prompt.end());
      lens.push_back(static_cast<int64_t>(prompt.size()));
    }
    model::ForwardOptions o = JobForwardOptions(lens, hooks, want_nll, plan_.models[m_].attention);
    o.start_layer = start_layer;
    o.start_residual = start_residual;
    // A packed forward works on all its prompts at once: its layers report the last of them (prompt k of N = the
    // job is through prompt k once this forward ends).
    const int32_t last = p + pass.num_prompts - 1;
    o.after_layer = [&](int l) -> absl::Status {
      ReportProgress(condition, last, P, l, L, /*force=*/false);
      return Cancelled();
    };
    absl::StatusOr<model::ForwardResult> r = mh.model->Forward(ids, o);
    if (!r.ok()) {
      const std::string which =
          lens.size() == 1 ? absl::StrCat("prompt ", p) : absl::StrCat("prompts ", p, "-", p + pass.num_prompts - 1);
      return WithContext(r.status(), absl::StrCat("model ", mh.name, ", ", condition, ", ", which));
    }
    ++done_;
    ++passes_;
    layers_ += L - start_layer;
    if (!want_nll) return std::vector<at::Tensor>();
    return SplitNll(r->target_nll, lens);
  }

  absl::Status Cancelled() const { return cancel_ ? cancel_() : absl::OkStatus(); }

  void ReportProgress(const std::string& condition, int32_t p, int32_t P, int32_t layer, int64_t L, bool force) {
    if (!sink_) return;
    const auto now = Clock::now();
    const double since = std::chrono::duration<double>(now - last_progress_).count();
    // Prompt starts at most every 0.25 s (always for the first prompt of a condition); layers at most every 1 s.
    if (!force && since < (layer < 0 ? 0.25 : 1.0)) return;
    last_progress_ = now;
    const double planned = static_cast<double>(plan_.passes.size());
    const double within =
        layer < 0 || L <= 0 ? 0.0 : static_cast<double>(layer + 1) / static_cast<double>(std::max<int64_t>(L, 1));
    Progress pr;
    pr.fraction = planned > 0 ? std::min(1.0, (done_ + within) / planned) : 0.0;
    pr.model = plan_.models[m_].handle.name;
    pr.condition = condition;
    pr.prompt = p;
    pr.num_prompts = P;
    pr.layer = layer;
    sink_->OnProgress(pr);
  }

  const Plan& plan_;
  EventSink* sink_;
  const CancelCheck& cancel_;
  // Current model.
  size_t m_ = 0;
  analysis::ModelDims dims_;
  ModelSummary ms_;
  std::unique_ptr<Observers> obs_;
  analysis::NllAccumulator base_;
  double base_ppl_ = 0;
  int32_t passes_ = 0;
  std::vector<PerplexityResult> ppl_;
  std::vector<std::vector<PromptPerplexity>> prompt_ppl_;  // per prompt, in condition order (JobSpec.per_prompt)
  // Current intervention / condition.
  std::unique_ptr<analysis::QkIdentifier> own_ident_;
  Condition cond_;
  analysis::NllAccumulator cond_acc_;
  PerplexityResult result_;
  analysis::StatAcc controls_, controls_pct_;
  double done_ = 0;  // forwards done (a layer-major wave adds 1/L per forward and layer)
  int64_t layers_ = 0;
  std::unique_ptr<ResidualKeeper> keeper_;
  Clock::time_point last_progress_{};
};

}  // namespace

absl::StatusOr<Summary> Execute(const Plan& plan, EventSink* sink, const CancelCheck& cancel) {
  c10::AutoGradMode no_grad(false);
  try {
    return Executor(plan, sink, cancel).Run();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("engine error: ", e.what()));
  }
}

}  // namespace sinkscope::job
