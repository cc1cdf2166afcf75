// Hand-built and random tiny models for analysis_tests (see test_models.h).
#include "tests/analysis/test_models.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "common/analysis/matrix_entropy.h"
#include "common/analysis/residual_stats.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"

namespace sinkscope::analysis_test {
namespace {

at::TensorOptions F32() { return at::TensorOptions().dtype(at::kFloat); }

struct Rng {
  at::Generator g;
  explicit Rng(uint64_t seed) : g(at::make_generator<at::CPUGeneratorImpl>(seed)) {}
  at::Tensor randn(std::vector<int64_t> shape, double scale = 1.0) { return at::randn(shape, g, F32()) * scale; }
};

// All-zero projections, unit norms, random embeddings and lm_head.
model::LlamaWeights Blank(const model::LlamaConfig& c, Rng& rng) {
  const int64_t d = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t qd = c.num_attention_heads * c.head_dim, kvd = c.num_key_value_heads * c.head_dim;
  model::LlamaWeights w;
  w.embed_tokens = rng.randn({V, d});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    model::LayerWeights L;
    L.input_layernorm = at::ones({d}, F32());
    L.post_attention_layernorm = at::ones({d}, F32());
    L.q_proj = at::zeros({qd, d}, F32());
    L.k_proj = at::zeros({kvd, d}, F32());
    L.v_proj = rng.randn({kvd, d}, 1.0 / std::sqrt(static_cast<double>(d)));
    L.o_proj = at::zeros({d, qd}, F32());
    L.gate_proj = rng.randn({I, d}, 1.0 / std::sqrt(static_cast<double>(d)));
    L.up_proj = rng.randn({I, d}, 1.0 / std::sqrt(static_cast<double>(d)));
    L.down_proj = at::zeros({d, I}, F32());
    w.layers.push_back(L);
  }
  w.norm = at::ones({d}, F32());
  w.lm_head = rng.randn({V, d}, 1.0 / std::sqrt(static_cast<double>(d)));
  return w;
}

// Builds the model on TestDevice(): the hand-built weights are made on the CPU, then moved.
job::ModelHandle Wrap(const model::LlamaConfig& c, model::LlamaWeights w, const std::string& name) {
  if (TestDevice() != "cpu") {
    const at::Device dev(TestDevice());
    model::ForEachTensor(w, [&](const std::string&, at::Tensor& t) { t = t.to(dev); });
    if (c.tie_word_embeddings) w.lm_head = w.embed_tokens;
  }
  auto m = model::LlamaModel::FromWeights(c, std::move(w), name);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  return job::ModelHandle{name, *m, nullptr};
}

}  // namespace

model::LlamaConfig TinyConfig(bool rope, int64_t layers, int64_t heads, int64_t head_dim, int64_t kv_heads,
                              int64_t vocab, int64_t d_mlp) {
  model::LlamaConfig c;
  c.model_type = rope ? "llama" : "llama_drope";
  c.attention_type = rope ? model::AttentionType::kRope : model::AttentionType::kNope;
  c.vocab_size = vocab;
  c.hidden_size = heads * head_dim;
  c.intermediate_size = d_mlp;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads > 0 ? kv_heads : heads;
  c.head_dim = head_dim;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.torch_dtype = "float32";
  return c;
}

double BosSinkLogit() {
  // BOS embedding e0 (d = 8): a0 = 1/sqrt(1/8 + eps); k0 = 10·a0. Non-BOS embeddings have two unit entries
  // (dim 1 and one of dims 2..7): a1 = 1/sqrt(2/8 + eps); q0 = 10·a1. Logit = q0·k0/sqrt(hd = 4).
  const double eps = 1e-6;
  const double k0 = 10.0 / std::sqrt(1.0 / 8 + eps), q0 = 10.0 / std::sqrt(2.0 / 8 + eps);
  return q0 * k0 / 2.0;
}

job::ModelHandle BosSinkModel(bool rope, const std::string& name) {
  const model::LlamaConfig c = TinyConfig(rope);
  Rng rng(1);
  model::LlamaWeights w = Blank(c, rng);
  const int64_t hd = c.head_dim;
  w.embed_tokens.zero_();
  w.embed_tokens[1][0] = 1.0;
  for (int64_t t = 0; t < c.vocab_size; ++t) {
    if (t == 1) continue;
    w.embed_tokens[t][1] = 1.0;
    w.embed_tokens[t][2 + t % 6] = 1.0;
  }
  for (auto& L : w.layers)
    for (int64_t h = 0; h < c.num_attention_heads; ++h) {
      L.k_proj[h * hd][0] = 10.0;
      L.q_proj[h * hd][0] = 10.0;
      L.q_proj[h * hd][1] = 10.0;
    }
  return Wrap(c, std::move(w), name);
}

job::ModelHandle UniformAttentionModel(bool rope, const std::string& name) {
  const model::LlamaConfig c = TinyConfig(rope);
  Rng rng(2);
  model::LlamaWeights w = Blank(c, rng);
  const double s = 1.0 / std::sqrt(static_cast<double>(c.hidden_size));
  for (auto& L : w.layers) {  // everything active except q_proj (= 0 → all scores 0)
    L.k_proj = rng.randn({c.hidden_size, c.hidden_size}, s);
    L.o_proj = rng.randn({c.hidden_size, c.hidden_size}, s);
    L.down_proj = rng.randn({c.hidden_size, c.intermediate_size}, 1.0 / std::sqrt(8.0));
  }
  return Wrap(c, std::move(w), name);
}

job::ModelHandle PlantedMassiveModel(const std::string& name) {
  const model::LlamaConfig c = TinyConfig(/*rope=*/true, /*layers=*/2, /*heads=*/2, /*head_dim=*/8);
  Rng rng(3);
  model::LlamaWeights w = Blank(c, rng);
  const int64_t d = c.hidden_size;
  w.embed_tokens = rng.randn({c.vocab_size, d}, 0.5);
  w.embed_tokens.select(1, 0).fill_(1.0);
  for (auto& L : w.layers) {
    L.q_proj = rng.randn({d, d}, 0.05);
    L.k_proj = rng.randn({d, d}, 0.05);
    L.v_proj = rng.randn({d, d}, 0.05);
    L.q_proj[1 * c.head_dim + 2].zero_();
    L.q_proj[1 * c.head_dim + 2][0] = 20.0;
  }
  return Wrap(c, std::move(w), name);
}

job::ModelHandle OrthogonalEmbeddingModel(bool bos_write, const std::string& name) {
  const model::LlamaConfig c = TinyConfig(/*rope=*/false, /*layers=*/bos_write ? 3 : 2);
  Rng rng(4);
  model::LlamaWeights w = Blank(c, rng);
  w.embed_tokens.zero_();
  w.embed_tokens[1][0] = 1.0;
  w.embed_tokens[2][1] = 2.0;
  w.embed_tokens[3][2] = 3.0;
  for (int64_t t = 4; t < c.vocab_size; ++t) w.embed_tokens[t][4 + t % 4] = 1.0;
  if (bos_write) {
    // silu(10·a0)·(1·a0) is non-zero only for BOS (the only token with a dim-0 component).
    for (int l : {1, 2}) {
      auto& L = w.layers[l];
      L.gate_proj.zero_();
      L.up_proj.zero_();
      L.gate_proj[0][0] = 10.0;
      L.up_proj[0][0] = 1.0;
    }
    w.layers[1].down_proj[3][0] = 100.0 / 80.0;  // ≈ +100·e3 at layer 1 (a0 ≈ 2.83: silu(28.3)·2.83 ≈ 80)
    w.layers[2].down_proj[3][0] = 219.0;         // ≈ +1·e3 at layer 2 (a0 ≈ 0.028)
  }
  return Wrap(c, std::move(w), name);
}

job::ModelHandle RandomModel(bool rope, uint64_t seed, int64_t zero_mlp_layer, const std::string& name, int64_t layers,
                             int64_t vocab, int64_t heads, int64_t kv_heads) {
  const model::LlamaConfig c = TinyConfig(rope, layers, heads, /*head_dim=*/8, kv_heads, vocab, 32);
  Rng rng(seed);
  model::LlamaWeights w = Blank(c, rng);
  const int64_t d = c.hidden_size, I = c.intermediate_size;
  const double s = 1.0 / std::sqrt(static_cast<double>(d));
  for (int64_t l = 0; l < layers; ++l) {
    auto& L = w.layers[l];
    L.input_layernorm = 1.0 + rng.randn({d}, 0.1);
    L.post_attention_layernorm = 1.0 + rng.randn({d}, 0.1);
    L.q_proj = rng.randn({d, d}, 2.0 * s);
    L.k_proj = rng.randn({kv_heads * c.head_dim, d}, 2.0 * s);
    L.o_proj = rng.randn({d, d}, s);
    L.down_proj =
        l == zero_mlp_layer ? at::zeros({d, I}, F32()) : rng.randn({d, I}, 1.0 / std::sqrt(static_cast<double>(I)));
  }
  return Wrap(c, std::move(w), name);
}

job::ModelHandle WithPlantedQ(const job::ModelHandle& h, int64_t from_layer, const std::string& name) {
  model::LlamaWeights w = h.model->weights();
  for (size_t l = static_cast<size_t>(from_layer); l < w.layers.size(); ++l) {
    at::Tensor q = w.layers[l].q_proj.clone();
    q[1].zero_();
    q[1][0] = 40.0;
    w.layers[l].q_proj = q;
  }
  if (h.model->config().tie_word_embeddings) w.lm_head = w.embed_tokens;
  return Wrap(h.model->config(), std::move(w), name);
}

job::ModelHandle ToBfloat16(const job::ModelHandle& h, const std::string& name) {
  model::LlamaWeights w = h.model->weights();
  model::ForEachTensor(w, [](const std::string&, at::Tensor& t) { t = t.to(at::kBFloat16); });
  if (h.model->config().tie_word_embeddings) w.lm_head = w.embed_tokens;
  return Wrap(h.model->config(), std::move(w), name);
}

Reductions Reduce(const std::vector<std::vector<float>>& rows) {
  const int64_t T = static_cast<int64_t>(rows.size()), F = static_cast<int64_t>(rows[0].size());
  at::Tensor x = at::empty({T, F}, F32());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t f = 0; f < F; ++f) x[t][f] = rows[t][f];
  const auto e = analysis::ComputeMatrixEntropy(x);
  const auto b = analysis::ComputeBosStats(x);
  return {e.entropy, e.anisotropy, e.normalized, b.bos_norm, b.mean_other_norm, b.ratio};
}

EigensolverErrors HostEigensolverErrors(int64_t B, int64_t n, uint64_t seed) {
  at::manual_seed(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor lam = std::get<0>(at::sort(at::rand({B, n}, f64) * 10, -1));
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({B, n, n}, f64)));
  at::Tensor a = q.matmul(at::diag_embed(lam)).matmul(q.transpose(1, 2));
  a = (a + a.transpose(1, 2)) / 2;
  const at::Tensor host = analysis::HostParallelEigvalsh(a);
  const at::Tensor on_device = analysis::BatchEigvalsh(a.to(at::Device(TestDevice())));
  return {(host - lam).abs().max().item<double>(), (host - at::linalg_eigvalsh(a)).abs().max().item<double>(),
          (on_device.cpu() - lam).abs().max().item<double>()};
}

const std::string& TestDevice() {
  static const std::string device = [] {
    const char* d = std::getenv("SINKSCOPE_TEST_DEVICE");
    return std::string(d != nullptr && *d != '\0' ? d : "cpu");
  }();
  return device;
}

job::ModelHandle LoadHandle(const std::string& dir, const std::string& name) {
  model::LoadOptions lo;
  lo.device = TestDevice();
  auto m = model::LlamaModel::Load(dir, lo);
  EXPECT_TRUE(m.ok()) << m.status();
  job::ModelHandle h{name, m.ok() ? *m : nullptr, nullptr};
  if (std::filesystem::exists(dir + "/tokenizer.model")) {
    auto t = tokenizer::Tokenizer::LoadFromDir(dir);
    EXPECT_TRUE(t.ok()) << t.status();
    if (t.ok()) h.tokenizer = *t;
  }
  return h;
}

}  // namespace sinkscope::analysis_test
