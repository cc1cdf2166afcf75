#!/usr/bin/python3
"""Write a random-initialised tiny Llama / DroPE checkpoint in Hugging Face snapshot layout.

Output: <out>/config.json and either <out>/model.safetensors (--shards 1) or
<out>/model-0000i-of-0000n.safetensors + <out>/model.safetensors.index.json. The safetensors files are written by
hand (u64 little-endian header length, JSON header, raw little-endian data), because Debian has no python
safetensors package. Needs only python3-torch and numpy; no transformers.

Tensor names follow HF LlamaForCausalLM (+ SakanaAI DroPE's self_attn.q_norm / k_norm for the *norm_nope variants):
  model.embed_tokens.weight, model.layers.N.{input_layernorm,post_attention_layernorm}.weight,
  model.layers.N.self_attn.{q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}_proj.weight,
  model.norm.weight, lm_head.weight (absent with --tie).

Example:
  /usr/bin/python3 tests/reference/make_tiny_llama.py --out /tmp/tiny --layers 4 --hidden 128 --heads 4 \
      --kv-heads 4 --vocab 4096 --attention rope --shards 2 --seed 0 --dtype float32
"""
import argparse
import json
import os
import struct
import sys

import torch

DTYPES = {"float32": (torch.float32, "F32"), "bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16")}
ATTENTION = ("rope", "nope", "qk_norm_nope", "q_norm_nope", "k_norm_nope")


def tensor_bytes(t):
    """Raw little-endian bytes of a contiguous CPU tensor (bf16 via an int16 view: numpy has no bfloat16)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def st_dtype(t):
    for _, (td, name) in DTYPES.items():
        if t.dtype == td:
            return name
    if t.dtype == torch.int64:
        return "I64"
    if t.dtype == torch.int32:
        return "I32"
    raise ValueError(f"unsupported dtype {t.dtype}")


def write_safetensors(path, tensors, metadata=None):
    """tensors: ordered dict name -> torch tensor. Header padded with spaces to a multiple of 8 bytes."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        b = tensor_bytes(t)
        header[name] = {"dtype": st_dtype(t), "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def build_config(a):
    head_dim = a.head_dim or a.hidden // a.heads
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama" if a.attention == "rope" else "llama_drope",
        "vocab_size": a.vocab,
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate or 8 * ((a.hidden * 8 // 3 + 7) // 8),
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads or a.heads,
        "head_dim": head_dim,
        "max_position_embeddings": a.max_pos,
        "rms_norm_eps": a.rms_eps,
        "rope_theta": a.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "tie_word_embeddings": bool(a.tie),
        "torch_dtype": a.dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
    }
    if a.attention != "rope":
        cfg["attention_type"] = a.attention
    if a.softmax_scale is not None:
        cfg["softmax_scale"] = a.softmax_scale
    return cfg


def build_weights(cfg, a):
    """Random weights with O(1) activations: N(0, 1/fan_in) projections, N(0,1) embeddings, norms 1 + 0.1·N(0,1)."""
    g = torch.Generator().manual_seed(a.seed)
    d, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    H, K, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def lin(out_f, in_f, gain=1.0):
        return torch.randn(out_f, in_f, generator=g) * (gain / in_f ** 0.5)

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    w = {"model.embed_tokens.weight": torch.randn(V, d, generator=g)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "self_attn.q_proj.weight"] = lin(H * hd, d, a.qk_gain)
        w[p + "self_attn.k_proj.weight"] = lin(K * hd, d, a.qk_gain)
        w[p + "self_attn.v_proj.weight"] = lin(K * hd, d)
        w[p + "self_attn.o_proj.weight"] = lin(d, H * hd)
        if a.attention in ("qk_norm_nope", "q_norm_nope", "k_norm_nope"):
            # SakanaAI creates both norms for every *norm_nope variant (only the named ones are used).
            w[p + "self_attn.q_norm.weight"] = norm(H * hd)
            w[p + "self_attn.k_norm.weight"] = norm(K * hd)
        if a.extra_inv_freq and a.attention == "rope":
            w[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / (
                cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        w[p + "post_attention_layernorm.weight"] = norm(d)
        w[p + "mlp.gate_proj.weight"] = lin(I, d)
        w[p + "mlp.up_proj.weight"] = lin(I, d)
        w[p + "mlp.down_proj.weight"] = lin(d, I)
    w["model.norm.weight"] = norm(d)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = lin(V, d)
    dt = DTYPES[a.dtype][0]
    return {k: (v.to(dt) if v.is_floating_point() and not k.endswith("inv_freq") else v) for k, v in w.items()}


def write_checkpoint(out, cfg, weights, shards):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    names = list(weights.keys())
    if shards <= 1:
        write_safetensors(os.path.join(out, "model.safetensors"), weights, {"format": "pt"})
        return
    sizes = [weights[n].numel() * weights[n].element_size() for n in names]
    total = sum(sizes)
    groups = [[] for _ in range(shards)]
    acc = 0
    for n, s in zip(names, sizes):
        gi = min(shards - 1, acc * shards // max(total, 1))
        groups[gi].append(n)
        acc += s
    weight_map = {}
    for i, grp in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(out, fn), {n: weights[n] for n in grp}, {"format": "pt"})
        for n in grp:
            weight_map[n] = fn
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=0, help="0 = same as --heads (MHA)")
    p.add_argument("--head-dim", type=int, default=0, help="0 = hidden / heads")
    p.add_argument("--intermediate", type=int, default=0, help="0 = 8/3·hidden rounded up to a multiple of 8")
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--max-pos", type=int, default=4096)
    p.add_argument("--attention", choices=ATTENTION, default="rope")
    p.add_argument("--softmax-scale", type=float, default=None)
    p.add_argument("--tie", action="store_true", help="tie_word_embeddings (no lm_head.weight)")
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--rms-eps", type=float, default=1e-5)
    p.add_argument("--qk-gain", type=float, default=1.0, help="scale of q_proj/k_proj init (large = peaky attention)")
    p.add_argument("--extra-inv-freq", action="store_true", help="also store rotary_emb.inv_freq buffers (old HF)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    return p


def make(argv):
    a = parser().parse_args(argv)
    cfg = build_config(a)
    weights = build_weights(cfg, a)
    write_checkpoint(a.out, cfg, weights, a.shards)
    return cfg


def main():
    cfg = make(sys.argv[1:])
    print(f"wrote {cfg['model_type']} ({cfg.get('attention_type', 'rope')}) L={cfg['num_hidden_layers']} "
          f"d={cfg['hidden_size']} H={cfg['num_attention_heads']}/{cfg['num_key_value_heads']} "
          f"V={cfg['vocab_size']} dtype={cfg['torch_dtype']}")


if __name__ == "__main__":
    main()
