#!/usr/bin/env python3
"""sinkscope vs Hugging Face transformers on the same checkpoint and prompts: every tensor, then the study metrics.

  # 1. HF side (needs transformers; runs while sinkscope builds): tensors + study metrics from HF's own forward
  hf_compare.py reference --model DIR --dtype float32 --prompts P.json --out REF     (REF.safetensors, REF.json)
  # 2. sinkscope side, then the comparison (exit 1 beyond tolerance)
  sinkscope-probe --model DIR --dtype float32 --prompts P.json --out PROBE.safetensors --hooks ...
  sinkscope -f json run -m NAME --ids ... (see METRIC_FLAGS) > EVENTS.jsonl
  hf_compare.py compare --ref REF --probe PROBE.safetensors --events EVENTS.jsonl --name NAME --dtype float32
      [--ref32 REF_OF_THE_FLOAT32_RUN] --out RESULT.json

HF runs transformers' LlamaForCausalLM (hf_llama.py: attn_implementation="eager", output_hidden_states=True,
output_attentions=True; DroPE = apply_rotary_pos_emb patched to the identity, q_norm/k_norm added). Tensors
compared per prompt: logits, hook_embed, every layer's hook_resid_post, ln_final.hook_normalized (HF: forward hooks on
embed_tokens, each decoder layer and the final norm; output_hidden_states is cross-checked against them) and every
layer's attention pattern (HF's output_attentions). Error = relative Frobenius norm ||a - b|| / ||b||.

Tolerances (relative Frobenius):
  float32  1e-4. Both sides compute in fp32 with TF32 off (torch's and LibTorch's default), so differences come only
           from summation order (cuBLAS algorithm choice, chunked vs whole attention): ~1e-6 per op; 1e-4 leaves room
           for the growth through a few layers with massive (2000) BOS activations.
  bfloat16 5e-2. bf16 keeps 8 significant bits (unit roundoff 2^-8 = 3.9e-3); every matmul output and residual add is
           rounded, and HF also rounds attention scores and probabilities to bf16 while sinkscope keeps them in fp32
           (docs/study.md §4.1), so the two bf16 results differ by O(10) roundoffs after a few layers: ~1-3e-2.
           Both are also measured against HF's float32 run (--ref32): sinkscope-bf16 should be as close to it as
           HF-bf16 is (reported; a ratio above 2 fails).
Study metrics (reference_analyses.py's formulas applied to HF's tensors; HF's own forwards with hooks for the
BOS-MLP ablation and the Q/K massive-dimension disruption and its random controls) are compared with what the
sinkscope server returns for the same job: continuous values within the same relative tolerance (x10 for fp32
metrics that go through an eigen-decomposition or exp of a mean; matrix entropy and anisotropy also pass within an
absolute 1e-4 / 2e-2 (bf16), since a nearly rank-1 Gram matrix's entropy is set by eigenvalues at rounding level),
thresholded counts (sink rate, massive values, identified dims, spike layer) exactly, except for entries that lie
within the tolerance of their threshold on the HF side.
"""
import argparse
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "analysis"))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import reference_analyses as ra  # noqa: E402  (the study's formulas, independent of the C++ engine)
from make_tiny_llama import write_safetensors  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
TAU, LAMBDA, QK_LAMBDA, SEEDS, TOP_K = 0.3, 5.0, 5.0, [42, 43, 44], 8
# The client flags whose results `compare` checks (gpu-check.sh passes them to `sinkscope run`).
METRIC_FLAGS = ["--sink-rate", "--massive", "--residual", "--entropy", "--perplexity", "--bos-mlp", "spike",
                "--qk-disruption", "--control-seeds", ",".join(str(s) for s in SEEDS)]


# ------------------------------------------------------------------------------------------ safetensors I/O
def read_st(path):
    """Own reader (works without the safetensors package): name -> float32/int64 CPU tensor, plus metadata."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base, out = 8 + n, {}
    for name, e in header.items():
        b, en = e["data_offsets"]
        dt = {"F32": "<f4", "I64": "<i8", "BF16": "<i2", "F16": "<f2"}[e["dtype"]]
        t = torch.from_numpy(np.frombuffer(raw[base + b:base + en], dtype=dt).copy())
        if e["dtype"] == "BF16":
            t = t.view(torch.bfloat16).float()
        out[name] = t.reshape(e["shape"])
    return out, meta


def write_st(path, tensors, metadata=None):
    """The project's one python safetensors writer (tests/reference/make_tiny_llama.py)."""
    write_safetensors(path, tensors, metadata)


def rel(a, b):
    a, b = a.double(), b.double()
    d = float(torch.linalg.norm(b))
    return float(torch.linalg.norm(a - b)) / (d if d > 0 else 1.0)


# ---------------------------------------------------------------------------------------------- HF side
class Capture:
    """Forward hooks on transformers' modules: TransformerLens-named activations (batch dropped) + edits."""

    def __init__(self, model, record):
        self.model, self.record, self.acts, self.edits, self.handles = model, record, {}, {}, []
        m = model.model
        H = model.config.num_attention_heads
        hd = getattr(model.config, "head_dim", None) or model.config.hidden_size // H
        self.hd = hd
        self._hook(m.embed_tokens, "hook_embed", None)
        for l, layer in enumerate(m.layers):
            self._hook(layer, f"blocks.{l}.hook_resid_post", None)
            a = layer.self_attn
            self._hook(a.q_proj, f"blocks.{l}.attn.hook_q", hd)  # post q_norm when q_proj is Sequential(q_proj, norm)
            self._hook(a.k_proj, f"blocks.{l}.attn.hook_k", hd)
            self._hook(a.v_proj, f"blocks.{l}.attn.hook_v", hd)
            self._hook(layer.mlp, f"blocks.{l}.hook_mlp_out", None)
        self._hook(m.norm, "ln_final.hook_normalized", None)

    def _hook(self, module, name, hd):
        def fn(mod, args, out):
            import hf_llama
            x = hf_llama.layer_output(out)
            y = x[0]
            if hd:
                y = y.reshape(y.shape[0], -1, hd)
            for e in self.edits.get(name, []):
                y = e(y)
            if self.record:
                self.acts[name] = y.detach().float().cpu()
            if self.edits.get(name):
                new = y.reshape(x[0].shape).unsqueeze(0).to(x.dtype)
                if isinstance(out, (tuple, list)):
                    return (new,) + tuple(out[1:])
                return new
            return None
        self.handles.append(module.register_forward_hook(fn))


def hf_forward(model, cap, ids, want_attn, device):
    cap.acts = {}
    x = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=x, output_attentions=want_attn, output_hidden_states=want_attn, use_cache=False)
    logits = out.logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none").double().cpu()
    return out, logits, nll


def ppl_of(nlls):
    tot = sum(float(n.sum()) for n in nlls)
    cnt = sum(n.numel() for n in nlls)
    return math.exp(tot / cnt)


def near_threshold(values, thr, rel_tol):
    """How many entries lie within rel_tol of a threshold (their count may legitimately differ)."""
    return int(((values - thr).abs() <= rel_tol * thr.abs().clamp(min=1e-12)).sum())


class HfBackend:
    """transformers' LlamaForCausalLM (eager) with forward hooks."""

    def __init__(self, model_dir, dtype, device):
        import hf_llama
        self.model, self.cfg, self.att = hf_llama.load(model_dir, dtype, device, "eager", nope_mode="patch")
        self.cap = Capture(self.model, record=True)
        self.device = device
        import transformers
        self.name = f"transformers {transformers.__version__}"
        rot = getattr(self.model.model, "rotary_emb", None)
        self.detail = {"attn_implementation": getattr(self.model.config, "_attn_implementation", None),
                       "inv_freq_dtype": str(getattr(rot, "inv_freq", torch.empty(0)).dtype),
                       "nope_calls_at_load": hf_llama._PATCHED["calls"]}

    def run(self, ids, edits=None, record=True):
        self.cap.edits, self.cap.record = edits or {}, record
        out, logits, nll = hf_forward(self.model, self.cap, ids, record, self.device)
        acts = dict(self.cap.acts)
        self.cap.edits = {}
        if record:
            L = self.cfg["num_hidden_layers"]
            for l in range(L):
                acts[f"blocks.{l}.attn.hook_pattern"] = out.attentions[l][0].float().cpu()
            hs = out.hidden_states  # cross-check: [embeddings, layer outputs..., final (normed)]
            if hs is not None and len(hs) == L + 1:
                errs = [rel(hs[0][0].float().cpu(), acts["hook_embed"])]
                errs += [rel(hs[l + 1][0].float().cpu(), acts[f"blocks.{l}.hook_resid_post"]) for l in range(L - 1)]
                last = hs[L][0].float().cpu()
                errs.append(min(rel(last, acts["ln_final.hook_normalized"]),
                                rel(last, acts[f"blocks.{L - 1}.hook_resid_post"])))
                self.hs_check = max(getattr(self, "hs_check", 0.0), max(errs))
        return acts, logits.cpu(), nll


class RefBackend:
    """The project's independent python reference (tests/reference/reference_llama.py, written from HF's
    modeling_llama.py): used where transformers is absent (CPU dry runs) so the comparison pipeline still runs."""

    def __init__(self, model_dir, dtype, device):
        import reference_llama as rl
        self.m = rl.Model(model_dir, dtype)
        self.cfg, self.att, self.name = self.m.cfg, self.m.attention_type, "tests/reference/reference_llama.py"

    def run(self, ids, edits=None, record=True):
        rec = ra.EditRecorder(edits or {}, record)
        with torch.no_grad():
            logits, nll = self.m.forward(list(ids), rec)
        return {k: v.float() for k, v in rec.acts.items()}, logits.float(), nll.double()


def reference(a):
    dtype = DTYPES[a.dtype]
    device = a.device
    t0 = time.time()
    fw = HfBackend(a.model, dtype, device) if a.backend == "hf" else RefBackend(a.model, dtype, device)
    cfg, att = fw.cfg, fw.att
    load_s = time.time() - t0
    with open(a.prompts) as f:
        prompts = json.load(f)
    L = cfg["num_hidden_layers"]
    tensors, acts_list, nlls = {}, [], []
    for i, ids in enumerate(prompts):
        acts, logits, nll = fw.run(ids)
        acts_list.append(acts)
        nlls.append(nll)
        p = f"p{i}."
        tensors[p + "logits"] = logits.float().contiguous()
        tensors[p + "target_nll"] = nll.float()
        for k in ["hook_embed", "ln_final.hook_normalized"] + [f"blocks.{l}.hook_resid_post" for l in range(L)] + \
                 [f"blocks.{l}.attn.hook_pattern" for l in range(L)]:
            tensors[p + k] = acts[k].float().contiguous()
    # ---- study metrics from these tensors (reference_analyses.py's functions)
    m = {"sink": ra.sink_rates(acts_list, L, TAU, "model", False),
         "massive": ra.massive(acts_list, L, LAMBDA, "layer", False, TOP_K),
         "residual": ra.residual(acts_list, L, False),
         "entropy": ra.entropy(acts_list, L, False)}
    tol = TOL[a.dtype]
    # Per layer: mean over prompts of (heads whose sink score is within tol of tau) -> allowed rate change x H.
    near = {"sink": [], "massive": {}}
    for l in range(L):
        n = 0
        for acts in acts_list:
            s = acts[f"blocks.{l}.attn.hook_pattern"][:, :, 0].double().mean(dim=1)
            n += near_threshold(s, torch.tensor(TAU, dtype=torch.float64), tol)
        near["sink"].append(n / len(acts_list))
    for t, suffix in (("q", "attn.hook_q"), ("k", "attn.hook_k"), ("v", "attn.hook_v")):
        near["massive"][t] = []
        for l in range(L):
            n = 0
            for acts in acts_list:
                M = torch.linalg.norm(acts[f"blocks.{l}.{suffix}"].double(), dim=0)
                n += near_threshold(M, LAMBDA * M.mean(), tol)
            near["massive"][t].append(n)
    m["near_threshold"] = near
    ppl = {"baseline": ppl_of(nlls)}

    def run_all(edits):
        return ppl_of([fw.run(ids, edits, record=False)[2] for ids in prompts])
    # BOS-MLP ablation at the spike layer (argmax of the mean BOS norm ratio, the study's rule).
    spike = m["residual"]["spike_ratio"]
    ppl["bos_mlp_spike"] = run_all(ra.bos_mlp_edits(spike))
    ppl["bos_mlp_layer"] = spike
    # Q/K massive-dimension disruption: identified on the job's prompts from these pre-rotary q/k norms.
    masks = {}
    for l in range(L):
        nq = torch.stack([acts[f"blocks.{l}.attn.hook_q"].double().norm(dim=0).flatten() for acts in acts_list]).mean(0)
        nk = torch.stack([acts[f"blocks.{l}.attn.hook_k"].double().norm(dim=0).flatten() for acts in acts_list]).mean(0)
        q, k = nq > QK_LAMBDA * nq.mean(), nk > QK_LAMBDA * nk.mean()
        if bool(q.any()) or bool(k.any()):
            masks[l] = {"q": q, "k": k}
    ppl["qk_dims"] = int(sum(int(mm["q"].sum()) + int(mm["k"].sum()) for mm in masks.values()))
    ppl["qk_zero"] = run_all(ra.disruption_edits(masks))
    ppl["qk_controls"] = [run_all(ra.disruption_edits(ra.random_masks(masks, s))) for s in SEEDS]
    m["ppl"] = ppl
    m["info"] = {"backend": fw.name, "torch": torch.__version__, "device": str(device), "dtype": a.dtype,
                 "attention_type": att, "load_seconds": load_s, "seconds": time.time() - t0,
                 "hidden_states_vs_hooks_max_rel": getattr(fw, "hs_check", None),
                 "backend_detail": getattr(fw, "detail", None)}
    write_st(a.out + ".safetensors", tensors, {"dtype": a.dtype, "model": a.model, "backend": fw.name})
    with open(a.out + ".json", "w") as f:
        json.dump(m, f)
    print(f"hf_compare reference: {a.model} {a.dtype} ({att}) {len(prompts)} prompts in {time.time() - t0:.1f}s "
          f"with {fw.name}, torch {torch.__version__}")
    return 0


# ---------------------------------------------------------------------------------------------- compare
def server_metrics(events_path, name):
    """LayerResult / PerplexityResult events of model `name` from `sinkscope -f json run` output."""
    layers, ppl = {}, {}
    with open(events_path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            if "layer" in ev and isinstance(ev["layer"], dict) and ev["layer"].get("model") == name:
                lr = ev["layer"]
                layers[int(lr.get("layer", 0))] = lr
            if "perplexity" in ev and ev["perplexity"].get("model") == name:
                ppl[ev["perplexity"].get("condition", "")] = ev["perplexity"]
    return layers, ppl


class Checker:
    def __init__(self, tol):
        self.tol, self.rows, self.failed = tol, [], 0

    def close(self, what, ours, ref, tol=None, absolute=False, abs_floor=0.0):
        """Relative error <= tol (absolute with absolute=True); abs_floor: an absolute difference this small also
        passes (for values near 0, where a relative error means nothing)."""
        tol = self.tol if tol is None else tol
        if absolute:
            err = abs(ours - ref)
        else:
            err = abs(ours - ref) / max(abs(ref), 1e-12)
        ok = err <= tol or abs(ours - ref) <= abs_floor
        self.rows.append({"what": what, "sinkscope": ours, "hf": ref, "err": err, "tol": tol, "ok": ok})
        self.failed += not ok

    def count(self, what, ours, ref, allowed):
        ok = abs(ours - ref) <= allowed + 1e-9
        self.rows.append({"what": what, "sinkscope": ours, "hf": ref, "err": abs(ours - ref), "tol": allowed, "ok": ok})
        self.failed += not ok


def snake(k):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)


def camel(k):
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k)


def g(d, *keys, default=0.0):
    """Nested get with protobuf-JSON defaults (fields equal to 0/false/empty are omitted); accepts both the
    lowerCamelCase and the original snake_case field names (the client prints the latter)."""
    for k in keys:
        if not isinstance(d, dict):
            return default
        for cand in (k, snake(k), camel(k)):
            if cand in d:
                d = d[cand]
                break
        else:
            return default
    return d


def compare(a):
    tol = TOL[a.dtype]
    ref, _ = read_st(a.ref + ".safetensors")
    with open(a.ref + ".json") as f:
        hm = json.load(f)
    probe, pmeta = read_st(a.probe)
    ref32 = read_st(a.ref32 + ".safetensors")[0] if a.ref32 else None
    chk = Checker(tol)
    tensor_rows = []
    worst = 0.0
    for key in sorted(ref):
        if key not in probe:
            chk.rows.append({"what": f"tensor {key}", "ok": False, "err": None, "tol": tol, "note": "missing in probe"})
            chk.failed += 1
            continue
        r = rel(probe[key], ref[key])
        row = {"what": f"tensor {key}", "err": r, "tol": tol, "ok": r <= tol, "shape": list(ref[key].shape)}
        if ref32 is not None and key in ref32:
            ours32, hf32 = rel(probe[key], ref32[key]), rel(ref[key], ref32[key])
            row["sinkscope_vs_hf_fp32"], row["hf_vs_hf_fp32"] = ours32, hf32
            # Our bf16 must be about as close to fp32 as HF's own bf16 (2x, plus a floor for near-exact tensors).
            if ours32 > 2.0 * hf32 + 1e-3:
                row["ok"] = False
                row["note"] = "further from HF fp32 than HF's own bf16 (x2)"
        worst = max(worst, r)
        chk.rows.append(row)
        chk.failed += not row["ok"]
        tensor_rows.append(row)

    # ---- study metrics: server vs HF
    layers, ppl = server_metrics(a.events, a.name)
    L = len(hm["sink"]["rate"])
    if len(layers) < L:
        chk.rows.append({"what": "server layer results", "ok": False, "err": len(layers), "tol": L,
                         "note": f"got {len(layers)} of {L} layers from {a.events}"})
        chk.failed += 1
    H = len(hm["sink"]["head_scores"][0]) if L else 0
    near = hm["near_threshold"]
    ctol = max(tol, 1e-6)
    # Metrics derived through an eigen-decomposition or exp(mean NLL): 10x the tensor tolerance in float32 (1e-3),
    # the tensor tolerance itself in bf16 (already loose).
    dtol = 10 * ctol if a.dtype == "float32" else ctol
    for l in range(L):
        lr = layers.get(l, {})
        chk.count(f"L{l} sink_rate", g(lr, "sinkRate", "sinkRate", "mean"), hm["sink"]["rate"][l][0],
                  near["sink"][l] / max(H, 1))
        ours_scores = g(lr, "sinkRate", "headScores", default=[])
        for h, s in enumerate(hm["sink"]["head_scores"][l]):
            chk.close(f"L{l} head{h} sink score", ours_scores[h] if h < len(ours_scores) else float("nan"), s,
                      tol=ctol, absolute=True)
        tensors = {g(t, "tensor", default="QKV_TENSOR_UNSPECIFIED"): t for t in g(lr, "massiveValues", "tensors", default=[])}
        for t, name in (("q", "QKV_TENSOR_Q"), ("k", "QKV_TENSOR_K"), ("v", "QKV_TENSOR_V")):
            n_prompts = max(g(tensors.get(name, {}), "count", "n", default=1), 1)
            chk.count(f"L{l} massive {t} count", g(tensors.get(name, {}), "count", "mean"),
                      hm["massive"][t]["count"][l][0], near["massive"][t][l] / n_prompts)
            chk.close(f"L{l} massive {t} threshold", g(tensors.get(name, {}), "threshold"),
                      hm["massive"][t]["threshold"][l], tol=ctol)
        rs = g(lr, "residualStats", default={})
        chk.close(f"L{l} BOS norm", g(rs, "bosNorm", "mean"), hm["residual"]["bos_norm"][l][0], tol=ctol)
        chk.close(f"L{l} mean other norm", g(rs, "meanOtherNorm", "mean"), hm["residual"]["mean_other_norm"][l][0], tol=ctol)
        chk.close(f"L{l} BOS norm ratio", g(rs, "ratio", "mean"), hm["residual"]["ratio"][l][0], tol=ctol)
        me = g(lr, "matrixEntropy", default={})
        # Entropy of a nearly rank-1 Gram matrix (the BOS row dominates) is set by its smallest eigenvalues, which are
        # rounding noise: relative dtol, or absolute (entropy in nats, anisotropy in [0, 1]) 1e-4 / 2e-2 (bf16).
        floor = 1e-4 if a.dtype == "float32" else 2e-2
        chk.close(f"L{l} matrix entropy", g(me, "entropy", "mean"), hm["entropy"]["entropy"][l][0], tol=dtol,
                  abs_floor=floor)
        chk.close(f"L{l} anisotropy", g(me, "anisotropy", "mean"), hm["entropy"]["anisotropy"][l][0], tol=dtol,
                  abs_floor=floor)
    hp = hm["ppl"]
    chk.close("perplexity baseline", g(ppl.get("baseline", {}), "perplexity"), hp["baseline"], tol=dtol)
    bos = ppl.get("bos_mlp@spike", {})
    chk.count("BOS-MLP spike layer", g(bos, "resolvedLayer"), hp["bos_mlp_layer"], 0)
    chk.close("perplexity BOS-MLP@spike", g(bos, "perplexity"), hp["bos_mlp_spike"], tol=dtol)
    qk = ppl.get("qk_massive", {})
    chk.count("Q/K massive dims identified", g(qk, "disruptedDims"), hp["qk_dims"], 0)
    chk.close("perplexity Q/K disruption", g(qk, "perplexity"), hp["qk_zero"], tol=dtol)
    ctrl = g(qk, "controlPerplexities", default=[])
    for i, c in enumerate(hp["qk_controls"]):
        chk.close(f"perplexity Q/K control seed {SEEDS[i]}", ctrl[i] if i < len(ctrl) else float("nan"), c, tol=dtol)

    result = {"name": a.name, "dtype": a.dtype, "tolerance": tol, "worst_tensor_rel_err": worst,
              "failed": chk.failed, "checks": len(chk.rows), "probe_meta": pmeta, "hf_info": hm.get("info", {}),
              "rows": chk.rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    bad = [r for r in chk.rows if not r["ok"]]
    print(f"hf_compare {a.name} ({a.dtype}): {len(chk.rows) - len(bad)} of {len(chk.rows)} checks within tolerance; "
          f"worst tensor rel. error {worst:.2e} (tol {tol:g})")
    for r in bad[:20]:
        print(f"  FAIL {r['what']}: sinkscope={r.get('sinkscope')} hf={r.get('hf')} err={r.get('err')} "
              f"tol={r.get('tol')} {r.get('note', '')}")
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--model", help="checkpoint directory (or use --job)")
    r.add_argument("--dtype", choices=list(DTYPES), default="float32")
    r.add_argument("--prompts", required=True)
    r.add_argument("--out", help="output prefix: OUT.safetensors + OUT.json")
    r.add_argument("--job", action="append", default=[],
                   help="MODEL_DIR:DTYPE:OUT_PREFIX, repeatable: several runs in one process (one torch/transformers "
                        "import); RoPE checkpoints run first, since the DroPE rotary patch is process-wide")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--backend", choices=["hf", "reference"], default="hf",
                   help="hf: transformers (the point of this script); reference: tests/reference/reference_llama.py "
                        "(the independent python reference, for machines without transformers)")
    c = sub.add_parser("compare")
    c.add_argument("--ref", required=True)
    c.add_argument("--ref32", default=None)
    c.add_argument("--probe", required=True)
    c.add_argument("--events", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--dtype", choices=list(DTYPES), default="float32")
    c.add_argument("--out", default=None)
    sub.add_parser("flags", help="print the sinkscope run flags whose results `compare` checks")
    a = p.parse_args()
    if a.cmd == "flags":
        print(" ".join(METRIC_FLAGS))
        return 0
    if a.cmd == "reference" and a.backend == "hf":
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("hf_compare: SKIPPED: python module 'transformers' is not installed in " + sys.executable)
            return 3
    if a.cmd == "reference":
        torch.backends.cuda.matmul.allow_tf32 = False  # (the default; explicit because the tolerance relies on it)
        jobs = [j.rsplit(":", 2) for j in a.job]
        if a.model:
            jobs.append([a.model, a.dtype, a.out])
        if not jobs or any(len(j) != 3 or j[1] not in DTYPES or not j[2] for j in jobs):
            p.error("reference needs --model/--dtype/--out or --job MODEL_DIR:DTYPE:OUT_PREFIX")

        def is_rope(j):
            with open(os.path.join(j[0], "config.json")) as f:
                return json.load(f).get("model_type") != "llama_drope"
        rc = 0
        for model, dtype, out in sorted(jobs, key=lambda j: not is_rope(j)):
            a.model, a.dtype, a.out = model, dtype, out
            backend = a.backend
            try:
                rc |= reference(a)
            except Exception as e:  # noqa: BLE001 - one failing model must not hide the others' results
                print(f"hf_compare reference: {model} {dtype}: FAILED: {type(e).__name__}: {e}")
                import traceback
                traceback.print_exc()
                rc = 1
                if backend == "hf":
                    # The node's transformers may not take our checkpoint: still check sinkscope on this device,
                    # against the project's independent python reference (the report names the backend used).
                    print(f"hf_compare reference: {model} {dtype}: falling back to tests/reference")
                    a.backend = "reference"
                    try:
                        reference(a)
                    except Exception as e2:  # noqa: BLE001
                        print(f"hf_compare reference: {model} {dtype}: fallback FAILED: {type(e2).__name__}: {e2}")
                    a.backend = backend
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return rc
    return compare(a)


if __name__ == "__main__":
    sys.exit(main())
