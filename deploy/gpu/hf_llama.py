"""Hugging Face transformers' own LlamaForCausalLM on a sinkscope/HF snapshot directory, RoPE or DroPE.

Shared by hf_compare.py and hf_bench.py. The model is transformers' LlamaForCausalLM (its attention, RMSNorm, MLP,
rotary code), built from config.json and loaded from model.safetensors. DroPE (model_type llama_drope) is not a
transformers model type, so:
  - rotary removed: nope_mode="patch" replaces transformers.models.llama.modeling_llama.apply_rotary_pos_emb by
    the identity (process-wide: use with one DroPE model per process); nope_mode="rotary" makes this model's
    rotary_emb return cos = 1, sin = 0 (SakanaAI's own NoPE; q·1 + rotate_half(q)·0 == q exactly), per model, so a
    RoPE and a DroPE model can be resident together;
  - q_norm / k_norm (attention_type qk_norm_nope / q_norm_nope / k_norm_nope): SakanaAI applies an RMSNorm over the
    flat num_heads·head_dim projection before the head split, so q_proj (k_proj) becomes
    Sequential(q_proj, LlamaRMSNorm(H·hd, rms_norm_eps)) with the checkpoint's q_norm (k_norm) weight;
  - softmax_scale replaces every attention module's `scaling`.
Needs transformers (the GPU node has 5.x); import errors are reported by the callers as "skipped".
"""
import json
import os

import torch

NORM_NOPE = ("qk_norm_nope", "q_norm_nope", "k_norm_nope")
_PATCHED = {"done": False, "calls": 0}


def attention_type(cfg):
    if cfg.get("model_type") == "llama_drope":
        return cfg.get("attention_type", "nope")
    return "rope"


def read_state(model_dir, device):
    """model.safetensors or the sharded index, on `device`."""
    from safetensors.torch import load_file
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state = {}
    for fn in files:
        state.update(load_file(os.path.join(model_dir, fn), device=str(device)))
    return state


def patch_rotary_identity():
    """Process-wide: transformers' Llama attention applies no rotary embedding."""
    from transformers.models.llama import modeling_llama
    if not _PATCHED["done"]:
        def apply_rotary_identity(q, k, *args, **kwargs):
            _PATCHED["calls"] += 1
            return q, k
        modeling_llama.apply_rotary_pos_emb = apply_rotary_identity
        _PATCHED["done"] = True


def load(model_dir, dtype, device, attn_implementation="eager", nope_mode="patch"):
    """Returns (model, cfg dict, attention type). dtype: torch dtype of the weights and activations."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    att = attention_type(cfg)
    kw = {k: v for k, v in cfg.items()
          if k not in ("model_type", "attention_type", "softmax_scale", "architectures", "torch_dtype")}
    config = LlamaConfig(**kw)
    try:
        config._attn_implementation = attn_implementation
    except Exception:  # noqa: BLE001 - older/newer config classes guard the attribute differently
        pass
    # Built in float32 on the device (a quick random init), then cast: set_default_dtype(bfloat16) is not accepted by
    # every torch, and a meta-device build would leave the rotary inv_freq buffer uninitialised.
    dev = torch.device(device)
    if hasattr(dev, "__enter__"):
        with dev:
            model = LlamaForCausalLM(config)
    else:  # torch < 2.0: no device context
        model = LlamaForCausalLM(config).to(dev)
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(attn_implementation)
        except Exception:  # noqa: BLE001
            pass
    # Parameters only: the rotary inv_freq buffer stays float32, as from_pretrained(torch_dtype=...) leaves it (a
    # bf16 inv_freq is off by up to 0.6 rad at position 511, which sinkscope and the study do not have).
    for prm in model.parameters():
        prm.data = prm.data.to(dtype)

    state = read_state(model_dir, device)
    H, K = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    for l, layer in enumerate(model.model.layers):
        p = f"model.layers.{l}.self_attn."
        qn, kn = state.pop(p + "q_norm.weight", None), state.pop(p + "k_norm.weight", None)
        attn = layer.self_attn
        # DroPE's RMSNorm over the whole q (k) projection: proj -> Sequential(proj, norm), weights renamed to match.
        for which, width, weight, variants in (("q_proj", H * hd, qn, ("qk_norm_nope", "q_norm_nope")),
                                               ("k_proj", K * hd, kn, ("qk_norm_nope", "k_norm_nope"))):
            if att not in variants:
                continue
            norm = LlamaRMSNorm(width, eps=eps).to(device=device, dtype=dtype)
            norm.weight.data.copy_(weight)
            state[p + which + ".0.weight"] = state.pop(p + which + ".weight")
            state[p + which + ".1.weight"] = norm.weight.data.clone()
            setattr(attn, which, torch.nn.Sequential(getattr(attn, which), norm))
        if cfg.get("softmax_scale") is not None:
            attn.scaling = cfg["softmax_scale"]
    state = {k: v.to(dtype) for k, v in state.items() if "rotary_emb" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    if missing or unexpected:
        raise RuntimeError(f"{model_dir}: state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if att != "rope":
        if nope_mode == "patch":
            patch_rotary_identity()
        else:
            def nope_rotary(module, args, out):
                _PATCHED["calls"] += 1
                cos, sin = out
                return torch.ones_like(cos), torch.zeros_like(sin)
            model.model.rotary_emb.register_forward_hook(nope_rotary)
    model.eval()
    if att != "rope":
        check_rotary_removed(model, device, nope_mode)
    return model, cfg, att


def check_rotary_removed(model, device, nope_mode):
    """A DroPE model whose rotary removal does not take effect would silently run as RoPE (e.g. a transformers
    that no longer looks apply_rotary_pos_emb up in its module): one 2-token forward must go through our code."""
    before = _PATCHED["calls"]
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2]], device=device), use_cache=False)
    if _PATCHED["calls"] == before:
        raise RuntimeError(f"DroPE: rotary removal (nope_mode={nope_mode}) did not take effect in this transformers")


def layer_output(out):
    """A decoder layer's hidden states (transformers 4.x returns a tuple, 5.x a tensor)."""
    return out[0] if isinstance(out, (tuple, list)) else out
