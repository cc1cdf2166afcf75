// sinkscope-train: trains the tiny RoPE Llama and its DroPE copy on CPU with LibTorch autograd.
//
// Model: the engine's own forward (common/model/llama.h), a batch [B, T] run as B packed prompts; tests/train checks
// that BatchLogits equals one-prompt forwards row by row. Parameters are fp32 leaves; with compute_dtype bfloat16
// they are cast to bf16 inside the graph each step (fp32 master weights, fp32 RMSNorm statistics, attention scores,
// softmax and loss, as in the engine).
// Optimiser: AdamW (decoupled weight decay, PyTorch's update rule), no decay on the 1-D RMSNorm weights; linear
// warm-up to lr, then cosine to lr·min_lr_ratio; global grad-norm clipping. Deterministic given the seed and the
// thread count: the init uses a seeded CPU generator, batches come from WindowSampler (tools/train/data.h).
// Checkpoints (<run_dir>/checkpoint/): state.safetensors (param/exp_avg/exp_avg_sq per HF tensor name, F32) and
// state.json (step, sampler RNG, options, counters). A resumed run continues bit for bit.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/config.h"
#include "common/model/llama.h"
#include "common/tokenizer/tokenizer.h"
#include "tools/train/data.h"
#include "tools/train/export.h"

namespace sinkscope::train {

struct TrainOptions {
  // model (ignored with init_from, except attention)
  int64_t layers = 4, hidden = 128, heads = 4, kv_heads = 0, intermediate = 0;  // 0: kv=heads, I=8d/3 rounded to 8
  double rope_theta = 10000.0, rms_norm_eps = 1e-5, init_std = 0.02;
  std::string attention = "rope";  // "rope" (model_type llama) or "nope" (llama_drope / attention_type nope)
  // data
  std::string train_text = "build/corpus/brown-train.txt";
  std::string heldout_text = "models/datasets/brown-heldout.txt";
  std::string tokenizer_dir = "models/tokenizer";
  std::string cache_dir = "build/train/cache";
  int64_t seq_len = 128, batch = 32;
  // optimisation
  int64_t steps = 2000, warmup = 100;
  double lr = 3e-3, min_lr_ratio = 0.1, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;
  uint64_t seed = 0;
  int threads = 2;
  std::string compute_dtype = "float32";  // "float32" | "bfloat16"
  // run
  std::string name = "tiny";  // recorded in training.json
  std::string run_dir;        // checkpoint/, train_log.csv (default build/train/<name>)
  bool resume = false;
  std::string init_from;  // a checkpoint dir (state.json) or a HF snapshot: start from its weights, fresh optimiser
  int64_t log_every = 10, eval_every = 200, eval_windows = 64, ckpt_every = 250;
  int64_t heldout_max_lines = 0;  // held-out PPL lines for training.json (0: all non-empty lines)
  // export
  std::string out;  // HF snapshot directory (empty: no export)
  int shards = 1;
  std::string export_dtype = "float32";  // on-disk dtype: "float32" | "bfloat16"
};

// Llama config for a fresh model (model_type llama or llama_drope/nope by opts.attention).
absl::StatusOr<model::LlamaConfig> MakeConfig(const TrainOptions& opts, int64_t vocab_size);
// Switches a config to DroPE: model_type llama_drope, attention_type nope (rope_theta kept, unused).
model::LlamaConfig ToDrope(model::LlamaConfig cfg);

// (HF tensor name, tensor) for every parameter, in export order (model::ForEachTensor: embed, layers in HF order,
// norm, lm_head).
std::vector<std::pair<std::string, at::Tensor*>> NamedParams(model::LlamaWeights& w);
std::vector<std::pair<std::string, const at::Tensor*>> NamedParams(const model::LlamaWeights& w);

// Fresh fp32 weights with requires_grad: N(0, std) projections and embeddings, o_proj/down_proj N(0, std/√(2L)),
// RMSNorm weights 1. Deterministic in `seed`.
model::LlamaWeights InitWeights(const model::LlamaConfig& cfg, uint64_t seed, double std);

// Batched forward. ids int64 [B, T]. compute: at::kFloat or at::kBFloat16 (weights are cast when different).
at::Tensor BatchLogits(const model::LlamaConfig& cfg, const model::LlamaWeights& w, const at::Tensor& ids,
                       at::ScalarType compute);  // [B, T, V] float32
// Mean next-token cross entropy over all B·(T-1) targets (float32 scalar, differentiable).
at::Tensor BatchLoss(const model::LlamaConfig& cfg, const model::LlamaWeights& w, const at::Tensor& ids,
                     at::ScalarType compute);

// Learning rate at 0-based step: lr·(step+1)/warmup during warm-up, then cosine from lr to lr·min_lr_ratio at the
// last step.
double LearningRate(const TrainOptions& opts, int64_t step);

// Weights as safetensors tensors (HF names), converted to "float32" or "bfloat16".
absl::StatusOr<std::vector<TensorBytes>> WeightsToTensorBytes(const model::LlamaWeights& w, const std::string& dtype);

struct HeldoutEval {
  int64_t lines = 0, tokens = 0;  // tokens = predicted targets
  double nll = 0, ppl = 0;        // mean target NLL and exp(nll)
  double unigram_ppl = 0;         // the unigram baseline on exactly the same targets
};
// Per non-empty line: ids = Encode(line) with BOS, truncated to max_position_embeddings; targets ids[1:], scored
// with LlamaForward(return_target_nll). max_lines <= 0: all lines.
absl::StatusOr<HeldoutEval> EvaluateHeldout(const model::LlamaModel& m, const tokenizer::Tokenizer& tok,
                                            const std::vector<std::string>& lines, int64_t max_lines,
                                            const Unigram& unigram);

// One training run's state; see the file comment.
class Trainer {
 public:
  struct StepStats {
    int64_t step = 0;  // 1-based index of the finished step
    double lr = 0, loss = 0, grad_norm = 0, step_ms = 0;
  };

  // Fresh (or init_from) state. `stream` must outlive the trainer.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainOptions& opts, const model::LlamaConfig& cfg,
                                                         const std::vector<int32_t>* stream);
  // Runs one optimisation step on the next sampled batch.
  absl::StatusOr<StepStats> Step();
  // Mean CE over fixed windows (no grad).
  absl::StatusOr<double> EvalLoss(const std::vector<int64_t>& windows);

  absl::Status SaveCheckpoint(const std::string& dir) const;
  // Restores weights, optimiser moments, step, sampler RNG and counters. The checkpoint's model shape must match.
  absl::Status LoadCheckpoint(const std::string& dir);

  const model::LlamaConfig& config() const { return cfg_; }
  const model::LlamaWeights& weights() const { return w_; }
  int64_t step() const { return step_; }
  int64_t tokens_seen() const { return tokens_seen_; }
  double elapsed_s() const { return elapsed_s_; }
  void add_elapsed(double s) { elapsed_s_ += s; }

 private:
  Trainer() = default;
  TrainOptions opts_;
  model::LlamaConfig cfg_;
  model::LlamaWeights w_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  std::unique_ptr<WindowSampler> sampler_;
  at::ScalarType compute_ = at::kFloat;
  int64_t step_ = 0, tokens_seen_ = 0;
  double elapsed_s_ = 0;
};

// Weights (fp32) and config from a checkpoint dir (state.json) or a HF snapshot dir.
absl::StatusOr<std::pair<model::LlamaConfig, model::LlamaWeights>> LoadWeightsFrom(const std::string& dir);

// "V4096 d128 I344 L6 H4 Hkv4 hd32": the model shape, to compare a checkpoint with a run.
std::string ShapeKey(const model::LlamaConfig& c);
double NowSeconds();  // steady clock, for step timing

// The whole command: data, (resume | init_from | fresh), training loop with logging/eval/checkpoints, export with
// training.json and SHA256SUMS.
absl::Status RunTraining(const TrainOptions& opts);

}  // namespace sinkscope::train
