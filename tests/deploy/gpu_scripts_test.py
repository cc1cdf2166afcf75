#!/usr/bin/env python3
"""The GPU check's python helpers where a CPU run cannot reach them: deploy/gpu/hf_llama.py's loading of a
sinkscope snapshot into transformers' Llama, and the reference edits applied to activations on another device.

transformers is not a Debian 12 package, so hf_llama.load runs here against a stand-in `transformers` module with
the same names and calling convention as transformers 4.4x/5.x's Llama (module-level apply_rotary_pos_emb looked up
at call time, model.model.rotary_emb returning (cos, sin), an fp32 inv_freq buffer). What is tested is our code: the
parameter-only dtype cast, the q_norm/k_norm insertion, and that a DroPE model whose rotary removal does not take
effect (a transformers that binds the rotary function elsewhere) is refused instead of silently running as RoPE.
The device edits run on torch's "meta" device: a tensor there mixed with a CPU tensor fails as on a GPU.
"""
import os
import sys
import types
import unittest

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [os.path.join(ROOT, "deploy", "gpu"), os.path.join(ROOT, "tests", "analysis")]
import hf_llama  # noqa: E402
import report  # noqa: E402
import reference_analyses as ra  # noqa: E402

H, HD, D, L, V = 2, 4, 8, 2, 16


def fake_transformers(bind_rotary_late=True):
    """A stand-in transformers with a 2-layer Llama: attention applies modeling_llama.apply_rotary_pos_emb, looked
    up at call time (bind_rotary_late) or bound when the module was made (what the DroPE check must catch)."""
    ml = types.ModuleType("transformers.models.llama.modeling_llama")

    def rotate_half(x):
        return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)

    def apply_rotary_pos_emb(q, k, cos, sin):
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    bound = apply_rotary_pos_emb

    class LlamaRMSNorm(torch.nn.Module):
        def __init__(self, width, eps=1e-6):
            super().__init__()
            self.weight, self.eps = torch.nn.Parameter(torch.ones(width)), eps

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype)

    class Rotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, HD, 2).float() / HD), persistent=False)

        def forward(self, x, pos):
            f = pos[:, None].float() * self.inv_freq.float()[None, :]
            e = torch.cat((f, f), dim=-1)
            return e.cos().to(x.dtype), e.sin().to(x.dtype)

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(D, D, bias=False) for _ in range(4))
            self.scaling = HD ** -0.5

        def forward(self, x, cos, sin):
            T = x.shape[0]
            q, k, v = (p(x).view(T, H, HD).transpose(0, 1) for p in (self.q_proj, self.k_proj, self.v_proj))
            rot = ml.apply_rotary_pos_emb if bind_rotary_late else bound
            q, k = rot(q, k, cos, sin)
            s = (q @ k.transpose(1, 2)).float() * self.scaling
            s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            return self.o_proj((s.softmax(-1).to(v.dtype) @ v).transpose(0, 1).reshape(T, D))

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attention()

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(V, D)
            self.layers = torch.nn.ModuleList(Layer() for _ in range(L))
            self.norm = LlamaRMSNorm(D)
            self.rotary_emb = Rotary()

    class LlamaForCausalLM(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config, self.model, self.lm_head = config, Inner(), torch.nn.Linear(D, V, bias=False)

        def forward(self, input_ids, use_cache=True):
            x = self.model.embed_tokens(input_ids[0])
            cos, sin = self.model.rotary_emb(x, torch.arange(x.shape[0]))
            for layer in self.model.layers:
                x = x + layer.self_attn(x, cos, sin)
            return types.SimpleNamespace(logits=self.lm_head(self.model.norm(x))[None])

    class LlamaConfig:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    ml.apply_rotary_pos_emb, ml.LlamaRMSNorm = apply_rotary_pos_emb, LlamaRMSNorm
    tf = types.ModuleType("transformers")
    tf.LlamaConfig, tf.LlamaForCausalLM, tf.__version__ = LlamaConfig, LlamaForCausalLM, "stand-in"
    tf.models = types.ModuleType("transformers.models")
    tf.models.llama = types.ModuleType("transformers.models.llama")
    tf.models.llama.modeling_llama = ml
    return {"transformers": tf, "transformers.models": tf.models, "transformers.models.llama": tf.models.llama,
            "transformers.models.llama.modeling_llama": ml}


def snapshot(tmp, attention_type):
    """config.json for the stand-in, and its state dict (with DroPE's q_norm/k_norm) as read_state would return."""
    import json
    cfg = {"model_type": "llama_drope" if attention_type != "rope" else "llama", "hidden_size": D,
           "num_attention_heads": H, "num_key_value_heads": H, "num_hidden_layers": L, "vocab_size": V,
           "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
    if attention_type != "rope":
        cfg["attention_type"] = attention_type
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f)
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in sys.modules["transformers"].LlamaForCausalLM(None).state_dict().items()}
    for l in range(L):
        state[f"model.layers.{l}.self_attn.q_norm.weight"] = torch.rand(D) + 0.5
        state[f"model.layers.{l}.self_attn.k_norm.weight"] = torch.rand(D) + 0.5
    return state


class HfLlamaLoad(unittest.TestCase):
    def setUp(self):
        import tempfile
        self.saved = {k: sys.modules.get(k) for k in fake_transformers()}
        self.tmp = tempfile.mkdtemp(prefix="hf-llama-test-")
        hf_llama._PATCHED.update(done=False, calls=0)

    def tearDown(self):
        import shutil
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        shutil.rmtree(self.tmp, ignore_errors=True)

    def load(self, attention_type, nope_mode="patch", bind_rotary_late=True):
        sys.modules.update(fake_transformers(bind_rotary_late))
        state = snapshot(self.tmp, attention_type)
        hf_llama.read_state = lambda model_dir, device: {k: v.clone() for k, v in state.items()}
        model, cfg, att = hf_llama.load(self.tmp, torch.bfloat16, "cpu", "eager", nope_mode=nope_mode)
        return model, state, att

    def test_parameters_are_cast_and_inv_freq_stays_fp32(self):
        model, state, att = self.load("rope")
        self.assertEqual(att, "rope")
        self.assertTrue(all(p.dtype == torch.bfloat16 for p in model.parameters()))
        self.assertEqual(model.model.rotary_emb.inv_freq.dtype, torch.float32)
        self.assertTrue(torch.equal(model.lm_head.weight, state["lm_head.weight"].to(torch.bfloat16)))

    def test_drope_q_and_k_norms_wrap_the_projections(self):
        model, state, att = self.load("qk_norm_nope")
        self.assertEqual(att, "qk_norm_nope")
        for l, layer in enumerate(model.model.layers):
            for which in ("q", "k"):
                proj = getattr(layer.self_attn, f"{which}_proj")
                self.assertIsInstance(proj, torch.nn.Sequential)
                self.assertTrue(torch.equal(proj[1].weight,
                                            state[f"model.layers.{l}.self_attn.{which}_norm.weight"].bfloat16()))
            self.assertIsInstance(layer.self_attn.v_proj, torch.nn.Linear)

    def test_drope_patch_takes_effect(self):
        model, _, _ = self.load("nope", "patch")
        n = hf_llama._PATCHED["calls"]
        self.assertGreater(n, 0)
        model(input_ids=torch.tensor([[1, 2, 3]]))
        self.assertEqual(hf_llama._PATCHED["calls"], n + L)

    def test_drope_rotary_hook_takes_effect(self):
        self.load("nope", "rotary", bind_rotary_late=False)  # the hook works however the function is bound
        self.assertGreater(hf_llama._PATCHED["calls"], 0)

    def test_drope_patch_that_misses_is_refused(self):
        with self.assertRaisesRegex(RuntimeError, "rotary removal .*did not take effect"):
            self.load("nope", "patch", bind_rotary_late=False)


class EditsOnAnotherDevice(unittest.TestCase):
    """Masks are built from activations copied to the CPU; the edited activations live on the model's device."""

    def test_disruption_edits_follow_the_activation_device(self):
        mask = torch.zeros(H * HD, dtype=torch.bool)
        mask[[1, 6]] = True
        y = torch.randn(5, H, HD)
        f = ra.disruption_edits({0: {"q": mask, "k": mask}})["blocks.0.attn.hook_q"][0]
        out = f(y.to("meta"))  # raised "Expected all tensors to be on the same device" before
        self.assertEqual(out.device.type, "meta")
        self.assertEqual(tuple(out.shape), tuple(y.shape))
        got = ra.disruption_edits({0: {"q": mask, "k": mask}})["blocks.0.attn.hook_q"][0](y)
        self.assertTrue(torch.equal(got.reshape(5, -1)[:, mask], torch.zeros(5, 2)))
        self.assertTrue(torch.equal(got.reshape(5, -1)[:, ~mask], y.reshape(5, -1)[:, ~mask]))


class GpuUtilizationSamples(unittest.TestCase):
    """report.py's reading of the nvidia-smi samples gpu-check.sh takes during the timed job."""

    def test_memory_peak_mean_utilization_and_busy_share(self):
        text = "1000, 0\n81234, 95\n[N/A], [N/A]\n80000, 100\n79000, 45\n"
        self.assertEqual(report.smi_samples(text), (81234.0, 60.0, 0.5))

    def test_no_samples(self):
        self.assertEqual(report.smi_samples(""), (None, None, None))
        self.assertEqual(report.smi_samples("garbage\n"), (None, None, None))

    def test_memory_only_lines_of_an_older_run(self):
        self.assertEqual(report.smi_samples("512\n2048\n"), (2048.0, None, None))


if __name__ == "__main__":
    unittest.main(verbosity=2)
