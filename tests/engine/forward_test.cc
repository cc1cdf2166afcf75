// Forward-pass tests against the independent python reference (tests/reference/reference_llama.py), plus
// chunking, interventions, long context, bf16, thread safety, cancellation, autograd and input validation.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>

#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "tests/engine/fixtures.h"

namespace sinkscope::model {
namespace {

using testing::FixtureDir;
using testing::ReadTensors;
using testing::RelErr;
using testing::VariantIds;

constexpr double kTol = 1e-5;  // fp32 parity with the reference (relative to the tensor's max |value|)

at::Tensor Ids(const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

std::shared_ptr<LlamaModel> LoadOrDie(const std::string& variant, const std::string& dtype = "float32") {
  LoadOptions o;
  o.dtype = dtype;
  o.device = testing::TestDevice();
  auto m = LlamaModel::Load(FixtureDir() + "/" + variant, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

// Observes every hook; hook_pattern chunks are assembled into one [H, T, T] tensor.
struct Capture {
  std::map<std::string, at::Tensor> acts;
  std::map<std::string, int> calls;
  HookSet hooks;
  Capture(int64_t n_layers, int64_t T) {
    for (const std::string& name : AllHookNames(n_layers)) {
      hooks.Observe(name, [this, T](const HookPoint& hp, const at::Tensor& x) {
        ++calls[hp.name];
        if (hp.name.find("hook_pattern") != std::string::npos) {
          at::Tensor& full = acts[hp.name];
          if (!full.defined()) full = at::full({x.size(0), T, T}, -1.0, at::TensorOptions().dtype(at::kFloat));
          full.narrow(1, hp.q_offset, x.size(1)).copy_(x);
        } else {
          acts[hp.name] = x.clone();
        }
      });
    }
  }
};

class ForwardTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { SetComputeThreads(2); }
  void SetUp() override { ASSERT_FALSE(FixtureDir().empty()) << testing::FixtureError(); }
};

class ReferenceParity : public ForwardTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(ReferenceParity, LogitsNllAndEveryHookMatch) {
  const std::string variant = GetParam();
  auto m = LoadOrDie(variant);
  ASSERT_TRUE(m);
  const auto ids = VariantIds(variant);
  const int64_t T = static_cast<int64_t>(ids.size());
  auto ref = ReadTensors(FixtureDir() + "/" + variant + ".ref.safetensors");
  Capture cap(m->config().num_hidden_layers, T);
  ForwardOptions o;
  o.hooks = &cap.hooks;
  o.return_target_nll = true;
  o.attn_query_chunk = 8;  // 37 rows -> 5 chunks; the reference is unchunked
  auto r = m->Forward(Ids(ids), o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->logits.sizes(), (std::vector<int64_t>{T, m->config().vocab_size}));
  EXPECT_EQ(r->logits.scalar_type(), at::kFloat);
  EXPECT_LE(RelErr(r->logits, ref["logits"]), kTol) << "logits";
  EXPECT_LE(RelErr(r->target_nll, ref["target_nll"]), kTol) << "target_nll";
  for (const std::string& name : AllHookNames(m->config().num_hidden_layers)) {
    ASSERT_TRUE(cap.acts.count(name)) << name << " never ran";
    ASSERT_TRUE(ref.count(name)) << name << " missing from reference";
    const int expected_calls = name.find("hook_pattern") != std::string::npos ? 5 : 1;
    EXPECT_EQ(cap.calls[name], expected_calls) << name;
    ASSERT_EQ(cap.acts[name].sizes(), ref[name].sizes()) << name;
    EXPECT_LE(RelErr(cap.acts[name], ref[name]), kTol) << name;
  }
  if (variant == std::string("q_norm")) {  // SakanaAI stores k_norm for q_norm_nope too; unused -> noted
    bool noted = false;
    for (const auto& n : m->load_notes()) noted |= n.find("self_attn.k_norm.weight") != std::string::npos;
    EXPECT_TRUE(noted);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ReferenceParity,
                         ::testing::Values("rope_mha", "rope_gqa", "nope", "qk_norm", "q_norm", "softmax_scale",
                                           "tied", "rope_bf16", "nope_f16"));

TEST_F(ForwardTest, HookLayoutsAndDtypes) {
  auto m = LoadOrDie("rope_gqa");  // H=4, Hkv=2, hd=24, d=64, I=160
  const auto ids = VariantIds("rope_gqa");
  const int64_t T = static_cast<int64_t>(ids.size());
  Capture cap(2, T);
  ForwardOptions o;
  o.hooks = &cap.hooks;
  ASSERT_TRUE(m->Forward(Ids(ids), o).ok());
  using S = std::vector<int64_t>;
  EXPECT_EQ(cap.acts["hook_embed"].sizes(), (S{T, 64}));
  EXPECT_EQ(cap.acts["blocks.1.attn.hook_q"].sizes(), (S{T, 4, 24}));
  EXPECT_EQ(cap.acts["blocks.1.attn.hook_k"].sizes(), (S{T, 2, 24}));
  EXPECT_EQ(cap.acts["blocks.1.attn.hook_rot_k"].sizes(), (S{T, 2, 24}));
  EXPECT_EQ(cap.acts["blocks.1.attn.hook_z"].sizes(), (S{T, 4, 24}));
  EXPECT_EQ(cap.acts["blocks.1.mlp.hook_post"].sizes(), (S{T, 160}));
  EXPECT_EQ(cap.acts["blocks.0.attn.hook_pattern"].sizes(), (S{4, T, T}));
  // Causal rows sum to 1 with zeros above the diagonal.
  at::Tensor p = cap.acts["blocks.0.attn.hook_pattern"];
  EXPECT_LE((p.sum(-1) - 1).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(at::triu(p, 1).abs().max().item<double>(), 0.0);
  // RoPE leaves position 0 unrotated (cos 0 = 1, sin 0 = 0).
  EXPECT_TRUE(at::equal(cap.acts["blocks.0.attn.hook_q"][0], cap.acts["blocks.0.attn.hook_rot_q"][0]));
  EXPECT_FALSE(at::equal(cap.acts["blocks.0.attn.hook_q"][5], cap.acts["blocks.0.attn.hook_rot_q"][5]));
}

TEST_F(ForwardTest, ChunkedEqualsUnchunked) {
  auto m = LoadOrDie("rope_gqa");
  const auto ids = VariantIds("rope_gqa");
  const int64_t T = static_cast<int64_t>(ids.size());
  ForwardOptions o;
  o.return_target_nll = true;
  o.attn_query_chunk = 0;
  Capture base_cap(2, T);
  o.hooks = &base_cap.hooks;
  auto base = m->Forward(Ids(ids), o);
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(base_cap.calls["blocks.1.attn.hook_pattern"], 1);
  for (int64_t chunk : {1, 3, 16, 36, 37, 1000, -5}) {
    Capture cap(2, T);
    o.hooks = &cap.hooks;
    o.attn_query_chunk = chunk;
    auto r = m->Forward(Ids(ids), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_LE(RelErr(r->logits, base->logits), 1e-6) << "chunk " << chunk;
    EXPECT_LE(RelErr(r->target_nll, base->target_nll), 1e-6) << "chunk " << chunk;
    EXPECT_LE(RelErr(cap.acts["blocks.1.attn.hook_pattern"], base_cap.acts["blocks.1.attn.hook_pattern"]), 1e-6);
    const int64_t eff = chunk <= 0 || chunk > T ? T : chunk;
    EXPECT_EQ(cap.calls["blocks.1.attn.hook_pattern"], (T + eff - 1) / eff) << "chunk " << chunk;
  }
}

TEST_F(ForwardTest, ZeroingMlpOutAtPositionZeroMatchesReference) {
  for (const char* variant : {"rope_mha", "nope"}) {
    auto m = LoadOrDie(variant);
    const auto ids = VariantIds(variant);
    auto abl = testing::VariantAblations(variant);
    ASSERT_EQ(abl.size(), 1u);
    auto ref = ReadTensors(FixtureDir() + "/" + abl[0].file);
    auto ref_base = ReadTensors(FixtureDir() + "/" + std::string(variant) + ".ref.safetensors");
    HookSet hs;
    const int64_t pos = abl[0].pos;
    int ran = 0;
    hs.Intervene(abl[0].hook, [&](const HookPoint& hp, const at::Tensor& x) {
      ++ran;
      EXPECT_EQ(hp.name, abl[0].hook);
      at::Tensor y = x.clone();
      y[pos].zero_();
      return y;
    });
    // Observers on the same hook see the post-intervention value.
    hs.Observe(abl[0].hook, [&](const HookPoint&, const at::Tensor& x) { EXPECT_EQ(x[pos].abs().sum().item<double>(), 0.0); });
    ForwardOptions o;
    o.hooks = &hs;
    o.return_target_nll = true;
    auto r = m->Forward(Ids(ids), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(ran, 1);
    EXPECT_LE(RelErr(r->logits, ref["logits"]), kTol) << variant;
    EXPECT_LE(RelErr(r->target_nll, ref["target_nll"]), kTol) << variant;
    EXPECT_GT(RelErr(r->logits, ref_base["logits"]), 1e-3) << variant << ": ablation had no effect";
  }
}

TEST_F(ForwardTest, InterventionDtypeRestoredAndShapeChecked) {
  auto m = LoadOrDie("nope");
  const auto ids = VariantIds("nope");
  HookSet hs;
  hs.Intervene("blocks.0.attn.hook_k", [](const HookPoint&, const at::Tensor& x) { return x.to(at::kDouble) * 0; });
  ForwardOptions o;
  o.hooks = &hs;
  auto r = m->Forward(Ids(ids), o);
  ASSERT_TRUE(r.ok()) << r.status();  // zero keys -> uniform causal attention in layer 0; still valid
  HookSet bad;
  bad.Intervene("blocks.1.hook_mlp_out", [](const HookPoint&, const at::Tensor& x) { return x.narrow(0, 0, 3); });
  o.hooks = &bad;
  auto e = m->Forward(Ids(ids), o);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(e.status().message()).find("blocks.1.hook_mlp_out returned shape [3, 64], expected [37, 64]"),
            std::string::npos)
      << e.status();
  HookSet undef;
  undef.Intervene("hook_embed", [](const HookPoint&, const at::Tensor&) { return at::Tensor(); });
  o.hooks = &undef;
  EXPECT_EQ(m->Forward(Ids(ids), o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ForwardTest, HookErrorsAreStatusesNotCrashes) {
  auto m = LoadOrDie("tied");
  const auto ids = VariantIds("tied");
  ForwardOptions o;
  HookSet typo;
  typo.Observe("blocks.0.attn.hook_patern", [](const HookPoint&, const at::Tensor&) {});
  o.hooks = &typo;
  auto r = m->Forward(Ids(ids), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(r.status().message()).find("did you mean \"blocks.0.attn.hook_pattern\""), std::string::npos)
      << r.status();
  HookSet pattern_iv;
  pattern_iv.Intervene("blocks.1.attn.hook_pattern", [](const HookPoint&, const at::Tensor& x) { return x; });
  o.hooks = &pattern_iv;
  r = m->Forward(Ids(ids), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(r.status().message()).find("observe-only"), std::string::npos) << r.status();
  HookSet layer_oob;
  layer_oob.Observe("blocks.2.hook_resid_post", [](const HookPoint&, const at::Tensor&) {});
  o.hooks = &layer_oob;
  EXPECT_EQ(m->Forward(Ids(ids), o).status().code(), absl::StatusCode::kInvalidArgument);
  HookSet throwing;
  throwing.Observe("blocks.0.hook_resid_mid", [](const HookPoint&, const at::Tensor& x) { (void)x.view({7, 7, 7}); });
  o.hooks = &throwing;
  r = m->Forward(Ids(ids), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(r.status().message()).find("forward failed"), std::string::npos) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("[7, 7, 7]"), std::string::npos) << r.status();
}

TEST_F(ForwardTest, LongContext4096BoundedMemory) {
  LoadOptions lo;
  auto lm = LlamaModel::Load(FixtureDir() + "/long", lo);
  ASSERT_TRUE(lm.ok()) << lm.status();
  auto m = *lm;
  auto ref = ReadTensors(FixtureDir() + "/long.ref.safetensors");
  at::Tensor ids = ref["ids"];
  const int64_t T = ids.size(0);
  ASSERT_EQ(T, 4096);
  auto status_kb = [](const char* key) -> int64_t {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::strlen(key)));
    return -1;
  };
  ForwardOptions o;
  o.return_logits = false;
  o.return_target_nll = true;
  o.attn_query_chunk = 512;
  // Warm-up: faults in LibTorch code pages and thread pools, which count towards RSS.
  ASSERT_TRUE(m->Forward(ids.narrow(0, 0, 600), o).ok());
  // Peak RSS during a chunked forward without logits: reset VmHWM (clear_refs 5) where the kernel allows it.
  bool can_reset = false;
  {
    std::ofstream cr("/proc/self/clear_refs");
    cr << "5";
    cr.flush();
    can_reset = cr.good();
  }
  const int64_t rss0 = status_kb("VmRSS:");
  auto r = m->Forward(ids, o);
  const int64_t hwm = status_kb("VmHWM:");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->logits.defined());
  EXPECT_LE(RelErr(r->target_nll, ref["target_nll"]), kTol);
#ifdef __SANITIZE_ADDRESS__
  can_reset = false;  // ASan's quarantine keeps freed memory resident: RSS says nothing about the forward
#endif
  if (can_reset && rss0 > 0 && hwm > 0) {
    // Measured here: chunk 512 ≈ 40 MiB, unchunked (attn_query_chunk=0) ≈ 270 MiB — one layer's fp32 scores alone
    // are 2·4096²·4 B = 128 MiB.
    const int64_t grew_mb = (hwm - rss0) / 1024;
    EXPECT_LT(grew_mb, 100) << "peak RSS grew by " << grew_mb << " MiB during a chunked T=4096 forward";
  }
  // The pattern hook sees 8 chunks of [H, 512, T] fp32 probabilities.
  int pattern_calls = 0;
  HookSet hs;
  hs.Observe("blocks.1.attn.hook_pattern", [&](const HookPoint& hp, const at::Tensor& p) {
    ++pattern_calls;
    EXPECT_EQ(p.sizes(), (std::vector<int64_t>{2, 512, T}));
    EXPECT_EQ(p.scalar_type(), at::kFloat);
    EXPECT_EQ(hp.q_offset, (pattern_calls - 1) * 512);
    EXPECT_LE((p.sum(-1) - 1).abs().max().item<double>(), 1e-4);
    EXPECT_EQ(p.narrow(2, hp.q_offset + 512, T - hp.q_offset - 512).abs().sum().item<double>(), 0.0);  // causal
  });
  o.hooks = &hs;
  ASSERT_TRUE(m->Forward(ids, o).ok());
  EXPECT_EQ(pattern_calls, 8);
  // Full logits agree too.
  ForwardOptions full;
  auto rl = m->Forward(ids, full);
  ASSERT_TRUE(rl.ok());
  EXPECT_LE(RelErr(rl->logits, ref["logits"]), kTol);
  // T beyond max_position_embeddings is rejected unless explicitly allowed.
  at::Tensor longer = at::cat({ids, ids.narrow(0, 1, 1)});
  auto e = m->Forward(longer, full);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(e.status().message()).find("max_position_embeddings=4096"), std::string::npos);
}

TEST_F(ForwardTest, AllowBeyondMaxPositions) {
  auto m = LoadOrDie("nope");
  const auto ids = VariantIds("nope");
  LlamaConfig cfg = m->config();
  cfg.max_position_embeddings = 16;
  ForwardOptions o;
  EXPECT_EQ(LlamaForward(cfg, m->weights(), Ids(ids), o).status().code(), absl::StatusCode::kInvalidArgument);
  o.allow_beyond_max_positions = true;
  auto r = LlamaForward(cfg, m->weights(), Ids(ids), o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto ref = ReadTensors(FixtureDir() + "/nope.ref.safetensors");
  EXPECT_LE(RelErr(r->logits, ref["logits"]), kTol);
}

TEST_F(ForwardTest, Bf16ComputeIsCloseAndPatternsStayFp32) {
  // softmax_scale has peaky attention (q/k gain 6) where bf16 rounding of q, k moves logits most.
  for (auto [variant, tol] : {std::pair<const char*, double>{"rope_mha", 0.05}, {"softmax_scale", 0.2}, {"qk_norm", 0.05}}) {
    auto m = LoadOrDie(variant, "bfloat16");
    ASSERT_TRUE(m);
    const auto ids = VariantIds(variant);
    auto ref = ReadTensors(FixtureDir() + "/" + std::string(variant) + ".ref.safetensors");
    HookSet hs;
    at::ScalarType pattern_type = at::kByte, q_type = at::kByte;
    hs.Observe("blocks.1.attn.hook_pattern", [&](const HookPoint&, const at::Tensor& p) { pattern_type = p.scalar_type(); });
    hs.Observe("blocks.1.attn.hook_q", [&](const HookPoint&, const at::Tensor& q) { q_type = q.scalar_type(); });
    ForwardOptions o;
    o.hooks = &hs;
    o.return_target_nll = true;
    auto r = m->Forward(Ids(ids), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->logits.scalar_type(), at::kFloat);
    EXPECT_EQ(pattern_type, at::kFloat);
    EXPECT_EQ(q_type, at::kBFloat16);
    EXPECT_TRUE(at::isfinite(r->logits).all().item<bool>()) << variant;
    EXPECT_LE(RelErr(r->logits, ref["logits"]), tol) << variant;
    // Mean NLL (what perplexity uses) within 5 %.
    const double got = r->target_nll.mean().item<double>(), want = ref["target_nll"].mean().item<double>();
    EXPECT_NEAR(got, want, 0.05 * want) << variant;
  }
}

TEST_F(ForwardTest, ConcurrentForwardsOnOneModel) {
  auto m = LoadOrDie("qk_norm");
  const auto ids = VariantIds("qk_norm");
  ForwardOptions o;
  o.return_target_nll = true;
  auto base = m->Forward(Ids(ids), o);
  ASSERT_TRUE(base.ok());
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3; ++i) {
        HookSet hs;  // per-call hooks on a shared model
        int seen = 0;
        hs.Observe("blocks.0.hook_resid_post", [&](const HookPoint&, const at::Tensor&) { ++seen; });
        ForwardOptions oo = o;
        oo.hooks = &hs;
        oo.attn_query_chunk = 1 + t * 5;
        auto r = m->Forward(Ids(ids), oo);
        if (!r.ok() || seen != 1 || RelErr(r->logits, base->logits) > 1e-6) ++bad;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST_F(ForwardTest, AfterLayerCallbackAndCancellation) {
  auto m = LoadOrDie("rope_mha");
  const auto ids = VariantIds("rope_mha");
  std::vector<int> layers;
  ForwardOptions o;
  o.after_layer = [&](int l) {
    layers.push_back(l);
    return absl::OkStatus();
  };
  ASSERT_TRUE(m->Forward(Ids(ids), o).ok());
  EXPECT_EQ(layers, (std::vector<int>{0, 1}));
  int observed_layer1 = 0;
  HookSet hs;
  hs.Observe("blocks.1.hook_resid_pre", [&](const HookPoint&, const at::Tensor&) { ++observed_layer1; });
  o.hooks = &hs;
  o.after_layer = [](int l) { return l == 0 ? absl::CancelledError("job cancelled") : absl::OkStatus(); };
  auto r = m->Forward(Ids(ids), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(observed_layer1, 0) << "forward continued after cancellation";
}

TEST_F(ForwardTest, AutogradMatchesFiniteDifferences) {
  auto m = LoadOrDie("qk_norm");
  const auto ids = VariantIds("qk_norm");
  // float64 copies of the weights that require grad (the trainer path: no NoGradGuard).
  auto to_param = [](const at::Tensor& t) { return t.to(at::kDouble).detach().clone().set_requires_grad(true); };
  LlamaWeights w;
  const LlamaWeights& src = m->weights();
  w.embed_tokens = to_param(src.embed_tokens);
  w.norm = to_param(src.norm);
  w.lm_head = to_param(src.lm_head);
  for (const auto& L : src.layers) {
    LayerWeights d;
    d.input_layernorm = to_param(L.input_layernorm);
    d.q_proj = to_param(L.q_proj);
    d.k_proj = to_param(L.k_proj);
    d.v_proj = to_param(L.v_proj);
    d.o_proj = to_param(L.o_proj);
    d.q_norm = to_param(L.q_norm);
    d.k_norm = to_param(L.k_norm);
    d.post_attention_layernorm = to_param(L.post_attention_layernorm);
    d.gate_proj = to_param(L.gate_proj);
    d.up_proj = to_param(L.up_proj);
    d.down_proj = to_param(L.down_proj);
    w.layers.push_back(d);
  }
  ForwardOptions o;
  o.return_logits = false;
  o.return_target_nll = true;
  o.attn_query_chunk = 8;
  auto r = LlamaForward(m->config(), w, Ids(ids), o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->target_nll.scalar_type(), at::kDouble);
  at::Tensor loss = r->target_nll.mean();
  loss.backward();
  for (const at::Tensor* p : {&w.embed_tokens, &w.layers[0].q_proj, &w.layers[0].k_norm, &w.layers[1].gate_proj,
                              &w.layers[1].input_layernorm, &w.norm, &w.lm_head}) {
    ASSERT_TRUE(p->grad().defined());
    EXPECT_TRUE(at::isfinite(p->grad()).all().item<bool>());
    EXPECT_GT(p->grad().abs().sum().item<double>(), 0.0);
  }
  // Central differences on a few coordinates.
  auto loss_at = [&](at::Tensor& param, int64_t flat, double delta) {
    at::NoGradGuard ng;
    at::Tensor view = param.view({-1});
    const double old = view[flat].item<double>();
    view[flat].fill_(old + delta);
    auto rr = LlamaForward(m->config(), w, Ids(ids), o);
    view[flat].fill_(old);
    return rr->target_nll.mean().item<double>();
  };
  struct Probe {
    at::Tensor* p;
    int64_t idx;
  };
  for (Probe pr : {Probe{&w.layers[0].q_proj, 17}, Probe{&w.layers[0].q_norm, 5}, Probe{&w.layers[1].down_proj, 301},
                   Probe{&w.embed_tokens, 64 * 1 + 3}}) {
    const double h = 1e-5;
    const double fd = (loss_at(*pr.p, pr.idx, h) - loss_at(*pr.p, pr.idx, -h)) / (2 * h);
    const double g = pr.p->grad().view({-1})[pr.idx].item<double>();
    EXPECT_NEAR(g, fd, 1e-6 + 1e-4 * std::abs(fd));
  }
}

TEST_F(ForwardTest, InputValidation) {
  auto m = LoadOrDie("tied");
  const auto ids = VariantIds("tied");
  ForwardOptions o;
  auto expect = [&](const at::Tensor& t, const std::string& needle) {
    auto r = m->Forward(t, o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos) << r.status();
  };
  expect(Ids(ids).view({1, -1}), "1-D");
  expect(Ids(ids).to(at::kFloat), "integer");
  expect(at::empty({0}, at::TensorOptions().dtype(at::kLong)), "empty");
  expect(Ids({1, 5, 96}), "token id 96 outside [0, vocab_size=96)");
  expect(Ids({1, -1, 5}), "token id -1");
  expect(at::Tensor(), "undefined");
  EXPECT_EQ(m->Forward(std::vector<int32_t>{}, o).status().code(), absl::StatusCode::kInvalidArgument);
  // int32 tensors and the vector overload give the same result as int64.
  auto a = m->Forward(Ids(ids), o);
  auto b = m->Forward(Ids(ids).to(at::kInt), o);
  auto c = m->Forward(std::vector<int32_t>(ids.begin(), ids.end()), o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(at::equal(a->logits, b->logits));
  EXPECT_TRUE(at::equal(a->logits, c->logits));
  // T=1: logits for one row, empty NLL.
  o.return_target_nll = true;
  auto one = m->Forward(Ids({1}), o);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->logits.size(0), 1);
  EXPECT_EQ(one->target_nll.numel(), 0);
  // Weights that do not match the config are rejected, not crashed on; the message names the HF tensor.
  LlamaWeights broken = m->weights();
  broken.layers[1].up_proj = broken.layers[1].up_proj.narrow(0, 0, 10);
  auto e = LlamaForward(m->config(), broken, Ids(ids), o);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(e.status().message()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.status();
  broken = m->weights();
  broken.layers.pop_back();
  EXPECT_EQ(LlamaForward(m->config(), broken, Ids(ids), o).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(LlamaModel::FromWeights(m->config(), broken, "broken").ok());
  auto fw = LlamaModel::FromWeights(m->config(), m->weights(), "in-memory");
  ASSERT_TRUE(fw.ok());
  EXPECT_EQ((*fw)->dir(), "in-memory");
  EXPECT_TRUE((*fw)->weights_digest().empty());
}

TEST(Runtime, ThreadsAndVersion) {
  SetComputeThreads(1);
  EXPECT_EQ(ComputeThreads(), 1);
  SetComputeThreads(2);
  EXPECT_EQ(ComputeThreads(), 2);
  EXPECT_FALSE(TorchVersion().empty());
#if defined(__GLIBC__)
  EXPECT_TRUE(TuneMallocForTensors());  // glibc accepts every setting; later tests then run with it on
#endif
}

}  // namespace
}  // namespace sinkscope::model
