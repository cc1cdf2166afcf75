// Llama / DroPE forward pass (the engine's main LibTorch TU). Loading is in weights.cc.
//
// Math (Hugging Face LlamaForCausalLM, transformers 4.5x, no padding; for each prompt, positions 0..T-1):
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
//
// Packing: several prompts run as one [ΣT, d] sequence through every per-token step (norms, projections, MLP: the
// weights are read once for all of them); attention and RoPE positions are per prompt. Prompts attend in groups
// ([G·Hkv, rep·T, hd] GEMMs; ForwardOptions::attn_batching): consecutive prompts of equal length, or prompts of
// different lengths padded to the longest of their group; no prompt sees another. Each prompt's hooks see
// only its own rows, so every analysis is the same as in a one-prompt forward.
// Attention runs over query chunks [q0, q1) against keys [0, q1), so the full T×T score matrix of all heads is
// never materialised; each row's softmax sees the same numbers as the unchunked computation.
#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/model/llama.h"
#include "common/model/segments.h"
#include "common/util/status_macros.h"

namespace sinkscope::model {
namespace {

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

// Rotary cos/sin [ΣT, 1, hd] in `dtype` for positions restarting at every prompt, computed in fp32 (HF
// LlamaRotaryEmbedding, default rope_type).
std::pair<at::Tensor, at::Tensor> Rope(const LlamaConfig& cfg, const Segments& seg, at::ScalarType dtype,
                                       const at::Device& dev) {
  auto acc = at::TensorOptions().dtype(Acc(dtype)).device(dev);
  at::Tensor inv_freq =
      1.0 / at::pow(cfg.rope_theta, at::arange(0, cfg.head_dim, 2, at::TensorOptions().dtype(at::kLong).device(dev))
                                            .to(Acc(dtype)) /
                                        static_cast<double>(cfg.head_dim));
  at::Tensor freqs = at::outer(at::arange(seg.max_len, acc), inv_freq);  // [T_max, hd/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                          // [T_max, hd]
  at::Tensor cos = emb.cos().to(dtype), sin = emb.sin().to(dtype);
  if (seg.size() > 1) {  // row t of the packed sequence uses its position within its prompt
    std::vector<at::Tensor> pos;
    for (int64_t n : seg.len) pos.push_back(at::arange(n, at::TensorOptions().dtype(at::kLong).device(dev)));
    at::Tensor p = at::cat(pos);
    cos = cos.index_select(0, p);
    sin = sin.index_select(0, p);
  }
  return {cos.unsqueeze(1), sin.unsqueeze(1)};
}

// Causal attention of one group of G prompts, each padded to the group's length T and packed back to back:
// q [G·T, H, hd], k, v [G·T, Hkv, hd] (compute dtype) -> z [G·T, H, hd]. A member of length Tᵢ < T never sees a
// padding key (key j is visible to query i only if j <= i < Tᵢ); its padding rows attend to whatever they hold and
// are dropped by the caller. Each member's hook_pattern sees only its own rows and keys, [H, tq, Tᵢ].
absl::StatusOr<at::Tensor> Attention(const LlamaConfig& cfg, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const AttentionGroup& group, const Segments& seg,
                                     int64_t chunk, const SegmentHooks& hooks, int64_t layer) {
  const int64_t G = static_cast<int64_t>(group.members.size());
  const int64_t T = group.len, H = q.size(1), hd = q.size(2), Hkv = k.size(1), rep = H / Hkv;
  const double scale = cfg.attention_scale();
  const at::ScalarType dtype = q.scalar_type(), acc = Acc(dtype);
  const bool want_pattern = hooks.Wants(layer, HookId::kPattern);
  at::Tensor qf = q.to(acc).view({G, T, H, hd}).permute({0, 2, 1, 3});                  // [G, H, T, hd]
  at::Tensor kf = k.to(acc).view({G, T, Hkv, hd}).permute({0, 2, 3, 1}).contiguous();  // [G, Hkv, hd, T]
  at::Tensor vv = v.view({G, T, Hkv, hd}).permute({0, 2, 1, 3}).contiguous();          // [G, Hkv, T, hd]
  if (chunk <= 0 || chunk > T) chunk = T;
  auto ilong = at::TensorOptions().dtype(at::kLong).device(q.device());
  std::vector<at::Tensor> zs;
  for (int64_t q0 = 0; q0 < T; q0 += chunk) {
    const int64_t q1 = std::min(q0 + chunk, T), tq = q1 - q0;
    // Query head h = g·rep + r uses kv head g: [G, H, tq, hd] -> [G·Hkv, rep·tq, hd].
    at::Tensor qc = qf.narrow(2, q0, tq).reshape({G * Hkv, rep * tq, hd});
    at::Tensor kc = kf.narrow(3, 0, q1).flatten(0, 1);  // [G·Hkv, hd, q1], a view
    // fp32 scores S = bias + scale·(q kᵀ) in one GEMM (baddbmm, beta=1, alpha=scale): bias is 0 where key j <= query
    // row q0+i and -inf above the diagonal. Same rounding as HF's matmul(q, kᵀ) * scaling followed by the mask.
    at::Tensor s;
    if (tq > 1) {
      at::Tensor mask = at::arange(q1, ilong).unsqueeze(0) > at::arange(q0, q1, ilong).unsqueeze(1);  // [tq, q1]
      at::Tensor bias = at::zeros({tq, q1}, qf.options()).masked_fill_(mask, -std::numeric_limits<double>::infinity());
      if (rep > 1) bias = bias.repeat({rep, 1});  // rows of the [·, rep·tq, q1] layout
      s = at::baddbmm(bias.unsqueeze(0), qc, kc, /*beta=*/1.0, /*alpha=*/scale);
    } else {  // a single query row at q1-1 sees all keys [0, q1)
      s = at::bmm(qc, kc).mul_(scale);
    }
    at::Tensor p = at::softmax(s.view({G, H, tq, q1}), -1);  // fp32
    if (want_pattern)
      for (int64_t g = 0; g < G; ++g) {
        const size_t m = group.members[g];
        const int64_t Tm = seg.len[m];
        if (q0 >= Tm) continue;  // only padding rows of this member in the chunk
        at::Tensor pg = p.select(0, g);
        if (q1 > Tm) pg = pg.narrow(1, 0, Tm - q0).narrow(2, 0, Tm);  // its own rows and keys
        if (q1 < Tm) pg = at::constant_pad_nd(pg, {0, Tm - q1}, 0.0);  // keys past the chunk: masked, 0
        RETURN_IF_ERROR(hooks.Pattern(layer, m, pg, q0));
      }
    zs.push_back(at::bmm(p.to(dtype).view({G * Hkv, rep * tq, q1}), vv.narrow(2, 0, q1).flatten(0, 1))
                     .view({G, H, tq, hd}));
  }
  at::Tensor z = zs.size() == 1 ? zs[0] : at::cat(zs, 2);  // [G, H, T, hd]
  return z.permute({0, 2, 1, 3}).contiguous().view({G * T, H, hd});
}

// Segments::pad_rows and unpad_rows as int64 tensors on the forward's device (undefined when empty), built once per
// forward.
struct AttentionRows {
  at::Tensor pad, unpad;
  AttentionRows() = default;
  AttentionRows(const Segments& seg, const at::Device& dev)
      : pad(OnDevice(seg.pad_rows, dev)), unpad(OnDevice(seg.unpad_rows, dev)) {}

 private:
  static at::Tensor OnDevice(const std::vector<int64_t>& rows, const at::Device& dev) {
    if (rows.empty()) return at::Tensor();
    at::Tensor host = at::from_blob(const_cast<int64_t*>(rows.data()), {static_cast<int64_t>(rows.size())}, at::kLong);
    if (dev.is_cpu()) return host.clone();
    return host.pin_memory().to(dev, /*non_blocking=*/true);  // no wait for the device's queue
  }
};

// Attention over every prompt, group by group (Segments::groups): a group of consecutive equal-length prompts reads
// its rows of q/k/v as a slice, the others from one padded gather (rows.pad); the outputs return to forward order
// through rows.unpad (undefined when they are in order already).
absl::StatusOr<at::Tensor> AttentionAll(const LlamaConfig& cfg, const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const Segments& seg, const AttentionRows& rows,
                                        int64_t chunk, const SegmentHooks& hooks, int64_t layer) {
  at::Tensor qp, kp, vp;
  if (rows.pad.defined()) {
    qp = q.index_select(0, rows.pad);
    kp = k.index_select(0, rows.pad);
    vp = v.index_select(0, rows.pad);
  }
  std::vector<at::Tensor> zs;
  for (const AttentionGroup& g : seg.groups) {
    const int64_t n = static_cast<int64_t>(g.members.size()) * g.len;
    const bool slice = g.pad_offset < 0;
    const int64_t first = slice ? seg.off[g.members[0]] : g.pad_offset;
    ASSIGN_OR_RETURN(at::Tensor z,
                     Attention(cfg, (slice ? q : qp).narrow(0, first, n), (slice ? k : kp).narrow(0, first, n),
                               (slice ? v : vp).narrow(0, first, n), g, seg, chunk, hooks, layer));
    zs.push_back(std::move(z));
  }
  at::Tensor z = zs.size() == 1 ? zs[0] : at::cat(zs, 0);
  zs.clear();  // the groups' outputs: not alive beside their concatenation and its reordered copy
  return rows.unpad.defined() ? z.index_select(0, rows.unpad) : z;
}

absl::StatusOr<at::Tensor> DecoderLayer(const LlamaConfig& cfg, const LayerWeights& w, int64_t l, at::Tensor x,
                                        const std::pair<at::Tensor, at::Tensor>* rope, const Segments& seg,
                                        const AttentionRows& rows, const ForwardOptions& opts,
                                        const SegmentHooks& hooks) {
  const int64_t N = x.size(0), H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads, hd = cfg.head_dim;
  const double eps = cfg.rms_norm_eps;
  ASSIGN_OR_RETURN(x, hooks.At(l, HookId::kResidPre, x));
  ASSIGN_OR_RETURN(at::Tensor a, hooks.At(l, HookId::kLn1, RmsNorm(x, w.input_layernorm, eps)));
  at::Tensor q = at::linear(a, w.q_proj);
  at::Tensor k = at::linear(a, w.k_proj);
  at::Tensor v = at::linear(a, w.v_proj);
  if (cfg.has_q_norm()) q = RmsNorm(q, w.q_norm, eps);  // over the full H·hd projection, before the head split
  if (cfg.has_k_norm()) k = RmsNorm(k, w.k_norm, eps);
  ASSIGN_OR_RETURN(q, hooks.At(l, HookId::kQ, q.view({N, H, hd})));
  ASSIGN_OR_RETURN(k, hooks.At(l, HookId::kK, k.view({N, Hkv, hd})));
  ASSIGN_OR_RETURN(v, hooks.At(l, HookId::kV, v.view({N, Hkv, hd})));
  if (rope != nullptr) {
    q = q * rope->first + RotateHalf(q) * rope->second;
    k = k * rope->first + RotateHalf(k) * rope->second;
  }
  ASSIGN_OR_RETURN(q, hooks.At(l, HookId::kRotQ, q));
  ASSIGN_OR_RETURN(k, hooks.At(l, HookId::kRotK, k));
  ASSIGN_OR_RETURN(at::Tensor z, AttentionAll(cfg, q, k, v, seg, rows, opts.attn_query_chunk, hooks, l));
  ASSIGN_OR_RETURN(z, hooks.At(l, HookId::kZ, z));
  ASSIGN_OR_RETURN(at::Tensor o, hooks.At(l, HookId::kAttnOut, at::linear(z.reshape({N, H * hd}), w.o_proj)));
  ASSIGN_OR_RETURN(x, hooks.At(l, HookId::kResidMid, x + o));
  ASSIGN_OR_RETURN(at::Tensor b, hooks.At(l, HookId::kLn2, RmsNorm(x, w.post_attention_layernorm, eps)));
  ASSIGN_OR_RETURN(at::Tensor p, hooks.At(l, HookId::kMlpPost,
                                          at::silu(at::linear(b, w.gate_proj)) * at::linear(b, w.up_proj)));
  ASSIGN_OR_RETURN(at::Tensor f, hooks.At(l, HookId::kMlpOut, at::linear(p, w.down_proj)));
  return hooks.At(l, HookId::kResidPost, x + f);
}

// −log p(next token) at every row that has a target in its own prompt, from the final hidden states y [ΣT, d],
// in row chunks so that at most ~4M logits (16 MiB fp32) exist at once on a CPU (131 rows for V=32000).
at::Tensor TargetNll(const LlamaConfig& cfg, const at::Tensor& y, const at::Tensor& lm_head, const at::Tensor& ids,
                     const Segments& seg, const at::Tensor& logits) {
  // The rows with a target and their targets. One prompt: rows 0..T-2, a contiguous range (plain slices).
  const bool one = seg.size() == 1;
  at::Tensor rows, targets;
  if (one) {
    targets = ids.narrow(0, 1, seg.len[0] - 1);
  } else {
    std::vector<at::Tensor> r;
    for (size_t s = 0; s < seg.size(); ++s)
      if (seg.len[s] > 1) r.push_back(at::arange(seg.off[s], seg.off[s] + seg.len[s] - 1, ids.options()));
    rows = r.empty() ? at::empty({0}, ids.options()) : at::cat(r);
    targets = ids.index_select(0, rows + 1);
  }
  const int64_t n_rows = targets.size(0);
  auto take = [&](const at::Tensor& m, int64_t r0, int64_t n) {
    return one ? m.narrow(0, r0, n) : m.index_select(0, rows.narrow(0, r0, n));
  };
  const at::ScalarType acc = Acc(y.scalar_type());
  if (logits.defined())
    return -at::log_softmax(take(logits, 0, n_rows), -1).gather(1, targets.unsqueeze(1)).squeeze(1);
  // On a GPU 8× more (128 MiB fp32, ~0.4 GiB transient beside packing's estimate): every chunk re-reads lm_head
  // (262 MB at 7B), and 131-row chunks of a 32k-token packed forward would be 250 rounds of weight reads.
  const int64_t logits_at_once = y.is_cpu() ? (int64_t{1} << 22) : (int64_t{1} << 25);
  const int64_t chunk = std::max<int64_t>(1, logits_at_once / cfg.vocab_size);
  std::vector<at::Tensor> parts;
  for (int64_t r0 = 0; r0 < n_rows; r0 += chunk) {
    const int64_t n = std::min(chunk, n_rows - r0);
    at::Tensor lg = at::linear(take(y, r0, n), lm_head).to(acc);
    parts.push_back(-at::log_softmax(lg, -1).gather(1, targets.narrow(0, r0, n).unsqueeze(1)).squeeze(1));
  }
  if (parts.empty()) return at::empty({0}, at::TensorOptions().dtype(acc).device(y.device()));
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

// Rethrows nothing: LibTorch failures become Internal statuses naming the stage.
template <class F>
auto Guarded(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, " failed (LibTorch): ", e.what_without_backtrace()));
  } catch (const std::exception& e) {  // Debian's LibTorch reports TORCH_CHECK failures as std::runtime_error
    return absl::InternalError(absl::StrCat(what, " failed: ", e.what()));
  }
}

}  // namespace

// Everything one forward carries between its stages. Heap-allocated and never moved: `hooks` refers to `seg`.
struct ForwardRun::State {
  State(const LlamaConfig& c, const LlamaWeights& weights, ForwardOptions o, Segments s)
      : cfg(c), w(weights), opts(std::move(o)), seg(std::move(s)), hooks(seg, c.num_hidden_layers) {}
  const LlamaConfig& cfg;
  const LlamaWeights& w;
  ForwardOptions opts;
  const Segments seg;
  const SegmentHooks hooks;
  at::Tensor ids;                         // [T] int64 on the device
  at::Tensor x;                           // the residual stream entering layer `next`
  std::pair<at::Tensor, at::Tensor> rope;  // undefined for NoPE
  AttentionRows rows;                      // the padded attention groups' gather and scatter
  int64_t next = 0;
};

ForwardRun::ForwardRun() = default;
ForwardRun::~ForwardRun() = default;
ForwardRun::ForwardRun(ForwardRun&&) noexcept = default;
ForwardRun& ForwardRun::operator=(ForwardRun&&) noexcept = default;

absl::StatusOr<ForwardRun> ForwardRun::Begin(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids_in,
                                             ForwardOptions opts) {
  return Guarded("forward", [&]() -> absl::StatusOr<ForwardRun> {
    // ---- validate inputs before any compute
    if (!ids_in.defined()) return absl::InvalidArgumentError("ids: undefined tensor");
    if (ids_in.dim() != 1)
      return absl::InvalidArgumentError(absl::StrCat("ids must be 1-D [T], got shape ", ShapeStr(ids_in.sizes())));
    if (!at::isIntegralType(ids_in.scalar_type(), /*includeBool=*/false))
      return absl::InvalidArgumentError(
          absl::StrCat("ids must be an integer tensor, got ", DtypeName(ids_in.scalar_type())));
    const int64_t T = ids_in.size(0);
    if (T < 1) return absl::InvalidArgumentError("ids is empty (T=0); need at least one token");
    ASSIGN_OR_RETURN(Segments seg, MakeSegments(cfg, T, opts));
    RETURN_IF_ERROR(ValidateWeights(cfg, w));
    for (const HookSet* h : seg.hooks)
      if (h != nullptr) RETURN_IF_ERROR(h->Validate(cfg.num_hidden_layers));
    const at::Device dev = w.embed_tokens.device();
    const at::ScalarType dtype = w.embed_tokens.scalar_type();
    const int64_t start = opts.start_layer;
    if (start < 0 || start > cfg.num_hidden_layers)
      return absl::InvalidArgumentError(
          absl::StrCat("start_layer=", start, " not in [0, ", cfg.num_hidden_layers, "]"));
    if (start > 0) {
      const at::Tensor& r = opts.start_residual;
      if (!r.defined() || r.dim() != 2 || r.size(0) != T || r.size(1) != cfg.hidden_size || r.scalar_type() != dtype)
        return absl::InvalidArgumentError(absl::StrCat("start_residual must be [", T, ", ", cfg.hidden_size, "] ",
                                                       DtypeName(dtype), " (the residual entering layer ", start,
                                                       "), got ", r.defined() ? ShapeStr(r.sizes()) : "undefined"));
    }
    ForwardRun run;
    run.s_ = std::make_unique<State>(cfg, w, std::move(opts), std::move(seg));
    State& s = *run.s_;
    s.ids = ids_in.to(dev, at::kLong);
    {
      const int64_t lo = s.ids.min().item<int64_t>(), hi = s.ids.max().item<int64_t>();
      if (lo < 0 || hi >= cfg.vocab_size)
        return absl::InvalidArgumentError(absl::StrCat("ids contain token id ", lo < 0 ? lo : hi,
                                                       " outside [0, vocab_size=", cfg.vocab_size, ")"));
    }
    // ---- embeddings (or the residual kept from an earlier forward of the same prompts)
    if (start > 0) {
      s.x = s.opts.start_residual.to(dev);
      s.opts.start_residual = at::Tensor();  // the run owns its residual from here on
    } else {
      ASSIGN_OR_RETURN(s.x, s.hooks.AtModel(kEmbedHook, at::embedding(w.embed_tokens, s.ids)));  // [T, d]
    }
    if (cfg.uses_rope()) s.rope = Rope(cfg, s.seg, dtype, dev);
    s.rows = AttentionRows(s.seg, dev);
    s.next = start;
    return run;
  });
}

int64_t ForwardRun::next_layer() const { return s_ ? s_->next : 0; }
const at::Tensor& ForwardRun::residual() const { return s_->x; }

absl::Status ForwardRun::RunLayers(int64_t end) {
  if (!s_) return absl::FailedPreconditionError("RunLayers on a forward that was not begun");
  State& s = *s_;
  end = std::min<int64_t>(end, s.cfg.num_hidden_layers);
  return Guarded("forward", [&]() -> absl::Status {
    for (int64_t l = s.next; l < end; ++l) {
      ASSIGN_OR_RETURN(s.x, DecoderLayer(s.cfg, s.w.layers[l], l, s.x, s.cfg.uses_rope() ? &s.rope : nullptr, s.seg,
                                         s.rows, s.opts, s.hooks));
      s.next = l + 1;
      if (s.opts.check_finite && !at::isfinite(s.x).all().item<bool>())
        return absl::FailedPreconditionError(absl::StrCat("non-finite activations (NaN or Inf) in the residual "
                                                          "stream after layer ", l,
                                                          ": the weights or an intervention overflow"));
      if (s.opts.after_layer) RETURN_IF_ERROR(s.opts.after_layer(static_cast<int>(l)));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<ForwardResult> ForwardRun::Finish() {
  if (!s_) return absl::FailedPreconditionError("Finish on a forward that was not begun");
  State& s = *s_;
  if (s.next != s.cfg.num_hidden_layers)
    return absl::FailedPreconditionError(
        absl::StrCat("Finish after layer ", s.next, " of ", s.cfg.num_hidden_layers, ": run every layer first"));
  auto r = Guarded("forward", [&]() -> absl::StatusOr<ForwardResult> {
    const at::ScalarType dtype = s.w.embed_tokens.scalar_type();
    ASSIGN_OR_RETURN(at::Tensor x, s.hooks.AtModel(kFinalNormHook, RmsNorm(s.x, s.w.norm, s.cfg.rms_norm_eps)));
    // ---- head: logits = (y W_lm^T).float(); nll_t = -log_softmax(logits_t)[ids_{t+1}] within each prompt
    ForwardResult out;
    if (s.opts.return_logits) out.logits = at::linear(x, s.w.lm_head).to(Acc(dtype));
    if (s.opts.return_target_nll) out.target_nll = TargetNll(s.cfg, x, s.w.lm_head, s.ids, s.seg, out.logits);
    if (s.opts.return_hidden) out.hidden = x;
    return out;
  });
  s_.reset();  // the residual and the rotary tables are released as soon as the forward ends
  return r;
}

absl::StatusOr<ForwardResult> LlamaForward(const LlamaConfig& cfg, const LlamaWeights& w, const at::Tensor& ids,
                                           const ForwardOptions& opts) {
  ASSIGN_OR_RETURN(ForwardRun run, ForwardRun::Begin(cfg, w, ids, opts));
  RETURN_IF_ERROR(run.RunLayers(cfg.num_hidden_layers));
  return run.Finish();
}

}  // namespace sinkscope::model
