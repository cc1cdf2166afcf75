// train_tests: sinkscope-train (tools/train) and the shipped tiny RoPE/DroPE pair (models/tiny-rope, tiny-drope).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/model/llama.h"
#include "common/model/runtime.h"
#include "common/tokenizer/tokenizer.h"
#include "tools/train/data.h"
#include "tools/train/export.h"
#include "tools/train/trainer.h"

namespace sinkscope::train {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kRoot = SINKSCOPE_SOURCE_DIR;
const std::string kWork = SINKSCOPE_TRAIN_TEST_DIR;

std::string Fresh(const std::string& name) {
  const fs::path p = fs::path(kWork) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A tiny model over a synthetic vocabulary: 2 layers, d=32, 4 query heads sharing 2 kv heads (GQA).
// (Designated initializers name only what differs from the defaults; GCC's -Wmissing-field-initializers would warn
// about the members that keep their default initializers.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
TrainOptions TinyOptions() {
  return TrainOptions{.layers = 2, .hidden = 32, .heads = 4, .kv_heads = 2, .intermediate = 64, .seq_len = 16,
                      .batch = 4, .steps = 40, .warmup = 4, .lr = 1e-2, .weight_decay = 0.1, .seed = 3, .threads = 1};
}
// The end-to-end run: 2 layers, d=32, 2 heads, 6 steps of 4 x 32 tokens, evaluations and checkpoints every 3 steps.
TrainOptions E2eOptions(const std::string& work) {
  return TrainOptions{.layers = 2, .hidden = 32, .heads = 2, .train_text = work + "/train.txt",
                      .heldout_text = work + "/heldout.txt", .tokenizer_dir = kRoot + "/models/tokenizer",
                      .cache_dir = work + "/cache", .seq_len = 32, .batch = 4, .steps = 6, .warmup = 2, .threads = 1,
                      .name = "e2e-rope", .run_dir = work + "/run-rope", .log_every = 0, .eval_every = 3,
                      .eval_windows = 4, .ckpt_every = 3, .out = work + "/rope"};
}
#pragma GCC diagnostic pop

// A learnable stream: a fixed pseudo-random sequence of 200 ids in [3, 64) repeated 20 times.
std::vector<int32_t> PatternStream() {
  std::vector<int32_t> base;
  uint32_t x = 12345;
  for (int i = 0; i < 200; ++i) {
    x = x * 1103515245u + 12345u;
    base.push_back(3 + static_cast<int32_t>((x >> 16) % 61));
  }
  std::vector<int32_t> s;
  for (int r = 0; r < 20; ++r) s.insert(s.end(), base.begin(), base.end());
  return s;
}

model::LlamaConfig TinyConfig(const TrainOptions& o) {
  auto c = MakeConfig(o, 64);
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

at::Tensor Ids(const std::vector<int64_t>& rows, int64_t T) {
  return at::from_blob(const_cast<int64_t*>(rows.data()), {static_cast<int64_t>(rows.size()) / T, T}, at::kLong).clone();
}

// file name -> sha256 from <dir>/SHA256SUMS
std::map<std::string, std::string> Sums(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::ifstream f(dir + "/SHA256SUMS");
  std::string line;
  while (std::getline(f, line))
    if (line.size() > 66) out[line.substr(66)] = line.substr(0, 64);
  return out;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

class TrainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model::TuneMallocForTensors();
    model::SetComputeThreads(1);
  }
};

TEST_F(TrainTest, BatchForwardMatchesEngineForwardRopeAndNope) {
  TrainOptions o = TinyOptions();
  for (const char* att : {"rope", "nope"}) {
    o.attention = att;
    model::LlamaConfig cfg = TinyConfig(o);
    model::LlamaWeights w = InitWeights(cfg, 11, 0.2);  // large init so attention is far from uniform
    std::vector<int32_t> stream = PatternStream();
    WindowSampler s(&stream, o.seq_len, 1, 5);
    at::Tensor ids = Ids(s.Next(3), o.seq_len);
    at::NoGradGuard ng;
    at::Tensor batched = BatchLogits(cfg, w, ids, at::kFloat);
    ASSERT_EQ(batched.sizes(), (std::vector<int64_t>{3, o.seq_len, 64}));
    for (int64_t b = 0; b < 3; ++b) {
      auto r = model::LlamaForward(cfg, w, ids[b], model::ForwardOptions{});
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_LT(MaxAbsDiff(batched[b], r->logits), 2e-5) << att << " row " << b;
    }
    // The loss is the mean next-token NLL, i.e. the engine's target_nll averaged over rows.
    model::ForwardOptions fo;
    fo.return_logits = false;
    fo.return_target_nll = true;
    double nll = 0;
    for (int64_t b = 0; b < 3; ++b) nll += model::LlamaForward(cfg, w, ids[b], fo)->target_nll.mean().item<double>();
    EXPECT_NEAR(BatchLoss(cfg, w, ids, at::kFloat).item<double>(), nll / 3, 1e-5) << att;
    // bf16 compute stays close to fp32.
    EXPECT_LT(MaxAbsDiff(BatchLogits(cfg, w, ids, at::kBFloat16), batched), 0.1) << att;
  }
}

TEST_F(TrainTest, SamplerRowsStartWithBosAndStateRoundTrips) {
  std::vector<int32_t> stream = PatternStream();
  WindowSampler a(&stream, 16, 1, 42);
  a.Next(7);
  const std::string st = a.State();
  std::vector<int64_t> next = a.Next(5);
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(next[r * 16], 1);
    for (int j = 1; j < 16; ++j) EXPECT_GE(next[r * 16 + j], 3);
  }
  WindowSampler b(&stream, 16, 1, 999);
  ASSERT_TRUE(b.SetState(st).ok());
  EXPECT_EQ(b.Next(5), next);
  EXPECT_FALSE(b.SetState("not a state").ok());
  EXPECT_NE(WindowSampler(&stream, 16, 1, 43).Next(5), WindowSampler(&stream, 16, 1, 42).Next(5));
}

TEST_F(TrainTest, StepsReduceLossAndScheduleIsWarmupCosine) {
  TrainOptions o = TinyOptions();
  model::LlamaConfig cfg = TinyConfig(o);
  std::vector<int32_t> stream = PatternStream();
  const std::vector<int64_t> fixed = EvalWindows(stream, o.seq_len, 1, 8);
  auto tr = Trainer::Create(o, cfg, &stream);
  ASSERT_TRUE(tr.ok()) << tr.status();
  const double before = *(*tr)->EvalLoss(fixed);
  EXPECT_NEAR(before, std::log(64.0), 0.3);  // near-uniform at init
  for (int i = 0; i < 30; ++i) ASSERT_TRUE((*tr)->Step().ok());
  const double after = *(*tr)->EvalLoss(fixed);
  EXPECT_LT(after, before - 1.0) << "before " << before << " after " << after;
  EXPECT_EQ((*tr)->tokens_seen(), 30 * o.batch * o.seq_len);

  EXPECT_NEAR(LearningRate(o, 0), o.lr / 4, 1e-12);
  EXPECT_NEAR(LearningRate(o, 3), o.lr, 1e-12);
  EXPECT_NEAR(LearningRate(o, o.steps - 1), o.lr * o.min_lr_ratio, 1e-12);
  EXPECT_GT(LearningRate(o, 10), LearningRate(o, 20));
}

TEST_F(TrainTest, NormsAreNotDecayedAndTheRestIs) {
  TrainOptions o = TinyOptions();
  o.lr = 1e-20;  // the Adam update vanishes; only decoupled weight decay (lr·wd) would move weights
  o.warmup = 0;
  o.weight_decay = 1e18;  // lr·wd = 1e-2
  model::LlamaConfig cfg = TinyConfig(o);
  std::vector<int32_t> stream = PatternStream();
  auto tr = Trainer::Create(o, cfg, &stream);
  ASSERT_TRUE(tr.ok());
  model::LlamaWeights before = (*tr)->weights();
  std::vector<at::Tensor> copies;
  for (auto& [n, t] : NamedParams(before)) copies.push_back(t->detach().clone());
  ASSERT_TRUE((*tr)->Step().ok());
  auto after = NamedParams((*tr)->weights());
  for (size_t i = 0; i < after.size(); ++i) {
    const bool is_norm = after[i].second->dim() == 1;
    const double ratio = (after[i].second->detach().norm() / copies[i].norm()).item<double>();
    if (is_norm) EXPECT_NEAR(ratio, 1.0, 1e-6) << after[i].first;
    else EXPECT_NEAR(ratio, 0.99, 1e-4) << after[i].first;
  }
}

TEST_F(TrainTest, CheckpointResumeGivesTheIdenticalNextStep) {
  TrainOptions o = TinyOptions();
  model::LlamaConfig cfg = TinyConfig(o);
  std::vector<int32_t> stream = PatternStream();
  const std::string dir = Fresh("ckpt") + "/checkpoint";
  auto a = Trainer::Create(o, cfg, &stream);
  ASSERT_TRUE(a.ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*a)->Step().ok());
  ASSERT_TRUE((*a)->SaveCheckpoint(dir).ok());
  auto sa = (*a)->Step();
  ASSERT_TRUE(sa.ok());

  auto b = Trainer::Create(o, cfg, &stream);  // fresh: same init, sampler at step 0
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->LoadCheckpoint(dir).ok());
  EXPECT_EQ((*b)->step(), 3);
  auto sb = (*b)->Step();
  ASSERT_TRUE(sb.ok());
  EXPECT_EQ(sb->step, 4);
  EXPECT_EQ(sa->loss, sb->loss);
  EXPECT_EQ(sa->grad_norm, sb->grad_norm);
  EXPECT_EQ(sa->lr, sb->lr);
  auto pa = NamedParams((*a)->weights()), pb = NamedParams((*b)->weights());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(at::equal(*pa[i].second, *pb[i].second)) << pa[i].first;

  // Without the checkpoint the fourth step is a different one (the test can tell).
  auto c = Trainer::Create(o, cfg, &stream);
  auto sc = (*c)->Step();
  EXPECT_NE(sc->loss, sa->loss);

  // A checkpoint of another shape is refused.
  TrainOptions o2 = o;
  o2.hidden = 48;
  model::LlamaConfig cfg2 = TinyConfig(o2);
  auto d = Trainer::Create(o2, cfg2, &stream);
  EXPECT_EQ((*d)->LoadCheckpoint(dir).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TrainTest, ExportedSnapshotsLoadWithTheSameLogits) {
  TrainOptions o = TinyOptions();
  model::LlamaConfig cfg = TinyConfig(o);
  model::LlamaWeights w = InitWeights(cfg, 7, 0.1);
  std::vector<int32_t> stream = PatternStream();
  WindowSampler s(&stream, o.seq_len, 1, 1);
  at::Tensor ids = Ids(s.Next(1), o.seq_len)[0];
  at::NoGradGuard ng;
  for (const std::string dtype : {"float32", "bfloat16"}) {
    for (int shards : {1, 2}) {
      const std::string dir = Fresh("export-" + dtype + "-" + std::to_string(shards));
      auto tb = WeightsToTensorBytes(w, dtype);
      ASSERT_TRUE(tb.ok());
      model::LlamaConfig c = cfg;
      c.torch_dtype = dtype;
      ExportOptions eo;
      eo.shards = shards;
      eo.tokenizer_dir = kRoot + "/models/tokenizer";
      ASSERT_TRUE(WriteHfDirectory(dir, c, *tb, eo).ok());
      EXPECT_EQ(fs::exists(dir + "/model.safetensors"), shards == 1);
      EXPECT_EQ(fs::exists(dir + "/model.safetensors.index.json"), shards == 2);
      EXPECT_EQ(fs::exists(dir + "/model-00002-of-00002.safetensors"), shards == 2);
      for (const char* f : {"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json",
                            "special_tokens_map.json", "SHA256SUMS"})
        EXPECT_TRUE(fs::exists(dir + "/" + f)) << f;
      EXPECT_TRUE(VerifySha256Sums(dir).ok());
      json cj = json::parse(*ReadFile(dir + "/config.json"));
      EXPECT_EQ(cj["model_type"], "llama");
      EXPECT_FALSE(cj.contains("attention_type"));
      EXPECT_EQ(cj["architectures"][0], "LlamaForCausalLM");
      EXPECT_EQ(cj["torch_dtype"], dtype);
      EXPECT_EQ(cj["tie_word_embeddings"], false);
      EXPECT_EQ(cj["bos_token_id"], 1);
      EXPECT_EQ(cj["eos_token_id"], 2);
      EXPECT_EQ(cj["head_dim"], 8);

      model::LoadOptions lo;
      auto m = model::LlamaModel::Load(dir, lo);
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_TRUE((*m)->load_notes().empty());
      // In-memory reference: the same weights, rounded to the on-disk dtype.
      model::LlamaWeights ref = w;
      for (auto& [n, t] : NamedParams(ref))
        *t = dtype == "float32" ? t->detach() : t->detach().to(at::kBFloat16).to(at::kFloat);
      auto want = model::LlamaForward(cfg, ref, ids, model::ForwardOptions{});
      auto got = (*m)->Forward(ids, model::ForwardOptions{});
      ASSERT_TRUE(want.ok() && got.ok());
      EXPECT_TRUE(at::equal(want->logits, got->logits)) << dtype << " shards " << shards;
    }
  }
  // The manifest catches a changed byte and an unlisted file.
  const std::string dir = kWork + "/export-float32-2";
  {
    std::fstream f(dir + "/model-00001-of-00002.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  EXPECT_EQ(VerifySha256Sums(dir).code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(WriteSha256Sums(dir).ok());
  EXPECT_TRUE(VerifySha256Sums(dir).ok());
  std::ofstream(dir + "/stray.txt") << "x";
  EXPECT_EQ(VerifySha256Sums(dir).code(), absl::StatusCode::kDataLoss);
}

// End to end through RunTraining on a small text with the shipped tokenizer: RoPE pretraining + export, then the
// DroPE stage from that checkpoint with a sharded export.
TEST_F(TrainTest, RunTrainingThenDropeConversion) {
  const std::string work = Fresh("e2e");
  {
    auto heldout = ReadFile(kRoot + "/models/datasets/brown-heldout.txt");
    ASSERT_TRUE(heldout.ok());
    std::vector<std::string> lines = NonEmptyLines(*heldout);
    std::ofstream tr(work + "/train.txt"), ho(work + "/heldout.txt");
    for (int i = 0; i < 60; ++i) tr << lines[i] << (i % 20 == 19 ? "\n\n" : "\n");
    for (int i = 60; i < 70; ++i) ho << lines[i] << "\n";
  }
  TrainOptions o = E2eOptions(work);
  ASSERT_TRUE(RunTraining(o).ok());
  EXPECT_TRUE(fs::exists(work + "/cache/train.ids"));
  EXPECT_TRUE(VerifySha256Sums(o.out).ok());
  json rec = json::parse(*ReadFile(o.out + "/training.json"));
  EXPECT_EQ(rec["steps"], 6);
  EXPECT_EQ(rec["tokens_seen"], 6 * 4 * 32);
  EXPECT_EQ(rec["heldout_perplexity"]["lines"], 10);
  EXPECT_EQ(rec["unigram_baseline"]["counts"].size(), 4096u);
  EXPECT_EQ(rec["heldout_loss_curve"].size(), 3u);  // steps 0, 3, 6
  {
    std::ifstream csv(o.run_dir + "/train_log.csv");
    std::string line;
    int n = 0;
    while (std::getline(csv, line)) ++n;
    EXPECT_EQ(n, 1 + 1 + 6);  // header, step 0 evaluation, 6 steps
  }
  // --resume on a finished run does no step and still exports the same weights.
  const auto sums_before = Sums(o.out);
  o.resume = true;
  ASSERT_TRUE(RunTraining(o).ok());
  EXPECT_EQ(Sums(o.out).at("model.safetensors"), sums_before.at("model.safetensors"));

  TrainOptions d = o;
  d.resume = false;
  d.init_from = o.run_dir + "/checkpoint";
  d.attention = "nope";
  d.steps = 3;
  d.lr = 1e-3;
  d.run_dir = work + "/run-drope";
  d.out = work + "/drope";
  d.shards = 2;
  d.name = "e2e-drope";
  // Before any step, the DroPE trainer holds exactly the RoPE weights, under a NoPE config.
  {
    auto src = LoadWeightsFrom(d.init_from);
    ASSERT_TRUE(src.ok()) << src.status();
    model::LlamaConfig dc = ToDrope(src->first);
    std::vector<int32_t> stream = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                   21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36};
    auto t = Trainer::Create(d, dc, &stream);
    ASSERT_TRUE(t.ok()) << t.status();
    auto pa = NamedParams((*t)->weights());
    auto pb = NamedParams(std::as_const(src->second));
    for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(at::equal(*pa[i].second, *pb[i].second)) << pa[i].first;
    EXPECT_FALSE((*t)->config().uses_rope());
  }
  ASSERT_TRUE(RunTraining(d).ok());
  json cj = json::parse(*ReadFile(d.out + "/config.json"));
  EXPECT_EQ(cj["model_type"], "llama_drope");
  EXPECT_EQ(cj["attention_type"], "nope");
  EXPECT_TRUE(fs::exists(d.out + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(d.out + "/model.safetensors"));
  EXPECT_TRUE(VerifySha256Sums(d.out).ok());
  auto m = model::LlamaModel::Load(d.out, model::LoadOptions{});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->config().attention_type, model::AttentionType::kNope);
  EXPECT_FALSE((*m)->config().uses_rope());
  // No rotary: the loaded model's logits equal a NoPE forward of its weights and differ from a RoPE forward
  // of the same weights beyond position 0 (where the rotation is the identity).
  at::Tensor ids = at::arange(5, 5 + 20, at::kLong);
  auto got = (*m)->Forward(ids, model::ForwardOptions{});
  model::LlamaConfig as_rope = (*m)->config();
  as_rope.model_type = "llama";
  as_rope.attention_type = model::AttentionType::kRope;
  auto rope = model::LlamaForward(as_rope, (*m)->weights(), ids, model::ForwardOptions{});
  ASSERT_TRUE(got.ok() && rope.ok());
  EXPECT_TRUE(at::allclose(got->logits[0], rope->logits[0], 1e-5, 1e-5));
  EXPECT_GT(MaxAbsDiff(got->logits.narrow(0, 1, 19), rope->logits.narrow(0, 1, 19)), 1e-4);
  json drec = json::parse(*ReadFile(d.out + "/training.json"));
  EXPECT_EQ(drec["model_type"], "llama_drope");
  EXPECT_EQ(drec["steps"], 3);
}

// ---- the shipped pair

struct Shipped {
  std::string dir;
  const char* model_type;
  bool sharded;
};

TEST_F(TrainTest, ShippedPairLoadsMatchesManifestAndBeatsUnigram) {
  auto tok = tokenizer::Tokenizer::LoadFromDir(kRoot + "/models/tokenizer");
  ASSERT_TRUE(tok.ok());
  auto heldout = ReadFile(kRoot + "/models/datasets/brown-heldout.txt");
  ASSERT_TRUE(heldout.ok());
  const std::vector<std::string> lines = NonEmptyLines(*heldout);
  model::LlamaConfig rope_cfg;
  for (const Shipped& s : {Shipped{kRoot + "/models/tiny-rope", "llama", false},
                           Shipped{kRoot + "/models/tiny-drope", "llama_drope", true}}) {
    SCOPED_TRACE(s.dir);
    ASSERT_TRUE(fs::exists(s.dir + "/config.json")) << "the shipped model is missing (tools/train/make_tiny_pair.sh)";
    absl::Status v = VerifySha256Sums(s.dir);
    EXPECT_TRUE(v.ok()) << v;
    EXPECT_EQ(fs::exists(s.dir + "/model.safetensors.index.json"), s.sharded);
    auto m = model::LlamaModel::Load(s.dir, model::LoadOptions{});
    ASSERT_TRUE(m.ok()) << m.status();
    const model::LlamaConfig& c = (*m)->config();
    EXPECT_EQ(c.model_type, s.model_type);
    EXPECT_EQ(c.uses_rope(), !s.sharded);
    EXPECT_EQ(c.vocab_size, (*tok)->vocab_size());
    if (s.sharded) {
      EXPECT_EQ(c.attention_type, model::AttentionType::kNope);
      EXPECT_EQ(c.hidden_size, rope_cfg.hidden_size);
      EXPECT_EQ(c.num_hidden_layers, rope_cfg.num_hidden_layers);
    } else {
      rope_cfg = c;
    }
    EXPECT_EQ(*ReadFile(s.dir + "/tokenizer.model"), *ReadFile(kRoot + "/models/tokenizer/tokenizer.model"));

    json rec = json::parse(*ReadFile(s.dir + "/training.json"));
    Unigram uni;
    uni.counts = rec["unigram_baseline"]["counts"].get<std::vector<int64_t>>();
    for (int64_t x : uni.counts) uni.total += x;
    ASSERT_EQ(uni.total, rec["unigram_baseline"]["train_tokens"].get<int64_t>());
    ASSERT_EQ(static_cast<int64_t>(uni.counts.size()), c.vocab_size);
    // A sample of held-out paragraphs (every 8th), scored with LlamaForward's target_nll.
    std::vector<std::string> sample;
    for (size_t i = 0; i < lines.size(); i += 8) sample.push_back(lines[i]);
    auto ev = EvaluateHeldout(**m, **tok, sample, 0, uni);
    ASSERT_TRUE(ev.ok()) << ev.status();
    EXPECT_GT(ev->tokens, 5000);
    EXPECT_LT(ev->ppl, 0.4 * ev->unigram_ppl) << "model " << ev->ppl << " unigram " << ev->unigram_ppl;
    // ... and agrees with the card's full held-out number (same definition, all lines) within sampling noise.
    const double card = rec["heldout_perplexity"]["value"].get<double>();
    EXPECT_NEAR(std::log(ev->ppl), std::log(card), 0.15) << "sample " << ev->ppl << " card " << card;
    EXPECT_NEAR(rec["unigram_baseline"]["perplexity"].get<double>() / card, ev->unigram_ppl / ev->ppl,
                0.25 * ev->unigram_ppl / ev->ppl);
  }
}

}  // namespace
}  // namespace sinkscope::train
