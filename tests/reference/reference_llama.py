#!/usr/bin/python3
"""Independent reference forward for Llama / SakanaAI DroPE checkpoints (plain python3-torch, no transformers).

Written from Hugging Face's modeling_llama.py (LlamaRMSNorm, LlamaRotaryEmbedding, rotate_half /
apply_rotary_pos_emb, repeat_kv, eager_attention_forward with an additive causal mask, LlamaMLP) and SakanaAI's
custom_models/attention.py (NoPE = cos 1 / sin 0; *_norm_nope = nn.RMSNorm over the flat projection before the
head split; config.softmax_scale replaces the scaling) — not from the C++ engine. It reads the safetensors files
with its own parser, runs in float32 (or float64 with --double), and records every TransformerLens hook point:

  hook_embed, blocks.L.{hook_resid_pre, ln1.hook_normalized, attn.hook_q, attn.hook_k, attn.hook_v,
  attn.hook_rot_q, attn.hook_rot_k, attn.hook_pattern, attn.hook_z, hook_attn_out, hook_resid_mid,
  ln2.hook_normalized, mlp.hook_post, hook_mlp_out, hook_resid_post}, ln_final.hook_normalized

Output: one safetensors file (float32) with "logits" [T,V], "target_nll" [T-1], "ids" (I64) and, unless
--no-hooks, every hook tensor under its name (hook_pattern as [H,T,T]).
Interventions: --zero NAME@POS sets the hook's activation at sequence position POS to 0 (repeatable).

  /usr/bin/python3 tests/reference/reference_llama.py --model DIR --ids 1,5,9 --out ref.safetensors
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_llama import write_safetensors  # noqa: E402  (writer only; reading is done below)


# ---------------------------------------------------------------- checkpoint reading (independent parser)
def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        buf = raw[base + b:base + en]
        shape = e["shape"]
        if e["dtype"] == "F32":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<f4").copy())
        elif e["dtype"] == "F16":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<f2").copy())
        elif e["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<i2").copy()).view(torch.bfloat16)
        elif e["dtype"] == "I64":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<i8").copy())
        else:
            raise ValueError(f"{path}: {name}: dtype {e['dtype']}")
        out[name] = t.reshape(shape)
    return out


def load_checkpoint(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        tensors = {}
        for fn in sorted(set(wm.values())):
            tensors.update(read_safetensors(os.path.join(d, fn)))
        return {k: tensors[k] for k in wm}
    return read_safetensors(os.path.join(d, "model.safetensors"))


# ---------------------------------------------------------------- HF-style modules
class LlamaRMSNorm(torch.nn.Module):
    def __init__(self, weight, eps):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def rotary_cos_sin(head_dim, base, seq_len, dtype):
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    position_ids = torch.arange(seq_len)[None, :]
    inv_freq_expanded = inv_freq[None, :, None].float()
    position_ids_expanded = position_ids[:, None, :].float()
    freqs = (inv_freq_expanded @ position_ids_expanded).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)  # [1, T, hd]


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class Recorder:
    """Stores hook activations (batch dim dropped) and applies --zero interventions."""

    def __init__(self, zeros, record):
        self.zeros = zeros  # name -> list of positions
        self.record = record
        self.acts = {}

    def __call__(self, name, x, pos_dim):
        if name in self.zeros:
            x = x.clone()
            for p in self.zeros[name]:
                x.select(pos_dim, p).zero_()
        if self.record:
            self.acts[name] = x.detach()[0].clone()
        return x


class Model:
    def __init__(self, d, dtype=torch.float32):
        with open(os.path.join(d, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.w = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_checkpoint(d).items()}
        self.dtype = dtype
        self.L = cfg["num_hidden_layers"]
        self.H = cfg["num_attention_heads"]
        self.K = cfg.get("num_key_value_heads") or self.H
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.theta = cfg.get("rope_theta", 10000.0)
        self.attention_type = cfg.get("attention_type", "nope") if cfg["model_type"] == "llama_drope" else "rope"
        self.scaling = self.hd ** -0.5
        if cfg.get("softmax_scale") is not None:  # SakanaAI from_source: module.scaling = config.softmax_scale
            self.scaling = cfg["softmax_scale"]
        self.tied = cfg.get("tie_word_embeddings", False)

    def linear(self, x, name):
        return torch.nn.functional.linear(x, self.w[name])

    def forward(self, ids, rec):
        B, T = 1, len(ids)
        input_ids = torch.tensor([ids], dtype=torch.long)
        h = torch.nn.functional.embedding(input_ids, self.w["model.embed_tokens.weight"])
        h = rec("hook_embed", h, 1)
        cos, sin = rotary_cos_sin(self.hd, self.theta, T, self.dtype)
        if self.attention_type != "rope":  # SakanaAI NoPE: position_embeddings -> (ones_like(cos), zeros_like(sin))
            cos, sin = torch.ones_like(cos), torch.zeros_like(sin)
        min_dtype = torch.finfo(self.dtype).min
        causal_mask = torch.triu(torch.full((T, T), min_dtype, dtype=self.dtype), diagonal=1)[None, None]
        for l in range(self.L):
            p = f"model.layers.{l}."
            b = f"blocks.{l}."
            h = rec(b + "hook_resid_pre", h, 1)
            residual = h
            x = LlamaRMSNorm(self.w[p + "input_layernorm.weight"], self.eps)(h)
            x = rec(b + "ln1.hook_normalized", x, 1)
            q = self.linear(x, p + "self_attn.q_proj.weight")
            k = self.linear(x, p + "self_attn.k_proj.weight")
            if self.attention_type in ("qk_norm_nope", "q_norm_nope"):
                q = LlamaRMSNorm(self.w[p + "self_attn.q_norm.weight"], self.eps)(q)
            if self.attention_type in ("qk_norm_nope", "k_norm_nope"):
                k = LlamaRMSNorm(self.w[p + "self_attn.k_norm.weight"], self.eps)(k)
            v = self.linear(x, p + "self_attn.v_proj.weight")
            q = rec(b + "attn.hook_q", q.view(B, T, -1, self.hd), 1).transpose(1, 2)
            k = rec(b + "attn.hook_k", k.view(B, T, -1, self.hd), 1).transpose(1, 2)
            v = rec(b + "attn.hook_v", v.view(B, T, -1, self.hd), 1).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            q = rec(b + "attn.hook_rot_q", q.transpose(1, 2), 1).transpose(1, 2)
            k = rec(b + "attn.hook_rot_k", k.transpose(1, 2), 1).transpose(1, 2)
            # eager_attention_forward, with fp32 score accumulation (docs/study.md §6.1)
            key_states = repeat_kv(k, self.H // self.K)
            value_states = repeat_kv(v, self.H // self.K)
            attn_weights = torch.matmul(q.float(), key_states.float().transpose(2, 3)) * self.scaling
            attn_weights = attn_weights + causal_mask.float()
            attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32)
            if rec.record:
                rec.acts[b + "attn.hook_pattern"] = attn_weights[0].clone()
            attn_output = torch.matmul(attn_weights.to(q.dtype), value_states)
            attn_output = attn_output.transpose(1, 2).contiguous()  # [B, T, H, hd]
            attn_output = rec(b + "attn.hook_z", attn_output, 1)
            attn_output = attn_output.reshape(B, T, -1)
            attn_output = self.linear(attn_output, p + "self_attn.o_proj.weight")
            attn_output = rec(b + "hook_attn_out", attn_output, 1)
            h = residual + attn_output
            h = rec(b + "hook_resid_mid", h, 1)
            residual = h
            x = LlamaRMSNorm(self.w[p + "post_attention_layernorm.weight"], self.eps)(h)
            x = rec(b + "ln2.hook_normalized", x, 1)
            act = torch.nn.functional.silu(self.linear(x, p + "mlp.gate_proj.weight")) * self.linear(
                x, p + "mlp.up_proj.weight")
            act = rec(b + "mlp.hook_post", act, 1)
            mlp_out = self.linear(act, p + "mlp.down_proj.weight")
            mlp_out = rec(b + "hook_mlp_out", mlp_out, 1)
            h = residual + mlp_out
            h = rec(b + "hook_resid_post", h, 1)
        h = LlamaRMSNorm(self.w["model.norm.weight"], self.eps)(h)
        h = rec("ln_final.hook_normalized", h, 1)
        head = self.w["model.embed_tokens.weight"] if self.tied else self.w["lm_head.weight"]
        logits = torch.nn.functional.linear(h, head).float()[0]
        # HF ForCausalLM loss without reduction: CE(logits[:-1], ids[1:])
        nll = torch.nn.functional.cross_entropy(logits[:-1], input_ids[0, 1:], reduction="none")
        return logits, nll


def run(model_dir, ids, out, zeros=None, record=True, double=False):
    torch.set_num_threads(1)
    m = Model(model_dir, torch.float64 if double else torch.float32)
    rec = Recorder(zeros or {}, record)
    with torch.no_grad():
        logits, nll = m.forward(list(ids), rec)
    tensors = {"logits": logits.float().contiguous(), "target_nll": nll.float().contiguous(),
               "ids": torch.tensor(list(ids), dtype=torch.int64)}
    for k, v in rec.acts.items():
        tensors[k] = v.float().contiguous()
    write_safetensors(out, tensors)
    return tensors


def parse_zero(specs):
    zeros = {}
    for s in specs or []:
        name, pos = s.rsplit("@", 1)
        zeros.setdefault(name, []).append(int(pos))
    return zeros


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--ids", required=True, help="comma-separated token ids")
    p.add_argument("--out", required=True)
    p.add_argument("--zero", action="append", help="NAME@POS: zero that hook's activation at position POS")
    p.add_argument("--no-hooks", action="store_true")
    p.add_argument("--double", action="store_true")
    a = p.parse_args()
    ids = [int(x) for x in a.ids.split(",") if x]
    run(a.model, ids, a.out, parse_zero(a.zero), not a.no_hooks, a.double)


if __name__ == "__main__":
    main()
