#!/usr/bin/env python3
"""Writes OUT/gpu.md and OUT/results.json from what deploy/gpu-check.sh left in its work dir (any subset: it is
called after every step, so a run cut short still reports what finished)."""
import argparse
import datetime
import glob
import json
import os
import re


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


def kv(path):
    d = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    d[parts[0]] = float(parts[1])
    except OSError:
        pass
    return d


def read_tail(path, n):
    """The last N lines of a text file ('' if absent), long lines cut at 200 characters."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join(l if len(l) <= 200 else l[:197] + "..." for l in lines)


def g(d, k, default=None):
    """A protobuf-JSON field by its lowerCamelCase or snake_case name (the client prints snake_case)."""
    if not isinstance(d, dict):
        return default
    for cand in (k, re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)):
        if cand in d:
            return d[cand]
    return default


def seconds(ts):
    """Seconds since the epoch of a protobuf-JSON Timestamp ("2026-12-01T06:44:17.842548Z"), or None."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", ts or "")
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp() + float(m.group(2) or 0)


def streaming(ev):
    """Per model, when its final layer events arrived (server timestamps), from its first progress event (its first
    forward begins) to its first perplexity event (its baseline is done): layers stream at the pace they are computed
    when the first comes after ~1/L of that span (~2/L on a GPU with matrix entropy, a layer late) and the gaps are
    even."""
    out = {}
    for e in ev:
        t = seconds(e.get("time"))
        if t is None:
            continue
        for kind in ("progress", "layer", "perplexity"):
            if kind in e:
                m = out.setdefault(e[kind].get("model", ""), {"start": None, "layers": [], "baseline_done": None})
                if kind == "progress" and m["start"] is None:
                    m["start"] = t
                if kind == "layer" and not e["layer"].get("partial") and int(e["layer"].get("layer", 0)) >= 0:
                    m["layers"].append(t)
                if kind == "perplexity" and m["baseline_done"] is None:
                    m["baseline_done"] = t
    res = {}
    for model, m in out.items():
        if not model or m["start"] is None or len(m["layers"]) < 2:
            continue
        rel = [t - m["start"] for t in m["layers"]]
        gaps = [b - a for a, b in zip(rel, rel[1:])]
        mean_gap = sum(gaps) / len(gaps)
        res[model] = {"layers": len(rel), "first_s": rel[0], "last_s": rel[-1], "first_over_last": rel[0] / rel[-1]
                      if rel[-1] > 0 else None, "mean_gap_s": mean_gap, "max_gap_s": max(gaps),
                      "max_over_mean_gap": max(gaps) / mean_gap if mean_gap > 0 else None,
                      "baseline_s": (m["baseline_done"] - m["start"]) if m["baseline_done"] else None}
    return res


def smi_samples(text):
    """nvidia-smi's "memory.used, utilization.gpu" samples (MiB, %), one "a, b" line each, as gpu-check.sh takes them
    during the timed job: (peak memory MiB, mean utilization %, share of samples at >= 90 %), None where no sample.
    utilization.gpu is the share of the sample period in which some kernel ran: well below 100 % means the device
    waited for the host (launches, synchronisations, host-side merges) rather than for its own work."""
    mem, util = [], []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            continue  # "[N/A]", a header, a cut line
        if vals:
            mem.append(vals[0])
        if len(vals) > 1:
            util.append(vals[1])
    return (max(mem) if mem else None, sum(util) / len(util) if util else None,
            sum(u >= 90 for u in util) / len(util) if util else None)


def flops_per_token(cfg, T):
    """Forward FLOPs per token: 2 x matmul parameters (projections, MLP, lm_head) + causal attention 2·2·L·d·T/2."""
    d, I, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    K = cfg.get("num_key_value_heads") or H
    hd = d // H
    per_layer = d * H * hd * 2 + d * K * hd * 2 + 3 * d * I
    return 2 * (L * per_layer + d * V) + 2 * L * d * T


def main():
    p = argparse.ArgumentParser()
    for k in ("work", "out", "device", "dims", "dtype"):
        p.add_argument("--" + k, required=True)
    for k in ("layers", "prompts", "tokens", "elapsed"):
        p.add_argument("--" + k, type=int, required=True)
    a = p.parse_args()
    W = a.work
    res = {"device": a.device, "elapsed_seconds": a.elapsed, "steps": [], "compare": [], "bench": {}}
    try:
        with open(os.path.join(W, "steps.tsv")) as f:
            res["steps"] = [dict(zip(("step", "status", "seconds"), l.rstrip("\n").split("\t"))) for l in f if l.strip()]
    except OSError:
        pass
    env = ""
    try:
        with open(os.path.join(W, "env.txt")) as f:
            env = f.read()
    except OSError:
        pass
    peak = load(os.path.join(W, "peak.json"), {})
    res["peak"] = peak
    for path in sorted(glob.glob(os.path.join(W, "cmp", "result-*.json"))):
        r = load(path, {})
        if r:
            res["compare"].append({k: r.get(k) for k in ("name", "dtype", "tolerance", "worst_tensor_rel_err", "failed",
                                                         "checks")}
                                  | {"reference": (r.get("hf_info") or {}).get("backend", "?"),
                                     "bad": [x for x in r.get("rows", []) if not x.get("ok")][:10]})
    # ---- sinkscope bench
    ev = events(os.path.join(W, "bench", "events.jsonl"))
    started = next((e["started"] for e in ev if "started" in e), {})
    summary = next((e["summary"] for e in ev if "summary" in e), {})
    finished = next((e["finished"] for e in ev if "finished" in e), {})
    load_txt = kv(os.path.join(W, "bench", "server_load.txt"))
    models = events(os.path.join(W, "bench", "models.json"))  # `sinkscope -f json models`: one ModelInfo a line
    cfg = load(os.path.join(W, "..", "ckpt", "bench-rope", "config.json")) or None
    for cand in glob.glob("/dev/shm/sinkscope-gpu-check/bench-rope/config.json") + \
            glob.glob(os.path.join(W, "ckpt", "bench-rope", "config.json")):
        cfg = load(cand) or cfg
    try:
        with open(os.path.join(W, "bench", "smi.txt")) as f:
            smi_mem, smi_util, smi_busy = smi_samples(f.read())
    except OSError:
        smi_mem = smi_util = smi_busy = None
    b = {}
    if summary:
        elapsed = float(g(summary, "elapsedSeconds", 0)) or load_txt.get("client_ms", 0) / 1000
        passes = int(g(started, "plannedPasses", 0))
        n_models = len(summary.get("models", [])) or 2
        T = a.tokens
        suite_tokens = a.prompts * T * n_models
        # Forward work: every perplexity condition (and each random control) is one forward over every prompt; the
        # planned pass count cannot be used, since the engine may pack several prompts into one forward.
        cond = sum(1 + len(g(e["perplexity"], "controlPerplexities", []) or []) for e in ev if "perplexity" in e)
        fwd_tokens = cond * a.prompts * T
        b = {"state": finished.get("state", ""), "elapsed_seconds": elapsed, "client_seconds": load_txt.get("client_ms", 0) / 1000,
             "server_load_seconds": load_txt.get("load_seconds"), "planned_passes": passes,
             "suite_tokens_per_s": suite_tokens / elapsed if elapsed else None,
             "forward_tokens_per_s": fwd_tokens / elapsed if elapsed else None, "forward_tokens": fwd_tokens,
             "peak_gpu_memory_mib": smi_mem, "gpu_utilization_mean_pct": smi_util,
             "gpu_utilization_ge90_share": smi_busy,
             "weight_bytes": {m.get("name"): int(g(m, "weightBytes", 0)) for m in models if "name" in m},
             "metrics": {m.get("model"): m.get("metrics", {}) for m in summary.get("models", [])}}
        if cfg and elapsed:
            fl = flops_per_token(cfg, T) * fwd_tokens
            b["model_tflops"] = fl / elapsed / 1e12
            if peak.get("bf16_matmul_tflops"):
                b["percent_of_bf16_peak"] = 100 * b["model_tflops"] / peak["bf16_matmul_tflops"]
    res["bench"]["sinkscope"] = b
    res["bench"]["streaming"] = streaming(ev)
    hf = load(os.path.join(W, "bench", "hf.json"), {})
    res["bench"]["hf"] = hf
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)

    # ---- markdown
    L = []
    L.append(f"# sinkscope on {a.device.upper()}: build, Hugging Face agreement, phase-suite throughput\n")
    L.append("Written by `deploy/gpu-check.sh` (random-weight checkpoints made on the node by "
             "`deploy/gpu/make_checkpoint.py`: Llama-2-7B dimensions, planted BOS massive activation and sink heads; "
             "nothing downloaded).\n")
    L.append("## Machine\n\n```\n" + env.strip() + "\n```\n")
    if peak:
        L.append(f"Measured bf16 matmul peak ({peak.get('n')}^3, torch): **{peak.get('bf16_matmul_tflops', 0):.0f} TFLOP/s** "
                 f"on {peak.get('gpu')} ({peak.get('sm_count')} SMs).\n")
        if peak.get("eigvalsh_512_fp64_cuda_ms_per_matrix") is not None:
            L.append(f"Matrix entropy's eigensolver, one 512×512 float64 matrix: "
                     f"{peak['eigvalsh_512_fp64_cuda_ms_per_matrix']:.1f} ms with cuSOLVER (batch of 8), "
                     f"{peak['eigvalsh_512_fp64_cpu_ms_per_matrix']:.1f} ms on the host ({peak.get('cpu_threads')} "
                     f"threads, torch's batched call); sinkscope solves a GPU batch on the host, one matrix per "
                     f"thread.\n")
    L.append("## Steps\n\n| step | status | seconds |\n|---|---|---|")
    for s in res["steps"]:
        L.append(f"| {s.get('step')} | {s.get('status')} | {s.get('seconds')} |")
    L.append(f"\nTotal: {a.elapsed} s.\n")
    # A failed step's own words (the end of its log), so that the report alone says what went wrong.
    for s in res["steps"]:
        if s.get("status") in ("ok", "skipped"):
            continue
        tail = read_tail(os.path.join(W, "logs", f"{s.get('step')}.log"), 20)
        if tail:
            L.append(f"Step `{s.get('step')}` ({s.get('status')}), end of its log:\n\n```\n{tail}\n```\n")
    L.append("## Agreement with Hugging Face transformers\n")
    L.append("(Where transformers is absent, e.g. a CPU dry run, the same pipeline compares with the project's "
             "independent python reference instead: see the 'compared with' column.)\n")
    if res["compare"]:
        L.append("sinkscope-probe tensors (logits, target NLL, embeddings, every layer's residual, final norm, every "
                 "attention pattern) and sinkscoped's study metrics vs transformers' LlamaForCausalLM (eager) on the "
                 "same checkpoint and token ids; relative Frobenius errors (deploy/gpu/hf_compare.py states the "
                 "tolerances and why).\n")
        L.append("| model | dtype | compared with | checks passed | worst tensor error | tolerance |\n"
                 "|---|---|---|---|---|---|")
        for c in res["compare"]:
            L.append(f"| {c['name']} | {c['dtype']} | {c['reference']} | {c['checks'] - c['failed']} / {c['checks']} | "
                     f"{c['worst_tensor_rel_err']:.2e} | {c['tolerance']:g} |")
        for c in res["compare"]:
            for r in c["bad"]:
                L.append(f"- FAIL {c['name']}: {r.get('what')}: sinkscope {r.get('sinkscope')}, HF {r.get('hf')}, "
                         f"error {r.get('err')}, tolerance {r.get('tol')} {r.get('note', '')}")
    else:
        L.append("Not run or skipped (see the steps table).\n")
    L.append("\n## Phase suite throughput\n")
    L.append(f"Work: RoPE + DroPE pair ({a.dims} dims, {a.layers} layers, {a.dtype}, both resident), {a.prompts} prompts "
             f"x {a.tokens} tokens (token ids): the phase preset (sink rate, massive Q/K/V, BOS residual norms, matrix "
             f"entropy, baseline perplexity, BOS-MLP ablation at the spike layer) + Q/K massive-dimension disruption "
             f"with 3 random controls.\n")
    if b:
        L.append("| | sinkscope (server + client) |\n|---|---|")
        L.append(f"| job state | {b.get('state')} |")
        L.append(f"| job seconds (server) / client wall | {b['elapsed_seconds']:.2f} / {b['client_seconds']:.2f} |")
        L.append(f"| forwards planned by the server (packed) / prompt-forwards done | {b['planned_passes']} / "
                 f"{b['forward_tokens'] // max(a.tokens, 1)} |")
        if b.get("suite_tokens_per_s"):
            L.append(f"| suite tokens/s (prompt tokens through the whole suite) | {b['suite_tokens_per_s']:.0f} |")
            L.append(f"| forward tokens/s | {b['forward_tokens_per_s']:.0f} |")
        if b.get("model_tflops"):
            L.append(f"| model TFLOP/s (2·params + causal attention per token) | {b['model_tflops']:.3g} |")
        if b.get("percent_of_bf16_peak"):
            L.append(f"| % of measured bf16 peak | {b['percent_of_bf16_peak']:.1f} % |")
        if b.get("server_load_seconds") is not None:
            L.append(f"| server start to healthy (load, digest, to GPU) | {b['server_load_seconds']:.0f} s |")
        if b.get("weight_bytes"):
            L.append("| weights (ModelInfo.weight_bytes) | " + ", ".join(f"{k}: {v / 2**30:.1f} GiB" for k, v in b["weight_bytes"].items()) + " |")
        if b.get("peak_gpu_memory_mib"):
            L.append(f"| peak GPU memory used (nvidia-smi, whole GPU) | {b['peak_gpu_memory_mib'] / 1024:.1f} GiB |")
        if b.get("gpu_utilization_mean_pct") is not None:
            L.append(f"| GPU busy during the job (nvidia-smi utilization.gpu: mean / samples ≥ 90 %) | "
                     f"{b['gpu_utilization_mean_pct']:.0f} % / {100 * b['gpu_utilization_ge90_share']:.0f} % |")
    else:
        L.append("sinkscope bench not run or no summary (see the steps table).\n")
    if res["bench"]["streaming"]:
        L.append("\nLayer-wise streaming (same job; server timestamps of each model's final layer events, from its "
                 "first forward): with one wave every layer's result is sent as the wave leaves the layer (matrix "
                 "entropy's as it leaves the next one: the host solves the spectra meanwhile), so the first arrives "
                 "after about 1/L (2/L) of the baseline and the gaps are even.\n")
        L.append("| model | layer events | first (s) | last (s) | first/last | mean gap (ms) | max/mean gap | "
                 "baseline done (s) |\n|---|---|---|---|---|---|---|---|")
        for model, st in res["bench"]["streaming"].items():
            fol = st["first_over_last"]
            L.append(f"| {model} | {st['layers']} | {st['first_s']:.3f} | {st['last_s']:.3f} | "
                     f"{'%.3f' % fol if fol is not None else 'n/a'} | {1000 * st['mean_gap_s']:.1f} | "
                     f"{'%.1f' % st['max_over_mean_gap'] if st['max_over_mean_gap'] else 'n/a'} | "
                     f"{'%.3f' % st['baseline_s'] if st['baseline_s'] is not None else 'n/a'} |")
    if hf.get("ways"):
        L.append(f"\nHugging Face transformers {hf.get('transformers')} (torch {hf.get('torch')}), same models and "
                 f"dtype, timed on {hf.get('prompts')} of the {hf.get('prompts_available')} prompts:\n")
        L.append("| HF way | seconds | forwards | suite tokens/s | sinkscope speed-up |\n|---|---|---|---|---|")
        for way, w in hf["ways"].items():
            sp = (b.get("suite_tokens_per_s") or 0) / w["suite_tokens_per_s"] if w.get("suite_tokens_per_s") else None
            L.append(f"| {way} | {w['seconds']:.1f} | {w['forwards']} | {w['suite_tokens_per_s']:.0f} | "
                     f"{'%.1fx' % sp if sp else 'n/a'} |")
        L.append("\n`study`: one forward per metric with output_attentions=True (eager), as the study's scripts; "
                 "`single`: one eager forward per prompt with hooks for every observation, SDPA for the 5 intervention "
                 "passes. HF memory (torch max allocated, both models): "
                 f"{(hf.get('max_memory_allocated_bytes') or 0) / 2**30:.1f} GiB.")
    # Packing on the device (sinkscope-job-bench, its own report): one prompt per forward vs packed forwards whose
    # attention runs in equal-length runs or padded groups, with the ATen ops each dispatched.
    L.append("\n## Prompt packing (sinkscope-job-bench, in process)\n")
    packing = ""
    if any(s.get("step") == "packing" and s.get("status") == "ok" for s in res["steps"]):  # not an earlier run's
        try:
            with open(os.path.join(W, "bench", "packing.md")) as f:
                packing = f.read()
        except OSError:
            pass
    if packing:
        start = packing.find("Job:")
        L.append(packing[max(start, 0):].strip() + "\n")
    else:
        L.append("Not run, skipped or failed (see the steps table).\n")
    with open(os.path.join(a.out, "gpu.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"report: {os.path.join(a.out, 'gpu.md')}")


if __name__ == "__main__":
    main()
