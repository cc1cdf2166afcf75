// Packed jobs: the planner packs a job's prompts into forwards of up to RunLimits.pack_tokens tokens. Every
// analysis and every intervention must give what one prompt per forward gives (fp32, 1e-5 relative), on RoPE,
// NoPE and GQA models; the plan has fewer forwards; layer events stream as the wave of packs leaves each layer.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <map>

#include "absl/strings/str_cat.h"
#include "tests/analysis/every_job.h"
#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

// Prompts of unequal and equal lengths (runs of equal length attend as one batch inside a packed forward).
std::vector<std::vector<int32_t>> Prompts() {
  return {{1, 5, 9, 14, 3, 22, 7}, {1, 40, 41, 42}, {1, 8, 8, 8, 8, 8, 8, 8, 30, 31, 2}, {1, 3, 3, 60},
          {1, 17, 2, 9},           {1, 9},          {1, 33, 34, 35, 36, 37}};
}

// Both ways a packed forward batches attention: equal-length runs (the CPU default) and padded groups (the GPU's).
class PackedJobsTest : public ::testing::TestWithParam<job::RunLimits::Attention> {};

TEST_P(PackedJobsTest, EveryAnalysisAndInterventionEqualsOnePromptPerForward) {
  const std::vector<job::ModelHandle> models = {RandomModel(true, 31, -1, "rope"), RandomModel(false, 32, -1, "nope"),
                                                RandomModel(true, 33, -1, "gqa", 3, 64, /*heads=*/4, /*kv_heads=*/2)};
  const job::JobSpec spec = Spec({"rope", "nope", "gqa"}, Prompts(), EveryAnalysis());
  job::RunLimits one, packed;
  one.pack_tokens = 0;
  packed.pack_tokens = 20;  // several packs of 2-4 prompts, the last one partly filled
  packed.attention = GetParam();
  auto plan = job::BuildPlan(spec, models, packed);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const bool pad = GetParam() == job::RunLimits::Attention::kPadded || TestDevice() != "cpu";  // kAuto: by device
  for (const job::ModelPlan& mp : plan->models)
    EXPECT_EQ(mp.attention, pad ? model::AttentionBatching::kPadded : model::AttentionBatching::kEqualLength);
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

INSTANTIATE_TEST_SUITE_P(Attention, PackedJobsTest,
                         ::testing::Values(job::RunLimits::Attention::kAuto, job::RunLimits::Attention::kPadded),
                         [](const auto& info) {
                           return info.param == job::RunLimits::Attention::kPadded ? "Padded" : "Auto";
                         });

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

TEST(PackedJobs, LayerEventsStreamAsTheWaveOfPacksLeavesEachLayer) {
  // Several packs (budget 20 over 7 prompts of 38 tokens) in one layer-major wave; layer l is emitted right after the
  // last pack passed it: CancelCheck runs before every forward begins and after every forward's layer (L = 3).
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
  EXPECT_EQ(at_emit, (std::vector<int>{2 * forwards, 3 * forwards, 4 * forwards}));
  EXPECT_EQ(checks, forwards * 4);
}

}  // namespace
}  // namespace sinkscope::analysis_test
