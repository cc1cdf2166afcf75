#include "client/records.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/format.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

namespace {

// Builds the records of one event; each helper appends one kind.
class Builder {
 public:
  explicit Builder(std::vector<Record>* out) : out_(out) {}

  Record& Add(const std::string& kind, const std::string& model, const std::string& metric, double value) {
    Record r;
    r.kind = kind;
    r.model = model;
    r.condition = condition_;
    r.prompt = prompt_;
    r.layer = layer_;
    r.metric = metric;
    r.value = value;
    out_->push_back(std::move(r));
    return out_->back();
  }
  Record& Text(const std::string& kind, const std::string& model, const std::string& metric, const std::string& text) {
    Record& r = Add(kind, model, metric, 0);
    r.text = text;
    r.is_text = true;
    return r;
  }
  // mean, .std and .n of a Stat.
  void Stat(const std::string& kind, const std::string& model, const std::string& metric, const v1::Stat& s) {
    Add(kind, model, metric, s.mean());
    Add(kind, model, metric + ".std", s.std());
    Add(kind, model, metric + ".n", s.n());
  }

  std::string condition_;
  std::optional<int> prompt_;
  std::optional<int> layer_;

 private:
  std::vector<Record>* out_;
};

void LayerRecords(const v1::LayerResult& r, std::vector<std::string>* tensors, Builder* b) {
  b->condition_ = "baseline";  // observational analyses read the unablated (baseline) forward
  b->layer_ = r.layer();
  const std::string& m = r.model();
  if (r.has_sink_rate()) {
    const auto& s = r.sink_rate();
    b->Stat("layer", m, "sink_rate", s.sink_rate());
    b->Add("layer", m, "tau", s.tau());
    for (int h = 0; h < s.head_scores_size(); ++h) b->Add("head", m, "head_score", s.head_scores(h)).head = h;
  }
  if (r.has_residual_stats()) {
    const auto& s = r.residual_stats();
    b->Stat("layer", m, "bos_norm", s.bos_norm());
    b->Stat("layer", m, "mean_other_norm", s.mean_other_norm());
    b->Stat("layer", m, "bos_ratio", s.ratio());
    b->Add("layer", m, "residual.post_final_norm", s.post_final_norm());
  }
  if (r.has_matrix_entropy()) {
    const auto& s = r.matrix_entropy();
    b->Stat("layer", m, "entropy", s.entropy());
    b->Stat("layer", m, "anisotropy", s.anisotropy());
    if (s.normalized_entropy().n() > 0) b->Stat("layer", m, "normalized_entropy", s.normalized_entropy());
    b->Add("layer", m, "entropy.post_final_norm", s.post_final_norm());
  }
  if (r.has_massive_values()) {
    const auto& s = r.massive_values();
    tensors->clear();
    for (const auto& t : s.tensors()) {
      const std::string p = absl::StrCat("massive.", TensorName(t.tensor()), ".");
      tensors->push_back(TensorName(t.tensor()));
      b->Stat("layer", m, p + "count", t.count());
      b->Add("layer", m, p + "threshold", t.threshold());
      b->Add("layer", m, p + "gini", t.gini());
      for (int i = 0; i < t.top_size(); ++i) {
        const std::string q = absl::StrCat(p, "top", i + 1, ".");
        b->Add("layer", m, q + "head", t.top(i).head());
        b->Add("layer", m, q + "dim", t.top(i).dim());
        b->Add("layer", m, q + "norm", t.top(i).value());
      }
    }
    b->Add("layer", m, "massive.lambda", s.lambda());
    b->Add("layer", m, "massive.post_rotary", s.post_rotary());
  }
  if (r.has_activation_stats()) {
    for (const auto& e : r.activation_stats().entries()) {
      const std::string p = absl::StrCat(e.hook(), ".", PositionName(e.positions()), ".");
      b->Add("layer", m, p + "count", static_cast<double>(e.count()));
      b->Add("layer", m, p + "mean", e.mean());
      b->Add("layer", m, p + "std", e.std());
      b->Add("layer", m, p + "max_abs", e.max_abs());
      b->Add("layer", m, p + "mean_norm", e.mean_norm());
      b->Add("layer", m, p + "max_norm", e.max_norm());
      for (int i = 0; i < e.top_dims_size(); ++i) {
        const std::string q = absl::StrCat(p, "top", i + 1, ".");
        b->Add("layer", m, q + "dim", e.top_dims(i));
        if (i < e.top_values_size()) b->Add("layer", m, q + "value", e.top_values(i));
      }
    }
  }
}

void PerplexityRecords(const v1::PerplexityResult& r, Builder* b) {
  b->condition_ = r.condition();
  const std::string& m = r.model();
  b->Add("perplexity", m, "perplexity", r.perplexity());
  b->Add("perplexity", m, "mean_nll", r.mean_nll());
  b->Add("perplexity", m, "num_targets", static_cast<double>(r.num_targets()));
  b->Add("perplexity", m, "ratio_to_baseline", r.ratio_to_baseline());
  b->Add("perplexity", m, "resolved_layer", r.resolved_layer());
  b->Add("perplexity", m, "disrupted_dims", r.disrupted_dims());
  if (r.control_perplexities_size() > 0) {
    b->Stat("perplexity", m, "control", r.control());
    for (int i = 0; i < r.control_perplexities_size(); ++i)
      b->Add("perplexity", m, absl::StrCat("control_perplexity.", i + 1), r.control_perplexities(i));
  }
  if (!r.detail().empty()) b->Text("provenance", m, "detail", r.detail());
}

void SummaryRecords(const v1::Summary& s, Builder* b) {
  b->condition_.clear();
  b->Text("provenance", "", "inputs_digest", s.inputs_digest());
  b->Add("provenance", "", "seed", static_cast<double>(s.seed()));
  b->Text("provenance", "", "server_version", s.server_version());
  b->Add("provenance", "", "elapsed_seconds", s.elapsed_seconds());
  if (s.cached()) b->Text("provenance", "", "cached_from", s.cached_from());
  for (const auto& m : s.models()) {
    std::map<std::string, double> sorted(m.metrics().begin(), m.metrics().end());  // maps have no fixed order
    for (const auto& [k, v] : sorted) b->Add("summary", m.model(), k, v);
    b->Text("provenance", m.model(), "weights_digest", m.weights_digest());
    b->Text("provenance", m.model(), "tokenizer_digest", m.tokenizer_digest());
    b->Text("provenance", m.model(), "dtype", m.dtype());
    b->Text("provenance", m.model(), "device", m.device());
    b->Add("provenance", m.model(), "num_prompts", m.num_prompts());
    b->Add("provenance", m.model(), "num_tokens", static_cast<double>(m.num_tokens()));
    b->Add("provenance", m.model(), "num_forward_passes", m.num_forward_passes());
    b->Add("provenance", m.model(), "truncated_prompts", m.truncated_prompts());
  }
  for (const auto& row : s.comparison()) {
    for (int i = 1; i < s.models_size() && i < row.values_size(); ++i) {
      const std::string& model = s.models(i).model();
      if (i < row.diffs_size()) b->Add("comparison", model, row.metric() + ".diff", row.diffs(i));
      if (i < row.ratios_size() && RatioMeaningful(row.metric()) && row.values(0) != 0)
        b->Add("comparison", model, row.metric() + ".ratio", row.ratios(i));
    }
  }
}

void PromptRecords(const v1::PromptResult& p, const std::vector<std::string>& tensors, Builder* b) {
  const std::string& m = p.model();
  b->prompt_ = p.prompt();
  b->condition_.clear();
  b->Add("prompt", m, "num_tokens", p.num_tokens());
  if (p.token_ids_size() > 0) b->Text("prompt", m, "token_ids", absl::StrJoin(p.token_ids(), " "));
  b->condition_ = "baseline";
  for (const auto& l : p.layers()) {
    b->layer_ = l.layer();
    if (l.has_sink_rate()) b->Add("prompt_layer", m, "sink_rate", l.sink_rate());
    for (int h = 0; h < l.head_scores_size(); ++h) b->Add("prompt_head", m, "head_score", l.head_scores(h)).head = h;
    if (l.has_bos_norm()) b->Add("prompt_layer", m, "bos_norm", l.bos_norm());
    if (l.has_mean_other_norm()) b->Add("prompt_layer", m, "mean_other_norm", l.mean_other_norm());
    if (l.has_bos_ratio()) b->Add("prompt_layer", m, "bos_ratio", l.bos_ratio());
    if (l.has_entropy()) b->Add("prompt_layer", m, "entropy", l.entropy());
    if (l.has_anisotropy()) b->Add("prompt_layer", m, "anisotropy", l.anisotropy());
    for (int i = 0; i < l.massive_counts_size(); ++i) {
      static const char* kDefault[] = {"q", "k", "v"};
      const std::string t = i < static_cast<int>(tensors.size()) ? tensors[i] : i < 3 ? kDefault[i] : std::to_string(i);
      b->Add("prompt_layer", m, absl::StrCat("massive.", t, ".count"), l.massive_counts(i));
    }
  }
  b->layer_.reset();
  for (const auto& c : p.perplexity()) {
    b->condition_ = c.condition();
    b->Add("prompt_perplexity", m, "nll_sum", c.nll_sum());
    b->Add("prompt_perplexity", m, "num_targets", c.num_targets());
    b->Add("prompt_perplexity", m, "perplexity", c.perplexity());
  }
}

}  // namespace

const char* LongCsvHeader() { return "job_id,kind,model,condition,prompt,layer,head,metric,value,text"; }

std::vector<std::string> LongCsvFields(const std::string& job_id, const Record& r) {
  auto opt = [](const std::optional<int>& v) { return v ? std::to_string(*v) : std::string(); };
  return {job_id,
          r.kind,
          r.model,
          r.condition,
          opt(r.prompt),
          opt(r.layer),
          opt(r.head),
          r.metric,
          r.is_text ? "" : Exact(r.value),
          r.is_text ? r.text : ""};
}

bool RatioMeaningful(const std::string& metric) {
  // Layer indices (bos_spike_layer.*, *_layer, *.layer), percentages (*_pct) and signed differences have no
  // meaningful ratio: "−103.28" for two percentages of opposite sign says nothing.
  return !(absl::StrContains(metric, "layer") || absl::EndsWith(metric, "_pct") || absl::EndsWith(metric, ".diff"));
}

const char* TensorName(v1::QkvTensor t) {
  switch (t) {
    case v1::QKV_TENSOR_Q: return "q";
    case v1::QKV_TENSOR_K: return "k";
    case v1::QKV_TENSOR_V: return "v";
    default: return "unspecified";
  }
}

const char* PositionName(v1::PositionClass p) {
  switch (p) {
    case v1::POSITION_CLASS_BOS: return "bos";
    case v1::POSITION_CLASS_REST: return "rest";
    case v1::POSITION_CLASS_ALL: return "all";
    default: return "unspecified";
  }
}

const char* StateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_QUEUED: return "QUEUED";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    case v1::JOB_STATE_INTERRUPTED: return "INTERRUPTED";
    default: return "UNSPECIFIED";
  }
}

std::vector<Record> Flattener::Flatten(const v1::JobEvent& ev) {
  std::vector<Record> out;
  Builder b(&out);
  switch (ev.event_case()) {
    case v1::JobEvent::kStarted:
      b.Add("job", "", "planned_passes", ev.started().planned_passes());
      b.Add("job", "", "num_prompts", ev.started().num_prompts());
      break;
    case v1::JobEvent::kLayer:  // a partial layer (an early wave) is superseded by the layer's final event
      if (!ev.layer().partial()) LayerRecords(ev.layer(), &tensors_[ev.layer().model()], &b);
      break;
    case v1::JobEvent::kPerplexity: PerplexityRecords(ev.perplexity(), &b); break;
    case v1::JobEvent::kSummary: SummaryRecords(ev.summary(), &b); break;
    case v1::JobEvent::kPrompt: PromptRecords(ev.prompt(), tensors_[ev.prompt().model()], &b); break;
    case v1::JobEvent::kFinished:
      b.Text("state", "", "state", StateName(ev.finished().state()));
      if (ev.finished().has_error()) {
        b.Add("state", "", "error_code", ev.finished().error().code());
        b.Text("state", "", "error_message", ev.finished().error().message());
      }
      break;
    default: break;
  }
  return out;
}

}  // namespace sinkscope::client
