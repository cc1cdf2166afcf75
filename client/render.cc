#include "client/render.h"

#include <google/protobuf/util/time_util.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/render_impl.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

namespace {

class JsonRenderer : public EventRenderer::Impl {
 public:
  explicit JsonRenderer(std::ostream& out) : out_(out) {}
  void Render(const v1::JobEvent& ev) override { out_ << ToJson(ev) << "\n" << std::flush; }

 private:
  std::ostream& out_;
};

class CsvRenderer : public EventRenderer::Impl {
 public:
  CsvRenderer(bool wide, std::ostream& out) : wide_(wide), out_(out) {}
  void Render(const v1::JobEvent& ev) override {
    std::vector<Record> recs = flat_.Flatten(ev);
    if (recs.empty()) return;
    if (wide_) return table_.Add(ev.job_id(), recs);
    if (!header_) out_ << LongCsvHeader() << "\n";
    header_ = true;
    for (const Record& r : recs) {
      std::vector<std::string> f = LongCsvFields(ev.job_id(), r);
      for (auto& x : f) x = CsvField(x);
      out_ << absl::StrJoin(f, ",") << "\n";
    }
    out_ << std::flush;
  }
  void Finish() override {
    if (wide_) table_.Write(out_);
    table_ = WideCsv();
  }

 private:
  bool wide_;
  std::ostream& out_;
  Flattener flat_;
  bool header_ = false;
  WideCsv table_;
};

// The list commands' CSV: a header, then one row per item, fields quoted where needed.
void PrintCsv(std::ostream& out, const std::vector<std::string>& header,
              const std::vector<std::vector<std::string>>& rows) {
  out << absl::StrJoin(header, ",") << "\n";
  for (const auto& row : rows) {
    std::vector<std::string> f;
    for (const auto& c : row) f.push_back(CsvField(c));
    out << absl::StrJoin(f, ",") << "\n";
  }
}

template <typename Messages>
void PrintJsonLines(std::ostream& out, const Messages& messages) {
  for (const auto& m : messages) out << ToJson(m) << "\n";
}

std::string Percent(double fraction) { return absl::StrFormat("%.0f%%", 100 * fraction); }

std::string Positional(const v1::ModelInfo& m) {
  if (m.positional_scheme() == v1::POSITIONAL_SCHEME_ROPE) return "rope";
  if (m.positional_scheme() == v1::POSITIONAL_SCHEME_NOPE) return m.attention_type();
  return "-";
}

// Bytes as GiB, and a memory budget (0 = none).
std::string Gib(int64_t bytes) { return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1 << 30)); }
std::string Budget(int64_t bytes, const char* none) { return bytes > 0 ? Gib(bytes) : std::string(none); }

}  // namespace

EventRenderer::EventRenderer(RenderOptions o, std::ostream& out) {
  switch (o.format) {
    case Format::kJson: impl_ = std::make_unique<JsonRenderer>(out); break;
    case Format::kCsv: impl_ = std::make_unique<CsvRenderer>(o.wide, out); break;
    case Format::kTable: impl_ = MakeTableRenderer(o, out); break;
  }
}
EventRenderer::~EventRenderer() = default;
void EventRenderer::Render(const v1::JobEvent& ev) { impl_->Render(ev); }
void EventRenderer::Finish() { impl_->Finish(); }

void WideCsv::Add(const std::string& job_id, const std::vector<Record>& records) {
  for (const Record& r : records) {
    std::vector<std::string> key = {job_id, r.model, r.condition, r.prompt ? std::to_string(*r.prompt) : "",
                                    r.layer ? std::to_string(*r.layer) : ""};
    auto [it, fresh] = index_.emplace(key, rows_.size());
    if (fresh) rows_.push_back(Row{key, {}});
    const std::string col = r.head ? absl::StrCat(r.metric, ".h", *r.head) : r.metric;
    if (!known_[col]) {
      known_[col] = true;
      columns_.push_back(col);
    }
    rows_[it->second].cells[col] = r.is_text ? r.text : Exact(r.value);
  }
}

void WideCsv::Write(std::ostream& out) const {
  std::vector<std::string> header = {"job_id", "model", "condition", "prompt", "layer"};
  header.insert(header.end(), columns_.begin(), columns_.end());
  std::vector<std::vector<std::string>> rows;
  for (const Row& r : rows_) {
    std::vector<std::string> row = r.key;
    for (const auto& c : columns_) {
      auto it = r.cells.find(c);
      row.push_back(it == r.cells.end() ? "" : it->second);
    }
    rows.push_back(std::move(row));
  }
  PrintCsv(out, header, rows);
  out << std::flush;
}

void RenderModels(const v1::ListModelsResponse& r, const RenderOptions& o, std::ostream& out) {
  if (o.format == Format::kJson) return PrintJsonLines(out, r.models());
  const bool csv = o.format == Format::kCsv;
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : r.models()) {
    const std::string state = v1::ModelState_Name(m.state()).substr(std::string("MODEL_STATE_").size());
    rows.push_back({m.name(), state, Positional(m), std::to_string(m.num_layers()), std::to_string(m.hidden_size()),
                    std::to_string(m.num_heads()), std::to_string(m.num_kv_heads()), std::to_string(m.num_parameters()),
                    m.dtype(), m.device(), csv ? m.weights_digest() : m.weights_digest().substr(0, 12)});
  }
  if (csv)
    return PrintCsv(out,
                    {"name", "state", "positional", "layers", "d_model", "heads", "kv_heads", "parameters", "dtype",
                     "device", "weights_digest"},
                    rows);
  PrintTable(out,
             {{"name"},
              {"state"},
              {"positional", false, 5},
              {"layers", true, 6},
              {"d_model", true, 4},
              {"heads", true, 6},
              {"kv", true, 3},
              {"params", true, 5},
              {"dtype", false, 4},
              {"device", false, 4},
              {"weights", false, 2}},
             rows, o.wide);
  for (const auto& m : r.models())
    if (!m.error().empty()) out << m.name() << ": " << m.error() << "\n";
}

void RenderModel(const v1::ModelInfo& m, const RenderOptions& o, std::ostream& out) {
  if (o.format == Format::kJson) {
    out << ToJson(m) << "\n";
    return;
  }
  v1::ListModelsResponse r;
  *r.add_models() = m;
  RenderModels(r, o, out);
  if (o.format != Format::kTable) return;
  out << "model_type " << m.model_type() << ", attention " << m.attention_type() << ", head_dim " << m.head_dim()
      << ", vocab " << m.vocab_size() << ", max positions " << m.max_position_embeddings() << ", scale "
      << Num(m.attention_scale()) << "\n";
  out << "weights " << m.weights_digest() << "\ntokenizer " << m.tokenizer_digest() << "\npath " << m.path() << "\n";
  if (m.state() == v1::MODEL_STATE_READY)
    out << "memory: per forward " << Budget(m.forward_memory_bytes(), "none") << ", residual "
        << Budget(m.residual_memory_bytes(), "none (one wave)") << ", device "
        << (m.device_memory_bytes() > 0 ? Gib(m.device_memory_bytes()) : std::string("unknown")) << "\n";
  out << "hook points:\n";
  std::string line = " ";
  for (const auto& h : m.hook_points()) {  // wrapped at the table width
    if (line.size() + 1 + h.size() > kTableWidth) {
      out << line << "\n";
      line.resize(1);  // back to the one-space indent
    }
    line += " " + h;
  }
  out << line << "\n";
}

void RenderDatasets(const v1::ListDatasetsResponse& r, const RenderOptions& o, std::ostream& out) {
  if (o.format == Format::kJson) return PrintJsonLines(out, r.datasets());
  const bool csv = o.format == Format::kCsv;
  std::vector<std::vector<std::string>> rows;
  for (const auto& d : r.datasets())
    rows.push_back({d.name(), std::to_string(d.num_prompts()), csv ? d.digest() : d.digest().substr(0, 12),
                    csv || o.wide ? d.description() : Clip(d.description(), 44)});
  if (csv) return PrintCsv(out, {"name", "prompts", "digest", "description"}, rows);
  PrintTable(out, {{"name"}, {"prompts", true}, {"digest", false, 1}, {"description"}}, rows, o.wide);
}

void RenderServerInfo(const v1::ServerInfo& r, const RenderOptions& o, std::ostream& out) {
  if (o.format != Format::kTable) {
    out << ToJson(r) << "\n";
    return;
  }
  out << "sinkscoped " << r.version() << " (" << r.api_version() << "), torch " << r.torch_version() << "\n"
      << "devices " << absl::StrJoin(r.devices(), ",") << ", " << r.compute_threads() << " compute threads, up "
      << absl::StrFormat("%.0f", r.uptime_seconds()) << " s\n"
      << "jobs: " << r.running_jobs() << " running, " << r.queued_jobs() << " queued\n"
      << "limits: " << r.limits().max_tokens_per_prompt() << " tokens/prompt, " << r.limits().max_prompts_per_job()
      << " prompts/job, " << r.limits().max_queued_jobs() << " queued jobs\n"
      << "packing: " << r.limits().pack_tokens() << " tokens/forward"
      << (r.limits().attention().empty() ? "" : ", attention " + r.limits().attention()) << "\n"
      << "residual budget "
      << (r.limits().residual_memory_per_model() ? std::string("per model, from its device")
                                                 : Budget(r.limits().residual_memory_bytes(), "none (one wave)"))
      << "\n";
  if (r.limits().max_tokens_per_job() > 0 || r.limits().max_planned_passes() > 0)
    out << "per job: " << r.limits().max_tokens_per_job() << " tokens through all forwards, "
        << r.limits().max_planned_passes() << " planned forward passes\n";
  if (r.limits().forward_memory_per_model())
    out << "per forward: activation memory sized per model (see `sinkscope model NAME`)\n";
  else if (r.limits().forward_memory_bytes() > 0)
    out << "per forward: " << Gib(r.limits().forward_memory_bytes()) << " of activations at most\n";
}

void RenderJob(const v1::Job& j, const RenderOptions& o, std::ostream& out) {
  if (o.format == Format::kJson) {
    out << ToJson(j) << "\n";
    return;
  }
  // CSV and table render the record's summary as a Summary event would be: same records, same tables.
  v1::JobEvent ev;
  ev.set_job_id(j.id());
  *ev.mutable_summary() = j.summary();
  if (o.format == Format::kCsv) {
    EventRenderer r(o, out);
    if (j.has_summary()) r.Render(ev);
    v1::JobEvent fin;
    fin.set_job_id(j.id());
    fin.mutable_finished()->set_state(j.state());
    if (j.has_error()) *fin.mutable_finished()->mutable_error() = j.error();
    r.Render(fin);
    r.Finish();
    return;
  }
  using google::protobuf::util::TimeUtil;
  out << "job " << j.id() << "  " << StateName(j.state()) << "  progress " << Percent(j.progress()) << "  models "
      << absl::StrJoin(j.spec().models(), ",");
  if (j.state() == v1::JOB_STATE_QUEUED) out << "  queue position " << j.queue_position();
  out << "\nsubmitted " << TimeUtil::ToString(j.submitted_at()) << " by " << j.submitted_by();
  if (j.has_finished_at()) out << ", finished " << TimeUtil::ToString(j.finished_at());
  out << ", " << j.num_events() << " events\n";
  if (!j.spec().label().empty()) out << "label " << j.spec().label() << "\n";
  if (j.has_error()) out << "error: " << j.error().message() << "\n";
  if (j.has_summary()) {
    EventRenderer r(o, out);
    r.Render(ev);
    r.Finish();
  }
}

void RenderJobs(const v1::ListJobsResponse& r, const RenderOptions& o, std::ostream& out) {
  if (o.format == Format::kJson) return PrintJsonLines(out, r.jobs());
  using google::protobuf::util::TimeUtil;
  std::vector<std::vector<std::string>> rows;
  for (const auto& j : r.jobs())
    rows.push_back({j.id(), StateName(j.state()), Percent(j.progress()), absl::StrJoin(j.spec().models(), "+"),
                    TimeUtil::ToString(j.submitted_at()).substr(0, 19), j.spec().label()});
  if (o.format == Format::kCsv) {
    PrintCsv(out, {"id", "state", "progress", "models", "submitted", "label"}, rows);
    return;
  }
  PrintTable(
      out,
      {{"id"}, {"state"}, {"progress", true, 3}, {"models", false, 4}, {"submitted", false, 2}, {"label", false, 1}},
      rows, o.wide);
  if (!r.next_page_token().empty()) out << "(more: --page-token " << r.next_page_token() << ")\n";
}

}  // namespace sinkscope::client
