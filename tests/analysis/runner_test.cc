// The runner/planner: one forward per (model, prompt) for all observers, passes per intervention, event order,
// streaming of layer results during the last forward, cancellation, comparison tables, provenance, inputs
// (texts, datasets, truncation) and validation errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/job/datasets.h"
#include "common/job/observers.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

std::vector<std::vector<int32_t>> Prompts() {
  return {{1, 5, 9, 14, 3, 22, 7}, {1, 40, 41, 42}, {1, 8, 8, 8, 8, 8, 8, 8, 30, 31, 2}};
}

std::vector<job::AnalysisSpec> AllObservers() {
  job::ActivationStatsSpec as;
  as.hooks = {"blocks.{L}.hook_mlp_out", "hook_embed"};
  job::MatrixEntropySpec me;
  me.normalized = true;
  return {job::SinkRateSpec{}, job::MassiveValuesSpec{}, job::ResidualStatsSpec{}, me, as, job::PerplexitySpec{}};
}

// One prompt per forward: the tests that count forwards and cancellation checks describe that plan.
job::RunLimits Unpacked() {
  job::RunLimits l;
  l.pack_tokens = 0;
  return l;
}

std::vector<job::ModelHandle> Pair() { return {RandomModel(true, 21, -1, "rope"), RandomModel(false, 22, -1, "nope")}; }

TEST(Runner, OneForwardPerModelAndPromptServesEveryObserver) {
  auto models = Pair();
  RecordingSink sink;
  auto r = job::RunJob(Spec({"rope", "nope"}, Prompts(), AllObservers()), models, Unpacked(), &sink, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->models.size(), 2u);
  for (const auto& m : r->models) {
    EXPECT_EQ(m.num_forward_passes, 3) << m.model;
    EXPECT_EQ(m.num_prompts, 3);
    EXPECT_EQ(m.num_tokens, 7 + 4 + 11);
  }
  const auto started = sink.All<job::Started>();
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].planned_passes, 6);
  EXPECT_EQ(started[0].num_prompts, 3);
  // Every layer result carries every observational analysis.
  for (const auto& l : sink.All<job::LayerResult>()) {
    if (l.layer < 0) continue;
    EXPECT_TRUE(l.sink_rate && l.massive_values && l.residual_stats && l.matrix_entropy) << l.layer;
    EXPECT_EQ(l.activation_stats.size(), 3u);
  }
  EXPECT_EQ(sink.All<job::PerplexityResult>().size(), 2u);  // baseline per model
}

// A Q/K disruption identified on the job's inputs takes its norm matrices from a pre-rotary massive-values analysis
// of Q and K in the same job instead of computing them again (Observers::ident_fed): the same dims, perplexities and
// controls, bit for bit, as with the identification's own observers (no massive values, or post-rotary ones).
TEST(Runner, QkIdentificationReusesMassiveValuesNormMatrices) {
  const std::vector<job::ModelHandle> models = {RandomModel(true, 31, -1, "rope")};
  job::QkMassiveDisruption qk;
  qk.lambda = 1.5;  // low enough that this random model has massive dims
  qk.control_seeds = {42};
  job::PerplexitySpec ppl;
  ppl.interventions = {{"", qk}};
  job::MassiveValuesSpec pre, post;
  pre.lambda = post.lambda = 1.5;
  post.post_rotary = true;
  const std::vector<std::vector<job::AnalysisSpec>> variants = {{pre, ppl}, {ppl}, {post, ppl}};
  std::vector<std::map<std::string, double>> numbers;
  for (size_t v = 0; v < variants.size(); ++v) {
    const job::JobSpec spec = Spec({"rope"}, Prompts(), variants[v]);
    auto plan = job::BuildPlan(spec, models, Unpacked());
    ASSERT_TRUE(plan.ok()) << plan.status();
    const job::Observers obs(*plan, analysis::ModelDims::From(models[0].model->config()), /*overlap=*/false);
    ASSERT_NE(obs.ident, nullptr);
    EXPECT_EQ(obs.ident_fed, v == 0) << v;
    RecordingSink sink;
    auto r = job::RunJob(spec, models, Unpacked(), &sink, NoCancel());
    ASSERT_TRUE(r.ok()) << r.status();
    std::map<std::string, double> n;
    for (const auto& [k, x] : r->models[0].metrics)
      if (k.rfind("perplexity.", 0) == 0) n[k] = x;
    for (const auto& p : sink.All<job::PerplexityResult>()) {
      n[p.condition + "/ppl"] = p.perplexity;
      n[p.condition + "/dims"] = p.disrupted_dims;
      for (size_t c = 0; c < p.control_perplexities.size(); ++c)
        n[absl::StrCat(p.condition, "/control", c)] = p.control_perplexities[c];
    }
    numbers.push_back(std::move(n));
  }
  ASSERT_GT(numbers[0].at("qk_massive/dims"), 0);
  EXPECT_NE(numbers[0].at("qk_massive/ppl"), numbers[0].at("baseline/ppl"));
  EXPECT_EQ(numbers[0], numbers[1]);
  EXPECT_EQ(numbers[0], numbers[2]);
}

TEST(Runner, InterventionsAddOnlyTheirPasses) {
  auto models = Pair();
  job::QkMassiveDisruption qk, qk_id;
  qk.lambda = qk_id.lambda = 1.5;
  qk.control_seeds = {1, 2};
  qk_id.identify_on = job::Inputs{};
  qk_id.identify_on->token_ids = {{1, 3, 4}, {1, 6}};
  job::PerplexitySpec ppl;
  ppl.interventions = {{"", job::BosMlpAblation{}}, {"", qk}, {"qk2", qk_id}};
  auto spec = Spec({"rope", "nope"}, Prompts(), {job::SinkRateSpec{}, job::ResidualStatsSpec{}, ppl});
  RecordingSink sink;
  auto r = job::RunJob(spec, models, Unpacked(), &sink, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  // baseline 3 + BOS-MLP 3 + qk 3 + 2 controls × 3 + identify 2 + qk2 3 = 20 per model.
  for (const auto& m : r->models) EXPECT_EQ(m.num_forward_passes, 20) << m.model;
  EXPECT_EQ(sink.All<job::Started>()[0].planned_passes, 40);
  // Spike detection reused the baseline pass; the conditions are reported in order.
  std::vector<std::string> conds;
  for (const auto& p : sink.All<job::PerplexityResult>())
    if (p.model == "rope") conds.push_back(p.condition);
  EXPECT_EQ(conds, (std::vector<std::string>{"baseline", "bos_mlp@spike", "qk_massive", "qk2"}));
  EXPECT_NE(sink.Ppl("rope", "qk2")->detail.find("identified on 2 prompts"), std::string::npos);
  EXPECT_NE(sink.Ppl("rope", "qk_massive")->detail.find("identified on 3 prompts"), std::string::npos);
  bool saw_identify = false;
  for (const auto& p : sink.All<job::Progress>()) saw_identify |= p.condition == "identify";
  EXPECT_TRUE(saw_identify);
}

TEST(Runner, EventsAreOrdered) {
  auto models = Pair();
  job::PerplexitySpec ppl;
  ppl.interventions = {{"", job::BosMlpAblation{}}};
  auto spec = Spec({"rope", "nope"}, Prompts(), {job::SinkRateSpec{}, job::ResidualStatsSpec{}, ppl});
  RecordingSink sink;
  auto r = job::RunJob(spec, models, job::RunLimits{}, &sink, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GE(sink.events.size(), 3u);
  EXPECT_TRUE(std::holds_alternative<job::Started>(sink.events.front()));
  EXPECT_TRUE(std::holds_alternative<job::Summary>(sink.events.back()));
  double last_fraction = 0;
  std::vector<std::pair<std::string, int>> layers;
  std::vector<std::string> ppl_models;
  for (size_t i = 0; i < sink.events.size(); ++i) {
    const auto& e = sink.events[i];
    if (const auto* p = std::get_if<job::Progress>(&e)) {
      EXPECT_GE(p->fraction, last_fraction);
      EXPECT_LE(p->fraction, 1.0);
      last_fraction = p->fraction;
    } else if (const auto* l = std::get_if<job::LayerResult>(&e)) {
      layers.emplace_back(l->model, l->layer);
      // A model's layers all precede its perplexity results.
      for (const auto& pm : ppl_models) EXPECT_NE(pm, l->model);
    } else if (const auto* p = std::get_if<job::PerplexityResult>(&e)) {
      ppl_models.push_back(p->model);
    }
    if (i > 0) {
      EXPECT_FALSE(std::holds_alternative<job::Started>(e));
      if (i + 1 < sink.events.size()) {
        EXPECT_FALSE(std::holds_alternative<job::Summary>(e));
      }
    }
  }
  EXPECT_EQ(last_fraction, 1.0);
  const std::vector<std::pair<std::string, int>> want = {{"rope", 0}, {"rope", 1}, {"rope", 2},
                                                         {"nope", 0}, {"nope", 1}, {"nope", 2}};
  EXPECT_EQ(layers, want);
  EXPECT_EQ(ppl_models, (std::vector<std::string>{"rope", "rope", "nope", "nope"}));
}

TEST(Runner, LayerResultsStreamAsTheWaveLeavesEachLayer) {
  // CancelCheck runs before every forward and after every forward's layer. The baseline is one wave (layer-major):
  // the P = 3 forwards begin (3 checks), then run layer 0 in turn, then layer 1, ...; layer l (L = 3) is emitted as
  // soon as the last forward has run it, after P + P·(l+1) checks, before any forward runs layer l+1.
  auto m = RandomModel(true, 23);
  int checks = 0;
  std::vector<int> at_emit;
  RecordingSink sink;
  sink.on_layer = [&](const job::LayerResult&) { at_emit.push_back(checks); };
  auto cancel = [&] {
    ++checks;
    return absl::OkStatus();
  };
  auto r = job::RunJob(Spec({m.name}, Prompts(), {job::SinkRateSpec{}}), {m}, Unpacked(), &sink, cancel);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(at_emit, (std::vector<int>{3 + 3, 3 + 6, 3 + 9}));
  EXPECT_EQ(checks, 3 * 4);
  // With the final-norm switch the last layer is only known after the final norms; earlier ones still stream.
  at_emit.clear();
  checks = 0;
  job::ResidualStatsSpec rs;
  rs.final_norm_last_layer = true;
  auto r2 = job::RunJob(Spec({m.name}, Prompts(), {rs}), {m}, Unpacked(), &sink, cancel);
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(at_emit, (std::vector<int>{3 + 3, 3 + 6, 3 * 4}));
}

TEST(Runner, CancellationBetweenLayersStopsTheJob) {
  auto models = Pair();
  for (auto code : {absl::StatusCode::kCancelled, absl::StatusCode::kDeadlineExceeded}) {
    int checks = 0;
    auto cancel = [&]() -> absl::Status {
      if (++checks >= 6) return absl::Status(code, "stop requested");
      return absl::OkStatus();
    };
    RecordingSink sink;
    auto r = job::RunJob(Spec({"rope", "nope"}, Prompts(), AllObservers()), models, Unpacked(), &sink, cancel);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code);
    EXPECT_EQ(r.status().message(), "stop requested");
    EXPECT_EQ(checks, 6);  // stopped at the first non-OK check (the third prompt's layer 0)
    EXPECT_TRUE(sink.All<job::Summary>().empty());
    EXPECT_TRUE(sink.All<job::LayerResult>().empty());
  }
}

TEST(Runner, ComparisonTableHasTheStudysShapes) {
  auto models = Pair();
  job::QkMassiveDisruption qk;
  qk.lambda = 1.5;
  qk.control_seeds = {42, 43, 44};
  job::PerplexitySpec ppl;
  ppl.interventions = {{"", job::BosMlpAblation{}}, {"", qk}};
  job::MatrixEntropySpec me;
  auto spec = Spec({"rope", "nope"}, Prompts(),
                   {job::SinkRateSpec{}, job::MassiveValuesSpec{}, job::ResidualStatsSpec{}, me, ppl});
  RecordingSink sink;
  auto r = job::RunJob(spec, models, job::RunLimits{}, &sink, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  std::map<std::string, job::ComparisonRow> rows;
  for (const auto& row : r->comparison) rows[row.metric] = row;
  for (const char* metric : {"sink_rate.mean",
                             "bos_spike_layer.argmax_ratio",
                             "bos_spike_layer.argmax_jump",
                             "bos_norm.peak",
                             "bos_norm.peak_layer",
                             "entropy.min",
                             "entropy.min_layer",
                             "massive_values.q.total",
                             "massive_values.k.total",
                             "massive_values.v.total",
                             "perplexity.baseline",
                             "perplexity.bos_mlp@spike",
                             "perplexity.bos_mlp@spike.ratio",
                             "perplexity.qk_massive",
                             "perplexity.qk_massive.ratio",
                             "perplexity.qk_massive.dims",
                             "perplexity.qk_massive.increase_pct",
                             "perplexity.qk_massive.control_mean",
                             "perplexity.qk_massive.control_increase_pct",
                             "perplexity.qk_massive.massive_minus_random_pct"}) {
    ASSERT_TRUE(rows.count(metric)) << metric;
    const auto& row = rows[metric];
    ASSERT_EQ(row.values.size(), 2u) << metric;
    ASSERT_EQ(row.diffs.size(), 2u);
    ASSERT_EQ(row.ratios.size(), 2u);
    EXPECT_EQ(row.diffs[0], 0.0);
    EXPECT_EQ(row.ratios[0], row.values[0] != 0 ? 1.0 : 0.0);
    EXPECT_DOUBLE_EQ(row.diffs[1], row.values[1] - row.values[0]);
    EXPECT_DOUBLE_EQ(row.ratios[1], row.values[0] != 0 ? row.values[1] / row.values[0] : 0.0);
    EXPECT_EQ(row.values[0], r->models[0].metrics.at(metric));
    EXPECT_EQ(row.values[1], r->models[1].metrics.at(metric));
  }
  EXPECT_EQ(rows["perplexity.qk_massive.dims"].values[0], sink.Ppl("rope", "qk_massive")->disrupted_dims);
  EXPECT_EQ(sink.Ppl("rope", "qk_massive")->control.n, 3);
  // Provenance.
  EXPECT_EQ(r->inputs_digest.size(), 64u);
  EXPECT_EQ(r->seed, 42u);
  for (const auto& m : r->models) {
    EXPECT_EQ(m.dtype, "float32");
    EXPECT_EQ(m.device, TestDevice() == "cuda" ? "cuda:0" : TestDevice());
  }
  EXPECT_GT(r->elapsed_seconds, 0);
  EXPECT_EQ(r->perplexity.size(), 6u);  // 3 conditions × 2 models
  // A single-model job has no comparison rows; the digest depends on the token ids only.
  auto single = job::RunJob(Spec({"rope"}, Prompts(), {job::ResidualStatsSpec{}}), {models[0]}, job::RunLimits{},
                            nullptr, NoCancel());
  ASSERT_TRUE(single.ok());
  EXPECT_TRUE(single->comparison.empty());
  auto again =
      job::RunJob(Spec({"rope"}, Prompts(), {job::SinkRateSpec{}}), {models[0]}, job::RunLimits{}, nullptr, NoCancel());
  EXPECT_EQ(single->inputs_digest, again->inputs_digest);
  auto other =
      job::RunJob(Spec({"rope"}, {{1, 2}}, {job::SinkRateSpec{}}), {models[0]}, job::RunLimits{}, nullptr, NoCancel());
  EXPECT_NE(single->inputs_digest, other->inputs_digest);
}

TEST(Runner, Bfloat16ModelRunsEveryAnalysisAndIntervention) {
  // Activations arrive in bf16; every reduction and every intervention must cope (fp32/fp64 inside) and agree with
  // the fp32 model to bf16 accuracy.
  auto f32 = RandomModel(true, 26, -1, "f32");
  auto bf16 = ToBfloat16(f32, "bf16");
  job::QkMassiveDisruption qk;
  qk.lambda = 1.5;
  qk.replacement = job::Replacement::kMean;
  qk.control_seeds = {42};
  job::TopPerHeadMeanReplacement top;
  top.post_rotary = true;
  job::HeadAblation heads;
  heads.heads = {{1, 1}};
  heads.replacement = job::Replacement::kMean;
  job::ActivationEdit e;
  e.hook = "blocks.0.attn.hook_z";
  e.op = job::EditOp::kMean;
  e.heads = {0};
  job::PerplexitySpec ppl;
  ppl.interventions = {
      {"", job::BosMlpAblation{}}, {"", qk}, {"", top}, {"", heads}, {"", std::vector<job::ActivationEdit>{e}}};
  auto analyses = AllObservers();
  analyses.back() = ppl;
  RecordingSink s32, s16;
  auto r32 = job::RunJob(Spec({"f32"}, Prompts(), analyses), {f32}, job::RunLimits{}, &s32, NoCancel());
  auto r16 = job::RunJob(Spec({"bf16"}, Prompts(), analyses), {bf16}, job::RunLimits{}, &s16, NoCancel());
  ASSERT_TRUE(r32.ok()) << r32.status();
  ASSERT_TRUE(r16.ok()) << r16.status();
  EXPECT_EQ(r16->models[0].dtype, "bfloat16");
  const auto p32 = s32.All<job::PerplexityResult>(), p16 = s16.All<job::PerplexityResult>();
  ASSERT_EQ(p32.size(), p16.size());
  for (size_t i = 0; i < p32.size(); ++i) {
    EXPECT_EQ(p32[i].condition, p16[i].condition);
    EXPECT_NEAR(p16[i].perplexity / p32[i].perplexity, 1.0, 0.05) << p32[i].condition;
  }
  const auto l32 = s32.Layers("f32"), l16 = s16.Layers("bf16");
  ASSERT_EQ(l32.size(), l16.size());
  for (size_t l = 0; l < l32.size(); ++l) {
    EXPECT_NEAR(l16[l].residual_stats->bos_norm.mean, l32[l].residual_stats->bos_norm.mean,
                0.02 * l32[l].residual_stats->bos_norm.mean);
    EXPECT_NEAR(l16[l].matrix_entropy->entropy.mean, l32[l].matrix_entropy->entropy.mean, 0.02);
    for (size_t h = 0; h < l32[l].sink_rate->head_scores.size(); ++h)
      EXPECT_NEAR(l16[l].sink_rate->head_scores[h], l32[l].sink_rate->head_scores[h], 0.02);
  }
}

TEST(Runner, TruncationAndPromptLimits) {
  auto m = RandomModel(true, 24);
  auto spec = Spec({m.name}, Prompts(), {job::ResidualStatsSpec{}});
  spec.max_tokens = 5;
  spec.inputs.max_prompts = 2;
  auto r = job::RunJob(spec, {m}, job::RunLimits{}, nullptr, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->models[0].num_prompts, 2);
  EXPECT_EQ(r->models[0].num_tokens, 5 + 4);
  EXPECT_EQ(r->models[0].truncated_prompts, 1);  // the 7-token prompt; the 4-token one fits
  // A prompt longer than the model's context (64 positions here) is refused unless the job asks to truncate.
  std::vector<int32_t> long_prompt(100, 7);
  long_prompt[0] = 1;
  auto long_spec = Spec({m.name}, {long_prompt}, {job::ResidualStatsSpec{}});
  auto refused = job::RunJob(long_spec, {m}, job::RunLimits{}, nullptr, NoCancel());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(refused.status().message()).find("prompt 0 has 100 tokens, more than model"),
            std::string::npos)
      << refused.status();
  long_spec.truncate_to_context = true;
  auto r2 = job::RunJob(long_spec, {m}, job::RunLimits{}, nullptr, NoCancel());
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r2->models[0].num_tokens, 64);
  EXPECT_EQ(r2->models[0].truncated_prompts, 1);
}

TEST(Runner, TextsAndDatasetsAreTokenisedPerModel) {
  auto tok = tokenizer::Tokenizer::Load(std::string(SINKSCOPE_SOURCE_DIR) + "/models/tokenizer/tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  job::ModelHandle m = RandomModel(true, 25, -1, "tok", 2, (*tok)->vocab_size());
  m.tokenizer = *tok;
  job::RunLimits limits;
  limits.data_dir = std::string(SINKSCOPE_SOURCE_DIR) + "/models/datasets";
  auto spec = Spec({m.name}, {}, {job::ResidualStatsSpec{}, job::PerplexitySpec{}});
  spec.inputs.dataset = "study-disruption-literary";
  spec.truncate_to_context = true;  // its longest prompts exceed the tiny model's 64 positions
  auto r = job::RunJob(spec, {m}, limits, nullptr, NoCancel());
  ASSERT_TRUE(r.ok()) << r.status();
  auto d = job::LoadDataset("study-disruption-literary", "");
  ASSERT_TRUE(d.ok());
  int64_t tokens = 0;
  ASSERT_GT((*tok)->Encode(d->prompts[0], true).size(), 64u);  // so truncation is exercised too
  for (const auto& p : d->prompts) {
    const auto ids = (*tok)->Encode(p, true);
    EXPECT_EQ(ids[0], 1);
    tokens += std::min<int64_t>(static_cast<int64_t>(ids.size()), 64);  // the tiny model's context
  }
  EXPECT_EQ(r->models[0].num_tokens, tokens);
  EXPECT_EQ(r->models[0].tokenizer_digest, (*tok)->digest());
  // Same texts given inline → same token ids → same digest and numbers.
  auto inline_spec = Spec({m.name}, {}, {job::ResidualStatsSpec{}, job::PerplexitySpec{}});
  inline_spec.inputs.texts = d->prompts;
  inline_spec.truncate_to_context = true;
  auto r2 = job::RunJob(inline_spec, {m}, limits, nullptr, NoCancel());
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(r->inputs_digest, r2->inputs_digest);
  EXPECT_EQ(r->models[0].metrics, r2->models[0].metrics);
  // The Brown held-out file, first 3 prompts.
  spec.inputs.dataset = "brown-heldout";
  spec.inputs.max_prompts = 3;
  auto r3 = job::RunJob(spec, {m}, limits, nullptr, NoCancel());
  ASSERT_TRUE(r3.ok()) << r3.status();
  EXPECT_EQ(r3->models[0].num_prompts, 3);
}

// ----------------------------------------------------------------------------------------------- validation

struct BadCase {
  std::string name;
  std::function<void(job::JobSpec*, job::RunLimits*, std::vector<job::ModelHandle>*)> mutate;
  absl::StatusCode code;
  std::string needle;
};

// An edit position applies to the prompts that have it; one that no prompt has is refused (it would edit nothing).
TEST(Runner, EditPositionsMustExistInSomePrompt) {
  const auto models = Pair();
  for (const auto& [position, ok] : std::vector<std::pair<int32_t, bool>>{{10, true}, {-11, true}, {11, false},
                                                                           {-12, false}}) {
    job::ActivationEdit e;
    e.hook = "blocks.0.hook_resid_post";
    e.positions = {position};
    job::PerplexitySpec p;
    p.interventions = {{"", std::vector<job::ActivationEdit>{e}}};
    auto r = job::RunJob(Spec({"rope", "nope"}, Prompts(), {p}), models, job::RunLimits{}, nullptr, NoCancel());
    EXPECT_EQ(r.ok(), ok) << position << ": " << r.status();
    if (!ok) {
      EXPECT_NE(std::string(r.status().message())
                    .find(absl::StrCat(position, " is outside every prompt of model rope (the longest has 11 tokens)")),
                std::string::npos)
          << r.status();
    }
  }
}

TEST(Runner, BadParametersGiveClearErrors) {
  const auto base_models = Pair();
  using JS = job::JobSpec;
  using RL = job::RunLimits;
  using MH = std::vector<job::ModelHandle>;
  auto ppl_with = [](job::Intervention iv) {
    job::PerplexitySpec p;
    p.interventions = {std::move(iv)};
    return p;
  };
  auto edit = [](std::string hook, std::vector<int32_t> heads = {}, std::vector<int32_t> dims = {}) {
    job::ActivationEdit e;
    e.hook = std::move(hook);
    e.heads = std::move(heads);
    e.dims = std::move(dims);
    return e;
  };
  // A spec whose only analysis is perplexity under one edit.
  auto with_edit = [&](job::ActivationEdit e) {
    return [&ppl_with, e](JS* s, RL*, MH*) { s->analyses = {ppl_with({"", std::vector<job::ActivationEdit>{e}})}; };
  };
  // A spec whose only analysis is activation statistics at `hooks`.
  auto stats_at = [](std::vector<std::string> hooks) {
    return [hooks](JS* s, RL*, MH*) {
      job::ActivationStatsSpec a;
      a.hooks = hooks;
      s->analyses = {a};
    };
  };
  const absl::StatusCode kInv = absl::StatusCode::kInvalidArgument;
  std::vector<BadCase> cases = {
      {"tau", [](JS* s, RL*, MH*) { std::get<job::SinkRateSpec>(s->analyses[0]).tau = 1.5; }, kInv,
       "analyses[0].sink_rate.tau: 1.5 not in [0,1]"},
      {"tau nan", [](JS* s, RL*, MH*) { std::get<job::SinkRateSpec>(s->analyses[0]).tau = std::nan(""); }, kInv,
       "analyses[0].sink_rate.tau"},
      {"lambda", [](JS* s, RL*, MH*) { s->analyses = {job::MassiveValuesSpec{0.0}}; }, kInv,
       "analyses[0].massive_values.lambda: 0 must be > 0"},
      {"top_k",
       [](JS* s, RL*, MH*) {
         job::MassiveValuesSpec m;
         m.top_k = 65;
         s->analyses = {m};
       },
       kInv, "analyses[0].massive_values.top_k"},
      {"unknown hook", stats_at({"blocks.0.hook_resid_post", "blocks.0.hook_nonsense"}), kInv,
       "analyses[0].activation_stats.hooks[1]: unknown hook name \"blocks.0.hook_nonsense\""},
      {"hook layer", stats_at({"blocks.7.hook_resid_post"}), kInv, "layer 7 is out of range [0, 3)"},
      {"pattern stats", stats_at({"blocks.{L}.attn.hook_pattern"}), kInv, "observe-only"},
      {"bos layer",
       [&](JS* s, RL*, MH*) {
         job::BosMlpAblation b;
         b.layer = 5;
         s->analyses = {ppl_with({"", b})};
       },
       kInv, "analyses[0].perplexity.interventions[0].bos_mlp.layer: 5 out of range [0, 3) of model rope"},
      {"head",
       [&](JS* s, RL*, MH*) {
         job::HeadAblation h;
         h.heads = {{0, 0}, {1, 9}};
         s->analyses = {ppl_with({"", h})};
       },
       kInv, "interventions[0].heads.heads[1].head: 9 out of range [0, 2)"},
      {"top k",
       [&](JS* s, RL*, MH*) {
         job::TopPerHeadMeanReplacement t;
         t.k = 9;
         s->analyses = {ppl_with({"", t})};
       },
       kInv, "top_per_head.k: 9 not in [1, head_dim=8]"},
      {"edit dims", with_edit(edit("blocks.0.attn.hook_q", {}, {8})), kInv, "edits[0].dims: 8 out of range [0, 8)"},
      {"edit heads", with_edit(edit("blocks.0.hook_mlp_out", {0})), kInv,
       "edits[0].heads: \"blocks.0.hook_mlp_out\" has no head axis"},
      {"edit pattern", with_edit(edit("blocks.0.attn.hook_pattern")), kInv, "edits[0].hook"},
      {"qk lambda",
       [&](JS* s, RL*, MH*) {
         job::QkMassiveDisruption q;
         q.lambda = -1;
         s->analyses = {ppl_with({"", q})};
       },
       kInv, "qk_massive.lambda: -1 must be > 0"},
      {"identify_on",
       [&](JS* s, RL*, MH*) {
         job::QkMassiveDisruption q;
         q.identify_on = job::Inputs{};
         q.identify_on->token_ids = {{1, 70000}};
         s->analyses = {ppl_with({"", q})};
       },
       kInv, "qk_massive.identify_on.token_ids[0][1]: token id 70000 not in [0, 64)"},
      {"dup labels",
       [&](JS* s, RL*, MH*) {
         job::PerplexitySpec p;
         p.interventions = {{"x", job::BosMlpAblation{}}, {"x", job::BosMlpAblation{}}};
         s->analyses = {p};
       },
       kInv, "interventions[1].label: duplicate label \"x\""},
      {"dup kind", [](JS* s, RL*, MH*) { s->analyses.push_back(job::SinkRateSpec{}); }, kInv,
       "analyses[1]: a second sink_rate analysis"},
      {"no analyses", [](JS* s, RL*, MH*) { s->analyses.clear(); }, kInv, "analyses: at least one"},
      {"empty prompt", [](JS* s, RL*, MH*) { s->inputs.token_ids.push_back({}); }, kInv,
       "inputs.token_ids[3]: empty prompt"},
      {"bad id", [](JS* s, RL*, MH*) { s->inputs.token_ids[0][2] = 999999; }, kInv,
       "inputs.token_ids[0][2]: token id 999999 not in [0, 64) of model rope"},
      {"negative id", [](JS* s, RL*, MH*) { s->inputs.token_ids[1][1] = -3; }, kInv, "token id -3"},
      {"empty text",
       [](JS* s, RL*, MH* m) {
         s->inputs.token_ids.clear();
         s->inputs.texts = {""};
         for (auto& h : *m) h.tokenizer = nullptr;
       },
       kInv, "inputs.texts[0]: empty text"},
      {"no tokenizer",
       [](JS* s, RL*, MH*) {
         s->inputs.token_ids.clear();
         s->inputs.texts = {"hello"};
       },
       absl::StatusCode::kFailedPrecondition, "has no tokenizer"},
      {"two sources", [](JS* s, RL*, MH*) { s->inputs.dataset = "study-disruption-literary"; }, kInv,
       "more than one source"},
      {"no source", [](JS* s, RL*, MH*) { s->inputs.token_ids.clear(); }, kInv, "inputs: no source set"},
      {"dataset",
       [](JS* s, RL*, MH*) {
         s->inputs.token_ids.clear();
         s->inputs.dataset = "no-such-dataset";
       },
       absl::StatusCode::kNotFound, "inputs.dataset: unknown dataset \"no-such-dataset\""},
      {"too many prompts", [](JS*, RL* l, MH*) { l->max_prompts = 2; }, kInv,
       "inputs: 3 prompts exceed the limit max_prompts=2"},
      {"max tokens",
       [](JS* s, RL* l, MH*) {
         l->max_tokens_per_prompt = 256;
         s->max_tokens = 300;
       },
       kInv, "max_tokens: 300 exceeds the server limit max_tokens_per_prompt=256"},
      {"no models",
       [](JS* s, RL*, MH* m) {
         s->models.clear();
         m->clear();
       },
       kInv, "models: at least one model"},
      {"handle mismatch",
       [](JS* s, RL*, MH*) {
         s->models = {"nope", "rope"};
       },
       kInv, "models[0]: handle \"rope\" does not match \"nope\""},
  };
  for (const BadCase& c : cases) {
    job::JobSpec spec = Spec({"rope", "nope"}, Prompts(), {job::SinkRateSpec{}});
    job::RunLimits limits;
    std::vector<job::ModelHandle> models = base_models;
    c.mutate(&spec, &limits, &models);
    const absl::Status st = job::ValidateJob(spec, models, limits);
    EXPECT_EQ(st.code(), c.code) << c.name << ": " << st;
    EXPECT_NE(st.message().find(c.needle), std::string::npos) << c.name << ": " << st;
    // RunJob refuses the same way, before emitting anything.
    RecordingSink sink;
    auto r = job::RunJob(spec, models, limits, &sink, NoCancel());
    EXPECT_EQ(r.status(), st) << c.name;
    EXPECT_TRUE(sink.events.empty()) << c.name;
  }
  // The defaults are valid.
  EXPECT_TRUE(job::ValidateJob(Spec({"rope", "nope"}, Prompts(), AllObservers()), base_models, {}).ok());
}

}  // namespace
}  // namespace sinkscope::analysis_test
