// Agreement with the independent python3-torch reference (reference_analyses.py) on tiny random checkpoints written
// by tests/reference/make_tiny_llama.py: every metric, both query-row conventions and attention sources, pre/post
// rotary and layer/head scope, raw and post-final-norm residual stream, every intervention kind, both PPL weightings.
// fp32 models; tolerance 1e-4 relative (most quantities agree to ~1e-6).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/analysis/interventions.h"
#include "common/model/llama.h"
#include "nlohmann/json.hpp"
#include "tests/analysis/recording_sink.h"
#include "tests/analysis/test_models.h"

namespace sinkscope::analysis_test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kRel = 1e-4;
constexpr int kLayers = 3;

std::string Shell(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  return out;
}

void Near(double got, double want, const std::string& what, double floor = 1e-6) {
  EXPECT_LE(std::abs(got - want), kRel * std::max(std::abs(want), floor))
      << what << ": got " << got << " want " << want;
}

struct Fixture {
  std::string dir, error;
  json ref;
  std::vector<job::ModelHandle> models;
  std::vector<std::vector<int32_t>> prompts, identify;
  RecordingSink a, b, c, d;  // the four jobs
};
Fixture* F = nullptr;

const std::vector<std::string> kActHooks = {"hook_embed", "blocks.1.attn.hook_q", "blocks.0.mlp.hook_post",
                                            "ln_final.hook_normalized"};

std::vector<job::ActivationEdit> Edits() {
  auto edit = [](std::string hook, job::EditOp op, double v, std::vector<int32_t> pos, std::vector<int32_t> heads,
                 std::vector<int32_t> dims) {
    job::ActivationEdit e;
    e.hook = std::move(hook);
    e.op = op;
    e.value = v;
    e.positions = std::move(pos);
    e.heads = std::move(heads);
    e.dims = std::move(dims);
    return e;
  };
  return {edit("blocks.1.hook_resid_mid", job::EditOp::kScale, 0.5, {0, -1}, {}, {1, 5}),
          edit("blocks.0.attn.hook_v", job::EditOp::kMean, 0, {}, {1}, {0, 2}),
          edit("blocks.2.mlp.hook_post", job::EditOp::kAdd, 0.25, {2}, {}, {}),
          edit("blocks.1.attn.hook_rot_k", job::EditOp::kSet, 1.0, {1}, {0}, {3}),
          edit("blocks.0.hook_attn_out", job::EditOp::kZero, 0, {-2}, {}, {})};
}

json EditsJson() {
  json out = json::array();
  const char* ops[] = {"zero", "scale", "add", "mean", "set"};
  for (const auto& e : Edits())
    out.push_back({{"hook", e.hook},
                   {"op", ops[static_cast<int>(e.op)]},
                   {"value", e.value},
                   {"positions", e.positions},
                   {"heads", e.heads},
                   {"dims", e.dims}});
  return out;
}

void BuildFixture(Fixture* f) {
  std::string tmpl = (fs::temp_directory_path() / "sinkscope-analysis-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    f->error = "mkdtemp failed";
    return;
  }
  f->dir = tmpl;
  const std::string py = SINKSCOPE_PYTHON, src = SINKSCOPE_SOURCE_DIR;
  struct M {
    const char* name;
    const char* args;
  } specs[] = {{"rope", "--attention rope --heads 4 --kv-heads 2 --seed 5"},
               {"qknorm", "--attention qk_norm_nope --heads 4 --seed 6"}};
  for (const auto& m : specs) {
    int rc = 0;
    const std::string out =
        Shell(absl::StrCat(py, " ", src, "/tests/reference/make_tiny_llama.py --out ", f->dir, "/", m.name,
                           " --layers ", kLayers, " --hidden 64 --vocab 256 --qk-gain 3 --shards 1 ", m.args),
              &rc);
    if (rc != 0) {
      f->error = "make_tiny_llama failed: " + out;
      return;
    }
    f->models.push_back(LoadHandle(f->dir + "/" + m.name, m.name));
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(3, 255);
  auto prompt = [&](int T) {
    std::vector<int32_t> ids{1};
    for (int t = 1; t < T; ++t) ids.push_back(tok(rng));
    return ids;
  };
  f->prompts = {prompt(7), prompt(16), prompt(23), prompt(2), prompt(1)};
  f->identify = {prompt(12), prompt(9)};

  json spec = {{"models", json::array()},
               {"prompts", f->prompts},
               {"identify_prompts", f->identify},
               {"tau", 0.3},
               {"lambda", 1.5},
               {"top_k", 4},
               {"bos_mlp_layer", 1},
               {"qk", {{"lambda", 1.5}, {"seeds", {42, 43}}}},
               {"top_lambda", 1.2},
               {"heads", {{0, 1}, {2, 3}}},
               {"edits", EditsJson()},
               {"act_hooks", kActHooks}};
  for (int l = 0; l < kLayers; ++l) spec["act_hooks"].push_back(absl::StrCat("blocks.", l, ".hook_resid_post"));
  for (const auto& m : f->models) spec["models"].push_back({{"name", m.name}, {"dir", f->dir + "/" + m.name}});
  std::ofstream(f->dir + "/spec.json") << spec.dump();
  int rc = 0;
  const std::string out = Shell(absl::StrCat(py, " ", src, "/tests/analysis/reference_analyses.py --spec ", f->dir,
                                             "/spec.json --out ", f->dir, "/ref.json"),
                                &rc);
  if (rc != 0) {
    f->error = "reference_analyses.py failed: " + out;
    return;
  }
  f->ref = json::parse(std::ifstream(f->dir + "/ref.json"));

  // ---- the same measurements through the engine: four jobs (one result slot per analysis kind and job).
  std::vector<std::string> names;
  for (const auto& m : f->models) names.push_back(m.name);
  auto sink = [](double tau, job::QueryRows rows, job::AttentionSource src) {
    job::SinkRateSpec s;
    s.tau = tau;
    s.query_rows = rows;
    s.source = src;
    return s;
  };
  auto massive = [](bool post, job::ThresholdScope scope) {
    job::MassiveValuesSpec s;
    s.lambda = 1.5;
    s.top_k = 4;
    s.post_rotary = post;
    s.scope = scope;
    return s;
  };
  job::ActivationStatsSpec as;
  as.hooks = kActHooks;
  as.hooks.push_back("blocks.{L}.hook_resid_post");
  as.top_k = 4;
  job::PerplexitySpec ppl;
  {
    job::BosMlpAblation l1, spike, jump;
    l1.layer = 1;
    jump.spike_rule = job::SpikeRule::kArgmaxJump;
    job::QkMassiveDisruption qz, qm, qi;
    qz.lambda = qm.lambda = qi.lambda = 1.5;
    qz.control_seeds = {42, 43};
    qm.replacement = job::Replacement::kMean;
    qi.identify_on = job::Inputs{};
    qi.identify_on->token_ids = f->identify;
    job::TopPerHeadMeanReplacement t1, t1p, t2s, t1l;
    t1p.post_rotary = true;
    t2s.k = 2;
    t2s.smallest = true;
    t1l.lambda = 1.2;
    job::HeadAblation hz, hm;
    hz.heads = hm.heads = {{0, 1}, {2, 3}};
    hm.replacement = job::Replacement::kMean;
    ppl.interventions = {{"bos_mlp_layer", l1},  {"bos_mlp_spike", spike}, {"bos_mlp_jump", jump}, {"qk_zero", qz},
                         {"qk_mean", qm},        {"qk_identify", qi},      {"top1", t1},           {"top1_post", t1p},
                         {"top2_smallest", t2s}, {"top1_lambda", t1l},     {"heads_zero", hz},     {"heads_mean", hm},
                         {"edits", Edits()}};
  }
  job::PerplexitySpec ppl_wt;
  ppl_wt.weight_by_t = true;
  job::ResidualStatsSpec raw, fin;
  fin.final_norm_last_layer = true;
  job::MatrixEntropySpec eraw, efin;
  eraw.normalized = efin.normalized = true;
  efin.final_norm_last_layer = true;
  using QR = job::QueryRows;
  using AS = job::AttentionSource;
  struct Job {
    std::vector<job::AnalysisSpec> analyses;
    RecordingSink* sink;
  } jobs[] = {
      {{sink(0.3, QR::kAll, AS::kModel), massive(false, job::ThresholdScope::kLayer), raw, eraw, as, ppl}, &f->a},
      {{sink(0.3, QR::kExcludeBos, AS::kModel), massive(true, job::ThresholdScope::kLayer), fin, efin}, &f->b},
      {{sink(0.3, QR::kAll, AS::kPreRotary), massive(false, job::ThresholdScope::kHead)}, &f->c},
      {{sink(0.3, QR::kExcludeBos, AS::kPreRotary), ppl_wt}, &f->d},
  };
  for (auto& j : jobs) {
    auto r = job::RunJob(Spec(names, f->prompts, j.analyses), f->models, job::RunLimits{}, j.sink, NoCancel());
    if (!r.ok()) {
      f->error = r.status().ToString();
      return;
    }
  }
}

class Reference : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    F = new Fixture();
    BuildFixture(F);
  }
  static void TearDownTestSuite() {
    if (std::getenv("SINKSCOPE_KEEP_FIXTURES") == nullptr && !F->dir.empty()) {
      std::error_code ec;
      fs::remove_all(F->dir, ec);
    }
    delete F;
    F = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(F->error.empty()) << F->error; }
};

TEST_F(Reference, DecisionsAreNotOnAThreshold) {
  // Counts are compared exactly below; that is meaningful only if no value sits closer to its threshold than the
  // engine/reference activations differ (~1e-6 relative in fp32): require a 1e-5 relative margin.
  for (const auto& m : F->models) {
    for (const auto& [k, v] : F->ref[m.name]["sink"].items()) EXPECT_GT(v["margin"].get<double>(), 1e-5) << k;
    for (const auto& [k, v] : F->ref[m.name]["massive"].items()) EXPECT_GT(v["margin"].get<double>(), 1e-5) << k;
  }
}

void CheckSink(const RecordingSink& sink, const json& ref, const std::string& model) {
  const auto layers = sink.Layers(model);
  ASSERT_EQ(layers.size(), static_cast<size_t>(kLayers));
  for (int l = 0; l < kLayers; ++l) {
    const auto& s = *layers[l].sink_rate;
    EXPECT_NEAR(s.sink_rate.mean, ref["rate"][l][0].get<double>(), 1e-12) << model << " layer " << l;
    EXPECT_NEAR(s.sink_rate.std, ref["rate"][l][1].get<double>(), 1e-12) << model << " layer " << l;
    for (size_t h = 0; h < s.head_scores.size(); ++h)
      Near(s.head_scores[h], ref["head_scores"][l][h], absl::StrCat(model, " L", l, " head ", h));
  }
}

TEST_F(Reference, SinkRate) {
  for (const auto& m : F->models) {
    const json& r = F->ref[m.name]["sink"];
    CheckSink(F->a, r["model_all"], m.name);
    CheckSink(F->b, r["model_excl"], m.name);
    CheckSink(F->c, r["pre_rotary_all"], m.name);
    CheckSink(F->d, r["pre_rotary_excl"], m.name);
    // Prompt [1] has no row without BOS.
    EXPECT_EQ(F->b.Layers(m.name)[0].sink_rate->sink_rate.n, 4);
    EXPECT_EQ(F->a.Layers(m.name)[0].sink_rate->sink_rate.n, 5);
  }
  // For the RoPE model the manual pre-rotary attention is not the model's attention.
  EXPECT_NE(F->ref["rope"]["sink"]["model_all"]["head_scores"],
            F->ref["rope"]["sink"]["pre_rotary_all"]["head_scores"]);
}

void CheckMassive(const RecordingSink& sink, const json& ref, const std::string& model, const job::Summary* summary) {
  const auto layers = sink.Layers(model);
  ASSERT_EQ(layers.size(), static_cast<size_t>(kLayers));
  const char* names[] = {"q", "k", "v"};
  int nonzero = 0;
  for (int l = 0; l < kLayers; ++l) {
    const auto& mv = *layers[l].massive_values;
    ASSERT_EQ(mv.tensors.size(), 3u);
    for (int t = 0; t < 3; ++t) {
      const auto& x = mv.tensors[t];
      const json& r = ref[names[t]];
      const std::string what = absl::StrCat(model, " L", l, " ", names[t]);
      EXPECT_NEAR(x.count.mean, r["count"][l][0].get<double>(), 1e-12) << what;
      EXPECT_NEAR(x.count.std, r["count"][l][1].get<double>(), 1e-12) << what;
      nonzero += x.count.mean > 0;
      Near(x.threshold, r["threshold"][l], what + " threshold");
      EXPECT_NEAR(x.gini, r["gini"][l].get<double>(), 1e-5) << what;
      ASSERT_EQ(x.top.size(), 4u);
      for (int j = 0; j < 4; ++j) {
        EXPECT_EQ(x.top[j].head, r["top"][l][j][0].get<int>()) << what << " top " << j;
        EXPECT_EQ(x.top[j].dim, r["top"][l][j][1].get<int>()) << what << " top " << j;
        Near(x.top[j].value, r["top"][l][j][2], what + " top value");
      }
    }
  }
  EXPECT_GT(nonzero, 0) << model << ": λ too high for an informative comparison";
  if (summary)
    for (const auto& ms : summary->models)
      if (ms.model == model)
        for (const char* t : names) {
          Near(ms.metrics.at(absl::StrCat("massive_values.", t, ".total")), ref[t]["total"][0], model + " total");
          Near(ms.metrics.at(absl::StrCat("massive_values.", t, ".total_std")), ref[t]["total"][1], model + " std",
               1e-3);
        }
}

TEST_F(Reference, MassiveValues) {
  const auto summary_a = F->a.All<job::Summary>();
  ASSERT_EQ(summary_a.size(), 1u);
  for (const auto& m : F->models) {
    const json& r = F->ref[m.name]["massive"];
    CheckMassive(F->a, r["pre_layer"], m.name, &summary_a[0]);
    CheckMassive(F->b, r["post_layer"], m.name, nullptr);
    CheckMassive(F->c, r["pre_head"], m.name, nullptr);
    EXPECT_TRUE(F->b.Layers(m.name)[0].massive_values->post_rotary);
  }
}

void CheckStat(const job::Stat& s, const json& r, const std::string& what) {
  Near(s.mean, r[0], what + " mean");
  EXPECT_LE(std::abs(s.std - r[1].get<double>()), kRel * std::max(1.0, std::abs(r[0].get<double>()))) << what << " std";
}

// Runs `check` on every layer of model `m` in both runs (a: raw residuals, b: final norm on the last layer), with the
// reference's json for that run, ref[m][analysis]["raw" | "final"].
void ForRawAndFinal(const std::string& m, const char* analysis,
                    const std::function<void(const job::LayerResult&, const json&, int, const std::string&, bool)>& check) {
  for (auto [sink, key] : {std::pair{&F->a, "raw"}, std::pair{&F->b, "final"}}) {
    const json& r = F->ref[m][analysis][key];
    const auto layers = sink->Layers(m);
    for (int l = 0; l < kLayers; ++l)
      check(layers[l], r, l, absl::StrCat(m, " ", key, " L", l), std::string(key) == "final");
  }
}

TEST_F(Reference, ResidualStatsAndSpikeLayers) {
  const auto summary = F->a.All<job::Summary>()[0];
  for (size_t mi = 0; mi < F->models.size(); ++mi) {
    const std::string& m = F->models[mi].name;
    ForRawAndFinal(m, "residual", [](const job::LayerResult& lr, const json& r, int l, const std::string& what, bool fin) {
      const auto& rs = *lr.residual_stats;
      CheckStat(rs.bos_norm, r["bos_norm"][l], what + " bos_norm");
      CheckStat(rs.mean_other_norm, r["mean_other_norm"][l], what + " other");
      CheckStat(rs.ratio, r["ratio"][l], what + " ratio");
      EXPECT_EQ(rs.post_final_norm, fin && l == kLayers - 1);
    });
    const auto& mt = summary.models[mi].metrics;
    EXPECT_EQ(mt.at("bos_spike_layer.argmax_ratio"), F->ref[m]["residual"]["raw"]["spike_ratio"].get<int>());
    EXPECT_EQ(mt.at("bos_spike_layer.argmax_jump"), F->ref[m]["residual"]["raw"]["spike_jump"].get<int>());
  }
}

TEST_F(Reference, MatrixEntropy) {
  for (const auto& mh : F->models)
    ForRawAndFinal(mh.name, "entropy", [](const job::LayerResult& lr, const json& r, int l, const std::string& what, bool) {
      const auto& e = *lr.matrix_entropy;
      CheckStat(e.entropy, r["entropy"][l], what + " entropy");
      CheckStat(e.anisotropy, r["anisotropy"][l], what + " anisotropy");
      CheckStat(e.normalized_entropy, r["normalized"][l], what + " normalized");
    });
}

TEST_F(Reference, PerplexityAndEveryIntervention) {
  for (const auto& mh : F->models) {
    const std::string& m = mh.name;
    const json& r = F->ref[m]["ppl"];
    Near(F->a.Ppl(m, "baseline")->perplexity, r["baseline"], m + " baseline");
    Near(F->d.Ppl(m, "baseline")->perplexity, r["baseline_wt"], m + " baseline weight_by_t");
    EXPECT_NE(r["baseline"].get<double>(), r["baseline_wt"].get<double>());
    EXPECT_EQ(F->a.Ppl(m, "baseline")->num_targets, 6 + 15 + 22 + 1);
    for (const char* c : {"bos_mlp_layer", "bos_mlp_spike", "bos_mlp_jump", "qk_zero", "qk_mean", "qk_identify", "top1",
                          "top1_post", "top2_smallest", "top1_lambda", "heads_zero", "heads_mean", "edits"}) {
      const job::PerplexityResult* p = F->a.Ppl(m, c);
      ASSERT_NE(p, nullptr) << c;
      Near(p->perplexity, r[c], m + " " + c);
      EXPECT_NE(p->perplexity, F->a.Ppl(m, "baseline")->perplexity) << m << " " << c << " changed nothing";
    }
    EXPECT_EQ(F->a.Ppl(m, "qk_zero")->disrupted_dims, r["qk_dims"].get<int>());
    EXPECT_GT(r["qk_dims"].get<int>(), 0);
    EXPECT_EQ(F->a.Ppl(m, "qk_identify")->disrupted_dims, r["qk_identify_dims"].get<int>());
    const auto& ctrl = F->a.Ppl(m, "qk_zero")->control_perplexities;
    ASSERT_EQ(ctrl.size(), 2u);
    for (int s = 0; s < 2; ++s) Near(ctrl[s], r["qk_controls"][s], absl::StrCat(m, " control seed ", 42 + s));
  }
}

TEST_F(Reference, RandomControlMasksAreTorchManualSeedRandperm) {
  // Feed the python identification to the engine's control generator; the masks must be identical to
  // torch.manual_seed(seed) + torch.randperm(F)[:n] per kept layer, q then k.
  for (const auto& mh : F->models) {
    const json& r = F->ref[mh.name];
    const analysis::ModelDims dims = analysis::ModelDims::From(mh.model->config());
    analysis::QkMasks masks;
    masks.q.resize(kLayers);
    masks.k.resize(kLayers);
    for (int l = 0; l < kLayers; ++l) {
      const std::string key = std::to_string(l);
      if (!r["qk_masks"].contains(key)) continue;
      masks.q[l] = r["qk_masks"][key]["q"].get<std::vector<int64_t>>();
      masks.k[l] = r["qk_masks"][key]["k"].get<std::vector<int64_t>>();
      masks.kept_layers.push_back(l);
    }
    ASSERT_FALSE(masks.kept_layers.empty());
    for (uint64_t seed : {42, 43}) {
      const analysis::QkMasks c = analysis::RandomControlMasks(masks, dims, seed);
      const json& want = r["qk_control_masks"][std::to_string(seed)];
      for (int64_t l : masks.kept_layers) {
        EXPECT_EQ(c.q[l], want[std::to_string(l)]["q"].get<std::vector<int64_t>>()) << mh.name << " seed " << seed;
        EXPECT_EQ(c.k[l], want[std::to_string(l)]["k"].get<std::vector<int64_t>>()) << mh.name << " seed " << seed;
      }
    }
  }
}

TEST_F(Reference, ActivationStats) {
  for (const auto& mh : F->models) {
    const std::string& m = mh.name;
    std::map<std::string, std::vector<job::ActivationStatsEntry>> got;
    for (const auto& l : F->a.All<job::LayerResult>())
      if (l.model == m)
        for (const auto& e : l.activation_stats) got[e.hook].push_back(e);
    const json& r = F->ref[m]["act"];
    ASSERT_EQ(got.size(), r.size());
    for (const auto& [hook, entries] : got) {
      ASSERT_EQ(entries.size(), 3u) << hook;
      const char* cls[] = {"bos", "rest", "all"};
      for (int c = 0; c < 3; ++c) {
        const auto& e = entries[c];
        const json& x = r[hook][cls[c]];
        const std::string what = absl::StrCat(m, " ", hook, " ", cls[c]);
        EXPECT_EQ(e.count, x["count"].get<int64_t>()) << what;
        const double scale = x["std"].get<double>();
        EXPECT_LE(std::abs(e.mean - x["mean"].get<double>()), kRel * scale) << what << " mean";
        Near(e.std, x["std"], what + " std");
        Near(e.max_abs, x["max_abs"], what + " max_abs");
        Near(e.mean_norm, x["mean_norm"], what + " mean_norm");
        Near(e.max_norm, x["max_norm"], what + " max_norm");
        ASSERT_EQ(e.top_dims.size(), 4u) << what;
        for (int j = 0; j < 4; ++j) {
          EXPECT_EQ(e.top_dims[j], x["top_dims"][j].get<int>()) << what << " top " << j;
          Near(e.top_values[j], x["top_values"][j], what + " top value");
        }
      }
    }
  }
}

}  // namespace
}  // namespace sinkscope::analysis_test
