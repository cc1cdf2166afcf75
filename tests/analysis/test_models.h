// Hand-built tiny models with known answers, random tiny models, and helpers shared by analysis_tests.
// The only test TU that includes ATen ops (test_models.cc); the tests themselves go through the job API.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/job/job_spec.h"
#include "common/job/plan.h"
#include "common/model/config.h"

namespace sinkscope::analysis_test {

// d_model = heads·head_dim, MHA unless kv_heads given; vocab 16; max positions 64; rms eps 1e-6.
model::LlamaConfig TinyConfig(bool rope, int64_t layers = 2, int64_t heads = 2, int64_t head_dim = 4,
                              int64_t kv_heads = 0, int64_t vocab = 16, int64_t d_mlp = 8);

// Every model below keeps o_proj = 0 and down_proj = 0 (unless stated), so the residual stream stays equal to the
// token embeddings in every layer: resid_post[l] = E[ids].

// Attention forced onto BOS (token 1): k = 10·a₀ on dim 0 of each head (only BOS has an embedding component on
// dim 0), q = 10·(a₀ + a₁) (every token has a positive dim-1 component except BOS, which has dim 0): the score of
// key 0 is ≈ 280 for every query, other keys score 0, so A[t,0] = 1 in fp32 for NoPE. For RoPE the query is
// rotated by angle t on the (0, hd/2) pair, so A[t,0] = 1/(1 + t·exp(−s·cos t)) with s = q₀k₀/√hd.
job::ModelHandle BosSinkModel(bool rope, const std::string& name = "bos-sink");
// s = q₀·k₀/√hd of BosSinkModel (the pre-rotary BOS logit of every non-BOS query), computed in double.
double BosSinkLogit();
// q_proj = 0: uniform causal attention, A[t,0] = 1/(t+1).
job::ModelHandle UniformAttentionModel(bool rope, const std::string& name = "uniform");
// d = 16 (2 heads × 8): q_proj has one planted row (head 1, dim 2) = 20·e₀ᵀ (every embedding has e₀ = 1) on top of
// small N(0, 0.05²) rows: exactly one massive Q dim per layer at λ = 5.
job::ModelHandle PlantedMassiveModel(const std::string& name = "planted");
// Embedding rows: token 1 = 1·e₀, token 2 = 2·e₁, token 3 = 3·e₂ (others random): the Gram matrix of
// ids [1,2,3] is diag(1,4,9). `bos_write`: layer 1's MLP adds 100·e₃ and layer 2's adds 1·e₃ to BOS only
// (3 layers), so the BOS norm jumps at layer 1 (argmax_jump = 1) while the ratio keeps rising to layer 2
// (argmax_ratio = 2): the asymmetry of docs/study.md §6.5.
job::ModelHandle OrthogonalEmbeddingModel(bool bos_write, const std::string& name = "orthogonal");
// Random N(0, 1/fan_in) weights (all parts active) with down_proj of `zero_mlp_layer` set to 0 (-1: none); head_dim
// 8, MHA unless kv_heads < heads (GQA).
job::ModelHandle RandomModel(bool rope, uint64_t seed, int64_t zero_mlp_layer = -1, const std::string& name = "random",
                             int64_t layers = 3, int64_t vocab = 64, int64_t heads = 2, int64_t kv_heads = 2);

// The same model with one massive pre-rotary Q dim (head 0, dim 1: q_proj row = 40·e₀ᵀ) in layers >= from_layer
// only: the Q/K disruption at λ = 5 then first acts at from_layer (prefix reuse tests).
job::ModelHandle WithPlantedQ(const job::ModelHandle& h, int64_t from_layer, const std::string& name);

// The same model with every weight cast to bfloat16 (compute dtype bf16).
job::ModelHandle ToBfloat16(const job::ModelHandle& h, const std::string& name);

// Direct calls of the per-prompt reductions on a [T, F] float32 matrix given row by row (unit tests).
struct Reductions {
  double entropy, anisotropy, normalized, bos_norm, mean_other_norm, ratio;
};
Reductions Reduce(const std::vector<std::vector<float>>& rows);

// analysis::HostParallelEigvalsh (the host solver a GPU batch of Gram matrices takes) on B random symmetric n×n
// matrices Q diag(λ) Qᵀ of known ascending spectrum λ: its largest error against λ and against the batched LAPACK
// call, and analysis::BatchEigvalsh's against λ for the same batch on TestDevice().
struct EigensolverErrors {
  double host_vs_known, host_vs_batched, on_test_device_vs_known;
};
EigensolverErrors HostEigensolverErrors(int64_t B, int64_t n, uint64_t seed);

// The device models are built on: $SINKSCOPE_TEST_DEVICE ("cuda", ...), default "cpu" (deploy/gpu-check.sh).
const std::string& TestDevice();

// Loads a checkpoint directory (config.json + safetensors [+ tokenizer.model]) as a handle.
job::ModelHandle LoadHandle(const std::string& dir, const std::string& name);

}  // namespace sinkscope::analysis_test
