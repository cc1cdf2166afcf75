// Llama / DroPE forward pass and checkpoint loading (the engine's main LibTorch TU).
//
// Math (Hugging Face LlamaForCausalLM, transformers 4.5x, batch 1, no padding, positions 0..T-1):
//   h_0      = E[ids]                                                    hook_embed
//   per layer l (x = h_l = resid_pre):
//     a      = RMSNorm(x; w_in)                                          ln1.hook_normalized
//     q,k,v  = a W_q^T, a W_k^T, a W_v^T   (no bias)
//     q      = RMSNorm(q; w_qn) over all H·hd features (qk_norm_nope / q_norm_nope), k likewise with Hkv·hd
//     q,k,v  viewed [T, heads, hd]                                       attn.hook_q / hook_k / hook_v
//     q',k'  = RoPE(q), RoPE(k) for model_type llama; identity for NoPE  attn.hook_rot_q / hook_rot_k
//     S      = (q' k'^T) · scale in fp32 (q', k' cast to float first), scale = softmax_scale or hd^-1/2,
//              causal mask (key j visible to query i iff j <= i), P = softmax_fp32(S)   attn.hook_pattern [H,Tq,T]
//     z      = P.to(dtype) V, kv head g serving query heads g·rep .. g·rep+rep-1 (HF repeat_kv)   attn.hook_z
//     o      = z W_o^T                                                    hook_attn_out
//     m      = x + o                                                      hook_resid_mid
//     b      = RMSNorm(m; w_post)                                         ln2.hook_normalized
//     p      = silu(b W_gate^T) * (b W_up^T)                              mlp.hook_post
//     f      = p W_down^T                                                 hook_mlp_out
//     h_{l+1}= m + f                                                      hook_resid_post
//   y = RMSNorm(h_L; w_norm)                                              ln_final.hook_normalized
//   logits = (y W_lm^T).float()
// (Computing in float64 — weights given as double, e.g. for gradient checks — keeps every step in float64.)
// RMSNorm(x; w) = w * (x.float() * rsqrt(mean(x.float()^2, -1) + eps)).to(x.dtype)   (HF LlamaRMSNorm)
// RoPE: inv_freq_i = 1 / theta^(2i/hd) (fp32), angle[t, i] = t·inv_freq_i, cos/sin over cat(angle, angle) in fp32,
//   cast to the compute dtype; rot(x) = x·cos + rotate_half(x)·sin, rotate_half(x) = cat(-x[hd/2:], x[:hd/2]).
// Attention runs over query chunks [q0, q1) against keys [0, q1), so the full T×T score matrix of all heads is
// never materialised; results are identical to the unchunked computation up to fp32 reassociation (none: each
// row's softmax sees the same numbers).
#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model/llama.h"
#include "common/model/safetensors.h"
#include "common/util/status_macros.h"

namespace sinkscope::model {
namespace {

std::string ShapeStr(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

std::string DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return std::string(c10::toString(t));
  }
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& s) {
  if (s == "float32" || s == "fp32" || s == "float") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  if (s == "float16" || s == "fp16" || s == "half") return at::kHalf;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", s, "\" is not supported (expected float32, bfloat16 or float16)"));
}

// Accumulation dtype for norms, attention scores and logits: float32, or float64 when computing in float64 (used by
// gradient checks).
at::ScalarType Acc(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// HF LlamaRMSNorm (see file comment). Out of place so it works under autograd.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor h = x.to(Acc(x.scalar_type()));
  h = h * at::rsqrt(h.pow(2).mean({-1}, /*keepdim=*/true) + eps);
  return w * h.to(x.scalar_type());
}

// rotate_half over the last dim: cat(-x2, x1) where x1, x2 are the two halves.
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Per-forward hook plumbing. Names are built only when a HookSet with entries is given.
constexpr int kNumLayerHooks = 15;
enum LayerHook {
  kResidPre, kLn1, kQ, kK, kV, kRotQ, kRotK, kPattern, kZ, kAttnOut, kResidMid, kLn2, kMlpPost, kMlpOut, kResidPost
};

struct HookCtx {
  const HookSet* hooks = nullptr;  // null when no hooks registered
  std::vector<std::array<std::string, kNumLayerHooks>> names;
  std::vector<std::array<bool, kNumLayerHooks>> wants;
  std::string embed = "hook_embed", ln_final = "ln_final.hook_normalized";
  bool want_embed = false, want_ln_final = false;

  void Init(const HookSet* h, int64_t n_layers) {
    if (h == nullptr || h->empty()) return;
    hooks = h;
    std::vector<std::string> all = AllHookNames(n_layers);
    names.resize(n_layers);
    wants.resize(n_layers);
    for (int64_t l = 0; l < n_layers; ++l)
      for (int i = 0; i < kNumLayerHooks; ++i) {
        names[l][i] = std::move(all[1 + l * kNumLayerHooks + i]);
        wants[l][i] = h->Wants(names[l][i]);
      }
    want_embed = h->Wants(embed);
    want_ln_final = h->Wants(ln_final);
  }
  bool Wants(int64_t layer, LayerHook k) const { return hooks != nullptr && wants[layer][k]; }

  // Runs interventions + observers; checks that interventions kept the shape, and restores dtype/device.
  absl::StatusOr<at::Tensor> Run(const std::string& name, int layer, const at::Tensor& x, int64_t q_offset = 0) const {
    at::Tensor y = hooks->Run(name, layer, x, q_offset);
    if (!y.defined())
      return absl::InvalidArgumentError(absl::StrCat("intervention on ", name, " returned an undefined tensor"));
    if (y.sizes() != x.sizes())
      return absl::InvalidArgumentError(absl::StrCat("intervention on ", name, " returned shape ", ShapeStr(y.sizes()),
                                                     ", expected ", ShapeStr(x.sizes())));
    if (y.scalar_type() != x.scalar_type() || y.device() != x.device()) y = y.to(x.device(), x.scalar_type());
    return y;
  }
  absl::StatusOr<at::Tensor> Layer(int64_t layer, LayerHook k, const at::Tensor& x) const {
    if (!Wants(layer, k)) return x;
    return Run(names[layer][k], static_cast<int>(layer), x);
  }
};

absl::Status ValidateHooks(const HookSet* hooks, int64_t n_layers) {
  if (hooks == nullptr) return absl::OkStatus();
  for (const auto& [name, _] : hooks->observers()) RETURN_IF_ERROR(ValidateHookName(name, n_layers));
  for (const auto& [name, _] : hooks->interventions()) {
    RETURN_IF_ERROR(ValidateHookName(name, n_layers));
    if (name.size() >= 17 && name.compare(name.size() - 17, 17, "attn.hook_pattern") == 0)
      return absl::InvalidArgumentError(
          absl::StrCat("hook ", name, " is observe-only: interventions on attention patterns are not supported"));
  }
  return absl::OkStatus();
}

// Rotary tables [T, hd] (cos, sin) in `dtype`, computed in fp32 (HF LlamaRotaryEmbedding, default rope_type).
std::pair<at::Tensor, at::Tensor> RopeTables(const LlamaConfig& cfg, int64_t T, at::ScalarType dtype,
                                             const at::Device& dev) {
  auto f32 = at::TensorOptions().dtype(Acc(dtype)).device(dev);
  at::Tensor inv_freq =
      1.0 / at::pow(cfg.rope_theta, at::arange(0, cfg.head_dim, 2, at::TensorOptions().dtype(at::kLong).device(dev))
                                            .to(Acc(dtype)) /
                                        static_cast<double>(cfg.head_dim));
  at::Tensor pos = at::arange(T, f32);
  at::Tensor freqs = at::outer(pos, inv_freq);  // [T, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [T, hd]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

// Causal attention in query chunks. q [T,H,hd], k,v [T,Hkv,hd] (compute dtype) -> z [T,H,hd].
absl::StatusOr<at::Tensor> Attention(const LlamaConfig& cfg, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, int64_t chunk, const HookCtx& hc, int64_t layer) {
  const int64_t T = q.size(0), H = q.size(1), hd = q.size(2), Hkv = k.size(1), rep = H / Hkv;
  const double scale = cfg.attention_scale();
  const at::ScalarType dtype = q.scalar_type();
  const bool want_pattern = hc.Wants(layer, kPattern);
  const at::ScalarType acc = Acc(dtype);
  at::Tensor qf = q.to(acc).permute({1, 0, 2});               // [H, T, hd]
  at::Tensor kf = k.to(acc).permute({1, 2, 0}).contiguous();  // [Hkv, hd, T]
  at::Tensor vv = v.permute({1, 0, 2}).contiguous();                 // [Hkv, T, hd]
  if (chunk <= 0 || chunk > T) chunk = T;
  auto ilong = at::TensorOptions().dtype(at::kLong).device(q.device());
  std::vector<at::Tensor> zs;
  zs.reserve((T + chunk - 1) / chunk);
  for (int64_t q0 = 0; q0 < T; q0 += chunk) {
    const int64_t q1 = std::min(q0 + chunk, T), tq = q1 - q0;
    // Query head h = g·rep + r uses kv head g: [H, tq, hd] -> [Hkv, rep·tq, hd].
    at::Tensor qc = qf.narrow(1, q0, tq).reshape({Hkv, rep * tq, hd});
    // fp32 scores S = bias + scale·(q kᵀ) in one GEMM (baddbmm, beta=1, alpha=scale): bias is 0 where key j <= query
    // row q0+i and -inf above the diagonal. Same rounding as HF's matmul(q, kᵀ) * scaling followed by the mask.
    at::Tensor s;
    if (tq > 1) {
      at::Tensor mask = at::arange(q1, ilong).unsqueeze(0) > at::arange(q0, q1, ilong).unsqueeze(1);  // [tq, q1]
      at::Tensor bias = at::zeros({tq, q1}, qf.options()).masked_fill_(mask, -std::numeric_limits<double>::infinity());
      if (rep > 1) bias = bias.repeat({rep, 1});  // rows of the [Hkv, rep·tq, q1] layout
      s = at::baddbmm(bias.unsqueeze(0), qc, kf.narrow(2, 0, q1), /*beta=*/1.0, /*alpha=*/scale);
    } else {  // a single query row at q1-1 sees all keys [0, q1)
      s = at::bmm(qc, kf.narrow(2, 0, q1)).mul_(scale);
    }
    at::Tensor p = at::softmax(s.view({H, tq, q1}), -1);  // fp32
    if (want_pattern) {
      at::Tensor full = q1 < T ? at::constant_pad_nd(p, {0, T - q1}, 0.0) : p;
      ASSIGN_OR_RETURN(at::Tensor unused, hc.Run(hc.names[layer][kPattern], static_cast<int>(layer), full, q0));
      (void)unused;
    }
    at::Tensor zc = at::bmm(p.to(dtype).view({Hkv, rep * tq, q1}), vv.narrow(1, 0, q1)).view({H, tq, hd});
    zs.push_back(std::move(zc));
  }
  at::Tensor z = zs.size() == 1 ? zs[0] : at::cat(zs, 1);
  return z.permute({1, 0, 2}).contiguous();  // [T, H, hd]
}

absl::StatusOr<at::Tensor> DecoderLayer(const LlamaConfig& cfg, const LayerWeights& w, int64_t l, at::Tensor x,
                                        const std::pair<at::Tensor, at::Tensor>* rope, const ForwardOptions& opts,
                                        const HookCtx& hc) {
  const int64_t T = x.size(0), H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads, hd = cfg.head_dim;
  const double eps = cfg.rms_norm_eps;
  ASSIGN_OR_RETURN(x, hc.Layer(l, kResidPre, x));
  ASSIGN_OR_RETURN(at::Tensor a, hc.Layer(l, kLn1, RmsNorm(x, w.input_layernorm, eps)));
  at::Tensor q = at::linear(a, w.q_proj);
  at::Tensor k = at::linear(a, w.k_proj);
  at::Tensor v = at::linear(a, w.v_proj);
  if (cfg.has_q_norm()) q = RmsNorm(q, w.q_norm, eps);  // over the full H·hd projection, before the head split
  if (cfg.has_k_norm()) k = RmsNorm(k, w.k_norm, eps);
  ASSIGN_OR_RETURN(q, hc.Layer(l, kQ, q.view({T, H, hd})));
  ASSIGN_OR_RETURN(k, hc.Layer(l, kK, k.view({T, Hkv, hd})));
  ASSIGN_OR_RETURN(v, hc.Layer(l, kV, v.view({T, Hkv, hd})));
  if (rope != nullptr) {
    at::Tensor cos = rope->first.unsqueeze(1), sin = rope->second.unsqueeze(1);  // [T, 1, hd]
    q = q * cos + RotateHalf(q) * sin;
    k = k * cos + RotateHalf(k) * sin;
  }
  ASSIGN_OR_RETURN(q, hc.Layer(l, kRotQ, q));
  ASSIGN_OR_RETURN(k, hc.Layer(l, kRotK, k));
  ASSIGN_OR_RETURN(at::Tensor z, Attention(cfg, q, k, v, opts.attn_query_chunk, hc, l));
  ASSIGN_OR_RETURN(z, hc.Layer(l, kZ, z));
  ASSIGN_OR_RETURN(at::Tensor o, hc.Layer(l, kAttnOut, at::linear(z.reshape({T, H * hd}), w.o_proj)));
  ASSIGN_OR_RETURN(x, hc.Layer(l, kResidMid, x + o));
  ASSIGN_OR_RETURN(at::Tensor b, hc.Layer(l, kLn2, RmsNorm(x, w.post_attention_layernorm, eps)));
  ASSIGN_OR_RETURN(at::Tensor p,
                   hc.Layer(l, kMlpPost, at::silu(at::linear(b, w.gate_proj)) * at::linear(b, w.up_proj)));
  ASSIGN_OR_RETURN(at::Tensor f, hc.Layer(l, kMlpOut, at::linear(p, w.down_proj)));
  return hc.Layer(l, kResidPost, x + f);
}

absl::StatusOr<ForwardResult> ForwardImpl(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids_in,
                                          const ForwardOptions& opts) {
  // ---- validate inputs before any compute
  if (!ids_in.defined()) return absl::InvalidArgumentError("ids: undefined tensor");
  if (ids_in.dim() != 1) return absl::InvalidArgumentError(absl::StrCat("ids must be 1-D [T], got shape ", ShapeStr(ids_in.sizes())));
  if (!at::isIntegralType(ids_in.scalar_type(), /*includeBool=*/false))
    return absl::InvalidArgumentError(absl::StrCat("ids must be an integer tensor, got ", DtypeName(ids_in.scalar_type())));
  const int64_t T = ids_in.size(0);
  if (T < 1) return absl::InvalidArgumentError("ids is empty (T=0); need at least one token");
  if (T > cfg.max_position_embeddings && !opts.allow_beyond_max_positions)
    return absl::InvalidArgumentError(absl::StrCat("ids has T=", T, " tokens, more than max_position_embeddings=",
                                                   cfg.max_position_embeddings));
  RETURN_IF_ERROR(ValidateWeights(cfg, w));
  RETURN_IF_ERROR(ValidateHooks(opts.hooks, cfg.num_hidden_layers));
  const at::Device dev = w.embed_tokens.device();
  at::Tensor ids = ids_in.to(dev, at::kLong);
  {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= cfg.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("ids contain token id ", lo < 0 ? lo : hi,
                                                     " outside [0, vocab_size=", cfg.vocab_size, ")"));
  }
  HookCtx hc;
  hc.Init(opts.hooks, cfg.num_hidden_layers);
  const at::ScalarType dtype = w.embed_tokens.scalar_type();

  // ---- embeddings and decoder layers
  at::Tensor x = at::embedding(w.embed_tokens, ids);  // [T, d]
  if (hc.want_embed) {
    ASSIGN_OR_RETURN(x, hc.Run(hc.embed, -1, x));
  }
  std::pair<at::Tensor, at::Tensor> rope;
  if (cfg.uses_rope()) rope = RopeTables(cfg, T, dtype, dev);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    ASSIGN_OR_RETURN(x, DecoderLayer(cfg, w.layers[l], l, x, cfg.uses_rope() ? &rope : nullptr, opts, hc));
    if (opts.after_layer) RETURN_IF_ERROR(opts.after_layer(static_cast<int>(l)));
  }
  x = RmsNorm(x, w.norm, cfg.rms_norm_eps);
  if (hc.want_ln_final) {
    ASSIGN_OR_RETURN(x, hc.Run(hc.ln_final, -1, x));
  }

  // ---- head: logits = (y W_lm^T).float(); nll_t = -log_softmax(logits_t)[ids_{t+1}] for t < T-1
  ForwardResult r;
  const at::ScalarType acc = Acc(dtype);
  if (opts.return_logits) r.logits = at::linear(x, w.lm_head).to(acc);
  if (opts.return_target_nll) {
    at::Tensor targets = ids.narrow(0, 1, T - 1).unsqueeze(1);  // [T-1, 1]
    if (r.logits.defined()) {
      r.target_nll = -at::log_softmax(r.logits.narrow(0, 0, T - 1), -1).gather(1, targets).squeeze(1);
    } else {
      // Rows in chunks so that at most ~4M logits (16 MiB fp32) exist at once (131 rows for V=32000).
      const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 22) / cfg.vocab_size);
      std::vector<at::Tensor> parts;
      for (int64_t r0 = 0; r0 < T - 1; r0 += rows) {
        const int64_t n = std::min(rows, T - 1 - r0);
        at::Tensor lg = at::linear(x.narrow(0, r0, n), w.lm_head).to(acc);
        parts.push_back(-at::log_softmax(lg, -1).gather(1, targets.narrow(0, r0, n)).squeeze(1));
      }
      r.target_nll = parts.empty() ? at::empty({0}, at::TensorOptions().dtype(acc).device(dev))
                                   : (parts.size() == 1 ? parts[0] : at::cat(parts, 0));
    }
  }
  return r;
}

// ---- loading helpers

at::ScalarType ToScalarType(StDtype d) {
  switch (d) {
    case StDtype::kF32: return at::kFloat;
    case StDtype::kF16: return at::kHalf;
    case StDtype::kBF16: return at::kBFloat16;
    default: return at::kFloat;
  }
}

// Wraps a checkpoint tensor. Zero-copy (at::from_blob over the mapping, whose lifetime the deleter extends) when the
// checkpoint dtype is the compute dtype, the device is the CPU and the pointer is aligned; otherwise converts.
at::Tensor WrapTensor(const StTensor& t, std::shared_ptr<SafetensorsFile> file, at::ScalarType dtype,
                      const at::Device& dev, bool* aliased) {
  const at::ScalarType src = ToScalarType(t.dtype);
  void* data = const_cast<uint8_t*>(t.data);
  const bool aligned = reinterpret_cast<uintptr_t>(data) % t.elem_size == 0;
  at::Tensor base;
  if (aligned) {
    base = at::from_blob(data, t.shape, [file](void*) {}, at::TensorOptions().dtype(src));
  } else {
    base = at::empty(t.shape, at::TensorOptions().dtype(src));
    std::memcpy(base.data_ptr(), data, t.nbytes());
  }
  if (src == dtype && dev.is_cpu()) {
    *aliased = aligned;
    return base;
  }
  *aliased = false;
  return base.to(dev, dtype, /*non_blocking=*/false, /*copy=*/true);
}

}  // namespace

absl::Status ValidateWeights(const LlamaConfig& cfg, const LlamaWeights& w) {
  const int64_t d = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
  const int64_t qd = cfg.num_attention_heads * cfg.head_dim, kvd = cfg.num_key_value_heads * cfg.head_dim;
  if (!w.embed_tokens.defined()) return absl::InvalidArgumentError("weights: embed_tokens is undefined");
  const at::ScalarType dt = w.embed_tokens.scalar_type();
  const at::Device dev = w.embed_tokens.device();
  if (!at::isFloatingType(dt))
    return absl::InvalidArgumentError(absl::StrCat("weights: embed_tokens has non-floating dtype ", DtypeName(dt)));
  auto check = [&](const at::Tensor& t, const std::string& name, std::vector<int64_t> shape) -> absl::Status {
    if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat("weights: ", name, " is undefined"));
    if (t.sizes() != at::IntArrayRef(shape))
      return absl::InvalidArgumentError(absl::StrCat("weights: ", name, " has shape ", ShapeStr(t.sizes()),
                                                     ", expected ", ShapeStr(shape)));
    if (t.scalar_type() != dt || t.device() != dev)
      return absl::InvalidArgumentError(absl::StrCat("weights: ", name, " is ", DtypeName(t.scalar_type()), " on ",
                                                     t.device().str(), ", expected ", DtypeName(dt), " on ", dev.str()));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(w.embed_tokens, "embed_tokens", {V, d}));
  if (static_cast<int64_t>(w.layers.size()) != cfg.num_hidden_layers)
    return absl::InvalidArgumentError(absl::StrCat("weights: ", w.layers.size(), " layers, config num_hidden_layers=",
                                                   cfg.num_hidden_layers));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = absl::StrCat("layers.", l, ".");
    RETURN_IF_ERROR(check(L.input_layernorm, p + "input_layernorm", {d}));
    RETURN_IF_ERROR(check(L.q_proj, p + "q_proj", {qd, d}));
    RETURN_IF_ERROR(check(L.k_proj, p + "k_proj", {kvd, d}));
    RETURN_IF_ERROR(check(L.v_proj, p + "v_proj", {kvd, d}));
    RETURN_IF_ERROR(check(L.o_proj, p + "o_proj", {d, qd}));
    if (cfg.has_q_norm()) RETURN_IF_ERROR(check(L.q_norm, p + "q_norm", {qd}));
    if (cfg.has_k_norm()) RETURN_IF_ERROR(check(L.k_norm, p + "k_norm", {kvd}));
    RETURN_IF_ERROR(check(L.post_attention_layernorm, p + "post_attention_layernorm", {d}));
    RETURN_IF_ERROR(check(L.gate_proj, p + "gate_proj", {I, d}));
    RETURN_IF_ERROR(check(L.up_proj, p + "up_proj", {I, d}));
    RETURN_IF_ERROR(check(L.down_proj, p + "down_proj", {d, I}));
  }
  RETURN_IF_ERROR(check(w.norm, "norm", {d}));
  RETURN_IF_ERROR(check(w.lm_head, "lm_head", {V, d}));
  return absl::OkStatus();
}

absl::StatusOr<ForwardResult> LlamaForward(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids,
                                           const ForwardOptions& opts) {
  try {
    return ForwardImpl(cfg, w, ids, opts);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("forward failed (LibTorch): ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // Debian's LibTorch reports TORCH_CHECK failures as std::runtime_error
    return absl::InternalError(absl::StrCat("forward failed: ", e.what()));
  }
}

absl::StatusOr<ForwardResult> LlamaModel::Forward(const at::Tensor& ids, const ForwardOptions& opts) const {
  return LlamaForward(config_, weights_, ids, opts);
}

absl::StatusOr<ForwardResult> LlamaModel::Forward(const std::vector<int32_t>& ids, const ForwardOptions& opts) const {
  std::vector<int64_t> v(ids.begin(), ids.end());
  at::Tensor t = at::tensor(v, at::TensorOptions().dtype(at::kLong));
  return Forward(t, opts);
}

std::string LlamaModel::device() const { return weights_.embed_tokens.device().str(); }
std::string LlamaModel::dtype() const { return DtypeName(weights_.embed_tokens.scalar_type()); }

int64_t LlamaModel::weight_bytes() const {
  std::set<const void*> seen;  // tied lm_head shares embed_tokens' storage
  int64_t n = 0;
  auto add = [&](const at::Tensor& t) {
    if (!t.defined() || !seen.insert(t.data_ptr()).second) return;
    n += t.numel() * static_cast<int64_t>(t.element_size());
  };
  add(weights_.embed_tokens);
  for (const auto& L : weights_.layers)
    for (const at::Tensor* t : {&L.input_layernorm, &L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.q_norm, &L.k_norm,
                                &L.post_attention_layernorm, &L.gate_proj, &L.up_proj, &L.down_proj})
      add(*t);
  add(weights_.norm);
  add(weights_.lm_head);
  return n;
}

absl::StatusOr<std::shared_ptr<LlamaModel>> LlamaModel::FromWeights(const LlamaConfig& cfg, LlamaWeights weights,
                                                                      const std::string& name) {
  RETURN_IF_ERROR(ValidateWeights(cfg, weights));
  std::shared_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = cfg;
  m->weights_ = std::move(weights);
  m->dir_ = name;
  return m;
}

absl::StatusOr<std::shared_ptr<LlamaModel>> LlamaModel::Load(const std::string& model_dir, const LoadOptions& opts) {
  try {
    ASSIGN_OR_RETURN(LlamaConfig cfg, LoadLlamaConfig(model_dir));
    ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(opts.dtype));
    at::Device dev(at::kCPU);
    try {
      dev = at::Device(opts.device);
    } catch (const c10::Error&) {
      return absl::InvalidArgumentError(absl::StrCat("device \"", opts.device, "\" is not valid (expected cpu, cuda or cuda:N)"));
    }
    if (dev.is_cuda() && !at::hasCUDA())
      return absl::FailedPreconditionError(
          absl::StrCat("device ", opts.device, " requested but this LibTorch has no CUDA support or no GPU"));
    if (!dev.is_cpu() && !dev.is_cuda())
      return absl::InvalidArgumentError(absl::StrCat("device \"", opts.device, "\" is not supported (cpu or cuda)"));
    if (dtype == at::kHalf && dev.is_cpu())
      return absl::InvalidArgumentError(
          "dtype float16 is not supported on cpu (LibTorch 1.13 has no CPU Half matmul); use bfloat16 or float32");
    ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsCheckpoint> ck, SafetensorsCheckpoint::Open(model_dir));

    std::shared_ptr<LlamaModel> m(new LlamaModel());
    m->config_ = cfg;
    m->dir_ = model_dir;
    std::set<std::string> used;
    auto where = [&](const std::string& name) {
      auto f = ck->FileOf(name);
      return f ? f->path() : (ck->sharded() ? model_dir + "/model.safetensors.index.json" : model_dir + "/model.safetensors");
    };
    // Looks up the first present name among `names`, checks dtype and shape, wraps/converts it.
    auto get = [&](std::vector<std::string> names, std::vector<int64_t> shape) -> absl::StatusOr<at::Tensor> {
      const StTensor* t = nullptr;
      std::string name;
      for (const auto& n : names)
        if ((t = ck->Find(n)) != nullptr) {
          name = n;
          break;
        }
      if (t == nullptr)
        return absl::NotFoundError(absl::StrCat(where(names[0]), ": missing tensor ", absl::StrJoin(names, " or "),
                                                " (model_type ", cfg.model_type, ", attention_type ",
                                                AttentionTypeName(cfg.attention_type), ")"));
      used.insert(name);
      if (t->dtype == StDtype::kUnsupported)
        return absl::InvalidArgumentError(absl::StrCat(where(name), ": tensor ", name, " has dtype ", t->dtype_str,
                                                       "; only F32, F16 and BF16 weights are supported"));
      if (t->shape != shape)
        return absl::InvalidArgumentError(absl::StrCat(where(name), ": tensor ", name, " has shape ", ShapeStr(t->shape),
                                                       ", config.json implies ", ShapeStr(shape)));
      bool aliased = false;
      return WrapTensor(*t, ck->FileOf(name), dtype, dev, &aliased);
    };
    const int64_t d = cfg.hidden_size, V = cfg.vocab_size, I = cfg.intermediate_size;
    const int64_t qd = cfg.num_attention_heads * cfg.head_dim, kvd = cfg.num_key_value_heads * cfg.head_dim;
    LlamaWeights& w = m->weights_;
    ASSIGN_OR_RETURN(w.embed_tokens, get({"model.embed_tokens.weight"}, {V, d}));
    w.layers.resize(cfg.num_hidden_layers);
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      LayerWeights& L = w.layers[l];
      ASSIGN_OR_RETURN(L.input_layernorm, get({p + "input_layernorm.weight"}, {d}));
      ASSIGN_OR_RETURN(L.q_proj, get({p + "self_attn.q_proj.weight"}, {qd, d}));
      ASSIGN_OR_RETURN(L.k_proj, get({p + "self_attn.k_proj.weight"}, {kvd, d}));
      ASSIGN_OR_RETURN(L.v_proj, get({p + "self_attn.v_proj.weight"}, {kvd, d}));
      ASSIGN_OR_RETURN(L.o_proj, get({p + "self_attn.o_proj.weight"}, {d, qd}));
      // SakanaAI DroPE: nn.RMSNorm(H·hd) as self_attn.q_norm, nn.RMSNorm(Hkv·hd) as self_attn.k_norm.
      if (cfg.has_q_norm()) {
        ASSIGN_OR_RETURN(L.q_norm, get({p + "self_attn.q_norm.weight", p + "self_attn.q_layernorm.weight"}, {qd}));
      }
      if (cfg.has_k_norm()) {
        ASSIGN_OR_RETURN(L.k_norm, get({p + "self_attn.k_norm.weight", p + "self_attn.k_layernorm.weight"}, {kvd}));
      }
      ASSIGN_OR_RETURN(L.post_attention_layernorm, get({p + "post_attention_layernorm.weight"}, {d}));
      ASSIGN_OR_RETURN(L.gate_proj, get({p + "mlp.gate_proj.weight"}, {I, d}));
      ASSIGN_OR_RETURN(L.up_proj, get({p + "mlp.up_proj.weight"}, {I, d}));
      ASSIGN_OR_RETURN(L.down_proj, get({p + "mlp.down_proj.weight"}, {d, I}));
    }
    ASSIGN_OR_RETURN(w.norm, get({"model.norm.weight"}, {d}));
    if (cfg.tie_word_embeddings) {
      w.lm_head = w.embed_tokens;
      if (ck->Find("lm_head.weight") != nullptr) {
        used.insert("lm_head.weight");
        m->notes_.push_back("lm_head.weight present but tie_word_embeddings=true: using model.embed_tokens.weight");
      }
    } else {
      ASSIGN_OR_RETURN(w.lm_head, get({"lm_head.weight"}, {V, d}));
    }
    for (const std::string& n : ck->names())
      if (!used.count(n))
        m->notes_.push_back(absl::StrCat("ignored unexpected tensor ", n, " (", ck->FileOf(n)->path(), ")"));
    if (opts.compute_digest) m->digest_ = ck->Sha256Hex();
    if (!m->notes_.empty())
      spdlog::info("loaded {} with {} note(s); first: {}", model_dir, m->notes_.size(), m->notes_.front());
    return m;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", model_dir, " failed in LibTorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading ", model_dir, " failed: ", e.what()));
  }
}

}  // namespace sinkscope::model
