// Analyses on hand-built models whose answers are known in closed form (test_models.h), through the job API.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/analysis/analysis.h"
#include "common/analysis/interventions.h"
#include "common/model/llama.h"
#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

using job::JobSpec;

double Harmonic(int n) {
  double h = 0;
  for (int i = 1; i <= n; ++i) h += 1.0 / i;
  return h;
}

std::vector<int32_t> Prompt(int T, int first_other = 2) {
  std::vector<int32_t> ids{1};
  for (int t = 1; t < T; ++t) ids.push_back(first_other + (t % 13));
  return ids;
}

absl::StatusOr<job::Summary> RunOn(const JobSpec& spec, const std::vector<job::ModelHandle>& models,
                                   RecordingSink* sink) {
  return job::RunJob(spec, models, job::RunLimits{}, sink, NoCancel());
}

job::SinkRateSpec Sink(double tau, job::QueryRows rows, job::AttentionSource src) {
  job::SinkRateSpec s;
  s.tau = tau;
  s.query_rows = rows;
  s.source = src;
  return s;
}

// ------------------------------------------------------------------------------------------------- sink rate

TEST(KnownAnswers, AttentionForcedOntoBosGivesSinkRateOne) {
  for (auto src : {job::AttentionSource::kModel, job::AttentionSource::kPreRotary}) {
    auto m = BosSinkModel(/*rope=*/false);
    RecordingSink sink;
    auto r = RunOn(Spec({m.name}, {Prompt(8), Prompt(5), Prompt(12)}, {Sink(1.0, job::QueryRows::kExcludeBos, src)}),
                   {m}, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    const auto layers = sink.Layers(m.name);
    ASSERT_EQ(layers.size(), 2u);
    for (const auto& l : layers) {
      ASSERT_TRUE(l.sink_rate);
      EXPECT_EQ(l.sink_rate->sink_rate.mean, 1.0);  // even at τ = 1: A[t,0] is exactly 1 in fp32
      EXPECT_EQ(l.sink_rate->sink_rate.std, 0.0);
      EXPECT_EQ(l.sink_rate->sink_rate.n, 3);
      for (double s : l.sink_rate->head_scores) EXPECT_NEAR(s, 1.0, 1e-12);
    }
    EXPECT_EQ(r->models[0].metrics.at("sink_rate.mean"), 1.0);
  }
}

TEST(KnownAnswers, RopeRotatesTheQueryAwayFromBosButPreRotaryDoesNot) {
  // The same weights with rotary: score(t,0) = s·cos(t) (angle t on the (0, hd/2) pair, key 0 unrotated).
  auto m = BosSinkModel(/*rope=*/true);
  const int T = 8;
  const double s = BosSinkLogit();
  double all = 1.0, excl = 0.0;
  for (int t = 1; t < T; ++t) {
    const double a = 1.0 / (1.0 + t * std::exp(-s * std::cos(static_cast<double>(t))));
    all += a;
    excl += a;
  }
  all /= T;
  excl /= T - 1;
  EXPECT_NEAR(all, 5.0 / 8.0, 1e-9);  // rows 1,5,6,7 on BOS; rows 2,3,4 away (cos t < 0)
  struct Case {
    job::QueryRows rows;
    job::AttentionSource src;
    double want;
  } cases[] = {{job::QueryRows::kAll, job::AttentionSource::kModel, all},
               {job::QueryRows::kExcludeBos, job::AttentionSource::kModel, excl},
               {job::QueryRows::kAll, job::AttentionSource::kPreRotary, 1.0},
               {job::QueryRows::kExcludeBos, job::AttentionSource::kPreRotary, 1.0}};
  for (const auto& c : cases) {
    RecordingSink sink;
    auto r = RunOn(Spec({m.name}, {Prompt(T)}, {Sink(0.6, c.rows, c.src)}), {m}, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    for (const auto& l : sink.Layers(m.name)) {
      for (double sc : l.sink_rate->head_scores) EXPECT_NEAR(sc, c.want, 1e-6);
      EXPECT_EQ(l.sink_rate->sink_rate.mean, c.want >= 0.6 ? 1.0 : 0.0);
      EXPECT_DOUBLE_EQ(l.sink_rate->tau, 0.6);
    }
  }
}

TEST(KnownAnswers, UniformAttentionScoresHarmonicMeans) {
  // q = 0: A[t,0] = 1/(t+1). ALL rows: H_T/T (0.3397 at T=8, 0.5208 at T=4); EXCLUDE_BOS: (H_T−1)/(T−1).
  for (bool rope : {false, true}) {
    for (auto src : {job::AttentionSource::kModel, job::AttentionSource::kPreRotary}) {
      auto m = UniformAttentionModel(rope);
      for (auto rows : {job::QueryRows::kAll, job::QueryRows::kExcludeBos}) {
        RecordingSink sink;
        auto r = RunOn(Spec({m.name}, {Prompt(8), Prompt(4)}, {Sink(0.3, rows, src)}), {m}, &sink);
        ASSERT_TRUE(r.ok()) << r.status();
        const bool all = rows == job::QueryRows::kAll;
        const double s8 = all ? Harmonic(8) / 8 : (Harmonic(8) - 1) / 7;
        const double s4 = all ? Harmonic(4) / 4 : (Harmonic(4) - 1) / 3;
        const double r8 = s8 >= 0.3 ? 1 : 0, r4 = s4 >= 0.3 ? 1 : 0;
        for (const auto& l : sink.Layers(m.name)) {
          for (double sc : l.sink_rate->head_scores) EXPECT_NEAR(sc, (s8 + s4) / 2, 1e-6);
          EXPECT_DOUBLE_EQ(l.sink_rate->sink_rate.mean, (r8 + r4) / 2);
          EXPECT_DOUBLE_EQ(l.sink_rate->sink_rate.std, std::abs(r8 - r4) / 2);
        }
      }
    }
  }
  // The known study bias: uniform attention with row 0 included is a "sink" at τ = 0.3 for T = 8.
  EXPECT_GE(Harmonic(8) / 8, 0.3);
  EXPECT_LT((Harmonic(8) - 1) / 7, 0.3);
}

TEST(KnownAnswers, SinkRateSkipsPromptsWithoutRows) {
  auto m = UniformAttentionModel(false);
  RecordingSink sink;
  auto r =
      RunOn(Spec({m.name}, {{1}, Prompt(8)}, {Sink(0.3, job::QueryRows::kExcludeBos, job::AttentionSource::kModel)}),
            {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& l : sink.Layers(m.name)) {
    EXPECT_EQ(l.sink_rate->sink_rate.n, 1);
    EXPECT_NEAR(l.sink_rate->head_scores[0], (Harmonic(8) - 1) / 7, 1e-6);
  }
}

// ------------------------------------------------------------------------------------------- massive values

TEST(KnownAnswers, PlantedMassiveDimensionCountsOne) {
  auto m = PlantedMassiveModel();
  for (auto scope : {job::ThresholdScope::kLayer, job::ThresholdScope::kHead}) {
    job::MassiveValuesSpec mv;
    mv.scope = scope;
    mv.top_k = 3;
    RecordingSink sink;
    auto r = RunOn(Spec({m.name}, {Prompt(10), Prompt(6)}, {mv}), {m}, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    const auto layers = sink.Layers(m.name);
    ASSERT_EQ(layers.size(), 2u);
    for (const auto& l : layers) {
      ASSERT_TRUE(l.massive_values);
      ASSERT_EQ(l.massive_values->tensors.size(), 3u);
      const auto& q = l.massive_values->tensors[0];
      EXPECT_EQ(q.tensor, job::QkvTensor::kQ);
      EXPECT_EQ(q.count.mean, 1.0);
      EXPECT_EQ(q.count.std, 0.0);
      ASSERT_EQ(q.top.size(), 3u);
      EXPECT_EQ(q.top[0].head, 1);
      EXPECT_EQ(q.top[0].dim, 2);
      EXPECT_GT(q.top[0].value, q.threshold);
      EXPECT_GT(q.top[0].value, q.top[1].value);
      EXPECT_GT(q.gini, 0.5);  // one entry holds most of the mass
      EXPECT_EQ(l.massive_values->tensors[1].count.mean, 0.0) << "K";
      EXPECT_EQ(l.massive_values->tensors[2].count.mean, 0.0) << "V";
    }
    EXPECT_EQ(r->models[0].metrics.at("massive_values.q.total"), 2.0);  // 1 per layer, 2 layers
    EXPECT_EQ(r->models[0].metrics.at("massive_values.q.total_std"), 0.0);
    EXPECT_EQ(r->models[0].metrics.at("massive_values.k.total"), 0.0);
  }
}

TEST(KnownAnswers, GiniInFloat64) {
  EXPECT_DOUBLE_EQ(analysis::Gini({0, 0, 0, 1}), 0.75);
  EXPECT_DOUBLE_EQ(analysis::Gini({2, 2, 2, 2}), 0.0);
  EXPECT_DOUBLE_EQ(analysis::Gini({4, 1, 3, 2}), 0.25);
  EXPECT_DOUBLE_EQ(analysis::Gini({0, 0}), 0.0);
  // The study's fp16 overflow (n·Σx > 65504) gave −(n+1)/n for every layer; float64 does not.
  std::vector<double> big(4096, 60000.0);
  big[0] = 0;
  EXPECT_NEAR(analysis::Gini(big), 1.0 / 4096, 1e-12);
}

TEST(KnownAnswers, QkDisruptionFindsThePlantedDimsAndControlsKeepCounts) {
  auto m = PlantedMassiveModel();
  job::QkMassiveDisruption q;
  q.control_seeds = {42, 43};
  job::PerplexitySpec ppl;
  ppl.interventions.push_back(job::Intervention{"", q});
  RecordingSink sink;
  auto r = RunOn(Spec({m.name}, {Prompt(10), Prompt(6)}, {ppl}), {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto* p = sink.Ppl(m.name, "qk_massive");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->disrupted_dims, 2);  // the planted Q dim of each layer; no K dim
  EXPECT_NE(p->detail.find("2 dims in 2 layers"), std::string::npos) << p->detail;
  EXPECT_EQ(p->control_perplexities.size(), 2u);
  EXPECT_EQ(p->control.n, 2);

  // Control masks: same per-layer/per-tensor counts, deterministic per seed, different across seeds.
  const analysis::ModelDims dims = analysis::ModelDims::From(m.model->config());
  analysis::QkMasks masks;
  masks.q = {{10}, {3, 10}};
  masks.k = {{}, {7}};
  masks.kept_layers = {0, 1};
  auto a = analysis::RandomControlMasks(masks, dims, 42), b = analysis::RandomControlMasks(masks, dims, 42),
       c = analysis::RandomControlMasks(masks, dims, 7);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(a.q[l].size(), masks.q[l].size());
    EXPECT_EQ(a.k[l].size(), masks.k[l].size());
    EXPECT_EQ(a.q[l], b.q[l]);
    EXPECT_EQ(a.k[l], b.k[l]);
  }
  EXPECT_TRUE(a.q != c.q || a.k != c.k);
}

// ------------------------------------------------------------------------------ residual stats and entropy

double Entropy(std::vector<double> lam, int extra_zeros) {
  const double F = std::accumulate(lam.begin(), lam.end(), 0.0);
  double h = 0;
  for (double l : lam) h -= l / F * std::log(l / F);
  return h - extra_zeros * 1e-10 * std::log(1e-10);
}

TEST(KnownAnswers, KnownGramSpectrumGivesKnownEntropy) {
  auto m = OrthogonalEmbeddingModel(false);  // resid_post = embeddings: 1·e0, 2·e1, 3·e2 (d = 8)
  job::MatrixEntropySpec me;
  me.normalized = true;
  // T = 3 ≤ d: Gram diag(1, 4, 9). T = 12 > d: XᵀX has eigenvalues 1, 6·4, 5·9 (+ 9 zeros in the T×T Gram).
  struct Case {
    std::vector<int32_t> ids;
    std::vector<double> eigen;
    int zeros;
    double anisotropy, log_rank;
  };
  for (const Case& c : {Case{{1, 2, 3}, {1, 4, 9}, 0, 9.0 / 14.0, std::log(3.0)},
                        Case{{1, 2, 2, 3, 3, 3, 2, 2, 2, 2, 3, 3}, {1, 24, 45}, 9, 45.0 / 70.0, std::log(8.0)}}) {
    RecordingSink sink;
    auto r = RunOn(Spec({m.name}, {c.ids}, {me}), {m}, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    const double h = Entropy(c.eigen, c.zeros);
    for (const auto& l : sink.Layers(m.name)) {
      EXPECT_NEAR(l.matrix_entropy->entropy.mean, h, 1e-12) << c.ids.size();
      EXPECT_NEAR(l.matrix_entropy->anisotropy.mean, c.anisotropy, 1e-12);
      EXPECT_NEAR(l.matrix_entropy->normalized_entropy.mean, h / c.log_rank, 1e-12);
      EXPECT_FALSE(l.matrix_entropy->post_final_norm);
    }
    EXPECT_NEAR(r->models[0].metrics.at("entropy.min"), h, 1e-12);
  }
}

TEST(KnownAnswers, HostParallelEigensolverGivesTheKnownSpectrum) {
  // The path a GPU batch takes (copied to the host, one matrix per thread) on matrices of known spectrum.
  for (const auto& [B, n] : {std::pair<int64_t, int64_t>{9, 40}, {3, 1}, {1, 64}}) {
    const EigensolverErrors e = HostEigensolverErrors(B, n, 3);
    EXPECT_LT(e.host_vs_known, 1e-11) << B << "x" << n;
    EXPECT_LT(e.host_vs_batched, 1e-12) << B << "x" << n;
    EXPECT_LT(e.on_test_device_vs_known, 1e-11) << TestDevice();  // BatchEigvalsh on the test device's batch
  }
}

TEST(KnownAnswers, DegenerateAndNonFiniteInputs) {
  const double nan = std::nan("");
  auto z = Reduce({{0, 0, 0}, {0, 0, 0}});
  EXPECT_EQ(z.entropy, 0.0);  // the study's fallback for X = 0
  EXPECT_EQ(z.anisotropy, 1.0);
  auto n = Reduce({{1, 0, 0}, {0, static_cast<float>(nan), 0}});
  EXPECT_TRUE(std::isnan(n.entropy));  // NaN activations are reported, not hidden behind (0, 1)
  EXPECT_TRUE(std::isnan(n.anisotropy));
  EXPECT_TRUE(std::isnan(n.mean_other_norm));
  auto one = Reduce({{3, 4}});  // T = 1: one eigenvalue, ratio 1 (study), normalised entropy 0
  EXPECT_NEAR(one.entropy, 0.0, 1e-15);
  EXPECT_EQ(one.anisotropy, 1.0);
  EXPECT_EQ(one.normalized, 0.0);
  EXPECT_EQ(one.bos_norm, 5.0);
  EXPECT_EQ(one.mean_other_norm, 0.0);
  EXPECT_EQ(one.ratio, 1.0);
  auto two = Reduce({{3, 4}, {0, 2}});  // Gram [[25, 8], [8, 4]]: eigenvalues (29 ± sqrt(21² + 256))/2
  const double d = std::sqrt(21.0 * 21.0 + 4 * 64.0), l1 = (29 + d) / 2, l2 = (29 - d) / 2;
  EXPECT_NEAR(two.entropy, -(l1 / 29 * std::log(l1 / 29) + l2 / 29 * std::log(l2 / 29)), 1e-12);
  EXPECT_NEAR(two.anisotropy, l1 / 29, 1e-12);
  EXPECT_NEAR(two.normalized, two.entropy / std::log(2.0), 1e-12);
  EXPECT_NEAR(two.ratio, 5.0 / (2.0 + 1e-8), 1e-12);
}

TEST(KnownAnswers, ResidualNormsAndFinalNormSwitch) {
  auto m = OrthogonalEmbeddingModel(false);
  for (bool final_norm : {false, true}) {
    job::ResidualStatsSpec rs;
    rs.final_norm_last_layer = final_norm;
    RecordingSink sink;
    auto r = RunOn(Spec({m.name}, {{1, 2, 3}}, {rs}), {m}, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    const auto layers = sink.Layers(m.name);
    ASSERT_EQ(layers.size(), 2u);
    EXPECT_NEAR(layers[0].residual_stats->bos_norm.mean, 1.0, 1e-12);
    EXPECT_NEAR(layers[0].residual_stats->mean_other_norm.mean, 2.5, 1e-12);
    EXPECT_NEAR(layers[0].residual_stats->ratio.mean, 1.0 / (2.5 + 1e-8), 1e-12);
    EXPECT_FALSE(layers[0].residual_stats->post_final_norm);
    const auto& last = *layers[1].residual_stats;
    EXPECT_EQ(last.post_final_norm, final_norm);
    if (final_norm) {  // RMSNorm with unit weight: ‖a·e_i / sqrt(a²/8 + eps)‖ ≈ √8
      const double eps = 1e-6;
      const double b = 1 / std::sqrt(1.0 / 8 + eps),
                   o = (2 / std::sqrt(4.0 / 8 + eps) + 3 / std::sqrt(9.0 / 8 + eps)) / 2;
      EXPECT_NEAR(last.bos_norm.mean, b, 1e-5);
      EXPECT_NEAR(last.mean_other_norm.mean, o, 1e-5);
    } else {
      EXPECT_NEAR(last.bos_norm.mean, 1.0, 1e-12);
    }
  }
}

TEST(KnownAnswers, SpikeRulesDifferAsTheSeedSpecDescribes) {
  // BOS gets +100·e3 at layer 1 and +1·e3 at layer 2: the norm jumps at 1, the ratio peaks at 2 (docs/study.md §6.5).
  auto m = OrthogonalEmbeddingModel(true);
  job::PerplexitySpec ppl;
  job::BosMlpAblation ratio, jump, explicit1;
  jump.spike_rule = job::SpikeRule::kArgmaxJump;
  explicit1.layer = 1;
  ppl.interventions = {{"", ratio}, {"", jump}, {"", explicit1}};
  RecordingSink sink;
  auto r = RunOn(Spec({m.name}, {{1, 2, 3, 2, 3}, {1, 3, 2}}, {job::ResidualStatsSpec{}, ppl}), {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& mt = r->models[0].metrics;
  EXPECT_EQ(mt.at("bos_spike_layer.argmax_ratio"), 2);
  EXPECT_EQ(mt.at("bos_spike_layer.argmax_jump"), 1);
  EXPECT_EQ(mt.at("bos_norm.peak_layer"), 2);
  EXPECT_NEAR(mt.at("bos_norm.peak"), std::sqrt(1 + 101.0 * 101.0), 2.0);
  const auto *a = sink.Ppl(m.name, "bos_mlp@spike"), *b = sink.Ppl(m.name, "bos_mlp@jump"),
             *c = sink.Ppl(m.name, "bos_mlp@L1");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->resolved_layer, 2);
  EXPECT_EQ(b->resolved_layer, 1);
  EXPECT_EQ(c->resolved_layer, 1);
  EXPECT_NE(a->detail.find("argmax_ratio"), std::string::npos);
  EXPECT_EQ(b->perplexity, c->perplexity);
  EXPECT_EQ(mt.at("perplexity.bos_mlp@jump.layer"), 1);
}

TEST(KnownAnswers, SpikeDetectionWorksWithoutAResidualAnalysis) {
  auto m = OrthogonalEmbeddingModel(true);
  job::PerplexitySpec ppl;
  ppl.interventions = {{"", job::BosMlpAblation{}}};
  RecordingSink sink;
  auto r = RunOn(Spec({m.name}, {{1, 2, 3}}, {ppl}), {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(sink.Ppl(m.name, "bos_mlp@spike")->resolved_layer, 2);
  EXPECT_TRUE(sink.Layers(m.name).empty());  // the hidden residual stats emit no layer results
  EXPECT_EQ(r->models[0].num_forward_passes, 2);
}

// ------------------------------------------------------------------------------------ perplexity / ablations

TEST(KnownAnswers, ZeroedMlpMakesBosMlpAblationRatioOne) {
  auto m = RandomModel(/*rope=*/true, 11, /*zero_mlp_layer=*/1);
  job::BosMlpAblation at1, at0;
  at1.layer = 1;
  at0.layer = 0;
  job::PerplexitySpec ppl;
  ppl.interventions = {{"", at1}, {"", at0}};
  RecordingSink sink;
  auto r = RunOn(Spec({m.name}, {Prompt(9), Prompt(5)}, {ppl}), {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(sink.Ppl(m.name, "bos_mlp@L1")->ratio_to_baseline, 1.0);
  EXPECT_NE(sink.Ppl(m.name, "bos_mlp@L0")->ratio_to_baseline, 1.0);  // a live MLP: the test can fail
  EXPECT_EQ(r->models[0].metrics.at("perplexity.bos_mlp@L1.ratio"), 1.0);
  EXPECT_EQ(sink.Ppl(m.name, "baseline")->num_targets, 8 + 4);
}

TEST(KnownAnswers, ZeroLogitsGiveVocabularyPerplexity) {
  // Scaling the final normalised stream by 0 makes every logit 0: NLL = ln V per target, PPL = V exactly.
  auto m = RandomModel(false, 12, -1, "random", 3, /*vocab=*/64);
  job::ActivationEdit e;
  e.hook = "ln_final.hook_normalized";
  e.op = job::EditOp::kScale;
  e.value = 0.0;
  for (bool wt : {false, true}) {
    job::PerplexitySpec ppl;
    ppl.weight_by_t = wt;
    ppl.interventions = {{"flat", std::vector<job::ActivationEdit>{e}}};
    RecordingSink sink;
    auto r = RunOn(Spec({m.name}, {Prompt(9), Prompt(3)}, {ppl}), {m}, &sink);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NEAR(sink.Ppl(m.name, "flat")->perplexity, 64.0, 64.0 * 1e-6);
    EXPECT_NEAR(sink.Ppl(m.name, "flat")->mean_nll, std::log(64.0), 1e-6);
  }
}

TEST(KnownAnswers, EquivalentAblationsGiveIdenticalPerplexity) {
  auto m = RandomModel(true, 13);
  job::HeadAblation all_heads;
  all_heads.heads = {{1, 0}, {1, 1}};
  job::ActivationEdit z, o, mlp;
  z.hook = "blocks.1.attn.hook_z";
  o.hook = "blocks.1.hook_attn_out";
  mlp.hook = "blocks.2.hook_mlp_out";
  mlp.positions = {0};
  job::BosMlpAblation bos;
  bos.layer = 2;
  job::PerplexitySpec ppl;
  ppl.interventions = {{"heads", all_heads},
                       {"z", std::vector<job::ActivationEdit>{z}},
                       {"o", std::vector<job::ActivationEdit>{o}},
                       {"bos", bos},
                       {"mlp0", std::vector<job::ActivationEdit>{mlp}}};
  RecordingSink sink;
  auto r = RunOn(Spec({m.name}, {Prompt(9), Prompt(6)}, {ppl}), {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  const double heads = sink.Ppl(m.name, "heads")->perplexity;
  EXPECT_EQ(heads, sink.Ppl(m.name, "z")->perplexity);
  EXPECT_EQ(heads, sink.Ppl(m.name, "o")->perplexity);
  EXPECT_NE(heads, sink.Ppl(m.name, "baseline")->perplexity);
  EXPECT_EQ(sink.Ppl(m.name, "bos")->perplexity, sink.Ppl(m.name, "mlp0")->perplexity);
}

// ---------------------------------------------------------------------------------------- activation stats

TEST(KnownAnswers, ActivationStatsOfKnownEmbeddings) {
  auto m = OrthogonalEmbeddingModel(false);  // hook_embed rows: e0, 2·e1, 3·e2 (d = 8)
  job::ActivationStatsSpec as;
  as.hooks = {"hook_embed", "blocks.{L}.hook_resid_post"};
  as.top_k = 2;
  RecordingSink sink;
  auto r = RunOn(Spec({m.name}, {{1, 2, 3}}, {as}), {m}, &sink);
  ASSERT_TRUE(r.ok()) << r.status();
  const job::LayerResult* model_level = nullptr;
  for (const auto& e : sink.events)
    if (const auto* l = std::get_if<job::LayerResult>(&e); l && l->layer == -1) model_level = l;
  ASSERT_NE(model_level, nullptr);
  ASSERT_EQ(model_level->activation_stats.size(), 3u);
  const auto& bos = model_level->activation_stats[0];
  const auto& rest = model_level->activation_stats[1];
  const auto& all = model_level->activation_stats[2];
  EXPECT_EQ(bos.hook, "hook_embed");
  EXPECT_EQ(bos.positions, job::PositionClass::kBos);
  EXPECT_EQ(bos.count, 8);
  EXPECT_DOUBLE_EQ(bos.mean, 1.0 / 8);
  EXPECT_DOUBLE_EQ(bos.max_abs, 1.0);
  EXPECT_DOUBLE_EQ(bos.mean_norm, 1.0);
  EXPECT_EQ(bos.top_dims[0], 0);
  EXPECT_EQ(rest.count, 16);
  EXPECT_DOUBLE_EQ(rest.mean, 5.0 / 16);
  EXPECT_DOUBLE_EQ(rest.mean_norm, 2.5);
  EXPECT_DOUBLE_EQ(rest.max_norm, 3.0);
  EXPECT_EQ(rest.top_dims, (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(rest.top_values, (std::vector<double>{1.5, 1.0}));
  EXPECT_EQ(all.positions, job::PositionClass::kAll);
  EXPECT_EQ(all.count, 24);
  EXPECT_NEAR(all.mean, 0.25, 1e-15);
  EXPECT_NEAR(all.std, std::sqrt(14.0 / 24 - 0.0625), 1e-12);
  EXPECT_DOUBLE_EQ(all.max_abs, 3.0);
  EXPECT_EQ(all.top_dims, (std::vector<int32_t>{2, 1}));
  // Per-layer entries (resid_post = embeddings here).
  for (const auto& l : sink.Layers(m.name)) {
    ASSERT_EQ(l.activation_stats.size(), 3u);
    EXPECT_EQ(l.activation_stats[0].hook, absl::StrCat("blocks.", l.layer, ".hook_resid_post"));
    EXPECT_NEAR(l.activation_stats[2].std, all.std, 1e-12);
  }
}

}  // namespace
}  // namespace sinkscope::analysis_test
