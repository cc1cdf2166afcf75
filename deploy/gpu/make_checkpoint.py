#!/usr/bin/env python3
"""Random Llama / DroPE checkpoints in Hugging Face snapshot layout, at Llama-2-7B's real dimensions (or small ones).

  python3 deploy/gpu/make_checkpoint.py --out DIR --layers 2 [--attention rope|nope|qk_norm_nope|...]
      [--dims 7b|small] [--device cuda] [--seed 0] [--dtype bfloat16] [--weights-from OTHER_DIR]

Writes DIR/config.json, DIR/model.safetensors, DIR/tokenizer.model (+ tokenizer_config.json) copied from
models/tokenizer/ (the server wants a tokenizer next to the weights; prompts are given as token ids, so its
vocabulary size does not have to match), and DIR/generation_config.json.

Dimensions: --dims 7b is Llama-2-7b-hf's config (hidden 4096, 32 heads of 128, intermediate 11008, vocab 32000,
max_position_embeddings 4096, rms_norm_eps 1e-5, rope_theta 1e4) with --layers decoder layers (32 = the full
6.7B parameters, 13.5 GB in bf16); --dims small is a 4-head d=128 model for CPU dry runs.

Weights are generated on --device with a seeded torch.Generator (same seed -> same bytes, whichever attention type,
so a RoPE/DroPE pair differs only in config.json; --weights-from links the other model's safetensors file instead of
writing a second copy). Scale: N(0, 0.02) projections and embeddings (HF's initializer_range), down/o projections
scaled by 1/sqrt(2·layers) so the residual stream does not blow up over 32 layers, norms 1 + N(0, 0.02).

Planted structure, so the study's metrics are not all zero on random weights (real Llama-2 has all of these):
  - massive residual activation at BOS: token 1's embedding is 2000 (--bos-massive; Llama-2's are ~2500) in channels
    MASSIVE_CH (Llama-2's 1415, 2533 when d = 4096) -> a BOS residual norm tens of times the others' (BOS norm
    ratio, spike layer, matrix-entropy anisotropy);
  - a shared "DC" channel: every embedding has +0.05 in channel DC_CH, so all queries share one direction;
  - sink heads: in every layer, heads [0, n_sink) get k_proj[dims, MASSIVE_CH] += 0.25 (BOS's key is large in
    `dims`) and q_proj[dims, DC_CH] += 4 (every query points there). dims are the lowest-frequency rotary pair
    (hd/2 - 1, hd - 1), so the alignment survives RoPE over thousands of positions: attention sinks at BOS in RoPE
    and DroPE models, and massive Q values in those dims (norm over positions ~5x the mean).
The safetensors file is written by hand, streaming one tensor at a time (u64 header length, JSON header, raw data),
so a 13.5 GB checkpoint never sits in host memory; when the python `safetensors` package is present its safe_open
re-reads the header as a check.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))

DIMS = {
    "7b": dict(hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab=32000, max_pos=4096),
    "small": dict(hidden=128, heads=4, kv_heads=4, intermediate=352, vocab=4096, max_pos=4096),
}
ATTENTION = ("rope", "nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope")
ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
TORCH_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BOS_MASSIVE = 2000.0


def build_config(a):
    d = DIMS[a.dims]
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama" if a.attention == "rope" else "llama_drope",
        "vocab_size": d["vocab"],
        "hidden_size": d["hidden"],
        "intermediate_size": d["intermediate"],
        "num_hidden_layers": a.layers,
        "num_attention_heads": d["heads"],
        "num_key_value_heads": d["kv_heads"],
        "max_position_embeddings": d["max_pos"],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": a.dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
    }
    if a.attention != "rope":
        cfg["attention_type"] = a.attention
    return cfg


def tensor_specs(cfg, attention):
    """[(name, shape)] in HF export order."""
    d, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H
    out = [("model.embed_tokens.weight", (V, d))]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (d,)),
                (p + "self_attn.q_proj.weight", (H * hd, d)),
                (p + "self_attn.k_proj.weight", (K * hd, d)),
                (p + "self_attn.v_proj.weight", (K * hd, d)),
                (p + "self_attn.o_proj.weight", (d, H * hd))]
        if attention in ("qk_norm_nope", "q_norm_nope", "k_norm_nope"):
            # SakanaAI DroPE creates both norms for every *norm_nope variant (only the named ones are used).
            out += [(p + "self_attn.q_norm.weight", (H * hd,)), (p + "self_attn.k_norm.weight", (K * hd,))]
        out += [(p + "post_attention_layernorm.weight", (d,)),
                (p + "mlp.gate_proj.weight", (I, d)),
                (p + "mlp.up_proj.weight", (I, d)),
                (p + "mlp.down_proj.weight", (d, I))]
    out += [("model.norm.weight", (d,)), ("lm_head.weight", (V, d))]
    return out


def planted(cfg):
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = d // H
    massive = [1415 % d, 2533 % d] if d > 2533 else [d // 3, (2 * d) // 3]
    dc = 7 % d
    n_sink = max(1, H // 8)
    dims = [hd // 2 - 1, hd - 1]
    return massive, dc, n_sink, dims, hd


def make_tensor(name, shape, cfg, g, device):
    """One tensor, generated in float32 on `device` with the shared generator (order-dependent, hence seeded)."""
    L = cfg["num_hidden_layers"]
    t = torch.randn(*shape, generator=g, device=device, dtype=torch.float32)
    massive, dc, n_sink, dims, hd = planted(cfg)
    if name.endswith("norm.weight"):
        return 1.0 + 0.02 * t
    std = 0.02
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        std = 0.02 / (2.0 * L) ** 0.5
    t.mul_(std)
    if name == "model.embed_tokens.weight":
        t[:, dc] += 0.05
        if t.shape[0] > 1:
            t[1, massive] = BOS_MASSIVE
    elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.q_proj.weight"):
        q = name.endswith("q_proj.weight")
        for h in range(n_sink):
            for dd in dims:
                row = h * hd + dd
                if q:
                    t[row, dc] += 4.0
                else:
                    t[row, massive] += 0.25
    return t


def write_checkpoint(out, cfg, attention, dtype, seed, device):
    specs = tensor_specs(cfg, attention)
    esz = torch.tensor([], dtype=dtype).element_size()
    header, off = {}, 0
    for name, shape in specs:
        n = 1
        for s in shape:
            n *= s
        header[name] = {"dtype": ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [off, off + n * esz]}
        off += n * esz
    header["__metadata__"] = {"format": "pt", "generator": "deploy/gpu/make_checkpoint.py", "seed": str(seed)}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    path = os.path.join(out, "model.safetensors")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape in specs:
            t = make_tensor(name, shape, cfg, g, device).to(dtype).contiguous().cpu()
            if dtype == torch.bfloat16:
                f.write(t.view(torch.int16).numpy().tobytes())
            else:
                f.write(t.numpy().tobytes())
    os.replace(tmp, path)
    return off


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--attention", choices=ATTENTION, default="rope")
    p.add_argument("--dims", choices=list(DIMS), default="7b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(TORCH_DTYPE), default="bfloat16",
                   help="stored dtype (a bf16 checkpoint loaded in float32 is exact on both sides of a comparison)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-from", default=None,
                   help="reuse this checkpoint's model.safetensors (hard link, else symlink): only config.json differs")
    p.add_argument("--bos-massive", type=float, default=BOS_MASSIVE, help="BOS embedding value in the massive channels")
    a = p.parse_args(argv)
    globals()["BOS_MASSIVE"] = a.bos_massive

    t0 = time.time()
    os.makedirs(a.out, exist_ok=True)
    cfg = build_config(a)
    stamp = os.path.join(a.out, ".make_checkpoint.json")
    want = {"config": cfg, "seed": a.seed, "weights_from": a.weights_from, "bos_massive": a.bos_massive, "version": 2}
    # (A --weights-from link is always redone: cheap, and never stale when the source was regenerated.)
    if not a.weights_from and os.path.exists(stamp) and os.path.exists(os.path.join(a.out, "model.safetensors")):
        with open(stamp) as f:
            if json.load(f) == want:
                print(f"make_checkpoint: {a.out} up to date")
                return 0
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, f)
    tok = os.path.join(ROOT, "models", "tokenizer")
    for fn in ("tokenizer.model", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tok, fn)):
            shutil.copyfile(os.path.join(tok, fn), os.path.join(a.out, fn))
    dst = os.path.join(a.out, "model.safetensors")
    if a.weights_from:
        src = os.path.join(os.path.abspath(a.weights_from), "model.safetensors")
        if not os.path.exists(src):
            sys.exit(f"make_checkpoint: --weights-from {a.weights_from}: no model.safetensors")
        if os.path.lexists(dst):
            os.remove(dst)
        try:
            os.link(src, dst)
        except OSError:
            os.symlink(src, dst)
        nbytes = os.path.getsize(src)
    else:
        nbytes = write_checkpoint(a.out, cfg, a.attention, TORCH_DTYPE[a.dtype], a.seed, a.device)
    try:  # optional check with the reference reader
        from safetensors import safe_open
        with safe_open(dst, framework="pt") as f:
            assert len(list(f.keys())) == len(tensor_specs(cfg, a.attention))
    except ImportError:
        pass
    with open(stamp, "w") as f:
        json.dump(want, f)
    n_params = sum(int(torch.tensor(s).prod()) for _, s in tensor_specs(cfg, a.attention))
    print(f"make_checkpoint: {a.out}: {cfg['model_type']} ({cfg.get('attention_type', 'rope')}) L={a.layers} "
          f"d={cfg['hidden_size']} V={cfg['vocab_size']} {n_params / 1e6:.1f}M params, {nbytes / 2**30:.2f} GiB "
          f"{a.dtype}, {time.time() - t0:.1f}s on {a.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
