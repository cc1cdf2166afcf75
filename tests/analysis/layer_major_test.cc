// Layer-major execution: the baseline runs in waves (RunLimits.residual_memory_bytes), each wave's packed forwards
// going through layer l before layer l+1, and interventions start from the clean residual kept from it (prefix
// reuse). Every number must be what prompt-major execution gives — a budget of 1 byte makes every forward a wave of
// its own, which is prompt-major order — for every analysis and intervention on RoPE, NoPE and GQA models, with one
// wave and with several; partial layer events are monotone and the last one is the final one; cancellation stops
// at a layer boundary.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>

#include "tests/analysis/every_job.h"
#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

std::vector<std::vector<int32_t>> Prompts() {
  return {{1, 5, 9, 14, 3, 22, 7}, {1, 40, 41, 42}, {1, 8, 8, 8, 8, 8, 8, 8, 30, 31, 2}, {1, 3, 3, 60},
          {1, 17, 2, 9},           {1, 9},          {1, 33, 34, 35, 36, 37}};
}

std::vector<job::ModelHandle> Models() {
  return {RandomModel(true, 31, -1, "rope"), RandomModel(false, 32, -1, "nope"),
          RandomModel(true, 33, -1, "gqa", 3, 64, /*heads=*/4, /*kv_heads=*/2)};
}

job::RunLimits Limits(int32_t pack_tokens, int64_t residual_bytes) {
  job::RunLimits l;
  l.pack_tokens = pack_tokens;
  l.residual_memory_bytes = residual_bytes;
  return l;
}

constexpr int64_t kPromptMajor = 1;  // every forward alone in its wave: today's prompt-major order
constexpr int64_t kOneWave = 0;      // no budget: the whole baseline is one wave, every reusable residual kept
// Residuals of `tokens` tokens of the GQA model (d = 32, head_dim 8, fp32; the others have d = 16 and fit half as
// many more): waves of one to three forwards.
constexpr int64_t SeveralWaves(int32_t pack) { return (pack > 0 ? 20 : 12) * (32 + 16) * 4; }

int Waves(const job::JobSpec& spec, const std::vector<job::ModelHandle>& models, const job::RunLimits& limits) {
  auto plan = job::BuildPlan(spec, models, limits);
  EXPECT_TRUE(plan.ok()) << plan.status();
  int waves = 0;
  for (const job::Pass& p : plan->passes)
    if (p.kind == job::Pass::Kind::kBaseline && p.model == 0) waves = std::max(waves, p.wave + 1);
  return waves;
}

// Largest relative difference between two runs' numbers (every key of `a` must be in `b`).
double Compare(const std::map<std::string, double>& a, const std::map<std::string, double>& b, const char* what) {
  EXPECT_EQ(a.size(), b.size()) << what;
  double worst = 0;
  std::string worst_key;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end()) {
      ADD_FAILURE() << what << ": " << k << " missing";
      continue;
    }
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(it->second)) << what << ": " << k;
      continue;
    }
    const double rel = std::abs(it->second - v) / std::max(1.0, std::abs(v));
    if (rel > worst) worst = rel, worst_key = k;
    EXPECT_LE(rel, 1e-6) << what << ": " << k << ": " << v << " vs " << it->second;
  }
  std::cout << what << ": " << a.size() << " numbers; largest relative difference " << worst
            << (worst_key.empty() ? "" : " (" + worst_key + ")") << "\n";
  return worst;
}

TEST(LayerMajor, EveryAnalysisAndInterventionEqualsPromptMajor) {
  const auto models = Models();
  const job::JobSpec spec = Spec({"rope", "nope", "gqa"}, Prompts(), EveryAnalysis());
  for (int32_t pack : {0, 20}) {  // one prompt per forward, and packs of 2-4 prompts
    RecordingSink prompt_major, one_wave, several;
    ASSERT_EQ(Waves(spec, models, Limits(pack, kOneWave)), 1);
    ASSERT_GT(Waves(spec, models, Limits(pack, SeveralWaves(pack))), 1);
    ASSERT_GT(Waves(spec, models, Limits(pack, kPromptMajor)), Waves(spec, models, Limits(pack, SeveralWaves(pack))));
    auto r0 = job::RunJob(spec, models, Limits(pack, kPromptMajor), &prompt_major, NoCancel());
    auto r1 = job::RunJob(spec, models, Limits(pack, kOneWave), &one_wave, NoCancel());
    auto r2 = job::RunJob(spec, models, Limits(pack, SeveralWaves(pack)), &several, NoCancel());
    ASSERT_TRUE(r0.ok() && r1.ok() && r2.ok()) << r0.status() << r1.status() << r2.status();
    const auto base = Numbers(prompt_major);
    ASSERT_GT(base.size(), 1000u);
    const std::string tag = pack == 0 ? "unpacked" : "packed";
    EXPECT_EQ(Compare(base, Numbers(one_wave), (tag + ", one wave").c_str()), 0.0);  // not a bit moves
    EXPECT_EQ(Compare(base, Numbers(several), (tag + ", several waves").c_str()), 0.0);
    for (size_t m = 0; m < models.size(); ++m) {
      EXPECT_EQ(r1->models[m].num_forward_passes, r0->models[m].num_forward_passes);
      // One wave keeps the clean residual at L1 (bos_mlp@L1) and at the spike layer: fewer layers computed.
      EXPECT_LE(r1->models[m].layers_computed, r0->models[m].layers_computed);
    }
    EXPECT_LT(r1->models[0].layers_computed, r0->models[0].layers_computed);
    EXPECT_EQ(r0->models[0].layers_computed, 3 * r0->models[0].num_forward_passes);  // nothing reused
  }
}

// Matrix entropy's spectra solved on a background thread while the next layer runs (what a GPU model does) or at
// once (what a CPU model does), forced either way on the test device: not a bit moves, per prompt included, and the
// layer events are the same events in the same order (each layer streams a layer later), for one wave, several and
// prompt-major order, last layer read after the final norm or not.
TEST(LayerMajor, BackgroundSpectraChangeNoNumberNorTheEvents) {
  const auto models = Models();
  job::ResidualStatsSpec rs;
  rs.final_norm_last_layer = true;
  job::MatrixEntropySpec me;
  me.final_norm_last_layer = true;
  std::vector<job::JobSpec> specs = {
      Spec({"rope", "nope", "gqa"}, Prompts(), EveryAnalysis()),
      Spec({"gqa", "nope"}, Prompts(), {job::SinkRateSpec{}, rs, me, EveryIntervention()})};
  specs[0].per_prompt = true;
  auto sequence = [](const RecordingSink& sink) {
    std::vector<std::string> seq;
    for (const auto& e : sink.events) {
      if (const auto* r = std::get_if<job::LayerResult>(&e))
        seq.push_back(absl::StrCat(r->model, "/L", r->layer, " ", r->prompts_done, r->partial ? " partial" : ""));
      if (const auto* p = std::get_if<job::PerplexityResult>(&e)) seq.push_back(p->model + "/" + p->condition);
    }
    return seq;
  };
  // Packs of 2-4 prompts only (one prompt per forward adds nothing here: several waves and prompt-major order
  // already flush several forwards per layer), which keeps this test short on a GPU too (gpu-check's test budget).
  const int32_t pack = 20;
  for (size_t sp = 0; sp < specs.size(); ++sp)
    for (int64_t budget : {kOneWave, SeveralWaves(pack), kPromptMajor}) {
      job::RunLimits plain = Limits(pack, budget), overlap = plain;
      plain.host_work = job::RunLimits::HostWork::kAtOnce;
      overlap.host_work = job::RunLimits::HostWork::kBackground;
      RecordingSink a, b;
      const std::vector<job::ModelHandle> handles =
          sp == 0 ? models : std::vector<job::ModelHandle>{models[2], models[1]};
      auto ra = job::RunJob(specs[sp], handles, plain, &a, NoCancel());
      auto rb = job::RunJob(specs[sp], handles, overlap, &b, NoCancel());
      ASSERT_TRUE(ra.ok() && rb.ok()) << ra.status() << rb.status();
      const std::string tag = absl::StrCat("spec ", sp, ", pack ", pack, ", budget ", budget);
      EXPECT_EQ(Compare(Numbers(a), Numbers(b), tag.c_str()), 0.0);
      EXPECT_EQ(sequence(a), sequence(b)) << tag;
      const auto pa = a.All<job::PromptResult>(), pb = b.All<job::PromptResult>();
      ASSERT_EQ(pa.size(), pb.size()) << tag;
      for (size_t i = 0; i < pa.size(); ++i) {
        ASSERT_EQ(pa[i].layers.size(), pb[i].layers.size()) << tag;
        for (size_t l = 0; l < pa[i].layers.size(); ++l) {
          EXPECT_EQ(pa[i].layers[l].entropy, pb[i].layers[l].entropy) << tag << " prompt " << i << " L" << l;
          EXPECT_EQ(pa[i].layers[l].anisotropy, pb[i].layers[l].anisotropy) << tag;
        }
      }
    }
}

TEST(LayerMajor, AModelsOwnBudgetsOverrideTheLimits) {
  // The server sizes budgets per model from its device (ModelHandle); the plan follows the model's, not RunLimits'.
  auto models = Models();
  const job::JobSpec spec = Spec({"rope", "nope", "gqa"}, Prompts(), EveryAnalysis());
  const int prompt_major = Waves(spec, models, Limits(20, kPromptMajor));
  ASSERT_GT(prompt_major, 1);
  models[0].residual_memory_bytes = kPromptMajor;
  EXPECT_EQ(Waves(spec, models, Limits(20, kOneWave)), prompt_major);
  models[0].residual_memory_bytes = kOneWave;
  EXPECT_EQ(Waves(spec, models, Limits(20, kPromptMajor)), 1);
  // A forward budget no prompt fits: refused before anything runs, naming the budget.
  models[1].forward_memory_bytes = 1;
  auto plan = job::BuildPlan(spec, models, Limits(20, kOneWave));
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(plan.status().message().find("forward_memory_bytes"), std::string::npos) << plan.status();
}

TEST(LayerMajor, PerPromptResultsUnchanged) {
  const auto models = Models();
  job::JobSpec spec = Spec({"rope", "gqa"}, Prompts(), EveryAnalysis());
  spec.per_prompt = true;
  const std::vector<job::ModelHandle> two = {models[0], models[2]};
  RecordingSink a, b;
  ASSERT_TRUE(job::RunJob(spec, two, Limits(20, kPromptMajor), &a, NoCancel()).ok());
  ASSERT_TRUE(job::RunJob(spec, two, Limits(20, SeveralWaves(20)), &b, NoCancel()).ok());
  const auto pa = a.All<job::PromptResult>(), pb = b.All<job::PromptResult>();
  ASSERT_EQ(pa.size(), 2 * Prompts().size());
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].prompt, pb[i].prompt);
    ASSERT_EQ(pa[i].perplexity.size(), pb[i].perplexity.size());
    for (size_t c = 0; c < pa[i].perplexity.size(); ++c) {
      EXPECT_EQ(pa[i].perplexity[c].condition, pb[i].perplexity[c].condition);
      EXPECT_EQ(pa[i].perplexity[c].nll_sum, pb[i].perplexity[c].nll_sum) << i << " " << c;
    }
    ASSERT_EQ(pa[i].layers.size(), pb[i].layers.size());
    for (size_t l = 0; l < pa[i].layers.size(); ++l) {
      EXPECT_EQ(pa[i].layers[l].sink_rate, pb[i].layers[l].sink_rate);
      EXPECT_EQ(pa[i].layers[l].head_scores, pb[i].layers[l].head_scores);
      EXPECT_EQ(pa[i].layers[l].bos_norm, pb[i].layers[l].bos_norm);
      EXPECT_EQ(pa[i].layers[l].entropy, pb[i].layers[l].entropy);
      EXPECT_EQ(pa[i].layers[l].massive_counts, pb[i].layers[l].massive_counts);
    }
  }
}

TEST(LayerMajor, PartialEventsAreMonotoneAndTheLastIsTheFinal) {
  const auto models = Models();
  job::ResidualStatsSpec rs;
  rs.final_norm_last_layer = true;  // the last layer waits for each wave's final norms
  const job::JobSpec spec =
      Spec({"rope", "nope"}, Prompts(), {job::SinkRateSpec{}, rs, job::MatrixEntropySpec{}, EveryIntervention()});
  const std::vector<job::ModelHandle> two = {models[0], models[1]};
  RecordingSink waves, one;
  ASSERT_TRUE(job::RunJob(spec, two, Limits(20, SeveralWaves(20)), &waves, NoCancel()).ok());
  ASSERT_TRUE(job::RunJob(spec, two, Limits(20, kOneWave), &one, NoCancel()).ok());
  const int32_t P = static_cast<int32_t>(Prompts().size());
  for (const std::string model : {"rope", "nope"}) {
    std::map<int32_t, std::vector<job::LayerResult>> by_layer;
    for (const auto& r : waves.All<job::LayerResult>())
      if (r.model == model) by_layer[r.layer].push_back(r);
    const auto finals = one.Layers(model);
    ASSERT_EQ(by_layer.size(), finals.size());
    for (const auto& [l, events] : by_layer) {
      ASSERT_GT(events.size(), 1u) << model << " L" << l;  // streamed after every wave
      for (size_t i = 0; i < events.size(); ++i) {
        EXPECT_EQ(events[i].prompts_total, P);
        EXPECT_EQ(events[i].partial, i + 1 < events.size());
        if (i > 0) {
          EXPECT_GT(events[i].prompts_done, events[i - 1].prompts_done);
        }
        EXPECT_EQ(events[i].sink_rate->sink_rate.n, events[i].prompts_done);  // it covers what it says
      }
      const job::LayerResult& last = events.back();
      EXPECT_EQ(last.prompts_done, P);
      const job::LayerResult& fin = finals[l];
      EXPECT_FALSE(fin.partial);
      EXPECT_EQ(fin.prompts_done, P);
      EXPECT_EQ(last.sink_rate->sink_rate.mean, fin.sink_rate->sink_rate.mean);
      EXPECT_EQ(last.sink_rate->sink_rate.std, fin.sink_rate->sink_rate.std);
      EXPECT_EQ(last.residual_stats->ratio.mean, fin.residual_stats->ratio.mean);
      EXPECT_EQ(last.matrix_entropy->entropy.mean, fin.matrix_entropy->entropy.mean);
    }
  }
  // Events stay in order: within a wave layers ascend, and a model's layer events all precede its perplexities.
  int last_layer = -1;
  std::string last_model;
  bool ppl_seen = false;
  for (const auto& e : waves.events) {
    if (const auto* r = std::get_if<job::LayerResult>(&e)) {
      if (r->model != last_model) last_layer = -1, last_model = r->model, ppl_seen = false;
      EXPECT_FALSE(ppl_seen) << r->model << " L" << r->layer;
      if (r->layer != 0) {
        EXPECT_EQ(r->layer, last_layer + 1) << r->model;
      }
      last_layer = r->layer;
    }
    if (std::holds_alternative<job::PerplexityResult>(e)) ppl_seen = true;
  }
}

TEST(LayerMajor, PrefixReuseGivesIdenticalPerplexitiesAndCountsTheLayersRun) {
  // L = 4: interventions that first act at layers 1, 2 and 3, and at the spike layer.
  const auto model = RandomModel(true, 51, -1, "rope4", /*layers=*/4);
  job::PerplexitySpec ppl;
  job::BosMlpAblation spike, jump, at2;
  jump.spike_rule = job::SpikeRule::kArgmaxJump;
  at2.layer = 2;
  job::HeadAblation heads;
  heads.heads = {{3, 1}};
  job::ActivationEdit e;
  e.hook = "blocks.1.hook_resid_mid";
  e.op = job::EditOp::kScale;
  e.value = 0.5;
  ppl.interventions = {{"", spike}, {"", jump}, {"", at2}, {"", heads}, {"", std::vector<job::ActivationEdit>{e}}};
  const job::JobSpec spec = Spec({"rope4"}, Prompts(), {job::ResidualStatsSpec{}, ppl});
  RecordingSink full, reused;
  auto r0 = job::RunJob(spec, {model}, Limits(20, kPromptMajor), &full, NoCancel());
  auto r1 = job::RunJob(spec, {model}, Limits(20, kOneWave), &reused, NoCancel());
  ASSERT_TRUE(r0.ok() && r1.ok()) << r0.status() << r1.status();
  const auto a = full.All<job::PerplexityResult>(), b = reused.All<job::PerplexityResult>();
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].condition, b[i].condition);
    EXPECT_EQ(a[i].perplexity, b[i].perplexity) << a[i].condition;  // bitwise
    EXPECT_EQ(a[i].mean_nll, b[i].mean_nll) << a[i].condition;
    if (i > 0) {
      EXPECT_NE(a[i].perplexity, a[0].perplexity) << a[i].condition;  // the intervention did something
    }
  }
  const int32_t forwards = r1->models[0].num_forward_passes, packs = forwards / 6;
  ASSERT_EQ(forwards, r0->models[0].num_forward_passes);
  EXPECT_EQ(r0->models[0].layers_computed, 4 * forwards);
  // Baseline 4 layers per pack; then the spike-layer ablations start at their spike layers, L2 at 2, the head
  // ablation at 3, the edit at 1.
  const int32_t s_ratio = b[1].resolved_layer, s_jump = b[2].resolved_layer;
  const int64_t expected = packs * (4 + (4 - s_ratio) + (4 - s_jump) + (4 - 2) + (4 - 3) + (4 - 1));
  EXPECT_EQ(r1->models[0].layers_computed, expected) << "spikes at " << s_ratio << ", " << s_jump;
  // A budget that holds the wave but nothing more: no reuse, the same numbers.
  RecordingSink tight;
  int64_t tokens = 0;
  for (const auto& p : Prompts()) tokens += static_cast<int64_t>(p.size());
  auto r2 = job::RunJob(spec, {model}, Limits(20, tokens * (16 + 16) * 4), &tight, NoCancel());
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r2->models[0].layers_computed, 4 * forwards);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(tight.All<job::PerplexityResult>()[i].perplexity, a[i].perplexity);
}

TEST(LayerMajor, PrefixReuseStartsQkDisruptionsAtTheirFirstSelectedLayer) {
  // L = 4 with a massive Q dim planted from layer 2: the disruption (and its controls, which select as many dims per
  // layer) first acts at 2, known only once the one wave has left layer 2.
  const auto model = WithPlantedQ(RandomModel(true, 61, -1, "qk4", /*layers=*/4), 2, "qk4");
  job::PerplexitySpec ppl;
  job::QkMassiveDisruption qk;
  qk.control_seeds = {7, 8};
  job::QkMassiveDisruption elsewhere = qk;  // identified on other prompts: known after the baseline, no reuse
  elsewhere.control_seeds = {};
  elsewhere.identify_on = job::Inputs{};
  elsewhere.identify_on->token_ids = {{1, 4, 5, 6, 7}, {1, 9, 9, 9}};
  ppl.interventions = {{"", qk}, {"other", elsewhere}};
  const job::JobSpec spec = Spec({"qk4"}, Prompts(), {ppl});
  RecordingSink full, reused;
  auto r0 = job::RunJob(spec, {model}, Limits(20, kPromptMajor), &full, NoCancel());
  auto r1 = job::RunJob(spec, {model}, Limits(20, kOneWave), &reused, NoCancel());
  ASSERT_TRUE(r0.ok() && r1.ok()) << r0.status() << r1.status();
  const auto a = full.All<job::PerplexityResult>(), b = reused.All<job::PerplexityResult>();
  ASSERT_EQ(a.size(), 3u);  // baseline, qk_massive (with its 2 controls), other
  ASSERT_EQ(a.size(), b.size());
  EXPECT_NE(a[1].detail.find(" in 2 layers"), std::string::npos) << a[1].detail;  // layers 2 and 3 only
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].condition, b[i].condition);
    EXPECT_EQ(a[i].perplexity, b[i].perplexity) << a[i].condition;  // bitwise
    EXPECT_EQ(a[i].control_perplexities, b[i].control_perplexities) << a[i].condition;
    if (i > 0) {
      EXPECT_NE(a[i].perplexity, a[0].perplexity) << a[i].condition;
    }
  }
  ASSERT_EQ(b[1].control_perplexities.size(), 2u);
  // Per pack of the job's prompts: baseline, the disruption and 2 controls, other; plus one identify forward (its two
  // prompts fit one pack). Baseline and identify run all 4 layers; qk_massive and its controls start at layer 2, and
  // so does "other" (planted from 2 as well): the residual kept for the first serves any intervention acting >= 2.
  const int64_t forwards = r1->models[0].num_forward_passes, packs = (forwards - 1) / 5;
  ASSERT_EQ(forwards, 5 * packs + 1);
  ASSERT_EQ(forwards, r0->models[0].num_forward_passes);
  EXPECT_EQ(r0->models[0].layers_computed, 4 * forwards);
  EXPECT_EQ(r1->models[0].layers_computed, packs * (4 + 4 * (4 - 2)) + 4);
  // Alone, a disruption identified on other prompts is known only after the baseline: nothing was kept for it.
  ppl.interventions = {{"other", elsewhere}};
  RecordingSink alone;
  auto r2 = job::RunJob(Spec({"qk4"}, Prompts(), {ppl}), {model}, Limits(20, kOneWave), &alone, NoCancel());
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r2->models[0].layers_computed, 4 * r2->models[0].num_forward_passes);
  EXPECT_EQ(alone.All<job::PerplexityResult>()[1].perplexity, a[2].perplexity);
}

TEST(LayerMajor, CancellationStopsAtALayerBoundaryOfTheWave) {
  const auto m = RandomModel(true, 23);
  // Unpacked, one wave of 7 forwards, L = 3: 7 checks before the forwards begin, then one per forward and layer.
  for (int stop_at : {3, 7 + 7 + 2, 7 + 3 * 7}) {
    int checks = 0;
    RecordingSink sink;
    auto r = job::RunJob(Spec({m.name}, Prompts(), {job::SinkRateSpec{}}), {m}, Limits(0, kOneWave), &sink, [&] {
      return ++checks >= stop_at ? absl::CancelledError("stop") : absl::OkStatus();
    });
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
    EXPECT_EQ(checks, stop_at);
    EXPECT_TRUE(sink.All<job::Summary>().empty());
    // Only layers every forward of the wave had passed were streamed.
    const int passed = stop_at <= 7 ? 0 : (stop_at - 8) / 7;  // layer l streams after check 7 + 7(l + 1)
    EXPECT_EQ(static_cast<int>(sink.Layers(m.name).size()), passed) << stop_at;
  }
}

}  // namespace
}  // namespace sinkscope::analysis_test
