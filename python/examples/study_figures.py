#!/usr/bin/env python3
"""Reproduces the study's figures with matplotlib from a live sinkscoped server (or from saved events).

    PYTHONPATH=build/python python3 python/examples/study_figures.py --server 127.0.0.1:50051 --out figures-py
    PYTHONPATH=build/python python3 python/examples/study_figures.py --events phase.jsonl disruption.jsonl

Runs two jobs on the RoPE/DroPE pair (default: the shipped tiny pair; --models llama2-7b,llama2-7b-drope for the
real one): the phase comparison (sink rate, BOS residual norms, matrix entropy, massive Q/K/V, perplexity with the
BOS-MLP ablation at the spike layer) and the Q/K massive-dimension disruption with random controls (study Exp. 2).
Writes sink_rate.png, bos_norm.png, massive_qkv.png, entropy.png and perplexity.png, and prints the comparison.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

import sinkscope  # noqa: E402


def layer_figure(layers, columns, titles, ylabel, path, title, log=False, ylim=None):
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 4.2), squeeze=False)
    for ax, col, sub in zip(axes[0], columns, titles):
        for model, df in layers.groupby("model", sort=False):
            df = df.sort_values("layer")
            std = df[col + "_std"] if col + "_std" in df else None
            ax.errorbar(df["layer"], df[col], yerr=std, marker="o", ms=4, capsize=3, label=model)
        ax.set_title(sub)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel[columns.index(col)])
        if log and (layers[col] > 0).all() and layers[col].max() / layers[col].min() > 100:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        if ylim:  # a count or a fraction stays in range, whatever mean ± std says
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def perplexity_figure(ppl, path):
    rows = []
    for _, r in ppl.iterrows():
        rows.append((r["condition"], r["model"], r["perplexity"], 0.0))
        if r["control_perplexities"]:
            rows.append((r["condition"] + "\n(random control)", r["model"], r["control_mean"], r["control_std"]))
    conditions = list(dict.fromkeys(c for c, _, _, _ in rows))
    models = list(dict.fromkeys(m for _, m, _, _ in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, m in enumerate(models):
        xs, ys, es = [], [], []
        for j, c in enumerate(conditions):
            for cc, mm, v, e in rows:
                if cc == c and mm == m:
                    xs.append(j + (i - (len(models) - 1) / 2) * width)
                    ys.append(v)
                    es.append(e)
        bars = ax.bar(xs, ys, width * 0.95, yerr=es, capsize=3, label=m)
        ax.bar_label(bars, fmt="%.4g", fontsize=8)
    ax.set_xticks(range(len(conditions)), conditions)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title("Perplexity per condition (random control: mean ± std over seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figures(result, out):
    os.makedirs(out, exist_ok=True)
    layers = result.layers()
    written = []
    if "sink_rate" in layers:
        written.append(layer_figure(layers, ["sink_rate"], [""], "sink rate (fraction of heads)",
                                    os.path.join(out, "sink_rate.png"), "Attention sink rate per layer",
                                    ylim=(-0.02, 1.05)))
    if "bos_norm" in layers:
        written.append(layer_figure(layers, ["bos_norm", "bos_ratio"], ["BOS norm", "BOS / other-token norm"],
                                    ["||x_0||", "ratio"], os.path.join(out, "bos_norm.png"),
                                    "BOS residual stream per layer", log=True))
    if "massive_q" in layers:
        written.append(layer_figure(layers, ["massive_q", "massive_k", "massive_v"], ["Q", "K", "V"],
                                    "massive (head, dim) entries", os.path.join(out, "massive_qkv.png"),
                                    "Massive values per layer", ylim=(0, None)))
    if "entropy" in layers:
        written.append(layer_figure(layers, ["entropy"], [""], "entropy (nats)", os.path.join(out, "entropy.png"),
                                    "Matrix entropy per layer"))
    ppl = result.perplexity()
    if len(ppl):
        written.append(perplexity_figure(ppl, os.path.join(out, "perplexity.png")))
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=None, help="host:port (default: $SINKSCOPE_SERVER or 127.0.0.1:50051)")
    ap.add_argument("--token", default=None)
    ap.add_argument("--tls-ca", default=None)
    ap.add_argument("--models", default="tiny-rope,tiny-drope")
    ap.add_argument("--dataset", default="brown-heldout")
    ap.add_argument("--max-prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=0, help="cut prompts to N tokens (default: the context)")
    ap.add_argument("--control-seeds", default="42,43,44,45,46,47,48,49,50,51")
    ap.add_argument("--events", nargs="*", help="draw from saved JSON-lines events instead of running jobs")
    ap.add_argument("--out", default="figures-py")
    a = ap.parse_args(argv)

    if a.events:
        result = sinkscope.Result.from_jsonl(*a.events)
    else:
        client = sinkscope.Client(a.server, token=a.token, tls_ca=a.tls_ca)
        models = a.models.split(",")
        phase = client.run(models=models, dataset=a.dataset, analyses=["phase"], max_prompts=a.max_prompts,
                           max_tokens=a.max_tokens, truncate_to_context=True, progress=sys.stderr.isatty())
        disruption = client.run(models=models, dataset="study-disruption-literary", analyses=["perplexity"],
                                qk_disruption=True, max_tokens=a.max_tokens, truncate_to_context=True,
                                control_seeds=[int(s) for s in a.control_seeds.split(",") if s],
                                progress=sys.stderr.isatty())
        print(phase.comparison().to_string(index=False))
        print(disruption.perplexity()[["model", "condition", "perplexity", "ratio_to_baseline", "control_mean",
                                       "control_std", "detail"]].to_string(index=False))
        # Phase perplexities (baseline, BOS-MLP) and the disruption's (with controls) on one chart: the baseline
        # of the disruption set is labelled apart.
        events = list(phase.events)
        for ev in disruption.events:
            if ev.HasField("perplexity") and ev.perplexity.condition == "baseline":
                ev.perplexity.condition = "baseline (disruption set)"
            events.append(ev)
        result = sinkscope.Result(events)
    for path in figures(result, a.out):
        print("figure:", path)


if __name__ == "__main__":
    main()
