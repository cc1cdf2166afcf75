#!/usr/bin/python3
"""Generate every engine-test fixture in ONE python process (torch import costs ~1.5 s per process).

For each variant: <out>/<name>/ (HF snapshot written by make_tiny_llama), <out>/<name>.ref.safetensors
(reference_llama output with all hooks), optional <out>/<name>.ablate.safetensors (reference with an intervention),
<out>/<name>.sha256 (hashlib over the safetensors files concatenated in sorted file-name order), and
<out>/manifest.json describing them (ids, ablations).
"""
import argparse
import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tiny_llama  # noqa: E402
import reference_llama  # noqa: E402

BASE = ["--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "96", "--intermediate", "160",
        "--max-pos", "4096"]

# name -> (extra make_tiny_llama args, ablations [(hook, pos)])
VARIANTS = {
    "rope_mha": (["--attention", "rope", "--shards", "2", "--seed", "1", "--extra-inv-freq"],
                 [("blocks.0.hook_mlp_out", 0)]),
    "rope_gqa": (["--attention", "rope", "--kv-heads", "2", "--head-dim", "24", "--shards", "2", "--seed", "2",
                  "--rope-theta", "500000"], []),
    "nope": (["--attention", "nope", "--shards", "2", "--seed", "3"], [("blocks.1.hook_mlp_out", 0)]),
    "qk_norm": (["--attention", "qk_norm_nope", "--kv-heads", "2", "--shards", "2", "--seed", "4"], []),
    "q_norm": (["--attention", "q_norm_nope", "--shards", "2", "--seed", "8"], []),
    "softmax_scale": (["--attention", "nope", "--softmax-scale", "0.5", "--qk-gain", "6", "--shards", "2",
                       "--seed", "5"], []),
    "tied": (["--attention", "rope", "--tie", "--shards", "1", "--seed", "6"], []),
    "rope_bf16": (["--attention", "rope", "--dtype", "bfloat16", "--shards", "2", "--seed", "7"], []),
    "nope_f16": (["--attention", "nope", "--dtype", "float16", "--shards", "2", "--seed", "10"], []),
}
T = 37
LONG_T = 4096


def digest(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    h = hashlib.sha256()
    for f in files:
        with open(os.path.join(d, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    manifest = {"variants": {}}
    g = torch.Generator().manual_seed(1234)
    for name, (extra, ablations) in VARIANTS.items():
        d = os.path.join(a.out, name)
        cfg = make_tiny_llama.make(BASE + extra + ["--out", d])
        ids = [1] + torch.randint(3, cfg["vocab_size"], (T - 1,), generator=g).tolist()
        reference_llama.run(d, ids, os.path.join(a.out, name + ".ref.safetensors"))
        entry = {"ids": ids, "ablations": []}
        for i, (hook, pos) in enumerate(ablations):
            out = os.path.join(a.out, f"{name}.ablate{i}.safetensors")
            reference_llama.run(d, ids, out, {hook: [pos]}, record=False)
            entry["ablations"].append({"hook": hook, "pos": pos, "file": os.path.basename(out)})
        with open(os.path.join(a.out, name + ".sha256"), "w") as f:
            f.write(digest(d) + "\n")
        manifest["variants"][name] = entry
    # Long-context model: small d so T=4096 stays cheap; reference logits/NLL only (no hooks).
    d = os.path.join(a.out, "long")
    make_tiny_llama.make(["--layers", "2", "--hidden", "32", "--heads", "2", "--vocab", "64", "--intermediate", "64",
                          "--max-pos", "4096", "--attention", "rope", "--shards", "1", "--seed", "9", "--out", d])
    ids = [1] + torch.randint(3, 64, (LONG_T - 1,), generator=g).tolist()
    reference_llama.run(d, ids, os.path.join(a.out, "long.ref.safetensors"), record=False)
    manifest["long"] = {"ids_file": "long.ref.safetensors"}
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


if __name__ == "__main__":
    main()
