// sinkscope-train: the model side of training (config, init, the loss through the engine's forward, AdamW steps,
// held-out evaluation). See trainer.h. The only heavy LibTorch TU of the tool.
#include "tools/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <cmath>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "common/util/status_macros.h"

namespace sinkscope::train {
using model::LlamaConfig;
using model::LlamaWeights;

namespace {

bool Is2D(const std::string& name) { return !name.ends_with("norm.weight") && !name.ends_with("layernorm.weight"); }

// The fp32 master weights cast to the compute dtype inside the autograd graph (a no-op for float32).
LlamaWeights Cast(const LlamaWeights& w32, at::ScalarType dt) {
  LlamaWeights w = w32;
  model::ForEachTensor(w, [dt](const std::string&, at::Tensor& t) {
    if (t.scalar_type() != dt) t = t.to(dt);
  });
  return w;
}

// Final-norm hidden states [B, T, d] in the compute dtype: the engine's forward over the B rows packed as B prompts
// of T tokens (block-diagonal attention, positions restarting per row), so training and serving share one forward.
at::Tensor BatchHidden(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids, at::ScalarType dt) {
  const int64_t B = ids.size(0), T = ids.size(1);
  model::ForwardOptions o;
  o.return_logits = false;
  o.return_hidden = true;
  o.segments.assign(B, T);
  absl::StatusOr<model::ForwardResult> r = model::LlamaForward(cfg, Cast(w, dt), ids.reshape({-1}), o);
  if (!r.ok()) throw std::runtime_error(std::string(r.status().message()));
  return r->hidden.view({B, T, cfg.hidden_size});
}

}  // namespace

std::string ShapeKey(const LlamaConfig& c) {
  return absl::StrCat("V", c.vocab_size, " d", c.hidden_size, " I", c.intermediate_size, " L", c.num_hidden_layers,
                      " H", c.num_attention_heads, " Hkv", c.num_key_value_heads, " hd", c.head_dim);
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

absl::StatusOr<LlamaConfig> MakeConfig(const TrainOptions& o, int64_t vocab_size) {
  if (o.layers < 1 || o.hidden < 2 || o.heads < 1) return absl::InvalidArgumentError("layers, hidden, heads must be >= 1");
  if (o.hidden % o.heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("--heads (", o.heads, ") does not divide --hidden (", o.hidden, ")"));
  LlamaConfig c;
  c.vocab_size = vocab_size;
  c.hidden_size = o.hidden;
  c.num_hidden_layers = o.layers;
  c.num_attention_heads = o.heads;
  c.num_key_value_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  if (o.heads % c.num_key_value_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("--kv-heads (", c.num_key_value_heads, ") does not divide --heads (",
                                                   o.heads, ")"));
  c.head_dim = o.hidden / o.heads;
  if (c.head_dim % 2 != 0) return absl::InvalidArgumentError("head_dim must be even (rotary pairs)");
  c.intermediate_size = o.intermediate > 0 ? o.intermediate : 8 * ((o.hidden * 8 / 3 + 7) / 8);
  c.max_position_embeddings = o.seq_len;
  c.rms_norm_eps = o.rms_norm_eps;
  c.rope_theta = o.rope_theta;
  c.tie_word_embeddings = false;
  c.torch_dtype = o.export_dtype;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  if (o.attention == "rope") {
    c.model_type = "llama";
    c.attention_type = model::AttentionType::kRope;
  } else if (o.attention == "nope") {
    c = ToDrope(c);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--attention ", o.attention, " (expected rope or nope)"));
  }
  return c;
}

LlamaConfig ToDrope(LlamaConfig cfg) {
  cfg.model_type = "llama_drope";
  cfg.attention_type = model::AttentionType::kNope;
  return cfg;
}

std::vector<std::pair<std::string, at::Tensor*>> NamedParams(LlamaWeights& w) {
  std::vector<std::pair<std::string, at::Tensor*>> out;
  model::ForEachTensor(w, [&](const std::string& name, at::Tensor& t) { out.emplace_back(name, &t); });
  return out;
}

std::vector<std::pair<std::string, const at::Tensor*>> NamedParams(const LlamaWeights& w) {
  std::vector<std::pair<std::string, const at::Tensor*>> out;
  for (auto& [n, t] : NamedParams(const_cast<LlamaWeights&>(w))) out.emplace_back(n, t);
  return out;
}

LlamaWeights InitWeights(const LlamaConfig& cfg, uint64_t seed, double std) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const int64_t d = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
  const int64_t qd = cfg.num_attention_heads * cfg.head_dim, kvd = cfg.num_key_value_heads * cfg.head_dim;
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(cfg.num_hidden_layers));
  auto normal = [&](std::vector<int64_t> shape, double s) {
    return at::empty(shape, at::kFloat).normal_(0.0, s, gen).requires_grad_(true);
  };
  auto ones = [&](int64_t n) { return at::ones({n}, at::kFloat).requires_grad_(true); };
  LlamaWeights w;
  w.embed_tokens = normal({V, d}, std);
  w.layers.resize(cfg.num_hidden_layers);
  for (auto& L : w.layers) {
    L.input_layernorm = ones(d);
    L.q_proj = normal({qd, d}, std);
    L.k_proj = normal({kvd, d}, std);
    L.v_proj = normal({kvd, d}, std);
    L.o_proj = normal({d, qd}, out_std);
    if (cfg.has_q_norm()) L.q_norm = ones(qd);
    if (cfg.has_k_norm()) L.k_norm = ones(kvd);
    L.post_attention_layernorm = ones(d);
    L.gate_proj = normal({I, d}, std);
    L.up_proj = normal({I, d}, std);
    L.down_proj = normal({d, I}, out_std);
  }
  w.norm = ones(d);
  w.lm_head = normal({V, d}, std);
  return w;
}

at::Tensor BatchLogits(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids, at::ScalarType compute) {
  at::Tensor lm = w.lm_head.scalar_type() == compute ? w.lm_head : w.lm_head.to(compute);
  return at::linear(BatchHidden(cfg, w, ids, compute), lm).to(at::kFloat);
}

at::Tensor BatchLoss(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids, at::ScalarType compute) {
  const int64_t T = ids.size(1);
  // The last position has no target: drop it before the head (no [B, T, V] logits, no zero-filled slice grad).
  at::Tensor lm = w.lm_head.scalar_type() == compute ? w.lm_head : w.lm_head.to(compute);
  at::Tensor logits = at::linear(BatchHidden(cfg, w, ids, compute).narrow(1, 0, T - 1), lm).to(at::kFloat);
  at::Tensor targets = ids.to(at::kLong).narrow(1, 1, T - 1).reshape({-1});
  return at::cross_entropy_loss(logits.reshape({-1, cfg.vocab_size}), targets);
}

double LearningRate(const TrainOptions& o, int64_t step) {
  if (o.warmup > 0 && step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const int64_t decay_steps = std::max<int64_t>(1, o.steps - 1 - o.warmup);
  const double progress = std::clamp(static_cast<double>(step - o.warmup) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double min_lr = o.lr * o.min_lr_ratio;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

absl::StatusOr<HeldoutEval> EvaluateHeldout(const model::LlamaModel& m, const tokenizer::Tokenizer& tok,
                                            const std::vector<std::string>& lines, int64_t max_lines,
                                            const Unigram& unigram) {
  at::NoGradGuard no_grad;
  HeldoutEval r;
  double nll_sum = 0, uni_sum = 0;
  const int64_t n = max_lines > 0 ? std::min<int64_t>(max_lines, lines.size()) : static_cast<int64_t>(lines.size());
  const int64_t cap = m.config().max_position_embeddings;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> ids = tok.Encode(lines[i], /*add_bos=*/true);
    if (static_cast<int64_t>(ids.size()) > cap) ids.resize(cap);
    if (ids.size() < 2) continue;
    model::ForwardOptions fo;
    fo.return_logits = false;
    fo.return_target_nll = true;
    ASSIGN_OR_RETURN(model::ForwardResult fr, m.Forward(ids, fo));
    nll_sum += fr.target_nll.to(at::kDouble).sum().item<double>();
    for (size_t t = 1; t < ids.size(); ++t) uni_sum -= unigram.LogProb(ids[t]);
    r.tokens += static_cast<int64_t>(ids.size()) - 1;
    ++r.lines;
  }
  if (r.tokens == 0) return absl::InvalidArgumentError("held-out evaluation: no line has a target token");
  r.nll = nll_sum / static_cast<double>(r.tokens);
  r.ppl = std::exp(r.nll);
  r.unigram_ppl = std::exp(uni_sum / static_cast<double>(r.tokens));
  return r;
}

// ---------------------------------------------------------------- Trainer

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainOptions& opts, const LlamaConfig& cfg,
                                                         const std::vector<int32_t>* stream) {
  std::unique_ptr<Trainer> t(new Trainer());
  t->opts_ = opts;
  ASSIGN_OR_RETURN(t->compute_, model::ParseDtype(opts.compute_dtype));
  if (t->compute_ != at::kFloat && t->compute_ != at::kBFloat16)
    return absl::InvalidArgumentError(
        absl::StrCat("compute dtype \"", opts.compute_dtype, "\" (expected float32 or bfloat16)"));
  if (opts.seq_len < 2) return absl::InvalidArgumentError("--seq-len must be >= 2");
  if (opts.batch < 1) return absl::InvalidArgumentError("--batch must be >= 1");
  if (opts.seq_len > cfg.max_position_embeddings)
    return absl::InvalidArgumentError(absl::StrCat("--seq-len ", opts.seq_len, " exceeds max_position_embeddings ",
                                                   cfg.max_position_embeddings, " of the model"));
  if (!opts.init_from.empty()) {
    ASSIGN_OR_RETURN(auto loaded, LoadWeightsFrom(opts.init_from));
    if (ShapeKey(loaded.first) != ShapeKey(cfg))
      return absl::InvalidArgumentError(absl::StrCat("--init-from ", opts.init_from, " has shape ",
                                                     ShapeKey(loaded.first), ", expected ", ShapeKey(cfg)));
    t->w_ = std::move(loaded.second);
    for (auto& [name, p] : NamedParams(t->w_)) p->requires_grad_(true);
  } else {
    t->w_ = InitWeights(cfg, opts.seed, opts.init_std);
  }
  t->cfg_ = cfg;
  RETURN_IF_ERROR(model::ValidateWeights(cfg, t->w_));
  for (auto& [name, p] : NamedParams(t->w_)) {
    t->exp_avg_.push_back(at::zeros_like(*p).detach());
    t->exp_avg_sq_.push_back(at::zeros_like(*p).detach());
  }
  // The sampler's seed is derived from --seed so that init and data order are both fixed by it.
  t->sampler_ = std::make_unique<WindowSampler>(stream, opts.seq_len, static_cast<int32_t>(cfg.bos_token_id),
                                                opts.seed * 0x9E3779B97F4A7C15ULL + 1);
  return t;
}

absl::StatusOr<Trainer::StepStats> Trainer::Step() {
  try {
    const double t0 = NowSeconds();
    StepStats st;
    st.lr = LearningRate(opts_, step_);
    std::vector<int64_t> rows = sampler_->Next(opts_.batch);
    at::Tensor ids = at::from_blob(rows.data(), {opts_.batch, opts_.seq_len}, at::kLong).clone();
    auto params = NamedParams(w_);
    for (auto& [n, p] : params) p->mutable_grad() = at::Tensor();
    at::Tensor loss = BatchLoss(cfg_, w_, ids, compute_);
    loss.backward();
    st.loss = loss.item<double>();
    if (!std::isfinite(st.loss))
      return absl::InternalError(absl::StrCat("loss is ", st.loss, " at step ", step_ + 1, "; stopping"));
    at::NoGradGuard no_grad;
    at::Tensor sq = at::zeros({}, at::kDouble);
    for (auto& [n, p] : params) sq += p->grad().to(at::kDouble).pow(2).sum();
    st.grad_norm = std::sqrt(sq.item<double>());
    const double clip = (opts_.grad_clip > 0 && st.grad_norm > opts_.grad_clip) ? opts_.grad_clip / (st.grad_norm + 1e-6)
                                                                                 : 1.0;
    const int64_t t = step_ + 1;
    const double bc1 = 1.0 - std::pow(opts_.beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(opts_.beta2, static_cast<double>(t));
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor& p = *params[i].second;
      at::Tensor g = p.grad();
      if (clip != 1.0) g = g * clip;
      if (opts_.weight_decay > 0 && Is2D(params[i].first)) p.mul_(1.0 - st.lr * opts_.weight_decay);
      exp_avg_[i].mul_(opts_.beta1).add_(g, 1.0 - opts_.beta1);
      exp_avg_sq_[i].mul_(opts_.beta2).addcmul_(g, g, 1.0 - opts_.beta2);
      at::Tensor denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bc2)).add_(opts_.adam_eps);
      p.addcdiv_(exp_avg_[i], denom, -st.lr / bc1);
    }
    for (auto& [n, p] : params) p->mutable_grad() = at::Tensor();
    step_ = t;
    tokens_seen_ += opts_.batch * opts_.seq_len;
    st.step = step_;
    st.step_ms = (NowSeconds() - t0) * 1e3;
    return st;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training step ", step_ + 1, " failed: ", e.what()));
  }
}

absl::StatusOr<double> Trainer::EvalLoss(const std::vector<int64_t>& windows) {
  try {
    at::NoGradGuard no_grad;
    const int64_t T = opts_.seq_len, n = static_cast<int64_t>(windows.size()) / T;
    if (n == 0) return absl::InvalidArgumentError("no evaluation windows");
    double sum = 0;
    for (int64_t r0 = 0; r0 < n; r0 += opts_.batch) {
      const int64_t b = std::min(opts_.batch, n - r0);
      at::Tensor ids = at::from_blob(const_cast<int64_t*>(windows.data()) + r0 * T, {b, T}, at::kLong).clone();
      sum += BatchLoss(cfg_, w_, ids, compute_).item<double>() * static_cast<double>(b);
    }
    return sum / static_cast<double>(n);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("evaluation failed: ", e.what()));
  }
}

}  // namespace sinkscope::train
