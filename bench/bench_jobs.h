// What the job benchmarks (stream_bench, memory_bench) run and record: the study's phase job and an event sink that
// timestamps every event and keeps every number. Torch-free.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/job/job_spec.h"

namespace sinkscope::bench {

// The phase job (sink rate, massive Q/K/V, BOS residual stats, matrix entropy, perplexity with the BOS-MLP
// ablation at the spike layer; `qk`: and the Q/K massive-dim disruption with controls 42, 43, 44) over `inputs`,
// prompts cut to max_tokens (0 = the server's cap).
inline job::JobSpec PhaseSpec(const std::vector<std::string>& names, const job::Inputs& inputs, int32_t max_tokens,
                              bool qk = false) {
  job::JobSpec s;
  s.models = names;
  s.inputs = inputs;
  s.max_tokens = max_tokens;
  job::PerplexitySpec ppl;
  ppl.interventions.push_back({"", job::BosMlpAblation{}});
  if (qk) {
    job::QkMassiveDisruption d;
    d.control_seeds = {42, 43, 44};
    ppl.interventions.push_back({"", d});
  }
  s.analyses = {job::SinkRateSpec{}, job::MassiveValuesSpec{}, job::ResidualStatsSpec{}, job::MatrixEntropySpec{},
                ppl};
  return s;
}

// Records when each event arrives, seconds after the job started, and every number it carries.
struct TimingSink : job::EventSink {
  Clock::time_point t0 = Clock::now();
  struct Layer {
    std::string model;
    int32_t layer;
    bool partial;
    int32_t done;
    double t;
  };
  std::vector<Layer> layers;
  std::map<std::string, double> first_ppl, last_ppl;  // per model
  std::map<std::string, int32_t> spike;                // per model: the BOS-MLP ablation's resolved layer
  std::map<std::string, double> numbers;
  std::map<std::string, double> start;  // per model: its first progress event (its first forward begins)

  void OnProgress(const job::Progress& p) override {
    if (!start.count(p.model)) start[p.model] = Seconds(t0, Clock::now());
  }
  void OnLayer(const job::LayerResult& r) override {
    const double t = Seconds(t0, Clock::now());
    layers.push_back({r.model, r.layer, r.partial, r.prompts_done, t});
    if (r.partial) return;
    const std::string k = absl::StrFormat("%s/L%d/", r.model, r.layer);
    if (r.sink_rate) numbers[k + "sink"] = r.sink_rate->sink_rate.mean;
    if (r.residual_stats) numbers[k + "bos"] = r.residual_stats->bos_norm.mean;
    if (r.matrix_entropy) numbers[k + "entropy"] = r.matrix_entropy->entropy.mean;
    if (r.massive_values) numbers[k + "massive_q"] = r.massive_values->tensors[0].count.mean;
  }
  void OnPerplexity(const job::PerplexityResult& r) override {
    const double t = Seconds(t0, Clock::now());
    if (!first_ppl.count(r.model)) first_ppl[r.model] = t;
    last_ppl[r.model] = t;
    numbers[r.model + "/ppl/" + r.condition] = r.perplexity;
    if (r.condition != "baseline") spike[r.model] = r.resolved_layer;
  }
  void OnSummary(const job::Summary& s) override {
    for (const auto& m : s.models)
      for (const auto& [k, v] : m.metrics) numbers[m.model + "/" + k] = v;
  }

  // Seconds of `model`'s first and last final (non-partial) layer event; -1 when none.
  std::pair<double, double> FinalLayerTimes(const std::string& model) const {
    double first = -1, last = -1;
    for (const Layer& l : layers) {
      if (l.model != model || l.partial) continue;
      if (first < 0) first = l.t;
      last = l.t;
    }
    return {first, last};
  }
};

// A residual memory budget as the reports name it.
inline std::string ResidualBudgetLabel(int64_t bytes) {
  if (bytes == 0) return "0 (one wave)";
  if (bytes == 1) return "1 B (prompt-major)";
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1 << 20));
}

// Largest |b − a| / max(1, |a|) over the finite numbers of `a` that `b` has too.
inline double MaxRelDiff(const std::map<std::string, double>& a, const std::map<std::string, double>& b) {
  double worst = 0;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it != b.end() && std::isfinite(v))
      worst = std::max(worst, std::abs(it->second - v) / std::max(1.0, std::abs(v)));
  }
  return worst;
}

}  // namespace sinkscope::bench
