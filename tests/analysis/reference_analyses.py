#!/usr/bin/python3
"""Independent python3-torch reference for every sinkscope analysis (used by tests/analysis/reference_test.cc).

Written from the study's formulas (docs/study.md §4.1, §4.3–§4.9) — not from the C++
engine: whole-tensor numpy/torch computations over all prompts at once (no streaming, no chunking), the manual
attention exactly as rerun_drope_metrics.compute_sink_rate_manual, the Gram matrix always T×T, the disruption masks
applied as the study's `Y * (1 - mask)`, the random control via torch.manual_seed + torch.randperm, Jin-style
replacement with a per-head Python loop. The forward pass is tests/reference/reference_llama.py (itself written
from Hugging Face's modeling_llama.py).

Input (--spec JSON):
  {"models": [{"name": ..., "dir": ...}], "prompts": [[ids]...], "identify_prompts": [[ids]...],
   "tau": 0.3, "lambda": 1.5, "top_k": 4, "bos_mlp_layer": 1,
   "qk": {"lambda": 1.5, "seeds": [42, 43]}, "heads": [[layer, head], ...],
   "edits": [{"hook": ..., "op": "zero|scale|add|set|mean", "value": v, "positions": [], "heads": [], "dims": []}],
   "act_hooks": [...]}
Output (--out JSON): {model name: {...}} (see the keys below; per-layer lists, mean over prompts and np.std).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import reference_llama as rl  # noqa: E402


class EditRecorder(rl.Recorder):
    """Recorder whose hooks can run arbitrary edit functions on the batch-less activation."""

    def __init__(self, edits, record):
        super().__init__({}, record)
        self.edits = edits

    def __call__(self, name, x, pos_dim):
        if name in self.edits:
            y = x[0]
            for fn in self.edits[name]:
                y = fn(y)
            x = y.unsqueeze(0)
        return super().__call__(name, x, pos_dim)


def run(model, ids, edits=None, record=False):
    rec = EditRecorder(edits or {}, record)
    with torch.no_grad():
        _, nll = model.forward(list(ids), rec)
    return rec.acts, nll.double()


def stat(values):
    a = np.asarray(values, dtype=np.float64)
    return [float(a.mean()), float(a.std())]


# ------------------------------------------------------------------------------------------------ sink rate
def manual_attention(q, k):
    """Study's manual method: softmax(q k^T * hd^-0.5 + causal mask) in fp32 from pre-RoPE q/k ([T,H,hd])."""
    T, H, hd = q.shape
    qq = q.transpose(0, 1).float()
    kk = rl.repeat_kv(k.transpose(0, 1).unsqueeze(0).float(), H // k.shape[1])[0]
    s = torch.matmul(qq, kk.transpose(1, 2)) * hd ** -0.5
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
    return torch.softmax(s, dim=-1)


def sink_rates(acts_list, L, tau, source, exclude):
    rates, scores, margin = [], [], math.inf
    for l in range(L):
        per_prompt_rate, per_prompt_scores = [], []
        for acts in acts_list:
            if source == "model":
                A = acts[f"blocks.{l}.attn.hook_pattern"]
            else:
                A = manual_attention(acts[f"blocks.{l}.attn.hook_q"], acts[f"blocks.{l}.attn.hook_k"])
            col = A[:, 1:, 0] if exclude else A[:, :, 0]
            if col.shape[1] == 0:
                continue
            s = col.double().mean(dim=1)
            per_prompt_scores.append(s.numpy())
            per_prompt_rate.append(float((s >= tau).double().mean()))
            margin = min(margin, float((s - tau).abs().min()))
        rates.append(stat(per_prompt_rate))
        scores.append(np.mean(per_prompt_scores, axis=0).tolist())
    return {"rate": rates, "head_scores": scores, "margin": margin}


# ------------------------------------------------------------------------------------------ massive values
def gini_np(x):
    v = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = v.size
    if v.sum() == 0:
        return 0.0
    idx = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.sum(idx * v) / (n * np.sum(v)) - (n + 1.0) / n)


def massive(acts_list, L, lam, scope, post, top_k):
    names = {"q": "attn.hook_rot_q" if post else "attn.hook_q", "k": "attn.hook_rot_k" if post else "attn.hook_k",
             "v": "attn.hook_v"}
    out = {}
    margin = math.inf
    for t, suffix in names.items():
        counts = np.zeros((len(acts_list), L))
        res = {"count": [], "threshold": [], "gini": [], "top": []}
        for l in range(L):
            Ms, thr = [], []
            for i, acts in enumerate(acts_list):
                X = acts[f"blocks.{l}.{suffix}"].double()
                M = torch.linalg.norm(X, dim=0)  # [H, D], over positions
                ref = M.mean(dim=1, keepdim=True) if scope == "head" else M.mean()
                sel = M > lam * ref
                counts[i, l] = int(sel.sum())
                margin = min(margin, float(((M - lam * ref).abs() / (lam * ref)).min()))
                Ms.append(M)
                thr.append(float(lam * M.mean()))
            res["count"].append(stat(counts[:, l]))
            res["threshold"].append(float(np.mean(thr)))
            res["gini"].append(float(np.mean([gini_np(M.numpy()) for M in Ms])))
            Mm = torch.stack(Ms).mean(0)
            D = Mm.shape[1]
            order = torch.argsort(Mm.flatten(), descending=True)[:top_k]
            res["top"].append([[int(j) // D, int(j) % D, float(Mm.flatten()[j])] for j in order])
        res["total"] = stat(counts.sum(axis=1))
        out[t] = res
    out["margin"] = margin
    return out


# --------------------------------------------------------------------------------------- residual / entropy
def layer_input(acts, l, L, final):
    return acts["ln_final.hook_normalized"] if (final and l == L - 1) else acts[f"blocks.{l}.hook_resid_post"]


def residual(acts_list, L, final):
    bos, other, ratio = [], [], []
    for l in range(L):
        b, o, r = [], [], []
        for acts in acts_list:
            n = torch.linalg.norm(layer_input(acts, l, L, final).double(), dim=1)
            T = n.shape[0]
            b.append(float(n[0]))
            o.append(float(n[1:].mean()) if T > 1 else 0.0)
            r.append(float(n[0] / (n[1:].mean() + 1e-8)) if T > 1 else 1.0)
        bos.append(stat(b))
        other.append(stat(o))
        ratio.append(stat(r))
    embed = float(np.mean([float(torch.linalg.norm(a["hook_embed"][0].double())) for a in acts_list]))
    ratio_means = [x[0] for x in ratio]
    bos_means = [x[0] for x in bos]
    jumps = [bos_means[0] - embed] + [bos_means[l] - bos_means[l - 1] for l in range(1, L)]
    return {"bos_norm": bos, "mean_other_norm": other, "ratio": ratio, "embed_bos_norm": embed,
            "spike_ratio": int(np.argmax(ratio_means)), "spike_jump": int(np.argmax(jumps))}


def entropy_of(X):
    """run_phase_metrics' Queipo entropy: uncentred T×T Gram, eigvalsh in float64, p clamped at 1e-10."""
    X = X.double()
    C = X @ X.T
    F = torch.trace(C)
    if F < 1e-10:
        return 0.0, 1.0, 0.0
    lam = torch.linalg.eigvalsh(C).flip(0).clamp(min=0)
    p = (lam / F).clamp(min=1e-10)
    H = float(-(p * torch.log(p)).sum())
    r = min(X.shape[0], X.shape[1])
    return H, float(p[0]), (H / math.log(r) if r > 1 else 0.0)


def entropy(acts_list, L, final):
    out = {"entropy": [], "anisotropy": [], "normalized": []}
    for l in range(L):
        vals = [entropy_of(layer_input(a, l, L, final)) for a in acts_list]
        out["entropy"].append(stat([v[0] for v in vals]))
        out["anisotropy"].append(stat([v[1] for v in vals]))
        out["normalized"].append(stat([v[2] for v in vals]))
    return out


# ------------------------------------------------------------------------------------------------ perplexity
def perplexity(model, prompts, edits=None, weight_by_t=False):
    tot, n, wsum, wn = 0.0, 0, 0.0, 0
    for ids in prompts:
        if len(ids) < 2:
            continue
        _, nll = run(model, ids, edits)
        tot += float(nll.sum())
        n += nll.numel()
        wsum += float(nll.mean()) * len(ids)
        wn += len(ids)
    return math.exp(wsum / wn) if weight_by_t else math.exp(tot / n)


def bos_mlp_edits(layer):
    def f(y):
        y = y.clone()
        y[0] = 0
        return y
    return {f"blocks.{layer}.hook_mlp_out": [f]}


def identify(model, prompts, L, lam):
    """identify_massive_dims: N = ||Q[:, h, d]||_2 over all positions per text, mean over texts, > lam * mean."""
    nq = [[] for _ in range(L)]
    nk = [[] for _ in range(L)]
    for ids in prompts:
        acts, _ = run(model, ids, record=True)
        for l in range(L):
            nq[l].append(acts[f"blocks.{l}.attn.hook_q"].double().norm(dim=0).flatten())
            nk[l].append(acts[f"blocks.{l}.attn.hook_k"].double().norm(dim=0).flatten())
    masks = {}
    for l in range(L):
        mq = torch.stack(nq[l]).mean(0)
        mk = torch.stack(nk[l]).mean(0)
        q = mq > lam * mq.mean()
        k = mk > lam * mk.mean()
        if bool(q.any()) or bool(k.any()):
            masks[l] = {"q": q, "k": k}
    return masks


def random_masks(masks, seed):
    """create_random_dims: torch.manual_seed(seed); per kept layer ascending, q then k: randperm(F)[:n]."""
    torch.manual_seed(seed)
    out = {}
    for l in sorted(masks):
        out[l] = {}
        for key in ("q", "k"):
            n = int(masks[l][key].sum())
            F = masks[l][key].numel()
            idx = torch.randperm(F)[:n]
            m = torch.zeros(F, dtype=torch.bool)
            m[idx] = True
            out[l][key] = m
    return out


def disruption_edits(masks, mean=False):
    def make(mask):
        def f(y):
            T = y.shape[0]
            flat = y.reshape(T, -1)
            if mean:
                flat = flat.clone()
                idx = mask.nonzero().flatten()
                flat[:, idx] = flat[:, idx].mean(dim=0)
            else:
                # ProjectionDisruptor: Y * (1 - mask); the mask is built from activations kept on the CPU
                flat = flat * (1 - mask.to(flat.device, flat.dtype))
            return flat.reshape(y.shape)
        return f
    edits = {}
    for l, m in masks.items():
        if bool(m["q"].any()):
            edits.setdefault(f"blocks.{l}.attn.hook_q", []).append(make(m["q"]))
        if bool(m["k"].any()):
            edits.setdefault(f"blocks.{l}.attn.hook_k", []).append(make(m["k"]))
    return edits


def top_per_head_edits(L, k, post, lam, smallest):
    def f(S):
        S = S.clone()
        norms = S.float().norm(dim=0)  # [H, hd]
        for h in range(S.shape[1]):
            idx = torch.topk(norms[h], k, largest=not smallest).indices
            for d in idx.tolist():
                if lam is None or norms[h, d] > lam * norms[h].mean():
                    S[:, h, d] = S[:, h, d].float().mean()
        return S
    edits = {}
    for l in range(L):
        for t in ("q", "k"):
            edits[f"blocks.{l}.attn.hook_{'rot_' if post else ''}{t}"] = [f]
    return edits


def head_edits(heads, mean):
    edits = {}
    for layer, head in heads:
        def f(z, h=head):
            z = z.clone()
            z[:, h, :] = z[:, h, :].mean(dim=0) if mean else 0
            return z
        edits.setdefault(f"blocks.{layer}.attn.hook_z", []).append(f)
    return edits


def generic_edits(specs):
    edits = {}
    for e in specs:
        def f(x, e=e):
            x = x.clone()
            T = x.shape[0]
            pos = list(range(T)) if not e["positions"] else [p if p >= 0 else T + p for p in e["positions"]]
            pos = [p for p in pos if 0 <= p < T]
            mean = x.float().mean(dim=0).to(x.dtype)
            for p in pos:
                row = x[p]
                mrow = mean
                if x.dim() == 3:
                    hs = e["heads"] or list(range(x.shape[1]))
                    sel = [(h, d) for h in hs for d in (e["dims"] or list(range(x.shape[2])))]
                else:
                    sel = [(None, d) for d in (e["dims"] or list(range(x.shape[1])))]
                for h, d in sel:
                    cur = row[d] if h is None else row[h, d]
                    m = mrow[d] if h is None else mrow[h, d]
                    op, v = e["op"], e["value"]
                    new = {"zero": 0.0, "set": v, "scale": float(cur) * v, "add": float(cur) + v, "mean": float(m)}[op]
                    if h is None:
                        row[d] = new
                    else:
                        row[h, d] = new
            return x
        edits.setdefault(e["hook"], []).append(f)
    return edits


# ------------------------------------------------------------------------------------------ activation stats
def act_stats(acts_list, hook, top_k):
    rows = {"bos": [], "rest": []}
    for acts in acts_list:
        X = acts[hook].double()
        X = X.reshape(X.shape[0], -1)
        rows["bos"].append(X[:1])
        rows["rest"].append(X[1:])
    out = {}
    for cls, parts in (("bos", rows["bos"]), ("rest", rows["rest"]), ("all", rows["bos"] + rows["rest"])):
        X = torch.cat(parts, dim=0).numpy()
        if X.shape[0] == 0:
            out[cls] = {"count": 0}
            continue
        norms = np.linalg.norm(X, axis=1)
        mabs = np.abs(X).mean(axis=0)
        order = np.argsort(-mabs, kind="stable")[:top_k]
        out[cls] = {"count": int(X.size), "mean": float(X.mean()), "std": float(X.std()),
                    "max_abs": float(np.abs(X).max()), "mean_norm": float(norms.mean()),
                    "max_norm": float(norms.max()), "top_dims": [int(i) for i in order],
                    "top_values": [float(mabs[i]) for i in order]}
    return out


# ------------------------------------------------------------------------------------------------------ main
def analyse(model, spec):
    torch.set_num_threads(1)
    L = model.L
    prompts = spec["prompts"]
    acts_list = [run(model, ids, record=True)[0] for ids in prompts]
    tau, lam, top_k = spec["tau"], spec["lambda"], spec["top_k"]
    out = {"sink": {}, "massive": {}}
    for source in ("model", "pre_rotary"):
        for excl in (False, True):
            out["sink"][f"{source}_{'excl' if excl else 'all'}"] = sink_rates(acts_list, L, tau, source, excl)
    out["massive"]["pre_layer"] = massive(acts_list, L, lam, "layer", False, top_k)
    out["massive"]["post_layer"] = massive(acts_list, L, lam, "layer", True, top_k)
    out["massive"]["pre_head"] = massive(acts_list, L, lam, "head", False, top_k)
    out["residual"] = {"raw": residual(acts_list, L, False), "final": residual(acts_list, L, True)}
    out["entropy"] = {"raw": entropy(acts_list, L, False), "final": entropy(acts_list, L, True)}
    out["act"] = {h: act_stats(acts_list, h, top_k) for h in spec["act_hooks"]}

    ppl = {"baseline": perplexity(model, prompts), "baseline_wt": perplexity(model, prompts, weight_by_t=True)}
    spike_r, spike_j = out["residual"]["raw"]["spike_ratio"], out["residual"]["raw"]["spike_jump"]
    ppl["bos_mlp_layer"] = perplexity(model, prompts, bos_mlp_edits(spec["bos_mlp_layer"]))
    ppl["bos_mlp_spike"] = perplexity(model, prompts, bos_mlp_edits(spike_r))
    ppl["bos_mlp_jump"] = perplexity(model, prompts, bos_mlp_edits(spike_j))
    qk = spec["qk"]
    masks = identify(model, prompts, L, qk["lambda"])
    ppl["qk_dims"] = int(sum(int(m["q"].sum()) + int(m["k"].sum()) for m in masks.values()))
    ppl["qk_layers"] = len(masks)
    ppl["qk_zero"] = perplexity(model, prompts, disruption_edits(masks))
    ppl["qk_controls"] = [perplexity(model, prompts, disruption_edits(random_masks(masks, s))) for s in qk["seeds"]]

    def idx(mask_dict):
        return {str(l): {t: m[t].nonzero().flatten().tolist() for t in ("q", "k")} for l, m in mask_dict.items()}
    out["qk_masks"] = idx(masks)
    out["qk_control_masks"] = {str(s): idx(random_masks(masks, s)) for s in qk["seeds"]}
    ppl["qk_mean"] = perplexity(model, prompts, disruption_edits(masks, mean=True))
    id_masks = identify(model, spec["identify_prompts"], L, qk["lambda"])
    ppl["qk_identify_dims"] = int(sum(int(m["q"].sum()) + int(m["k"].sum()) for m in id_masks.values()))
    ppl["qk_identify"] = perplexity(model, prompts, disruption_edits(id_masks))
    ppl["top1"] = perplexity(model, prompts, top_per_head_edits(L, 1, False, None, False))
    ppl["top1_post"] = perplexity(model, prompts, top_per_head_edits(L, 1, True, None, False))
    ppl["top2_smallest"] = perplexity(model, prompts, top_per_head_edits(L, 2, False, None, True))
    ppl["top1_lambda"] = perplexity(model, prompts, top_per_head_edits(L, 1, False, spec["top_lambda"], False))
    ppl["heads_zero"] = perplexity(model, prompts, head_edits(spec["heads"], False))
    ppl["heads_mean"] = perplexity(model, prompts, head_edits(spec["heads"], True))
    ppl["edits"] = perplexity(model, prompts, generic_edits(spec["edits"]))
    out["ppl"] = ppl
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    with open(a.spec) as f:
        spec = json.load(f)
    result = {m["name"]: analyse(rl.Model(m["dir"]), spec) for m in spec["models"]}
    with open(a.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
