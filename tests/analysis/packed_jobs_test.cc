// Packed jobs: the planner packs a job's prompts into forwards of up to RunLimits.pack_tokens tokens. Every
// analysis and every intervention must give what one prompt per forward gives (fp32, 1e-5 relative), on RoPE,
// NoPE and GQA models; the plan has fewer forwards; layer events still stream during the last forward.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

// Prompts of unequal and equal lengths (runs of equal length attend as one batch inside a packed forward).
std::vector<std::vector<int32_t>> Prompts() {
  return {{1, 5, 9, 14, 3, 22, 7}, {1, 40, 41, 42}, {1, 8, 8, 8, 8, 8, 8, 8, 30, 31, 2}, {1, 3, 3, 60},
          {1, 17, 2, 9},           {1, 9},          {1, 33, 34, 35, 36, 37}};
}

job::PerplexitySpec EveryIntervention() {
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

std::vector<job::AnalysisSpec> EveryAnalysis() {
  job::ActivationStatsSpec as;
  as.hooks = {"blocks.{L}.hook_mlp_out", "hook_embed", "blocks.{L}.attn.hook_k", "ln_final.hook_normalized"};
  job::MatrixEntropySpec me;
  me.normalized = true;
  job::MassiveValuesSpec mv;
  mv.lambda = 1.5;
  return {job::SinkRateSpec{}, mv, job::ResidualStatsSpec{}, me, as, EveryIntervention()};
}

// Every number a job reports, by a name that says where it comes from.
std::map<std::string, double> Numbers(const RecordingSink& sink) {
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

TEST(PackedJobs, EveryAnalysisAndInterventionEqualsOnePromptPerForward) {
  const std::vector<job::ModelHandle> models = {RandomModel(true, 31, -1, "rope"), RandomModel(false, 32, -1, "nope"),
                                                RandomModel(true, 33, -1, "gqa", 3, 64, /*heads=*/4, /*kv_heads=*/2)};
  const job::JobSpec spec = Spec({"rope", "nope", "gqa"}, Prompts(), EveryAnalysis());
  job::RunLimits one, packed;
  one.pack_tokens = 0;
  packed.pack_tokens = 20;  // several packs of 2-4 prompts, the last one partly filled
  RecordingSink s1, s2;
  auto r1 = job::RunJob(spec, models, one, &s1, NoCancel());
  auto r2 = job::RunJob(spec, models, packed, &s2, NoCancel());
  ASSERT_TRUE(r1.ok()) << r1.status();
  ASSERT_TRUE(r2.ok()) << r2.status();
  // Fewer forwards, the same prompts and tokens.
  for (size_t m = 0; m < models.size(); ++m) {
    EXPECT_LT(r2->models[m].num_forward_passes, r1->models[m].num_forward_passes) << m;
    EXPECT_EQ(r2->models[m].num_prompts, r1->models[m].num_prompts);
    EXPECT_EQ(r2->models[m].num_tokens, r1->models[m].num_tokens);
  }
  EXPECT_EQ(r2->inputs_digest, r1->inputs_digest);
  const auto a = Numbers(s1), b = Numbers(s2);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 500u);
  double worst = 0;
  std::string worst_key;
  for (const auto& [k, v] : a) {
    ASSERT_TRUE(b.count(k)) << k;
    const double w = b.at(k);
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(w)) << k;
      continue;
    }
    const double rel = std::abs(w - v) / std::max(1.0, std::abs(v));
    if (rel > worst) worst = rel, worst_key = k;
    EXPECT_LE(rel, 1e-5) << k << ": " << v << " vs " << w;
  }
  std::cout << a.size() << " numbers compared; largest relative difference " << worst << " (" << worst_key << ")\n";
  // The interventions did something (the comparison above is not between two baselines).
  for (const char* c : {"bos_mlp@L1", "qk_massive", "top1_per_head", "head_ablation", "edits"})
    EXPECT_NE(a.at(std::string("rope/ppl/") + c), a.at("rope/ppl/baseline")) << c;
}

TEST(PackedJobs, PlanPacksGreedilyInPromptOrder) {
  const std::vector<job::ModelHandle> models = {RandomModel(true, 31, -1, "rope")};
  job::RunLimits limits;
  limits.pack_tokens = 12;  // lengths 7,4,11,4,4,2,6 -> [7,4] [11] [4,4,2] [6]
  auto plan = job::BuildPlan(Spec({"rope"}, Prompts(), {job::SinkRateSpec{}}), models, limits);
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<std::pair<int32_t, int32_t>> packs;
  for (const job::Pass& p : plan->passes) packs.emplace_back(p.first_prompt, p.num_prompts);
  EXPECT_EQ(packs, (std::vector<std::pair<int32_t, int32_t>>{{0, 2}, {2, 1}, {3, 3}, {6, 1}}));
  EXPECT_EQ(plan->estimate.forwards, 4);
  EXPECT_EQ(plan->estimate.tokens, 7 + 4 + 11 + 4 + 4 + 2 + 6);
  // A prompt longer than the budget runs alone; a budget of 0 means one prompt per forward.
  limits.pack_tokens = 5;
  plan = job::BuildPlan(Spec({"rope"}, Prompts(), {job::SinkRateSpec{}}), models, limits);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->passes.size(), 7u);  // every prompt alone: no two neighbours fit in 5 tokens
  limits.pack_tokens = 0;
  plan = job::BuildPlan(Spec({"rope"}, Prompts(), {job::SinkRateSpec{}}), models, limits);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->passes.size(), 7u);
}

TEST(PackedJobs, LayerEventsStreamDuringTheLastPackedForward) {
  // Two packs (budget 20 over 7 prompts of 38 tokens); layer l is emitted right after the last pack passed it:
  // CancelCheck runs before every forward and after every layer (L = 3).
  auto m = RandomModel(true, 23);
  job::RunLimits limits;
  limits.pack_tokens = 20;
  auto plan = job::BuildPlan(Spec({m.name}, Prompts(), {job::SinkRateSpec{}}), {m}, limits);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int forwards = static_cast<int>(plan->passes.size());
  ASSERT_GT(forwards, 1);
  int checks = 0;
  std::vector<int> at_emit;
  RecordingSink sink;
  sink.on_layer = [&](const job::LayerResult&) { at_emit.push_back(checks); };
  auto r = job::Execute(*plan, &sink, [&] {
    ++checks;
    return absl::OkStatus();
  });
  ASSERT_TRUE(r.ok()) << r.status();
  const int before_last = (forwards - 1) * 4;
  EXPECT_EQ(at_emit, (std::vector<int>{before_last + 1, before_last + 2, before_last + 3}));
  EXPECT_EQ(checks, forwards * 4);
}

}  // namespace
}  // namespace sinkscope::analysis_test
