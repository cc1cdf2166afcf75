// The table format: what a person reads while a job streams. Every table fits kTableWidth (100) columns unless
// --wide: layer rows stream with fixed column widths (they cannot be measured before they arrive), the other tables
// are printed whole and drop their least important columns to fit.
#include <algorithm>
#include <functional>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/render_impl.h"

namespace sinkscope::client {
namespace v1 = sinkscope::v1;

namespace {

// A streamed layer-table column: header and value; `wide` columns only with --wide.
struct LayerCol {
  std::string header;
  std::function<std::optional<double>(const v1::LayerResult&)> get;
  bool wide = false;
};

const v1::MassiveValuesTensor* FindTensor(const v1::LayerResult& r, v1::QkvTensor t) {
  if (!r.has_massive_values()) return nullptr;
  for (const auto& x : r.massive_values().tensors())
    if (x.tensor() == t) return &x;
  return nullptr;
}

// A column showing the mean (or the std) of one Stat of the layer result, when the layer has that analysis.
template <typename Has, typename StatOf>
LayerCol StatCol(std::string header, Has has, StatOf stat, bool std_dev = false, bool wide = false) {
  return {std::move(header),
          [has, stat, std_dev](const v1::LayerResult& l) -> std::optional<double> {
            if (!(l.*has)()) return std::nullopt;
            const v1::Stat& s = stat(l);
            return std_dev ? s.std() : s.mean();
          },
          wide};
}

std::vector<LayerCol> LayerColumns(const v1::LayerResult& r, bool wide) {
  using L = const v1::LayerResult&;
  using O = std::optional<double>;
  using R = v1::LayerResult;
  auto sink = [](L l) -> const v1::Stat& { return l.sink_rate().sink_rate(); };
  auto bos = [](L l) -> const v1::Stat& { return l.residual_stats().bos_norm(); };
  auto other = [](L l) -> const v1::Stat& { return l.residual_stats().mean_other_norm(); };
  auto ratio = [](L l) -> const v1::Stat& { return l.residual_stats().ratio(); };
  auto entropy = [](L l) -> const v1::Stat& { return l.matrix_entropy().entropy(); };
  auto aniso = [](L l) -> const v1::Stat& { return l.matrix_entropy().anisotropy(); };
  std::vector<LayerCol> all = {
      StatCol("sink_rate", &R::has_sink_rate, sink),
      StatCol("sink.std", &R::has_sink_rate, sink, true, true),
      StatCol("bos_norm", &R::has_residual_stats, bos),
      StatCol("other_norm", &R::has_residual_stats, other, false, true),
      StatCol("bos_ratio", &R::has_residual_stats, ratio),
      StatCol("ratio.std", &R::has_residual_stats, ratio, true, true),
      StatCol("entropy", &R::has_matrix_entropy, entropy),
      StatCol("entropy.std", &R::has_matrix_entropy, entropy, true, true),
      {"norm_entropy",
       [](L l) -> O {
         if (l.has_matrix_entropy() && l.matrix_entropy().normalized_entropy().n() > 0)
           return l.matrix_entropy().normalized_entropy().mean();
         return {};
       },
       true},
      StatCol("anisotropy", &R::has_matrix_entropy, aniso),
  };
  for (v1::QkvTensor t : {v1::QKV_TENSOR_Q, v1::QKV_TENSOR_K, v1::QKV_TENSOR_V}) {
    const std::string n = TensorName(t);
    all.push_back({"massive_" + n, [t](L l) -> O {
                     if (auto* x = FindTensor(l, t)) return x->count().mean();
                     return {};
                   }});
  }
  for (v1::QkvTensor t : {v1::QKV_TENSOR_Q, v1::QKV_TENSOR_K, v1::QKV_TENSOR_V}) {
    const std::string n = TensorName(t);
    all.push_back({"top_" + n,
                   [t](L l) -> O {
                     auto* x = FindTensor(l, t);
                     if (x && x->top_size() > 0) return x->top(0).value();
                     return {};
                   },
                   true});
    all.push_back({"gini_" + n,
                   [t](L l) -> O {
                     if (auto* x = FindTensor(l, t)) return x->gini();
                     return {};
                   },
                   true});
  }
  if (wide && r.has_sink_rate())
    for (int h = 0; h < r.sink_rate().head_scores_size(); ++h)
      all.push_back({absl::StrCat("h", h),
                     [h](L l) -> O {
                       if (l.has_sink_rate() && h < l.sink_rate().head_scores_size())
                         return l.sink_rate().head_scores(h);
                       return {};
                     },
                     true});
  std::vector<LayerCol> out;
  for (auto& c : all)
    if ((wide || !c.wide) && c.get(r)) out.push_back(std::move(c));
  return out;
}

size_t ColWidth(const std::string& header) { return std::max<size_t>(9, header.size()); }

std::string RightPad(const std::string& s, size_t w, bool right) {
  const std::string pad(w - std::min(w, DisplayWidth(s)), ' ');
  return right ? pad + s : s + pad;
}

class TableRenderer : public EventRenderer::Impl {
 public:
  TableRenderer(const RenderOptions& o, std::ostream& out)
      : wide_(o.wide), rewrite_partial_(o.rewrite_partial), out_(out) {}

  void Render(const v1::JobEvent& ev) override {
    switch (ev.event_case()) {
      case v1::JobEvent::kAccepted:
        out_ << "job " << ev.job_id() << " accepted (queue position " << ev.accepted().queue_position() << ")\n";
        break;
      case v1::JobEvent::kStarted:
        out_ << "started: " << ev.started().num_prompts() << " prompt(s), " << ev.started().planned_passes()
             << " forward pass(es) planned\n";
        break;
      case v1::JobEvent::kLayer: Layer(ev.layer()); break;
      case v1::JobEvent::kPerplexity: Perplexity(ev.perplexity()); break;
      case v1::JobEvent::kPrompt: prompts_.push_back(ev.prompt()); break;
      case v1::JobEvent::kSummary:
        Flush();
        Summary(ev.summary());
        break;
      case v1::JobEvent::kFinished: {
        Flush();
        const auto& f = ev.finished();
        out_ << "\nfinished: " << StateName(f.state());
        if (f.has_error() && !f.error().message().empty()) out_ << " (" << f.error().message() << ")";
        out_ << "\n";
        break;
      }
      default: break;
    }
    out_ << std::flush;
  }
  void Finish() override { Flush(); }

 private:
  void Flush() {
    FlushStats();
    FlushPrompts();
  }

  void Layer(const v1::LayerResult& r) {
    if (r.model() != stats_model_) FlushStats();
    if (r.has_activation_stats() && !r.partial()) {  // the final event of the layer carries every row
      stats_model_ = r.model();
      for (const auto& e : r.activation_stats().entries())
        stats_rows_.push_back({std::to_string(r.layer()), wide_ ? e.hook() : Clip(e.hook(), 28),
                               PositionName(e.positions()), Num(e.mean()), Num(e.std()), Num(e.max_abs()),
                               Num(e.mean_norm()), Num(e.max_norm())});
    }
    std::vector<LayerCol> cols = LayerColumns(r, wide_);
    if (cols.empty()) return;
    std::vector<std::string> headers;
    for (const auto& c : cols) headers.push_back(c.header);
    if (r.model() != table_model_ || headers != table_headers_) {
      partial_lines_ = 0;
      table_model_ = r.model();
      table_headers_ = headers;
      ppl_header_ = false;
      out_ << "\n" << r.model() << "\n";
      std::string h = RightPad("layer", 5, false), rule = std::string(5, '-');
      for (const auto& c : headers) {
        h += "  " + RightPad(c, ColWidth(c), true);
        rule += "  " + std::string(ColWidth(c), '-');
      }
      out_ << h << "\n" << rule << "\n";
    }
    // A later wave starts again at the first layer: on a terminal its rows replace the partial ones in place.
    if (rewrite_partial_ && partial_lines_ > 0 && r.layer() <= last_layer_) {
      out_ << "\x1b[" << partial_lines_ << "F\x1b[J";
      partial_lines_ = 0;
    }
    last_layer_ = r.layer();
    std::string line = RightPad(std::to_string(r.layer()), 5, false);
    for (const auto& c : cols) line += "  " + RightPad(Num(*c.get(r)), ColWidth(c.header), true);
    if (r.partial()) {
      line += absl::StrCat("  (partial: ", r.prompts_done(), " of ", r.prompts_total(), " prompts)");
      ++partial_lines_;
    }
    out_ << line << "\n";
  }

  void FlushStats() {
    if (stats_rows_.empty()) return;
    out_ << "\n" << stats_model_ << ": activation statistics\n";
    PrintTable(out_,
               {{"layer", true},
                {"hook"},
                {"rows"},
                {"mean", true, 3},
                {"std", true, 4},
                {"max_abs", true, 5},
                {"mean_norm", true, 6},
                {"max_norm", true, 2}},
               stats_rows_, wide_);
    stats_rows_.clear();
  }

  void Perplexity(const v1::PerplexityResult& r) {
    FlushStats();
    if (!ppl_header_) {
      out_ << "\nperplexity\n";
      out_ << "  " << RightPad("model", 12, false) << "  " << RightPad("condition", 18, false) << "  "
           << RightPad("perplexity", 10, true) << "  " << RightPad("x base", 8, true) << "  note\n";
      ppl_header_ = true;
      table_model_.clear();  // a layer row after this table starts a new layer table
    }
    std::string note;
    if (r.control_perplexities_size() > 0)
      note = absl::StrCat("random control ", Num(r.control().mean()), " ± ", Num(r.control().std()),
                          " (n=", r.control().n(), ")");
    if (!r.detail().empty()) note += (note.empty() ? "" : "; ") + r.detail();
    std::string line = absl::StrCat("  ", RightPad(wide_ ? r.model() : Clip(r.model(), 12), 12, false), "  ",
                                    RightPad(wide_ ? r.condition() : Clip(r.condition(), 18), 18, false), "  ",
                                    RightPad(Num(r.perplexity()), 10, true), "  ",
                                    RightPad(r.condition() == "baseline" ? "" : Num(r.ratio_to_baseline()), 8, true));
    if (!note.empty())
      line += "  " + (wide_ ? note : Clip(note, kTableWidth - std::min(kTableWidth - 4, line.size() + 2)));
    out_ << line << "\n";
  }

  // Per-prompt results: one table per model, a row per prompt (layer metrics reduced over layers; the full
  // per-layer numbers are in -f json / -f csv).
  void FlushPrompts() {
    if (prompts_.empty()) return;
    std::vector<std::string> models;
    for (const auto& p : prompts_)
      if (std::find(models.begin(), models.end(), p.model()) == models.end()) models.push_back(p.model());
    for (const auto& model : models) {
      std::vector<std::string> conditions;
      bool sink = false, ratio = false, entropy = false;
      for (const auto& p : prompts_) {
        if (p.model() != model) continue;
        for (const auto& c : p.perplexity())
          if ((wide_ || c.condition().find("/control_seed_") == std::string::npos) &&
              std::find(conditions.begin(), conditions.end(), c.condition()) == conditions.end())
            conditions.push_back(c.condition());
        for (const auto& l : p.layers()) {
          sink |= l.has_sink_rate();
          ratio |= l.has_bos_ratio();
          entropy |= l.has_entropy();
        }
      }
      std::vector<Column> cols = {{"prompt", true}, {"tokens", true, 8}};
      if (sink) cols.push_back({"sink_rate(mean)", true, 6});
      if (ratio) cols.push_back({"bos_ratio(max)", true, 5});
      if (entropy) cols.push_back({"entropy(min)", true, 4});
      for (size_t i = 0; i < conditions.size(); ++i) cols.push_back({"ppl " + conditions[i], true, i == 0 ? 7 : 3});
      std::vector<std::vector<std::string>> rows;
      for (const auto& p : prompts_) {
        if (p.model() != model) continue;
        double s = 0, rmax = 0, emin = 0;
        int n = 0;
        bool first_e = true;
        for (const auto& l : p.layers()) {
          if (l.has_sink_rate()) s += l.sink_rate(), ++n;
          if (l.has_bos_ratio()) rmax = std::max(rmax, l.bos_ratio());
          if (l.has_entropy()) emin = first_e ? l.entropy() : std::min(emin, l.entropy()), first_e = false;
        }
        std::vector<std::string> row = {std::to_string(p.prompt()), std::to_string(p.num_tokens())};
        if (sink) row.push_back(n ? Num(s / n) : "");
        if (ratio) row.push_back(Num(rmax));
        if (entropy) row.push_back(Num(emin));
        for (const auto& c : conditions) {
          std::string v;
          for (const auto& pp : p.perplexity())
            if (pp.condition() == c) v = Num(pp.perplexity());
          row.push_back(v);
        }
        rows.push_back(std::move(row));
      }
      out_ << "\n" << model << ": per prompt\n";
      PrintTable(out_, cols, rows, wide_);
    }
    prompts_.clear();
  }

  void Summary(const v1::Summary& s) {
    if (s.comparison_size() > 0) {
      std::vector<Column> cols = {{"metric"}};
      for (const auto& m : s.models()) cols.push_back({m.model(), true, 4});
      for (int i = 1; i < s.models_size(); ++i) {
        const std::string suffix = s.models_size() > 2 ? " " + s.models(i).model() : "";
        cols.push_back({"diff" + suffix, true, 3});
        cols.push_back({"ratio" + suffix, true, 2});
      }
      std::vector<std::vector<std::string>> rows;
      for (const auto& r : s.comparison()) {
        std::vector<std::string> row = {r.metric()};
        for (double v : r.values()) row.push_back(Num(v));
        for (int i = 1; i < r.values_size(); ++i) {
          const double d = i < r.diffs_size() ? r.diffs(i) : r.values(i) - r.values(0);
          row.push_back((d > 0 ? "+" : "") + Num(d));
          // A ratio of layer indices or of percentages means nothing (the difference says it all); neither does
          // one over a zero reference.
          const bool ok = RatioMeaningful(r.metric()) && r.values(0) != 0 && i < r.ratios_size();
          row.push_back(ok ? "x" + Num(r.ratios(i)) : "-");
        }
        rows.push_back(std::move(row));
      }
      out_ << "\ncomparison (diff = model - " << s.models(0).model() << ", ratio = model / " << s.models(0).model()
           << ")\n";
      PrintTable(out_, cols, rows, wide_);
    } else {
      for (const auto& m : s.models()) {
        out_ << "\nsummary " << m.model() << "\n";
        std::map<std::string, double> sorted(m.metrics().begin(), m.metrics().end());
        std::vector<std::vector<std::string>> rows;
        for (const auto& [k, v] : sorted) rows.push_back({k, Num(v)});
        PrintTable(out_, {{"metric"}, {"value", true}}, rows, wide_);
      }
    }
    out_ << "\nprovenance\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& m : s.models())
      rows.push_back({m.model(), wide_ ? m.weights_digest() : m.weights_digest().substr(0, 12),
                      wide_ ? m.tokenizer_digest() : m.tokenizer_digest().substr(0, 12), m.dtype(), m.device(),
                      std::to_string(m.num_prompts()), std::to_string(m.truncated_prompts()),
                      std::to_string(m.num_tokens()), std::to_string(m.num_forward_passes())});
    PrintTable(out_,
               {{"model"},
                {"weights", false, 5},
                {"tokenizer", false, 2},
                {"dtype", false, 4},
                {"device", false, 3},
                {"prompts", true, 6},
                {"truncated", true, 5},
                {"tokens", true, 6},
                {"passes", true, 4}},
               rows, wide_, "  ");
    if (s.cached()) out_ << "  cached: the results of job " << s.cached_from() << " (--no-cache runs it again)\n";
    out_ << "  inputs " << (wide_ ? s.inputs_digest() : s.inputs_digest().substr(0, 12)) << ", seed " << s.seed()
         << ", server " << s.server_version() << ", " << absl::StrFormat("%.2f", s.elapsed_seconds()) << " s\n";
  }

  bool wide_;
  bool rewrite_partial_;
  std::ostream& out_;
  int partial_lines_ = 0;  // partial layer rows printed since the last final row (replaced in place on a terminal)
  int32_t last_layer_ = -2;
  std::string table_model_;
  std::vector<std::string> table_headers_;
  bool ppl_header_ = false;
  std::string stats_model_;
  std::vector<std::vector<std::string>> stats_rows_;
  std::vector<v1::PromptResult> prompts_;
};

}  // namespace

std::unique_ptr<EventRenderer::Impl> MakeTableRenderer(const RenderOptions& o, std::ostream& out) {
  return std::make_unique<TableRenderer>(o, out);
}

}  // namespace sinkscope::client
