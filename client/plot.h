// The study's figures from a job's events, drawn by gnuplot (Debian gnuplot-nox) as PNG and SVG:
//   sink_rate    per-layer attention sink rate (mean ± std over prompts)
//   bos_norm     per-layer BOS residual norm (top) and BOS / other-token norm ratio (bottom)
//   massive_qkv  per-layer massive-value counts in Q, K and V (three panels)
//   entropy      per-layer matrix entropy (mean ± std)
//   perplexity   perplexity per condition (baseline, BOS-MLP ablation, Q/K disruption and its random control),
//                log scale
// Each chart has one line (or bar) per model, so RoPE and DroPE share it. A figure is written only when the events
// hold its data. Next to each image is its gnuplot script (<name>.gp, data inline) for restyling.
#pragma once

#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "sinkscope/v1/jobs.pb.h"

namespace sinkscope::client {

inline constexpr int kFigureWidth = 1000;
inline constexpr int kFigureHeight = 600;

// A (mean, std) pair of one layer.
struct Point {
  double mean = 0;
  double std = 0;
};

// One model's per-layer series (in one job).
struct LayerSeries {
  std::string label;  // the model name; "model (job label or id)" when a model appears in several jobs
  std::map<int, Point> sink_rate, bos_norm, bos_ratio, entropy;
  std::map<int, Point> massive[3];  // Q, K, V
  double tau = -1;
};

// One bar group of the perplexity chart.
struct PerplexityBar {
  std::string condition;                  // "baseline", "bos_mlp@spike", "qk_massive (random control)"
  std::map<std::string, Point> by_label;  // series label -> perplexity (std for controls)
};

struct PlotData {
  std::vector<LayerSeries> series;
  std::vector<std::string> ppl_labels;  // series labels of the perplexity chart, in order of appearance
  std::vector<PerplexityBar> perplexity;
};

PlotData CollectPlotData(const std::vector<sinkscope::v1::JobEvent>& events);
// The figures `data` can draw, in the order above.
std::vector<std::string> FigureNames(const PlotData& data);
// The gnuplot script of one figure, writing `<dir>/<name>.png` and `<dir>/<name>.svg`.
std::string FigureScript(const PlotData& data, const std::string& name, const std::string& dir);
// gnuplot's path: $SINKSCOPE_GNUPLOT, else `gnuplot` on PATH; empty when none.
std::string FindGnuplot();

// Writes every figure into `dir` (created); names the files on `log`. 0 ok; 1 when gnuplot is missing or fails
// (with a message saying what to install; the scripts are still written); 2 when the events hold nothing to plot.
int PlotEvents(const std::vector<sinkscope::v1::JobEvent>& events, const std::string& dir, std::ostream& log);
// Reads JSON-lines event files (sinkscope -f json run, --save, batch results); errors name the file and line.
int ReadEventFiles(const std::vector<std::string>& paths, std::vector<sinkscope::v1::JobEvent>* events,
                   std::ostream& log);

}  // namespace sinkscope::client
