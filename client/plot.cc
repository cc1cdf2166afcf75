#include "client/plot.h"

#include <google/protobuf/util/json_util.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "client/interrupt.h"

extern char** environ;

namespace sinkscope::client {
namespace v1 = sinkscope::v1;
namespace fs = std::filesystem;

namespace {

constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                   "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

std::string G(double v) { return std::isfinite(v) ? absl::StrFormat("%.10g", v) : "NaN"; }

// gnuplot string literal (double quotes; backslash and quote escaped).
std::string Q(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

Point P(const v1::Stat& s) { return Point{s.mean(), s.std()}; }

// A datablock "$name" with one row per layer: layer, mean, std.
std::string Block(const std::string& name, const std::map<int, Point>& pts) {
  std::string s = absl::StrCat("$", name, " << EOD\n");
  for (const auto& [l, p] : pts) absl::StrAppend(&s, l, "\t", G(p.mean), "\t", G(p.std), "\n");
  return s + "EOD\n";
}

// Log scale when the values span more than two decades and are all positive (BOS norms of massive-activation
// models do: ~1 for ordinary tokens, ~10^3 at the spike).
bool WantLog(const std::vector<const std::map<int, Point>*>& series) {
  double lo = INFINITY, hi = 0;
  for (const auto* m : series)
    for (const auto& [l, p] : *m) {
      if (!(p.mean > 0)) return false;
      lo = std::min(lo, p.mean);
      hi = std::max(hi, p.mean);
    }
  return hi > 0 && hi / lo > 100;
}

struct Figure {
  std::string blocks;  // datablocks, defined once
  std::string body;    // plot commands, repeated per terminal
};

int MaxLayer(const PlotData& d) {
  int m = 0;
  for (const auto& s : d.series)
    for (const auto* mp : {&s.sink_rate, &s.bos_norm, &s.entropy, &s.massive[0], &s.massive[1], &s.massive[2]})
      if (!mp->empty()) m = std::max(m, mp->rbegin()->first);
  return m;
}

// One panel: every series that has `pick(series)`, as lines with error bars (or plain lines). Series are
// shifted sideways by a few hundredths of a layer so that their error bars do not hide each other.
std::string Panel(const PlotData& d, const std::string& block_prefix,
                  std::map<int, Point> const* (*pick)(const LayerSeries&, int), int arg, bool errors, Figure* f,
                  bool key = true) {
  std::vector<size_t> shown;
  for (size_t i = 0; i < d.series.size(); ++i)
    if (!pick(d.series[i], arg)->empty()) shown.push_back(i);
  std::vector<std::string> parts;
  for (size_t k = 0; k < shown.size(); ++k) {
    const size_t i = shown[k];
    const std::string name = absl::StrCat(block_prefix, i);
    if (f->blocks.find("$" + name + " ") == std::string::npos) f->blocks += Block(name, *pick(d.series[i], arg));
    const double shift = errors ? 0.06 * (static_cast<double>(k) - (shown.size() - 1) / 2.0) : 0;
    parts.push_back(absl::StrCat("$", name, " using ($1", shift >= 0 ? "+" : "", G(shift), "):2",
                                 errors ? ":3 with yerrorlines" : " with linespoints", " ls ", i % 8 + 1, " title ",
                                 key ? Q(d.series[i].label) : "\"\""));
  }
  return parts.empty() ? "" : "plot " + absl::StrJoin(parts, ", \\\n     ") + "\n";
}

// Log-axis ticks at 1, 2, 5 × 10^k inside [lo, hi] (gnuplot labels only whole decades by itself).
std::string LogTics(double lo, double hi) {
  std::vector<std::string> tics;
  for (int e = static_cast<int>(std::floor(std::log10(lo))); e <= static_cast<int>(std::ceil(std::log10(hi))); ++e)
    for (double m : {1.0, 2.0, 5.0}) {
      const double v = m * std::pow(10.0, e);
      if (v >= lo && v <= hi) tics.push_back(absl::StrCat("\"", G(v), "\" ", G(v)));
    }
  return tics.empty() ? "" : "set ytics (" + absl::StrJoin(tics, ", ") + ")\n";
}

// Legends sit above the plot, in one row: they never cover data.
constexpr const char* kKeyAbove = "set key tmargin center horizontal\n";

std::string LogFor(const PlotData& d, std::map<int, Point> const* (*pick)(const LayerSeries&, int), int arg) {
  std::vector<const std::map<int, Point>*> all;
  for (const auto& s : d.series) all.push_back(pick(s, arg));
  return WantLog(all) ? "set logscale y\n" : "unset logscale y\n";
}

const std::map<int, Point>* Sink(const LayerSeries& s, int) { return &s.sink_rate; }
const std::map<int, Point>* BosNorm(const LayerSeries& s, int) { return &s.bos_norm; }
const std::map<int, Point>* BosRatio(const LayerSeries& s, int) { return &s.bos_ratio; }
const std::map<int, Point>* Entropy(const LayerSeries& s, int) { return &s.entropy; }
const std::map<int, Point>* Massive(const LayerSeries& s, int t) { return &s.massive[t]; }

Figure Build(const PlotData& d, const std::string& name) {
  Figure f;
  const std::string xr = absl::StrCat("set xrange [-0.5:", MaxLayer(d) + 0.5, "]\nset xlabel \"layer\"\n");
  if (name == "sink_rate") {
    double tau = -1;
    for (const auto& s : d.series)
      if (s.tau >= 0) tau = s.tau;
    f.body = absl::StrCat("set title ",
                          Q(tau >= 0 ? absl::StrCat("Attention sink rate per layer (tau = ", G(tau), ")")
                                     : "Attention sink rate per layer"),
                          "\n", xr, "set ylabel \"sink rate (fraction of heads, mean ± std over prompts)\"\n",
                          "set yrange [-0.02:1.05]\n", kKeyAbove, Panel(d, "sink", Sink, 0, true, &f));
  } else if (name == "bos_norm") {
    f.body = absl::StrCat("set multiplot layout 2,1 title \"BOS residual stream per layer\"\n", xr, kKeyAbove,
                          "set ylabel \"BOS norm ||x_0||\"\n", LogFor(d, BosNorm, 0),
                          Panel(d, "bosnorm", BosNorm, 0, false, &f), "unset key\n",
                          "set ylabel \"BOS norm / mean other norm\"\n", LogFor(d, BosRatio, 0),
                          Panel(d, "bosratio", BosRatio, 0, false, &f, false), "unset multiplot\nunset logscale y\n");
  } else if (name == "massive_qkv") {
    f.body = absl::StrCat("set multiplot layout 1,3 title \"Massive values per layer (entries with ||x[:,h,d]|| > ",
                          "lambda x mean)\"\n", xr, "set ylabel \"massive (head, dim) entries\"\nset yrange [0:*]\n");
    const char* names[] = {"Q", "K", "V"};
    for (int t = 0; t < 3; ++t)
      absl::StrAppend(&f.body, "set title \"", names[t], "\"\n", t == 0 ? "set key top left\n" : "unset key\n",
                      Panel(d, absl::StrCat("massive", t, "_"), Massive, t, true, &f, t == 0));
    absl::StrAppend(&f.body, "unset multiplot\nset key\n");
  } else if (name == "entropy") {
    f.body = absl::StrCat("set title \"Matrix entropy of the residual stream per layer\"\n", xr,
                          "set ylabel \"entropy (nats, mean ± std over prompts)\"\n", kKeyAbove,
                          Panel(d, "entropy", Entropy, 0, true, &f));
  } else if (name == "perplexity") {
    double lo = INFINITY, hi = 0;
    f.blocks = "$ppl << EOD\n";
    for (const auto& bar : d.perplexity) {
      std::string row = bar.condition;
      for (const auto& label : d.ppl_labels) {
        auto it = bar.by_label.find(label);
        if (it == bar.by_label.end()) {
          absl::StrAppend(&row, "\tNaN\tNaN");
          continue;
        }
        absl::StrAppend(&row, "\t", G(it->second.mean), "\t", G(it->second.std));
        if (it->second.mean > 0) {
          lo = std::min(lo, it->second.mean - it->second.std > 0 ? it->second.mean - it->second.std : it->second.mean);
          hi = std::max(hi, it->second.mean + it->second.std);
        }
      }
      f.blocks += row + "\n";
    }
    f.blocks += "EOD\n";
    // Clustered histogram geometry: series i of row r is centred at r + (i - (n-1)/2) / (n + gap).
    const size_t n = d.ppl_labels.size();
    const double gap = 1.5;
    std::vector<std::string> parts, labels;
    for (size_t i = 0; i < n; ++i) {
      parts.push_back(
          absl::StrCat("$ppl using ", 2 + 2 * i, ":", 3 + 2 * i, " ls ", i % 8 + 1, " title ", Q(d.ppl_labels[i])));
      const double dx = (static_cast<double>(i) - (n - 1) / 2.0) / (n + gap);
      labels.push_back(absl::StrCat("$ppl using ($0", dx >= 0 ? "+" : "", G(dx), "):", 2 + 2 * i,
                                    ":(sprintf(\"%.4g\", $", 2 + 2 * i,
                                    ")) with labels offset 0,0.7 font \",9\" notitle"));
    }
    if (!(lo < INFINITY)) lo = hi = 1;
    // Condition names as tick labels, broken before a parenthesis ("qk_massive\n(random control)").
    std::vector<std::string> tics;
    for (size_t r = 0; r < d.perplexity.size(); ++r) {
      std::string c = d.perplexity[r].condition;
      if (const size_t at = c.find(" ("); at != std::string::npos) c = c.substr(0, at) + "\n" + c.substr(at + 1);
      std::string q = Q(c);
      absl::StrReplaceAll({{"\n", "\\n"}}, &q);
      tics.push_back(absl::StrCat(q, " ", r));
    }
    const bool many = d.perplexity.size() > 7;
    f.body = absl::StrCat(
        "set title \"Perplexity per condition (random control: mean ± std over seeds)\"\n",
        "set style data histograms\nset style histogram errorbars gap ", G(gap), " lw 1\n",
        "set style fill solid 1.0 border -1\nset boxwidth 0.9\nset logscale y\n",
        "set xrange [-0.6:", G(d.perplexity.size() - 0.4), "]\nset yrange [", G(lo / 1.6), ":", G(hi * 2.5), "]\n",
        LogTics(lo / 1.6, hi * 2.5), "set xtics (", absl::StrJoin(tics, ", "), ")", many ? " rotate by 30 right" : "",
        " nomirror\n", absl::StrContains(absl::StrJoin(tics, ""), "\\n") ? "set bmargin 4\n" : "",
        "set ylabel \"perplexity (log scale)\"\nset xlabel \"\"\n", kKeyAbove, "set grid noxtics ytics\n", "plot ",
        absl::StrJoin(parts, ", \\\n     "), ", \\\n     ", absl::StrJoin(labels, ", \\\n     "), "\n");
  }
  return f;
}

}  // namespace

PlotData CollectPlotData(const std::vector<v1::JobEvent>& events) {
  PlotData d;
  // Series are (job, model); a model that appears in several jobs gets the job id in its label.
  std::map<std::pair<std::string, std::string>, size_t> index;
  std::map<std::string, std::set<std::string>> jobs_of_model;
  for (const auto& ev : events) {
    if (ev.has_layer()) jobs_of_model[ev.layer().model()].insert(ev.job_id());
    if (ev.has_perplexity()) jobs_of_model[ev.perplexity().model()].insert(ev.job_id());
  }
  auto label = [&](const std::string& job, const std::string& model) {
    return jobs_of_model[model].size() > 1 ? absl::StrCat(model, " (", job, ")") : model;
  };
  auto series = [&](const std::string& job, const std::string& model) -> LayerSeries& {
    auto [it, fresh] = index.emplace(std::make_pair(job, model), d.series.size());
    if (fresh) {
      d.series.emplace_back();
      d.series.back().label = label(job, model);
    }
    return d.series[it->second];
  };
  auto bar = [&](const std::string& condition) -> PerplexityBar& {
    for (auto& b : d.perplexity)
      if (b.condition == condition) return b;
    d.perplexity.emplace_back();
    d.perplexity.back().condition = condition;
    return d.perplexity.back();
  };
  for (const auto& ev : events) {
    if (ev.has_layer()) {
      const auto& r = ev.layer();
      if (r.layer() < 0) continue;
      LayerSeries& s = series(ev.job_id(), r.model());
      const int l = r.layer();
      if (r.has_sink_rate()) {
        s.sink_rate[l] = P(r.sink_rate().sink_rate());
        s.tau = r.sink_rate().tau();
      }
      if (r.has_residual_stats()) {
        s.bos_norm[l] = P(r.residual_stats().bos_norm());
        s.bos_ratio[l] = P(r.residual_stats().ratio());
      }
      if (r.has_matrix_entropy()) s.entropy[l] = P(r.matrix_entropy().entropy());
      if (r.has_massive_values())
        for (const auto& t : r.massive_values().tensors()) {
          const int k = t.tensor() - v1::QKV_TENSOR_Q;
          if (k >= 0 && k < 3) s.massive[k][l] = P(t.count());
        }
    } else if (ev.has_perplexity()) {
      const auto& r = ev.perplexity();
      const std::string lab = label(ev.job_id(), r.model());
      if (std::find(d.ppl_labels.begin(), d.ppl_labels.end(), lab) == d.ppl_labels.end()) d.ppl_labels.push_back(lab);
      bar(r.condition()).by_label[lab] = Point{r.perplexity(), 0};
      if (r.control_perplexities_size() > 0)
        bar(r.condition() + " (random control)").by_label[lab] = Point{r.control().mean(), r.control().std()};
    }
  }
  return d;
}

std::vector<std::string> FigureNames(const PlotData& d) {
  bool sink = false, bos = false, massive = false, entropy = false;
  for (const auto& s : d.series) {
    sink |= !s.sink_rate.empty();
    bos |= !s.bos_norm.empty();
    massive |= !s.massive[0].empty() || !s.massive[1].empty() || !s.massive[2].empty();
    entropy |= !s.entropy.empty();
  }
  std::vector<std::string> out;
  if (sink) out.push_back("sink_rate");
  if (bos) out.push_back("bos_norm");
  if (massive) out.push_back("massive_qkv");
  if (entropy) out.push_back("entropy");
  if (!d.perplexity.empty()) out.push_back("perplexity");
  return out;
}

std::string FigureScript(const PlotData& d, const std::string& name, const std::string& dir) {
  const Figure f = Build(d, name);
  std::string s = absl::StrCat("# sinkscope figure '", name, "' (sinkscope plot). Redraw: gnuplot ", name, ".gp\n",
                               "set encoding utf8\nset datafile separator \"\\t\"\n", f.blocks);
  for (size_t i = 0; i < std::size(kColors); ++i)
    absl::StrAppend(&s, "set style line ", i + 1, " lc rgb \"", kColors[i], "\" lw 2 pt 7 ps 0.7\n");
  const std::string base = (fs::path(dir) / name).string();
  const std::string common = "set grid\nset key noenhanced\n";
  absl::StrAppend(&s, "set terminal pngcairo size ", kFigureWidth, ",", kFigureHeight,
                  " noenhanced font \"sans,11\" background rgb \"white\"\n", "set output ", Q(base + ".png"), "\n",
                  common, f.body, "set output\n");
  absl::StrAppend(&s, "reset\nset encoding utf8\nset datafile separator \"\\t\"\n");
  for (size_t i = 0; i < std::size(kColors); ++i)
    absl::StrAppend(&s, "set style line ", i + 1, " lc rgb \"", kColors[i], "\" lw 2 pt 7 ps 0.7\n");
  absl::StrAppend(&s, "set terminal svg size ", kFigureWidth, ",", kFigureHeight,
                  " noenhanced font \"sans,11\" background rgb \"white\"\n", "set output ", Q(base + ".svg"), "\n",
                  common, f.body, "set output\n");
  return s;
}

std::string FindGnuplot() {
  if (const char* env = getenv("SINKSCOPE_GNUPLOT"); env && *env) return access(env, X_OK) == 0 ? env : "";
  const char* path = getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':', absl::SkipEmpty())) {
    const std::string p = absl::StrCat(dir, "/gnuplot");
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

namespace {

// Runs `gnuplot script` with its output in `log_path`; the exit status (-1 when it cannot start).
int RunGnuplot(const std::string& gnuplot, const std::string& script, const std::string& log_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  UnblockedSignalMask(&none);  // the CLI blocks SIGINT in its threads; gnuplot should not inherit that
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::vector<char*> argv = {const_cast<char*>(gnuplot.c_str()), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid;
  const int rc = posix_spawn(&pid, gnuplot.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int PlotEvents(const std::vector<v1::JobEvent>& events, const std::string& dir, std::ostream& log) {
  const PlotData d = CollectPlotData(events);
  const std::vector<std::string> names = FigureNames(d);
  if (names.empty()) {
    log << "sinkscope: plot: nothing to plot (no layer or perplexity results in the events)\n";
    return 2;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    log << "sinkscope: plot: cannot create " << dir << ": " << ec.message() << "\n";
    return 1;
  }
  const std::string gnuplot = FindGnuplot();
  std::vector<std::string> written;
  int code = 0;
  for (const auto& name : names) {
    const std::string script = (fs::path(dir) / (name + ".gp")).string();
    std::ofstream(script) << FigureScript(d, name, dir);
    if (gnuplot.empty()) continue;
    const std::string glog = (fs::path(dir) / (name + ".log")).string();
    const int rc = RunGnuplot(gnuplot, script, glog);
    std::stringstream msg;
    msg << std::ifstream(glog).rdbuf();
    if (rc != 0 || !fs::exists(fs::path(dir) / (name + ".png"))) {
      log << "sinkscope: plot: gnuplot failed on " << script << " (exit " << rc << "): " << msg.str() << "\n";
      code = 1;
      continue;
    }
    fs::remove(glog, ec);
    written.push_back(name);
  }
  if (gnuplot.empty()) {
    log << "sinkscope: plot: gnuplot not found (Debian: apt-get install gnuplot-nox; or set SINKSCOPE_GNUPLOT). "
        << "The scripts are in " << dir << "/*.gp: run them with gnuplot elsewhere.\n";
    return 1;
  }
  for (const auto& n : written)
    log << "figure: " << (fs::path(dir) / (n + ".png")).string() << "  " << (fs::path(dir) / (n + ".svg")).string()
        << "\n";
  return code;
}

int ReadEventFiles(const std::vector<std::string>& paths, std::vector<v1::JobEvent>* events, std::ostream& log) {
  google::protobuf::util::JsonParseOptions o;
  o.ignore_unknown_fields = true;  // files written by a newer server stay readable
  for (const auto& path : paths) {
    std::ifstream in(path);
    if (!in) {
      log << "sinkscope: cannot read " << path << "\n";
      return 2;
    }
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      v1::JobEvent ev;
      auto st = google::protobuf::util::JsonStringToMessage(line, &ev, o);
      if (!st.ok()) {
        log << "sinkscope: " << path << ":" << n << ": not a job event in JSON (" << st.message()
            << "); expected the output of `sinkscope -f json run ...` or `run --save`\n";
        return 2;
      }
      events->push_back(std::move(ev));
    }
  }
  return 0;
}

}  // namespace sinkscope::client
