// Per-prompt results (JobSpec.per_prompt / emit_token_ids): one PromptResult per (model, prompt), in prompt order,
// after the model's aggregated results; each prompt's numbers are exactly what the aggregates average (the mean of
// the per-prompt sink rates is the layer's mean, the per-prompt NLL sums give the condition's perplexity), packed
// or not.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

std::vector<std::vector<int32_t>> Prompts() { return {{1, 5, 9, 14, 3, 22, 7}, {1, 40, 41, 42}, {1, 8, 8, 30, 31, 2}}; }

job::JobSpec PerPromptSpec(bool ids) {
  job::PerplexitySpec ppl;
  job::QkMassiveDisruption qk;
  qk.lambda = 1.5;
  qk.control_seeds = {7};
  ppl.interventions = {{"", job::BosMlpAblation{}}, {"", qk}};
  job::MassiveValuesSpec mv;
  mv.lambda = 1.5;
  job::JobSpec s = Spec({"rope", "nope"}, Prompts(),
                        {job::SinkRateSpec{}, mv, job::ResidualStatsSpec{}, job::MatrixEntropySpec{}, ppl});
  s.per_prompt = !ids;
  s.emit_token_ids = ids;  // implies per_prompt
  return s;
}

std::vector<job::ModelHandle> Pair() { return {RandomModel(true, 41, -1, "rope"), RandomModel(false, 42, -1, "nope")}; }

TEST(PerPrompt, OneResultPerPromptThatAveragesToTheAggregates) {
  RecordingSink sink;
  auto r = job::RunJob(PerPromptSpec(/*ids=*/true), Pair(), job::RunLimits{}, &sink, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  const auto prompts = sink.All<job::PromptResult>();
  ASSERT_EQ(prompts.size(), 2u * 3u);
  for (const std::string model : {"rope", "nope"}) {
    std::vector<job::PromptResult> mine;
    for (const auto& p : prompts)
      if (p.model == model) mine.push_back(p);
    ASSERT_EQ(mine.size(), 3u);
    const auto layers = sink.Layers(model);
    for (int32_t i = 0; i < 3; ++i) {
      EXPECT_EQ(mine[i].prompt, i);
      EXPECT_EQ(mine[i].num_tokens, static_cast<int32_t>(Prompts()[i].size()));
      EXPECT_EQ(mine[i].token_ids, Prompts()[i]);
      ASSERT_EQ(mine[i].layers.size(), layers.size());
      // baseline, bos_mlp@spike, qk_massive, qk_massive/control_seed_7
      ASSERT_EQ(mine[i].perplexity.size(), 4u);
      EXPECT_EQ(mine[i].perplexity[0].condition, "baseline");
      EXPECT_EQ(mine[i].perplexity[3].condition, "qk_massive/control_seed_7");
    }
    for (size_t l = 0; l < layers.size(); ++l) {
      double rate = 0, bos = 0, entropy = 0, massive_q = 0;
      for (const auto& p : mine) {
        ASSERT_TRUE(p.layers[l].sink_rate && p.layers[l].bos_norm && p.layers[l].entropy);
        ASSERT_EQ(p.layers[l].head_scores.size(), 2u);
        ASSERT_EQ(p.layers[l].massive_counts.size(), 3u);  // q, k, v
        rate += *p.layers[l].sink_rate / 3;
        bos += *p.layers[l].bos_norm / 3;
        entropy += *p.layers[l].entropy / 3;
        massive_q += p.layers[l].massive_counts[0] / 3.0;
      }
      EXPECT_NEAR(rate, layers[l].sink_rate->sink_rate.mean, 1e-12) << model << " L" << l;
      EXPECT_NEAR(bos, layers[l].residual_stats->bos_norm.mean, 1e-9) << model << " L" << l;
      EXPECT_NEAR(entropy, layers[l].matrix_entropy->entropy.mean, 1e-9) << model << " L" << l;
      EXPECT_NEAR(massive_q, layers[l].massive_values->tensors[0].count.mean, 1e-12) << model << " L" << l;
    }
    // Per-prompt NLL sums give back each condition's perplexity (T-1 weighting).
    for (size_t c = 0; c < 3; ++c) {
      double nll = 0, targets = 0;
      for (const auto& p : mine) nll += p.perplexity[c].nll_sum, targets += p.perplexity[c].num_targets;
      const auto* agg = sink.Ppl(model, mine[0].perplexity[c].condition);
      ASSERT_NE(agg, nullptr) << mine[0].perplexity[c].condition;
      EXPECT_NEAR(std::exp(nll / targets), agg->perplexity, 1e-9 * agg->perplexity) << model << " " << c;
    }
  }
  // Events: a model's prompts come after its perplexity results and before the next model's layers.
  int last_ppl = -1, first_prompt = -1;
  for (size_t i = 0; i < sink.events.size(); ++i) {
    if (const auto* p = std::get_if<job::PerplexityResult>(&sink.events[i]); p && p->model == "rope") last_ppl = i;
    if (const auto* p = std::get_if<job::PromptResult>(&sink.events[i]); p && first_prompt < 0) first_prompt = i;
  }
  EXPECT_GT(first_prompt, last_ppl);
}

TEST(PerPrompt, OffByDefaultTokenIdsOnlyWhenAskedAndPackingChangesNothing) {
  RecordingSink none;
  job::JobSpec plain = PerPromptSpec(false);
  plain.per_prompt = false;
  ASSERT_TRUE(job::RunJob(plain, Pair(), job::RunLimits{}, &none, NoCancel()).ok());
  EXPECT_TRUE(none.All<job::PromptResult>().empty());

  job::RunLimits one;
  one.pack_tokens = 0;
  RecordingSink packed, unpacked;
  ASSERT_TRUE(job::RunJob(PerPromptSpec(false), Pair(), job::RunLimits{}, &packed, NoCancel()).ok());
  ASSERT_TRUE(job::RunJob(PerPromptSpec(false), Pair(), one, &unpacked, NoCancel()).ok());
  const auto a = packed.All<job::PromptResult>(), b = unpacked.All<job::PromptResult>();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(a[i].token_ids.empty());
    ASSERT_EQ(a[i].perplexity.size(), b[i].perplexity.size());
    for (size_t c = 0; c < a[i].perplexity.size(); ++c)
      EXPECT_NEAR(a[i].perplexity[c].nll_sum, b[i].perplexity[c].nll_sum, 1e-5 * std::abs(b[i].perplexity[c].nll_sum));
    for (size_t l = 0; l < a[i].layers.size(); ++l)
      EXPECT_NEAR(*a[i].layers[l].bos_norm, *b[i].layers[l].bos_norm, 1e-5 * *b[i].layers[l].bos_norm);
  }
}

}  // namespace
}  // namespace sinkscope::analysis_test
