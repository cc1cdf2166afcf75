// sinkscope-train core (the tool's LibTorch TU). See trainer.h.
#include "tools/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <dlfcn.h>
#include <malloc.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/model/safetensors.h"
#include "common/util/sha256.h"
#include "common/util/status_macros.h"

namespace sinkscope::train {
namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using model::LlamaConfig;
using model::LlamaWeights;

namespace {

absl::StatusOr<at::ScalarType> ComputeDtype(const std::string& s) {
  if (s == "float32" || s == "fp32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("compute dtype \"", s, "\" (expected float32 or bfloat16)"));
}

// HF LlamaRMSNorm, as in the engine: statistics in fp32, result cast back, then scaled by the weight.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return w * h.to(x.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Final normalised hidden states [B, T, d] in the compute dtype (the lm_head input).
at::Tensor BatchHidden(const LlamaConfig& cfg, const LlamaWeights& w32, const at::Tensor& ids_in,
                       at::ScalarType dt) {
  auto cast = [dt](const at::Tensor& t) { return t.scalar_type() == dt ? t : t.to(dt); };
  const at::Tensor ids = ids_in.to(at::kLong);
  const int64_t B = ids.size(0), T = ids.size(1), H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  const int64_t hd = cfg.head_dim, rep = H / Hkv;
  const double eps = cfg.rms_norm_eps, scale = cfg.attention_scale();
  at::Tensor x = at::embedding(cast(w32.embed_tokens), ids);  // [B, T, d]
  at::Tensor cos, sin;
  if (cfg.uses_rope()) {  // engine RopeTables: fp32 angles, cast to the compute dtype
    at::Tensor inv_freq =
        1.0 / at::pow(cfg.rope_theta, at::arange(0, hd, 2, at::kLong).to(at::kFloat) / static_cast<double>(hd));
    at::Tensor freqs = at::outer(at::arange(T, at::kFloat), inv_freq);
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    cos = emb.cos().to(dt).view({1, T, 1, hd});
    sin = emb.sin().to(dt).view({1, T, 1, hd});
  }
  at::Tensor mask = at::ones({T, T}, at::kBool).triu(1);  // key j > query i is hidden
  for (const model::LayerWeights& L : w32.layers) {
    at::Tensor a = RmsNorm(x, cast(L.input_layernorm), eps);
    at::Tensor q = at::linear(a, cast(L.q_proj));
    at::Tensor k = at::linear(a, cast(L.k_proj));
    at::Tensor v = at::linear(a, cast(L.v_proj));
    if (cfg.has_q_norm()) q = RmsNorm(q, cast(L.q_norm), eps);
    if (cfg.has_k_norm()) k = RmsNorm(k, cast(L.k_norm), eps);
    q = q.view({B, T, H, hd});
    k = k.view({B, T, Hkv, hd});
    v = v.view({B, T, Hkv, hd});
    if (cfg.uses_rope()) {
      q = q * cos + RotateHalf(q) * sin;
      k = k * cos + RotateHalf(k) * sin;
    }
    at::Tensor qf = q.to(at::kFloat).permute({0, 2, 1, 3});  // [B, H, T, hd]
    at::Tensor kf = k.to(at::kFloat).permute({0, 2, 3, 1});  // [B, Hkv, hd, T]
    at::Tensor vv = v.permute({0, 2, 1, 3});                 // [B, Hkv, T, hd]
    if (rep > 1) {  // query head h uses kv head h / rep (HF repeat_kv)
      kf = kf.repeat_interleave(rep, 1);
      vv = vv.repeat_interleave(rep, 1);
    }
    at::Tensor s = at::matmul(qf, kf) * scale;  // [B, H, T, T] fp32
    s = s.masked_fill(mask, -std::numeric_limits<float>::infinity());
    at::Tensor p = at::softmax(s, -1);
    at::Tensor z = at::matmul(p.to(dt), vv);  // [B, H, T, hd]
    z = z.permute({0, 2, 1, 3}).reshape({B, T, H * hd});
    x = x + at::linear(z, cast(L.o_proj));
    at::Tensor b = RmsNorm(x, cast(L.post_attention_layernorm), eps);
    x = x + at::linear(at::silu(at::linear(b, cast(L.gate_proj))) * at::linear(b, cast(L.up_proj)),
                       cast(L.down_proj));
  }
  return RmsNorm(x, cast(w32.norm), eps);
}

std::string StDtypeOf(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    default: return "";
  }
}

TensorBytes ToBytes(const std::string& name, const at::Tensor& t_in, at::ScalarType dt) {
  at::Tensor t = t_in.detach().to(at::kCPU, dt).contiguous();
  TensorBytes tb;
  tb.name = name;
  tb.dtype = StDtypeOf(dt);
  tb.shape = t.sizes().vec();
  tb.data.assign(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return tb;
}

// F32/BF16/F16 safetensors tensor -> owned fp32 tensor.
at::Tensor FromSt(const model::StTensor& st) {
  at::ScalarType src = st.dtype == model::StDtype::kBF16 ? at::kBFloat16
                       : st.dtype == model::StDtype::kF16 ? at::kHalf
                                                           : at::kFloat;
  at::Tensor t = at::empty(st.shape, at::TensorOptions().dtype(src));
  std::memcpy(t.data_ptr(), st.data, st.nbytes());
  return t.to(at::kFloat);
}

bool Is2D(const std::string& name) { return !name.ends_with("norm.weight") && !name.ends_with("layernorm.weight"); }

std::string ShapeKey(const LlamaConfig& c) {
  return absl::StrCat("V", c.vocab_size, " d", c.hidden_size, " I", c.intermediate_size, " L", c.num_hidden_layers,
                      " H", c.num_attention_heads, " Hkv", c.num_key_value_heads, " hd", c.head_dim);
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

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
  out.emplace_back("model.embed_tokens.weight", &w.embed_tokens);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    model::LayerWeights& L = w.layers[l];
    out.emplace_back(p + "input_layernorm.weight", &L.input_layernorm);
    out.emplace_back(p + "self_attn.q_proj.weight", &L.q_proj);
    out.emplace_back(p + "self_attn.k_proj.weight", &L.k_proj);
    out.emplace_back(p + "self_attn.v_proj.weight", &L.v_proj);
    out.emplace_back(p + "self_attn.o_proj.weight", &L.o_proj);
    if (L.q_norm.defined()) out.emplace_back(p + "self_attn.q_norm.weight", &L.q_norm);
    if (L.k_norm.defined()) out.emplace_back(p + "self_attn.k_norm.weight", &L.k_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", &L.post_attention_layernorm);
    out.emplace_back(p + "mlp.gate_proj.weight", &L.gate_proj);
    out.emplace_back(p + "mlp.up_proj.weight", &L.up_proj);
    out.emplace_back(p + "mlp.down_proj.weight", &L.down_proj);
  }
  out.emplace_back("model.norm.weight", &w.norm);
  out.emplace_back("lm_head.weight", &w.lm_head);
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

absl::StatusOr<std::vector<TensorBytes>> WeightsToTensorBytes(const LlamaWeights& w, const std::string& dtype) {
  at::ScalarType dt;
  if (dtype == "float32") dt = at::kFloat;
  else if (dtype == "bfloat16") dt = at::kBFloat16;
  else return absl::InvalidArgumentError(absl::StrCat("export dtype \"", dtype, "\" (expected float32 or bfloat16)"));
  std::vector<TensorBytes> out;
  for (const auto& [name, t] : NamedParams(w)) out.push_back(ToBytes(name, *t, dt));
  return out;
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
  ASSIGN_OR_RETURN(t->compute_, ComputeDtype(opts.compute_dtype));
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
    const double t0 = Now();
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
    st.step_ms = (Now() - t0) * 1e3;
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

absl::Status Trainer::SaveCheckpoint(const std::string& dir) const {
  std::vector<TensorBytes> tensors;
  const auto params = NamedParams(w_);
  for (size_t i = 0; i < params.size(); ++i) {
    tensors.push_back(ToBytes("param/" + params[i].first, *params[i].second, at::kFloat));
    tensors.push_back(ToBytes("exp_avg/" + params[i].first, exp_avg_[i], at::kFloat));
    tensors.push_back(ToBytes("exp_avg_sq/" + params[i].first, exp_avg_sq_[i], at::kFloat));
  }
  std::vector<const TensorBytes*> ptrs;
  for (const auto& t : tensors) ptrs.push_back(&t);
  ojson state;
  state["format"] = "sinkscope-train checkpoint v1";
  state["step"] = step_;
  state["tokens_seen"] = tokens_seen_;
  state["elapsed_s"] = elapsed_s_;
  state["sampler_rng"] = sampler_->State();
  state["config"] = json::parse(HfConfigJson(cfg_));
  state["seed"] = opts_.seed;
  state["steps"] = opts_.steps;
  // Write into a fresh sibling directory, then swap it in, so a crash never leaves a half-written checkpoint.
  const fs::path final_dir(dir), tmp_dir = fs::path(dir).string() + ".tmp", old_dir = fs::path(dir).string() + ".old";
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  RETURN_IF_ERROR(WriteFileAtomic((tmp_dir / "state.safetensors").string(), SafetensorsBytes(ptrs, {})));
  RETURN_IF_ERROR(WriteFileAtomic((tmp_dir / "state.json").string(), state.dump(2) + "\n"));
  fs::remove_all(old_dir, ec);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move checkpoint into ", dir, ": ", ec.message()));
  fs::remove_all(old_dir, ec);
  return absl::OkStatus();
}

absl::Status Trainer::LoadCheckpoint(const std::string& dir) {
  ASSIGN_OR_RETURN(std::string text, ReadFile((fs::path(dir) / "state.json").string()));
  json state;
  try {
    state = json::parse(text);
    ASSIGN_OR_RETURN(LlamaConfig c, model::ParseLlamaConfig(state.at("config").dump()));
    if (ShapeKey(c) != ShapeKey(cfg_) || c.attention_type != cfg_.attention_type)
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", dir, " is a ", ShapeKey(c), " ",
                                                        model::AttentionTypeName(c.attention_type), " model; this run is ",
                                                        ShapeKey(cfg_), " ",
                                                        model::AttentionTypeName(cfg_.attention_type)));
    ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open((fs::path(dir) / "state.safetensors").string()));
    auto params = NamedParams(w_);
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string& n = params[i].first;
      for (auto [prefix, dst] : {std::pair<const char*, at::Tensor*>{"param/", params[i].second},
                                 {"exp_avg/", &exp_avg_[i]}, {"exp_avg_sq/", &exp_avg_sq_[i]}}) {
        const model::StTensor* st = file->Find(prefix + n);
        if (st == nullptr) return absl::DataLossError(absl::StrCat(dir, ": checkpoint lacks ", prefix, n));
        at::Tensor v = FromSt(*st);
        if (v.sizes() != dst->sizes())
          return absl::DataLossError(absl::StrCat(dir, ": ", prefix, n, " has the wrong shape"));
        dst->copy_(v);
      }
    }
    step_ = state.at("step").get<int64_t>();
    tokens_seen_ = state.at("tokens_seen").get<int64_t>();
    elapsed_s_ = state.at("elapsed_s").get<double>();
    RETURN_IF_ERROR(sampler_->SetState(state.at("sampler_rng").get<std::string>()));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::pair<LlamaConfig, LlamaWeights>> LoadWeightsFrom(const std::string& dir) {
  try {
    if (fs::exists(fs::path(dir) / "state.json")) {  // a training checkpoint
      ASSIGN_OR_RETURN(std::string text, ReadFile((fs::path(dir) / "state.json").string()));
      ASSIGN_OR_RETURN(LlamaConfig cfg, model::ParseLlamaConfig(json::parse(text).at("config").dump()));
      ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::Open((fs::path(dir) / "state.safetensors").string()));
      LlamaWeights w = InitWeights(cfg, 0, 0.02);  // shapes only; every tensor is overwritten below
      for (auto& [n, p] : NamedParams(w)) {
        const model::StTensor* st = file->Find("param/" + n);
        if (st == nullptr) return absl::DataLossError(absl::StrCat(dir, ": checkpoint lacks param/", n));
        *p = FromSt(*st);
      }
      return std::make_pair(cfg, std::move(w));
    }
    model::LoadOptions lo;
    lo.dtype = "float32";
    lo.compute_digest = false;
    ASSIGN_OR_RETURN(auto m, model::LlamaModel::Load(dir, lo));
    LlamaWeights w = m->weights();
    for (auto& [n, p] : NamedParams(w)) *p = p->detach().clone();  // own the memory (the model maps the file)
    return std::make_pair(m->config(), std::move(w));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading weights from ", dir, ": ", e.what()));
  }
}

void TuneAllocator() {
  // LibTorch's CPU allocator is malloc. glibc serves big blocks (the [B·T, V] logits, 64 MiB) with fresh mmaps and
  // returns them on free, so every step page-faults them in again: measured here as seconds of aten::fill_ and
  // sys time per step. Keep all blocks on the heap and never trim it.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  mallopt(M_TOP_PAD, 256 << 20);
}

void SetThreads(int threads) {
  if (threads <= 0) return;
  at::set_num_threads(threads);
  using SetFn = void (*)(int);
  if (auto fn = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) fn(threads);
}

// ---------------------------------------------------------------- the command

namespace {

struct CsvRow {
  int64_t step;
  std::string text;
};

// Keeps the CSV rows of steps <= `upto` (a resumed run rewrites what came after its checkpoint).
absl::Status TruncateCsv(const std::string& path, int64_t upto) {
  auto text = ReadFile(path);
  if (!text.ok()) return absl::OkStatus();
  std::string out;
  bool header = true;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    if (header) {
      absl::StrAppend(&out, line, "\n");
      header = false;
      continue;
    }
    int64_t step = 0;
    const size_t comma = line.find(',');
    if (comma != absl::string_view::npos) step = std::atoll(std::string(line.substr(0, comma)).c_str());
    if (step <= upto) absl::StrAppend(&out, line, "\n");
  }
  return WriteFileAtomic(path, out);
}

// The run's settings. The model shape is the trained model's (with --init-from it comes from the source, not flags).
ojson OptionsJson(const TrainOptions& o, const LlamaConfig& c) {
  ojson j;
  j["layers"] = c.num_hidden_layers;
  j["hidden"] = c.hidden_size;
  j["heads"] = c.num_attention_heads;
  j["kv_heads"] = c.num_key_value_heads;
  j["intermediate"] = c.intermediate_size;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["attention"] = o.attention;
  j["seq_len"] = o.seq_len;
  j["batch"] = o.batch;
  j["steps"] = o.steps;
  j["warmup"] = o.warmup;
  j["lr"] = o.lr;
  j["min_lr_ratio"] = o.min_lr_ratio;
  j["weight_decay"] = o.weight_decay;
  j["betas"] = {o.beta1, o.beta2};
  j["adam_eps"] = o.adam_eps;
  j["grad_clip"] = o.grad_clip;
  j["init_std"] = o.init_std;
  j["seed"] = o.seed;
  j["threads"] = o.threads;
  j["compute_dtype"] = o.compute_dtype;
  j["export_dtype"] = o.export_dtype;
  j["init_from"] = o.init_from;
  j["eval_every"] = o.eval_every;
  j["eval_windows"] = o.eval_windows;
  return j;
}

}  // namespace

absl::Status RunTraining(const TrainOptions& opts) {
  TuneAllocator();
  SetThreads(opts.threads);
  const double wall0 = Now();
  const std::string run_dir = opts.run_dir.empty() ? (fs::path("build/train") / opts.name).string() : opts.run_dir;
  const std::string ckpt_dir = (fs::path(run_dir) / "checkpoint").string();
  const std::string csv_path = (fs::path(run_dir) / "train_log.csv").string();
  std::error_code ec;
  fs::create_directories(run_dir, ec);

  ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::LoadFromDir(opts.tokenizer_dir));
  bool cached = false;
  const std::string train_cache =
      (fs::path(opts.cache_dir) / (fs::path(opts.train_text).stem().string() + ".ids")).string();
  ASSIGN_OR_RETURN(std::vector<int32_t> stream, LoadOrEncodeCorpus(opts.train_text, *tok, train_cache, &cached));
  std::cout << absl::StrFormat("data: %s -> %d tokens (%s %s)\n", opts.train_text, stream.size(),
                               cached ? "cached in" : "encoded, cached to", train_cache);
  const std::string heldout_cache =
      (fs::path(opts.cache_dir) / (fs::path(opts.heldout_text).stem().string() + ".ids")).string();
  ASSIGN_OR_RETURN(std::vector<int32_t> heldout, LoadOrEncodeCorpus(opts.heldout_text, *tok, heldout_cache));
  const std::vector<int64_t> eval_windows =
      EvalWindows(heldout, opts.seq_len, tok->bos_id(), opts.eval_windows);
  std::cout << absl::StrFormat("data: %s -> %d tokens, %d evaluation windows of %d\n", opts.heldout_text,
                               heldout.size(), eval_windows.size() / opts.seq_len, opts.seq_len);

  LlamaConfig cfg;
  if (!opts.init_from.empty()) {
    ASSIGN_OR_RETURN(auto src, LoadWeightsFrom(opts.init_from));
    cfg = src.first;
    if (opts.attention == "nope") cfg = ToDrope(cfg);
    else if (opts.attention != "rope") return absl::InvalidArgumentError("--attention must be rope or nope");
    else if (!cfg.uses_rope()) return absl::InvalidArgumentError("--init-from a NoPE model with --attention rope");
    cfg.torch_dtype = opts.export_dtype;
  } else {
    ASSIGN_OR_RETURN(cfg, MakeConfig(opts, tok->vocab_size()));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Trainer> tr, Trainer::Create(opts, cfg, &stream));
  std::cout << absl::StrFormat("model: %s attention=%s %s, %d parameters; compute %s, %d threads\n", cfg.model_type,
                               model::AttentionTypeName(cfg.attention_type), ShapeKey(cfg), cfg.num_parameters(),
                               opts.compute_dtype, at::get_num_threads());

  const bool resuming = opts.resume && fs::exists(fs::path(ckpt_dir) / "state.json");
  if (resuming) {
    RETURN_IF_ERROR(tr->LoadCheckpoint(ckpt_dir));
    RETURN_IF_ERROR(TruncateCsv(csv_path, tr->step()));
    std::cout << absl::StrFormat("resume: %s at step %d (%d tokens seen, %.0f s so far)\n", ckpt_dir, tr->step(),
                                 tr->tokens_seen(), tr->elapsed_s());
  } else {
    fs::remove(csv_path, ec);
  }
  std::ofstream csv(csv_path, std::ios::app);
  if (!resuming) csv << "step,lr,train_loss,grad_norm,heldout_loss,tokens_seen,step_ms,elapsed_s\n";

  auto eval = [&]() -> absl::StatusOr<double> {
    return tr->EvalLoss(eval_windows);
  };
  if (tr->step() == 0) {
    ASSIGN_OR_RETURN(double l0, eval());
    std::cout << absl::StrFormat("step 0 heldout_loss %.4f\n", l0);
    csv << absl::StrFormat("0,0,,,%.6f,0,,0\n", l0);
  }

  double seg0 = Now(), loss_acc = 0, ms_acc = 0;
  int64_t acc_n = 0;
  while (tr->step() < opts.steps) {
    ASSIGN_OR_RETURN(Trainer::StepStats st, tr->Step());
    const double now = Now();
    tr->add_elapsed(now - seg0);
    seg0 = now;
    loss_acc += st.loss;
    ms_acc += st.step_ms;
    ++acc_n;
    std::string heldout_field;
    if ((opts.eval_every > 0 && st.step % opts.eval_every == 0) || st.step == opts.steps) {
      ASSIGN_OR_RETURN(double l, eval());
      heldout_field = absl::StrFormat("%.6f", l);
      std::cout << absl::StrFormat("step %d heldout_loss %.4f (ppl %.1f)\n", st.step, l, std::exp(l));
      const double now2 = Now();
      tr->add_elapsed(now2 - seg0);
      seg0 = now2;
    }
    csv << absl::StrFormat("%d,%.6g,%.6f,%.4f,%s,%d,%.1f,%.1f\n", st.step, st.lr, st.loss, st.grad_norm, heldout_field,
                           tr->tokens_seen(), st.step_ms, tr->elapsed_s());
    if (opts.log_every > 0 && (st.step % opts.log_every == 0 || st.step == opts.steps)) {
      csv.flush();
      std::cout << absl::StrFormat("step %d/%d lr %.3g loss %.4f gnorm %.3f %.0f ms/step %.0f tok/s elapsed %.0f s\n",
                                   st.step, opts.steps, st.lr, loss_acc / acc_n, st.grad_norm, ms_acc / acc_n,
                                   1e3 * opts.batch * opts.seq_len / (ms_acc / acc_n), tr->elapsed_s())
                << std::flush;
      loss_acc = ms_acc = 0;
      acc_n = 0;
    }
    if ((opts.ckpt_every > 0 && st.step % opts.ckpt_every == 0) || st.step == opts.steps) {
      csv.flush();
      RETURN_IF_ERROR(tr->SaveCheckpoint(ckpt_dir));
      const double now3 = Now();
      tr->add_elapsed(now3 - seg0);
      seg0 = now3;
    }
  }
  csv.close();
  std::cout << absl::StrFormat("train: %d steps, %d tokens seen, %.0f s training wall time\n", tr->step(),
                               tr->tokens_seen(), tr->elapsed_s());
  if (opts.out.empty()) return absl::OkStatus();

  // ---- export: HF snapshot, then load it back through the engine and score the held-out text with it.
  ASSIGN_OR_RETURN(std::vector<TensorBytes> tensors, WeightsToTensorBytes(tr->weights(), opts.export_dtype));
  ExportOptions eo;
  eo.shards = opts.shards;
  eo.tokenizer_dir = opts.tokenizer_dir;
  RETURN_IF_ERROR(WriteHfDirectory(opts.out, tr->config(), tensors, eo));
  model::LoadOptions lo;
  lo.dtype = "float32";
  ASSIGN_OR_RETURN(auto loaded, model::LlamaModel::Load(opts.out, lo));
  ASSIGN_OR_RETURN(std::string heldout_text, ReadFile(opts.heldout_text));
  const Unigram uni = CountUnigram(stream, tok->vocab_size());
  ASSIGN_OR_RETURN(HeldoutEval he, EvaluateHeldout(*loaded, *tok, NonEmptyLines(heldout_text), opts.heldout_max_lines, uni));
  std::cout << absl::StrFormat("export: %s; held-out PPL %.2f on %d lines / %d tokens (unigram baseline %.2f)\n",
                               opts.out, he.ppl, he.lines, he.tokens, he.unigram_ppl);

  ojson rec;
  rec["name"] = opts.name;
  rec["stage"] = cfg.uses_rope() ? "RoPE pretraining from random init" : "DroPE recalibration (rotary removed)";
  rec["model_type"] = cfg.model_type;
  rec["attention_type"] = model::AttentionTypeName(cfg.attention_type);
  rec["parameters"] = cfg.num_parameters();
  rec["options"] = OptionsJson(opts, tr->config());
  rec["steps"] = tr->step();
  rec["tokens_seen"] = tr->tokens_seen();
  rec["train_wall_time_s"] = std::round(tr->elapsed_s());
  rec["mean_step_ms"] = std::round(1e3 * tr->elapsed_s() / std::max<int64_t>(1, tr->step()));
  // Curves from the CSV, so that a resumed run's record covers the whole run.
  ojson evals = ojson::array();
  std::vector<std::pair<int64_t, double>> train_losses;
  if (auto text = ReadFile(csv_path); text.ok()) {
    bool header = true;
    for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
      if (std::exchange(header, false)) continue;
      std::vector<std::string> f = absl::StrSplit(line, ',');
      if (f.size() < 5) continue;
      if (!f[4].empty()) evals.push_back({{"step", std::stoll(f[0])}, {"heldout_loss", std::stod(f[4])}});
      if (!f[2].empty()) train_losses.emplace_back(std::stoll(f[0]), std::stod(f[2]));
    }
  }
  // Mean training loss over windows of 500 steps (each step's loss is on its own random batch).
  ojson train_curve = ojson::array();
  for (size_t i = 0; i < train_losses.size();) {
    const int64_t lo = (train_losses[i].first - 1) / 500 * 500;
    double sum = 0;
    int64_t n = 0;
    for (; i < train_losses.size() && train_losses[i].first <= lo + 500; ++i, ++n) sum += train_losses[i].second;
    train_curve.push_back({{"steps", absl::StrCat(lo + 1, "-", lo + n)}, {"mean_train_loss", sum / n}});
  }
  rec["train_loss_curve"] = train_curve;
  rec["train_loss_curve_definition"] = absl::StrFormat(
      "mean training cross entropy (nats, %s compute) of the steps in each 500-step window", opts.compute_dtype);
  rec["heldout_loss_curve"] = evals;
  rec["heldout_loss_curve_definition"] = absl::StrFormat(
      "mean next-token cross entropy (nats) over %d fixed windows (BOS + %d tokens at evenly spaced starts of the "
      "held-out token stream), computed during training in %s",
      eval_windows.size() / opts.seq_len, opts.seq_len - 1, opts.compute_dtype);
  rec["heldout_perplexity"] = {
      {"value", he.ppl},
      {"mean_nll", he.nll},
      {"lines", he.lines},
      {"target_tokens", he.tokens},
      {"dataset", opts.heldout_text},
      {"definition",
       absl::StrFormat("exp(mean target NLL): each non-empty held-out line encoded with BOS, truncated to %d tokens, "
                       "scored by the exported snapshot loaded with LlamaModel::Load (float32), LlamaForward "
                       "return_target_nll; every token after BOS is a target",
                       cfg.max_position_embeddings)}};
  rec["unigram_baseline"] = {
      {"perplexity", he.unigram_ppl},
      {"definition",
       "add-one smoothed unigram p(i) = (count_i + 1) / (N + V) with counts over the training token stream "
       "(documents' lines encoded without BOS, one EOS per document), evaluated on exactly the same held-out targets"},
      {"train_tokens", uni.total},
      {"vocab_size", tok->vocab_size()},
      {"counts", uni.counts}};
  rec["train_text_sha256"] = util::Sha256Hex(*ReadFile(opts.train_text));
  rec["tokenizer_sha256"] = tok->digest();
  rec["total_wall_time_s"] = std::round(Now() - wall0);
  RETURN_IF_ERROR(WriteFileAtomic((fs::path(opts.out) / "training.json").string(), rec.dump(1) + "\n"));
  RETURN_IF_ERROR(WriteSha256Sums(opts.out));
  std::cout << "export: wrote " << opts.out << " (SHA256SUMS updated)\n";
  return absl::OkStatus();
}

}  // namespace sinkscope::train
