#!/usr/bin/env python3
"""Times Hugging Face transformers doing the study's RoPE-vs-DroPE phase suite, two ways, for comparison with
sinkscope (deploy/gpu-check.sh runs the same work through the sinkscope server).

  hf_bench.py run --rope DIR --drope DIR --prompts P.json [--max-prompts N] [--dtype bfloat16] --out R.json
  hf_bench.py peak --out P.json        # the GPU's measured bf16 matmul rate (8192^3, mean of 10 after 3 warm-ups)

The suite, per model and prompt (README: the phase comparison): sink rate (tau 0.3), massive Q/K/V (lambda 5),
BOS residual norms and the spike layer, matrix entropy (T x T Gram eigenvalues in float64), baseline perplexity,
BOS-MLP ablation at the spike layer, Q/K massive-dimension disruption (identify + zero) with 3 random controls.
  study   the study's scripts' way: one forward per metric per prompt, each with output_attentions=True (eager
          attention), hidden states / hooks as that metric needs: 11 forwards per prompt per model;
  single  the best plain-HF way: ONE eager forward per prompt with output_attentions and forward hooks collecting
          everything (sink rate, Q/K/V, residuals, entropy, NLL, identification), then the 5 intervention passes
          (BOS-MLP, Q/K zero, 3 controls) with SDPA attention: 6 forwards per prompt per model.
Both models stay resident (bf16). Work = prompts x tokens x 2 models; reported as suite tokens/s (prompt tokens
through the whole suite per second) and forward tokens/s. When --max-prompts is below the prompt count (a time
budget), the rate is measured on that many prompts (stated in the output).
"""
import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TAU, LAM, SEEDS = 0.3, 5.0, [42, 43, 44]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def set_impl(model, name):
    try:
        model.set_attn_implementation(name)
        return
    except Exception:  # noqa: BLE001 - older transformers: the attention modules read config._attn_implementation
        pass
    model.config._attn_implementation = name


class Hooks:
    """q/k/v projection outputs (recorded) and edits on q/k projections and the MLP output."""

    def __init__(self, model):
        import hf_llama
        self.rec, self.edit, self.handles = {}, {}, []
        H = model.config.num_attention_heads
        self.hd = model.config.hidden_size // H
        for l, layer in enumerate(model.model.layers):
            for key, mod in (("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj),
                             ("mlp", layer.mlp)):
                self.handles.append(mod.register_forward_hook(self._fn(l, key, hf_llama)))
        self.record = set()

    def _fn(self, l, key, hf_llama):
        def fn(mod, args, out):
            x = hf_llama.layer_output(out)
            e = self.edit.get((l, key))
            if e is not None:
                x = e(x)
            if key in self.record:
                self.rec[(l, key)] = x[0].detach()
            return x if e is not None else None
        return fn


def metrics_from(out, hooks, ids, L, what=("sink", "massive", "residual", "entropy")):
    """The observational metrics from one forward's outputs (GPU, reduced at once, like the study's per-prompt loop)."""
    res = {}
    if "sink" in what and out.attentions is not None:
        res["sink"] = [float((a[0, :, :, 0].float().mean(-1) >= TAU).float().mean()) for a in out.attentions]
    if "massive" in what and hooks.rec:
        res["massive"] = {}
        for t in ("q", "k", "v"):
            c = []
            for l in range(L):
                if (l, t) in hooks.rec:
                    M = hooks.rec[(l, t)].float().reshape(len(ids), -1).norm(dim=0)
                    c.append(int((M > LAM * M.mean()).sum()))
            res["massive"][t] = c
    if "residual" in what and out.hidden_states is not None:
        norms = [h[0].float().norm(dim=-1) for h in out.hidden_states[1:]]
        res["bos_ratio"] = [float(n[0] / (n[1:].mean() + 1e-8)) for n in norms]
    if "entropy" in what and out.hidden_states is not None:
        ent = []
        for h in out.hidden_states[1:]:
            X = h[0].double()
            C = X @ X.T
            lam = torch.linalg.eigvalsh(C).clamp(min=0)
            p = (lam / torch.trace(C)).clamp(min=1e-10)
            ent.append(float(-(p * p.log()).sum()))
        res["entropy"] = ent
    return res


def nll_of(logits, x):
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), x[0, 1:], reduction="sum")


def run_suite(model, hooks, prompts, L, way, device):
    """Returns (forwards done, spike layer, ppl dict)."""
    fw = 0
    tot = {"base": 0.0, "bos": 0.0, "qk": 0.0, "ctrl": [0.0] * len(SEEDS)}
    n_tok = 0
    ratios, qn, kn = [], [], []
    # ---- observational pass(es)
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        n_tok += len(ids) - 1
        with torch.no_grad():
            if way == "study":
                set_impl(model, "eager")
                hooks.record = set()
                out = model(input_ids=x, output_attentions=True); fw += 1          # sink rate
                metrics_from(out, hooks, ids, L, ("sink",))
                hooks.record = {"q", "k", "v"}
                out = model(input_ids=x, output_attentions=True); fw += 1          # massive Q/K/V
                metrics_from(out, hooks, ids, L, ("massive",))
                hooks.rec, hooks.record = {}, set()
                out = model(input_ids=x, output_attentions=True, output_hidden_states=True); fw += 1  # residual norms
                r = metrics_from(out, hooks, ids, L, ("residual",))
                out = model(input_ids=x, output_attentions=True, output_hidden_states=True); fw += 1  # entropy
                metrics_from(out, hooks, ids, L, ("entropy",))
                out = model(input_ids=x, output_attentions=True); fw += 1          # baseline perplexity
                tot["base"] += float(nll_of(out.logits, x))
                hooks.record = {"q", "k"}
                out = model(input_ids=x, output_attentions=True); fw += 1          # identification (q/k norms)
            else:
                set_impl(model, "eager")
                hooks.record = {"q", "k", "v"}
                out = model(input_ids=x, output_attentions=True, output_hidden_states=True, use_cache=False); fw += 1
                r = metrics_from(out, hooks, ids, L)
                tot["base"] += float(nll_of(out.logits, x))
            ratios.append(r["bos_ratio"])
            qn.append([hooks.rec[(l, "q")].float().reshape(len(ids), -1).norm(dim=0) for l in range(L)])
            kn.append([hooks.rec[(l, "k")].float().reshape(len(ids), -1).norm(dim=0) for l in range(L)])
            hooks.rec, hooks.record = {}, set()
            del out
    spike = int(torch.tensor(ratios).mean(0).argmax())
    masks = {}
    for l in range(L):
        mq = torch.stack([q[l] for q in qn]).mean(0)
        mk = torch.stack([k[l] for k in kn]).mean(0)
        masks[l] = (mq > LAM * mq.mean(), mk > LAM * mk.mean())

    def zero_bos(x):
        x = x.clone()
        x[:, 0] = 0
        return x

    def disrupt(mask):  # the study's ProjectionDisruptor: Y * (1 - mask)
        keep = ~mask

        def f(x):
            return x * keep.to(x.dtype)
        return f

    def random_like(seed):
        torch.manual_seed(seed)
        out = {}
        for l in sorted(masks):
            pair = []
            for m in masks[l]:
                idx = torch.randperm(m.numel())[: int(m.sum())]
                r = torch.zeros(m.numel(), dtype=torch.bool)
                r[idx] = True
                pair.append(r.to(m.device))
            out[l] = tuple(pair)
        return out

    conditions = [("bos", {(spike, "mlp"): zero_bos})]
    conditions.append(("qk", {(l, t): disrupt(m) for l, (mq, mk) in masks.items() for t, m in (("q", mq), ("k", mk))
                              if bool(m.any())}))
    for i, s in enumerate(SEEDS):
        rm = random_like(s)
        conditions.append((f"ctrl{i}", {(l, t): disrupt(m) for l, (mq, mk) in rm.items() for t, m in (("q", mq), ("k", mk))
                                        if bool(m.any())}))
    set_impl(model, "eager" if way == "study" else "sdpa")
    for name, edit in conditions:
        hooks.edit = edit
        s = 0.0
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            with torch.no_grad():
                # (the study's scripts left use_cache at its default, True: a KV cache built and thrown away)
                out = model(input_ids=x, output_attentions=(way == "study"), use_cache=(way == "study")); fw += 1
            s += float(nll_of(out.logits, x))
            del out
        if name.startswith("ctrl"):
            tot["ctrl"][int(name[4:])] = s
        else:
            tot[name] = s
        hooks.edit = {}
    ppl = {"baseline": math.exp(tot["base"] / n_tok), "bos_mlp": math.exp(tot["bos"] / n_tok),
           "qk": math.exp(tot["qk"] / n_tok), "controls": [math.exp(c / n_tok) for c in tot["ctrl"]]}
    return fw, spike, ppl


def cmd_run(a):
    import hf_llama
    try:
        import transformers
    except ImportError:
        print("hf_bench: SKIPPED: python module 'transformers' is not installed in " + sys.executable)
        return 3
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[a.dtype]
    device = a.device
    with open(a.prompts) as f:
        prompts = json.load(f)
    n_all = len(prompts)
    if a.max_prompts and a.max_prompts < len(prompts):
        prompts = prompts[: a.max_prompts]
    t0 = time.time()
    models = {}
    for name, d in (("rope", a.rope), ("drope", a.drope)):
        m, cfg, att = hf_llama.load(d, dtype, device, "eager", nope_mode="rotary")
        models[name] = (m, Hooks(m), cfg["num_hidden_layers"])
    sync()
    load_s = time.time() - t0
    mem = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    res = {"transformers": transformers.__version__, "torch": torch.__version__, "dtype": a.dtype,
           "prompts": len(prompts), "prompts_available": n_all, "tokens_per_prompt": len(prompts[0]),
           "load_seconds": load_s, "ways": {}}
    # warm-up (cuBLAS handles, kernels): one short forward per model and attention implementation
    for m, _, _ in models.values():
        for impl in ("eager", "sdpa"):
            set_impl(m, impl)
            with torch.no_grad():
                m(input_ids=torch.tensor([prompts[0][:64]], device=device), output_attentions=(impl == "eager"))
    for way in a.ways.split(","):
        sync()
        t = time.time()
        fws, out = 0, {}
        for name, (m, hk, L) in models.items():
            fw, spike, ppl = run_suite(m, hk, prompts, L, way, device)
            fws += fw
            out[name] = {"spike_layer": spike, "ppl": ppl}
        sync()
        dt = time.time() - t
        tokens = len(prompts) * len(prompts[0]) * len(models)
        res["ways"][way] = {"seconds": dt, "forwards": fws, "suite_tokens_per_s": tokens / dt,
                            "forward_tokens_per_s": fws * len(prompts[0]) / dt, "results": out}
        print(f"hf_bench {way}: {len(prompts)} prompts x {len(prompts[0])} tokens x 2 models in {dt:.1f}s "
              f"({fws} forwards, {tokens / dt:.0f} suite tokens/s)", flush=True)
        if a.out:  # written after each way, so a timeout keeps what finished
            res["max_memory_allocated_bytes"] = max(mem, torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0)
            with open(a.out, "w") as f:
                json.dump(res, f, indent=1)
    return 0


def cmd_peak(a):
    if not torch.cuda.is_available():
        print("hf_bench peak: SKIPPED: no CUDA device")
        return 3
    n = a.n
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        x @ y
    end.record()
    torch.cuda.synchronize()
    s = start.elapsed_time(end) / 1000 / 10
    tflops = 2 * n ** 3 / s / 1e12
    props = torch.cuda.get_device_properties(0)
    res = {"bf16_matmul_tflops": tflops, "n": n, "gpu": props.name, "sm_count": props.multi_processor_count,
           "total_memory_bytes": props.total_memory, "torch": torch.__version__, "cuda": torch.version.cuda}
    # Matrix entropy's eigensolver: sinkscope solves a GPU batch of 512x512 float64 Gram matrices on the host, one
    # per core (common/analysis/matrix_entropy.cc); this records what cuSOLVER takes for the same batch instead.
    g = torch.randn(8, 512, 512, device="cuda", dtype=torch.float64)
    g = g @ g.transpose(1, 2)
    torch.linalg.eigvalsh(g[:1])
    torch.cuda.synchronize()
    t = time.time()
    torch.linalg.eigvalsh(g)
    torch.cuda.synchronize()
    res["eigvalsh_512_fp64_cuda_ms_per_matrix"] = (time.time() - t) / 8 * 1000
    gc = g.cpu()
    t = time.time()
    torch.linalg.eigvalsh(gc)
    res["eigvalsh_512_fp64_cpu_ms_per_matrix"] = (time.time() - t) / 8 * 1000
    res["cpu_threads"] = torch.get_num_threads()
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"peak: {props.name}: bf16 {n}^3 matmul {tflops:.0f} TFLOP/s; eigvalsh 512 fp64 "
          f"{res['eigvalsh_512_fp64_cuda_ms_per_matrix']:.1f} ms/matrix on cuda, "
          f"{res['eigvalsh_512_fp64_cpu_ms_per_matrix']:.1f} on the cpu ({res['cpu_threads']} threads, batched)")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rope", required=True)
    r.add_argument("--drope", required=True)
    r.add_argument("--prompts", required=True)
    r.add_argument("--max-prompts", type=int, default=0)
    r.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    r.add_argument("--ways", default="single,study")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--out", default=None)
    k = sub.add_parser("peak")
    k.add_argument("--n", type=int, default=8192)
    k.add_argument("--out", required=True)
    a = p.parse_args()
    return cmd_run(a) if a.cmd == "run" else cmd_peak(a)


if __name__ == "__main__":
    sys.exit(main())
