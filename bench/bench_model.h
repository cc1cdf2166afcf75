// Models for the benchmarks: random in-memory Llamas (forward_bench, memory_bench: N(0, 1/fan_in) projections,
// RMSNorm weights 1 + N(0, 0.1²), N(0, 1) embeddings, seeded; nothing read from disk) and checkpoints loaded as job
// handles (job_bench, stream_bench).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/job/model_handle.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"

namespace sinkscope::bench {

inline model::LlamaWeights RandomWeights(const model::LlamaConfig& c, at::ScalarType dt, uint64_t seed = 0) {
  at::manual_seed(seed);
  auto lin = [&](int64_t o, int64_t i) { return (at::randn({o, i}) / std::sqrt(static_cast<double>(i))).to(dt); };
  auto norm = [&](int64_t n) { return (1 + 0.1 * at::randn({n})).to(dt); };
  const int64_t d = c.hidden_size, qd = c.num_attention_heads * c.head_dim, kvd = c.num_key_value_heads * c.head_dim;
  model::LlamaWeights w;
  w.embed_tokens = at::randn({c.vocab_size, d}).to(dt);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    model::LayerWeights L;
    L.input_layernorm = norm(d);
    L.q_proj = lin(qd, d);
    L.k_proj = lin(kvd, d);
    L.v_proj = lin(kvd, d);
    L.o_proj = lin(d, qd);
    L.post_attention_layernorm = norm(d);
    L.gate_proj = lin(c.intermediate_size, d);
    L.up_proj = lin(c.intermediate_size, d);
    L.down_proj = lin(d, c.intermediate_size);
    w.layers.push_back(L);
  }
  w.norm = norm(d);
  w.lm_head = lin(c.vocab_size, d);
  return w;
}

// A Llama config (MHA unless kv_heads < heads, head_dim = hidden / heads, RoPE θ = 10000).
inline model::LlamaConfig BenchConfig(int64_t layers, int64_t hidden, int64_t heads, int64_t kv_heads,
                                      int64_t intermediate, int64_t vocab, int64_t max_positions) {
  model::LlamaConfig c;
  c.model_type = "llama";
  c.num_hidden_layers = layers;
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = intermediate;
  c.vocab_size = vocab;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = max_positions;
  return c;
}

// Loads each checkpoint directory of a comma-separated list as a job handle named after the directory (with its
// tokenizer.model when there is one). `digest`: hash the weights (reading a 7B checkpoint twice: off by default).
inline absl::StatusOr<std::vector<job::ModelHandle>> LoadHandles(const std::string& dirs, const std::string& device,
                                                                 const std::string& dtype, bool digest = false) {
  std::vector<job::ModelHandle> handles;
  for (const std::string& dir : std::vector<std::string>(absl::StrSplit(dirs, ','))) {
    model::LoadOptions lo;
    lo.device = device;
    lo.dtype = dtype;
    lo.compute_digest = digest;
    absl::StatusOr<std::shared_ptr<model::LlamaModel>> m = model::LlamaModel::Load(dir, lo);
    if (!m.ok()) return absl::Status(m.status().code(), absl::StrCat("loading ", dir, ": ", m.status().message()));
    auto tok = tokenizer::Tokenizer::LoadFromDir(dir);
    handles.push_back({std::filesystem::path(dir).filename().string(), *m, tok.ok() ? *tok : nullptr});
  }
  return handles;
}

}  // namespace sinkscope::bench
