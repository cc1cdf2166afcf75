#include "client/render.h"

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>

#include <cmath>
#include <iomanip>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

namespace {

std::string Num(double v) {
  if (std::isnan(v)) return "nan";
  if (v == std::floor(v) && std::fabs(v) < 1e9) return absl::StrFormat("%.0f", v);
  const double a = std::fabs(v);
  if (a != 0 && (a < 1e-3 || a >= 1e6)) return absl::StrFormat("%.4g", v);
  return absl::StrFormat("%.4f", v);
}

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

const char* TensorName(v1::QkvTensor t) {
  switch (t) {
    case v1::QKV_TENSOR_Q: return "q";
    case v1::QKV_TENSOR_K: return "k";
    case v1::QKV_TENSOR_V: return "v";
    default: return "?";
  }
}

const char* PosName(v1::PositionClass p) {
  switch (p) {
    case v1::POSITION_CLASS_BOS: return "bos";
    case v1::POSITION_CLASS_REST: return "rest";
    case v1::POSITION_CLASS_ALL: return "all";
    default: return "?";
  }
}

void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size(), 0);
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size(); ++i) out << (i ? "  " : "") << std::left << std::setw(static_cast<int>(w[i])) << r[i];
    out << "\n";
  };
  line(header);
  std::vector<std::string> sep;
  for (size_t x : w) sep.push_back(std::string(x, '-'));
  line(sep);
  for (const auto& r : rows) line(r);
}

// The list commands' table or CSV (header as is, fields quoted where needed); JSON is per message, not rows.
void PrintRows(std::ostream& out, Format f, const std::vector<std::string>& header,
               std::vector<std::vector<std::string>> rows) {
  if (f == Format::kCsv) {
    out << absl::StrJoin(header, ",") << "\n";
    for (auto& row : rows) {
      for (auto& c : row) c = CsvField(c);
      out << absl::StrJoin(row, ",") << "\n";
    }
    return;
  }
  PrintTable(out, header, rows);
}

// JSON format of the list commands: one message per line.
template <typename Messages>
void PrintJsonLines(std::ostream& out, const Messages& messages) {
  for (const auto& m : messages) out << ToJson(m) << "\n";
}

// Protobuf maps iterate in no fixed order; sort metrics by name so output is stable.
std::map<std::string, double> SortedMetrics(const v1::ModelSummary& m) {
  return std::map<std::string, double>(m.metrics().begin(), m.metrics().end());
}

std::string Percent(double fraction) { return absl::StrFormat("%.0f%%", 100 * fraction); }

// Streamed layer tables cannot measure rows they have not seen: columns are as wide as their name, at least 10.
int ColumnWidth(const std::string& name) { return std::max<int>(10, static_cast<int>(name.size())); }

}  // namespace

const char* StateName(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_QUEUED: return "QUEUED";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
  }
}

std::string ToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.add_whitespace = false;
  std::string s;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

std::vector<std::pair<std::string, double>> FlattenLayer(const v1::LayerResult& r) {
  std::vector<std::pair<std::string, double>> out;
  if (r.has_sink_rate()) {
    out.emplace_back("sink_rate", r.sink_rate().sink_rate().mean());
    out.emplace_back("sink_rate.std", r.sink_rate().sink_rate().std());
  }
  if (r.has_residual_stats()) {
    out.emplace_back("bos_norm", r.residual_stats().bos_norm().mean());
    out.emplace_back("other_norm", r.residual_stats().mean_other_norm().mean());
    out.emplace_back("bos_ratio", r.residual_stats().ratio().mean());
  }
  if (r.has_matrix_entropy()) {
    out.emplace_back("entropy", r.matrix_entropy().entropy().mean());
    out.emplace_back("anisotropy", r.matrix_entropy().anisotropy().mean());
    if (r.matrix_entropy().normalized_entropy().n() > 0)
      out.emplace_back("entropy.norm", r.matrix_entropy().normalized_entropy().mean());
  }
  if (r.has_massive_values()) {
    for (const auto& t : r.massive_values().tensors()) {
      out.emplace_back(absl::StrCat("massive.", TensorName(t.tensor())), t.count().mean());
      if (!t.top().empty()) out.emplace_back(absl::StrCat("top.", TensorName(t.tensor())), t.top(0).value());
    }
  }
  if (r.has_activation_stats()) {
    for (const auto& e : r.activation_stats().entries()) {
      const std::string k = absl::StrCat(e.hook(), "[", PosName(e.positions()), "]");
      out.emplace_back(k + ".mean_norm", e.mean_norm());
      out.emplace_back(k + ".max_abs", e.max_abs());
    }
  }
  return out;
}

void EventRenderer::Render(const v1::JobEvent& ev) {
  if (f_ == Format::kJson) {
    out_ << ToJson(ev) << "\n" << std::flush;
    return;
  }
  switch (ev.event_case()) {
    case v1::JobEvent::kAccepted:
      if (f_ == Format::kTable)
        out_ << "job " << ev.job_id() << " accepted (queue position " << ev.accepted().queue_position() << ")\n";
      break;
    case v1::JobEvent::kStarted:
      if (f_ == Format::kTable)
        out_ << "started: " << ev.started().num_prompts() << " prompt(s), " << ev.started().planned_passes()
             << " forward pass(es) planned\n";
      break;
    case v1::JobEvent::kProgress:
      if (progress_ && f_ == Format::kTable)
        std::cerr << absl::StrFormat("\r[%5.1f%%] %s %s prompt %d/%d   ", 100 * ev.progress().fraction(),
                                     ev.progress().model(), ev.progress().condition(), ev.progress().prompt() + 1,
                                     ev.progress().num_prompts())
                  << std::flush;
      break;
    case v1::JobEvent::kLayer: Layer(ev.layer()); break;
    case v1::JobEvent::kPerplexity: Perplexity(ev.perplexity()); break;
    case v1::JobEvent::kSummary: Summary(ev.summary()); break;
    case v1::JobEvent::kFinished:
      ClearProgress();
      if (f_ == Format::kTable) {
        out_ << "finished: " << StateName(ev.finished().state());
        if (ev.finished().has_error()) out_ << " (" << ev.finished().error().message() << ")";
        out_ << "\n";
      } else {
        CsvRow("finished", "", "", "state", StateName(ev.finished().state()));
      }
      break;
    default: break;
  }
  out_ << std::flush;
}

void EventRenderer::ClearProgress() {
  if (progress_) std::cerr << "\r" << std::string(60, ' ') << "\r";  // blank the '\r' progress line before output
}

void EventRenderer::CsvHeader() {
  if (!csv_header_) out_ << "kind,model,layer,metric,value\n";
  csv_header_ = true;
}

void EventRenderer::CsvRow(const std::string& kind, const std::string& model, const std::string& layer,
                           const std::string& metric, const std::string& value) {
  out_ << kind << "," << CsvField(model) << "," << layer << "," << CsvField(metric) << "," << value << "\n";
}

void EventRenderer::Layer(const v1::LayerResult& r) {
  const auto flat = FlattenLayer(r);
  if (f_ == Format::kCsv) {
    CsvHeader();
    for (const auto& [k, v] : flat) CsvRow("layer", r.model(), std::to_string(r.layer()), k, Num(v));
    return;
  }
  ClearProgress();
  std::vector<std::string> cols;
  for (const auto& kv : flat)
    if (kv.first.find(".std") == std::string::npos) cols.push_back(kv.first);
  // A new header whenever the model or the set of columns changes (a paired job streams both models' layers).
  if (r.model() != last_table_model_ || cols != table_cols_) {
    last_table_model_ = r.model();
    table_cols_ = cols;
    out_ << "\n" << r.model() << "\n";
    out_ << std::left << std::setw(6) << "layer";
    for (const auto& c : cols) out_ << "  " << std::setw(ColumnWidth(c)) << c;
    out_ << "\n";
  }
  out_ << std::left << std::setw(6) << r.layer();
  for (const auto& c : cols) {
    double v = 0;
    for (const auto& kv : flat)
      if (kv.first == c) v = kv.second;
    out_ << "  " << std::setw(ColumnWidth(c)) << Num(v);
  }
  out_ << "\n";
}

void EventRenderer::Perplexity(const v1::PerplexityResult& r) {
  if (f_ == Format::kCsv) {
    CsvHeader();
    CsvRow("perplexity", r.model(), "", r.condition() + ".perplexity", Num(r.perplexity()));
    CsvRow("perplexity", r.model(), "", r.condition() + ".ratio", Num(r.ratio_to_baseline()));
    if (r.control_perplexities_size() > 0)
      CsvRow("perplexity", r.model(), "", r.condition() + ".control_mean", Num(r.control().mean()));
    return;
  }
  ClearProgress();
  if (!ppl_header_) {
    out_ << "\nperplexity\n";
    ppl_header_ = true;
  }
  out_ << "  " << r.model() << "  " << r.condition() << ": " << Num(r.perplexity());
  if (r.condition() != "baseline") out_ << "  (x" << Num(r.ratio_to_baseline()) << " vs baseline)";
  if (r.control_perplexities_size() > 0)
    out_ << "  control " << Num(r.control().mean()) << " ± " << Num(r.control().std());
  if (!r.detail().empty()) out_ << "  [" << r.detail() << "]";
  out_ << "\n";
}

void EventRenderer::Summary(const v1::Summary& s) {
  if (f_ == Format::kCsv) {
    for (const auto& m : s.models())
      for (const auto& [k, v] : SortedMetrics(m)) CsvRow("summary", m.model(), "", k, Num(v));
    return;
  }
  if (s.comparison_size() > 0) {
    std::vector<std::string> header = {"metric"};
    for (const auto& m : s.models()) header.push_back(m.model());
    for (int i = 1; i < s.models_size(); ++i) {
      header.push_back("diff(" + s.models(i).model() + ")");
      header.push_back("ratio(" + s.models(i).model() + ")");
    }
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : s.comparison()) {
      std::vector<std::string> row = {r.metric()};
      for (double v : r.values()) row.push_back(Num(v));
      for (int i = 1; i < r.values_size(); ++i) {
        row.push_back(i < r.diffs_size() ? Num(r.diffs(i)) : "");
        row.push_back(i < r.ratios_size() ? Num(r.ratios(i)) : "");
      }
      rows.push_back(std::move(row));
    }
    out_ << "\ncomparison\n";
    PrintTable(out_, header, rows);
  } else {
    for (const auto& m : s.models()) {
      out_ << "\nsummary " << m.model() << "\n";
      std::vector<std::vector<std::string>> rows;
      for (const auto& [k, v] : SortedMetrics(m)) rows.push_back({k, Num(v)});
      PrintTable(out_, {"metric", "value"}, rows);
    }
  }
  out_ << "\nprovenance\n";
  for (const auto& m : s.models())
    out_ << "  " << m.model() << ": weights " << m.weights_digest().substr(0, 12) << ", tokenizer "
         << m.tokenizer_digest().substr(0, 12) << ", " << m.dtype() << " on " << m.device() << ", "
         << m.num_prompts() << " prompts, " << m.num_tokens() << " tokens, " << m.num_forward_passes()
         << " forward passes\n";
  out_ << "  inputs " << s.inputs_digest().substr(0, 12) << ", seed " << s.seed() << ", server "
       << s.server_version() << ", " << absl::StrFormat("%.2f", s.elapsed_seconds()) << " s\n";
}

void RenderModels(const v1::ListModelsResponse& r, Format f, std::ostream& out) {
  if (f == Format::kJson) return PrintJsonLines(out, r.models());
  std::vector<std::string> header = {"name", "state", "positional", "layers", "d_model", "heads", "kv", "params",
                                     "dtype", "device", "weights"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : r.models()) {
    const std::string state = v1::ModelState_Name(m.state()).substr(std::string("MODEL_STATE_").size());
    rows.push_back({m.name(), state,
                    m.positional_scheme() == v1::POSITIONAL_SCHEME_ROPE   ? "rope"
                    : m.positional_scheme() == v1::POSITIONAL_SCHEME_NOPE ? m.attention_type()
                                                                          : "-",
                    std::to_string(m.num_layers()), std::to_string(m.hidden_size()), std::to_string(m.num_heads()),
                    std::to_string(m.num_kv_heads()), std::to_string(m.num_parameters()), m.dtype(), m.device(),
                    m.weights_digest().substr(0, 12)});
  }
  PrintRows(out, f, header, std::move(rows));
  if (f == Format::kTable)
    for (const auto& m : r.models())
      if (!m.error().empty()) out << m.name() << ": " << m.error() << "\n";
}

void RenderModel(const v1::ModelInfo& m, Format f, std::ostream& out) {
  if (f == Format::kJson) {
    out << ToJson(m) << "\n";
    return;
  }
  v1::ListModelsResponse r;
  *r.add_models() = m;
  RenderModels(r, f, out);
  if (f == Format::kTable) {
    out << "model_type " << m.model_type() << ", attention " << m.attention_type() << ", head_dim " << m.head_dim()
        << ", vocab " << m.vocab_size() << ", max positions " << m.max_position_embeddings() << ", scale "
        << Num(m.attention_scale()) << "\n";
    out << "weights " << m.weights_digest() << "\ntokenizer " << m.tokenizer_digest() << "\npath " << m.path() << "\n";
    out << "hook points: " << absl::StrJoin(m.hook_points(), " ") << "\n";
  }
}

void RenderDatasets(const v1::ListDatasetsResponse& r, Format f, std::ostream& out) {
  if (f == Format::kJson) return PrintJsonLines(out, r.datasets());
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.datasets())
    rows.push_back({d.name(), std::to_string(d.num_prompts()), d.digest().substr(0, 12), d.description()});
  PrintRows(out, f, {"name", "prompts", "digest", "description"}, std::move(rows));
}

void RenderServerInfo(const v1::ServerInfo& r, Format f, std::ostream& out) {
  if (f != Format::kTable) {
    out << ToJson(r) << "\n";
    return;
  }
  out << "sinkscoped " << r.version() << " (" << r.api_version() << "), torch " << r.torch_version() << "\n"
      << "devices " << absl::StrJoin(r.devices(), ",") << ", " << r.compute_threads() << " compute threads, up "
      << absl::StrFormat("%.0f", r.uptime_seconds()) << " s\n"
      << "jobs: " << r.running_jobs() << " running, " << r.queued_jobs() << " queued\n"
      << "limits: " << r.limits().max_tokens_per_prompt() << " tokens/prompt, " << r.limits().max_prompts_per_job()
      << " prompts/job, " << r.limits().max_queued_jobs() << " queued jobs\n";
}

void RenderJob(const v1::Job& j, Format f, std::ostream& out) {
  if (f != Format::kTable) {
    out << ToJson(j) << "\n";
    return;
  }
  using google::protobuf::util::TimeUtil;
  out << "job " << j.id() << "  " << StateName(j.state()) << "  progress " << Percent(j.progress())
      << "  models " << absl::StrJoin(j.spec().models(), ",") << "\n";
  out << "submitted " << TimeUtil::ToString(j.submitted_at()) << " by " << j.submitted_by();
  if (j.has_finished_at()) out << ", finished " << TimeUtil::ToString(j.finished_at());
  out << ", " << j.num_events() << " events\n";
  if (j.has_error()) out << "error: " << j.error().message() << "\n";
  if (j.has_summary()) {
    EventRenderer r(f, out, false);
    v1::JobEvent ev;
    *ev.mutable_summary() = j.summary();
    r.Render(ev);
  }
}

void RenderJobs(const v1::ListJobsResponse& r, Format f, std::ostream& out) {
  if (f == Format::kJson) return PrintJsonLines(out, r.jobs());
  using google::protobuf::util::TimeUtil;
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : r.jobs())
    rows.push_back({j.id(), StateName(j.state()), Percent(j.progress()), absl::StrJoin(j.spec().models(), "+"),
                    TimeUtil::ToString(j.submitted_at()), j.spec().label()});
  PrintRows(out, f, {"id", "state", "progress", "models", "submitted", "label"}, std::move(rows));
  if (f == Format::kTable && !r.next_page_token().empty())
    out << "(more: --page-token " << r.next_page_token() << ")\n";
}

}  // namespace sinkscope::client
