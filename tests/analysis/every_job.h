// Every analysis and every intervention in one job, and every number a job reports by name: shared by the tests
// that show two ways of running a job give the same numbers (packed_jobs_test.cc, layer_major_test.cc).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/analysis/recording_sink.h"

namespace sinkscope::analysis_test {

inline job::PerplexitySpec EveryIntervention() {
  job::PerplexitySpec ppl;
  job::BosMlpAblation spike, jump, explicit_layer;
  jump.spike_rule = job::SpikeRule::kArgmaxJump;
  explicit_layer.layer = 1;
  job::QkMassiveDisruption qk, qk_mean;
  qk.lambda = qk_mean.lambda = 1.5;
  qk.control_seeds = {42, 43};
  qk_mean.replacement = job::Replacement::kMean;
  qk_mean.identify_on = job::Inputs{};
  qk_mean.identify_on->token_ids = {{1, 3, 4, 5}, {1, 6, 7}, {1, 2}};
  job::TopPerHeadMeanReplacement top, top_post;
  top_post.post_rotary = true;
  top_post.lambda = 1.2;
  job::HeadAblation heads;
  heads.heads = {{0, 1}, {2, 0}};
  job::HeadAblation heads_mean = heads;
  heads_mean.replacement = job::Replacement::kMean;
  job::ActivationEdit e1, e2, e3;
  e1.hook = "blocks.1.hook_resid_mid";
  e1.op = job::EditOp::kScale;
  e1.value = 0.5;
  e1.positions = {0, -1};
  e2.hook = "blocks.0.attn.hook_v";
  e2.op = job::EditOp::kMean;
  e2.heads = {1};
  e3.hook = "blocks.2.mlp.hook_post";
  e3.op = job::EditOp::kAdd;
  e3.value = 0.25;
  e3.dims = {0, 5};
  ppl.interventions = {{"", spike}, {"", jump},     {"", explicit_layer}, {"", qk},   {"", qk_mean},
                       {"", top},   {"", top_post}, {"", heads},          {"hm", heads_mean},
                       {"", std::vector<job::ActivationEdit>{e1, e2, e3}}};
  return ppl;
}

inline std::vector<job::AnalysisSpec> EveryAnalysis() {
  job::ActivationStatsSpec as;
  as.hooks = {"blocks.{L}.hook_mlp_out", "hook_embed", "blocks.{L}.attn.hook_k", "ln_final.hook_normalized"};
  job::MatrixEntropySpec me;
  me.normalized = true;
  job::MassiveValuesSpec mv;
  mv.lambda = 1.5;
  return {job::SinkRateSpec{}, mv, job::ResidualStatsSpec{}, me, as, EveryIntervention()};
}

// Every number a job reports, by a name that says where it comes from.
inline std::map<std::string, double> Numbers(const RecordingSink& sink) {
  std::map<std::string, double> n;
  auto stat = [&](const std::string& k, const job::Stat& s) {
    n[k + ".mean"] = s.mean;
    n[k + ".std"] = s.std;
    n[k + ".n"] = s.n;
  };
  for (const auto& l : sink.All<job::LayerResult>()) {
    const std::string k = absl::StrCat(l.model, "/L", l.layer, "/");
    if (l.sink_rate) {
      stat(k + "sink", l.sink_rate->sink_rate);
      for (size_t h = 0; h < l.sink_rate->head_scores.size(); ++h) n[k + "head" + std::to_string(h)] = l.sink_rate->head_scores[h];
    }
    if (l.massive_values)
      for (const auto& t : l.massive_values->tensors) {
        const std::string kt = k + job::Name(t.tensor);
        stat(kt + ".count", t.count);
        n[kt + ".threshold"] = t.threshold;
        n[kt + ".gini"] = t.gini;
        for (size_t i = 0; i < t.top.size(); ++i) n[absl::StrCat(kt, ".top", i)] = t.top[i].value;
      }
    if (l.residual_stats) {
      stat(k + "bos", l.residual_stats->bos_norm);
      stat(k + "other", l.residual_stats->mean_other_norm);
      stat(k + "ratio", l.residual_stats->ratio);
    }
    if (l.matrix_entropy) {
      stat(k + "entropy", l.matrix_entropy->entropy);
      stat(k + "anisotropy", l.matrix_entropy->anisotropy);
      stat(k + "normalized", l.matrix_entropy->normalized_entropy);
    }
    for (const auto& e : l.activation_stats) {
      const std::string ke = k + e.hook + "/" + job::Name(e.positions);
      n[ke + ".count"] = static_cast<double>(e.count);
      n[ke + ".mean"] = e.mean;
      n[ke + ".std"] = e.std;
      n[ke + ".max_abs"] = e.max_abs;
      n[ke + ".mean_norm"] = e.mean_norm;
      n[ke + ".max_norm"] = e.max_norm;
    }
  }
  for (const auto& p : sink.All<job::PerplexityResult>()) {
    const std::string k = p.model + "/ppl/" + p.condition;
    n[k] = p.perplexity;
    n[k + ".nll"] = p.mean_nll;
    n[k + ".targets"] = static_cast<double>(p.num_targets);
    n[k + ".layer"] = p.resolved_layer;
    n[k + ".dims"] = p.disrupted_dims;
    for (size_t i = 0; i < p.control_perplexities.size(); ++i) n[absl::StrCat(k, ".control", i)] = p.control_perplexities[i];
  }
  const std::vector<job::Summary> summaries = sink.All<job::Summary>();
  for (const auto& m : summaries.back().models)
    for (const auto& [metric, v] : m.metrics) n[m.model + "/summary/" + metric] = v;
  return n;
}

}  // namespace sinkscope::analysis_test
