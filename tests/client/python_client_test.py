#!/usr/bin/env python3
"""The python client (python/sinkscope) against a spawned sinkscoped serving the shipped tiny RoPE/DroPE pair on
127.0.0.1, and python/examples/study_figures.py. Run by ctest (python_client) with PYTHONPATH=<build>/python,
SINKSCOPED=<sinkscoped binary> and SINKSCOPE_SOURCE_DIR set."""

import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zlib

import sinkscope

SOURCE = os.environ.get("SINKSCOPE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER = os.environ.get("SINKSCOPED")
CLI = os.environ.get("SINKSCOPE_CLI")


def spawn(tmp, name):
    """A sinkscoped on 127.0.0.1 serving the tiny pair: (process, log file, address)."""
    port_file = os.path.join(tmp, name + ".port")
    log = open(os.path.join(tmp, name + ".log"), "w")
    proc = subprocess.Popen([SERVER, "--config", os.path.join(SOURCE, "deploy", "demo-models.yaml"),
                             "--listen", "127.0.0.1:0", "--threads", "1", "--port_file", port_file],
                            stdout=log, stderr=subprocess.STDOUT)
    port = ""
    for _ in range(300):
        if os.path.exists(port_file):
            with open(port_file) as f:
                port = f.read().strip()
        if port:
            break
        time.sleep(0.05)
    return proc, log, "127.0.0.1:" + port


def png_size(path):
    """(width, height) of a PNG whose chunks all check out (CRC) and whose image data inflates."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    at, idat, size = 8, b"", None
    while at < len(data):
        n, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + n]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[at + 8 + n:at + 12 + n])[0], kind
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        at += 12 + n
    assert len(zlib.decompress(idat)) > 0
    return size


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.servers = [spawn(cls.tmp.name, n) for n in ("a", "b")]
        cls.address = cls.servers[0][2]
        cls.client = sinkscope.Client(cls.address)
        for _, _, addr in cls.servers:
            sinkscope.Client(addr).wait_ready(timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        for proc, log, _ in cls.servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()
        cls.tmp.cleanup()

    def test_models_and_datasets(self):
        models = self.client.models()
        self.assertEqual(list(models.name), ["tiny-rope", "tiny-drope"])
        self.assertTrue((models.state == "READY").all())
        self.assertEqual(list(models.positional), ["rope", "nope"])
        self.assertIn("brown-heldout", list(self.client.datasets().name))
        self.assertTrue(self.client.model("tiny-rope").hook_points)

    def test_phase_comparison_as_dataframes(self):
        r = self.client.run(models=["tiny-rope", "tiny-drope"], dataset="brown-heldout", analyses=["phase"],
                            max_prompts=3, max_tokens=48)
        self.assertEqual(r.state, "SUCCEEDED")
        layers = r.layers()
        self.assertEqual(len(layers), 2 * 6)  # one row per model x layer
        for col in ("sink_rate", "sink_rate_std", "bos_norm", "bos_ratio", "entropy", "massive_q", "massive_v"):
            self.assertIn(col, layers)
        self.assertEqual(list(layers[layers.model == "tiny-rope"].layer), list(range(6)))
        self.assertTrue(((layers.sink_rate >= 0) & (layers.sink_rate <= 1)).all())
        ppl = r.perplexity()
        self.assertEqual(set(ppl.condition), {"baseline", "bos_mlp@spike"})
        self.assertEqual(ppl.num_targets.dtype.kind, "i")  # 64-bit counts are ints here, not strings
        summary = r.summary()
        self.assertEqual(list(summary.columns), ["tiny-rope", "tiny-drope"])
        self.assertIn("sink_rate.mean", summary.index)
        self.assertAlmostEqual(summary.loc["sink_rate.mean", "tiny-rope"],
                               layers[layers.model == "tiny-rope"].sink_rate.mean(), places=12)
        comp = r.comparison()
        spike = comp[(comp.metric == "bos_spike_layer.argmax_ratio") & (comp.model == "tiny-drope")]
        self.assertTrue(math.isnan(spike.ratio.iloc[0]))  # no ratio of layer indices
        prov = r.provenance()
        self.assertEqual(len(prov.weights_digest.iloc[0]), 64)
        self.assertEqual(r.heads().shape[0], 2 * 6 * 4)

    def test_per_prompt_results_and_token_ids(self):
        r = self.client.run(models=["tiny-rope"], texts=["The quick brown fox jumps over the lazy dog.",
                                                         "Call me Ishmael."],
                            analyses=["sink_rate", "residual_stats", "perplexity"], bos_mlp=["spike"],
                            emit_token_ids=True)
        prompts = r.prompts()
        self.assertEqual(len(prompts), 2 * 6, "per-prompt layer rows (server side of per_prompt)")
        self.assertIn("bos_ratio", prompts)
        pp = r.prompt_perplexity()
        base = pp[pp.condition == "baseline"]
        self.assertEqual(len(base), 2)
        agg = r.perplexity().set_index("condition").loc["baseline", "perplexity"]
        self.assertAlmostEqual(math.exp(base.nll_sum.sum() / base.num_targets.sum()), agg, delta=1e-6 * agg)
        ids = r.token_ids()
        self.assertEqual(ids.token_ids.iloc[0][0], 1)
        self.assertEqual(len(ids.token_ids.iloc[0]), ids.num_tokens.iloc[0])

    def test_errors_map_to_exceptions(self):
        with self.assertRaises(sinkscope.UsageError) as e:
            self.client.run(models=["tiny-rope"], texts=["x"], analyses=["sink_rate"], tau=3)
        self.assertIn("tau", str(e.exception))
        self.assertEqual(e.exception.exit_code, 2)
        with self.assertRaises(sinkscope.UsageError):
            self.client.run(models=["gpt5"], texts=["x"], analyses=["sink_rate"])
        with self.assertRaises(TypeError):
            self.client.run(models=["tiny-rope"], texts=["x"], analyses=["sink_rate"], tua=0.3)
        with self.assertRaises(ValueError):
            self.client.run(models=["tiny-rope"], texts=["x"], dataset="brown-heldout")
        with self.assertRaises(sinkscope.UnavailableError) as u:
            sinkscope.Client("127.0.0.1:1", timeout=3).models()
        self.assertEqual(u.exception.exit_code, 3)
        t0 = time.monotonic()
        with self.assertRaises(TimeoutError) as t:  # wait_ready: nobody listening within the timeout
            sinkscope.Client("127.0.0.1:1").wait_ready(timeout=1)
        self.assertIn("last status: UNREACHABLE", str(t.exception))
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(list(self.client.wait_ready(timeout=5).state), ["READY", "READY"])
        with self.assertRaises(sinkscope.JobCancelledError) as c:
            self.client.run(models=["tiny-rope", "tiny-drope"], dataset="brown-heldout", analyses=["phase"],
                            max_prompts=200, truncate_to_context=True, deadline=0.2)
        self.assertEqual(c.exception.exit_code, 5)

    def test_submit_watch_cancel_jobs_and_save(self):
        job = self.client.submit(models=["tiny-rope"], texts=["Hello there."], analyses=["sink_rate"])
        r = self.client.watch(job)
        self.assertEqual(r.job_id, job)
        self.assertIn(job, list(self.client.jobs().id))
        self.assertEqual(self.client.cancel(job), "SUCCEEDED")  # too late: says what it was
        path = os.path.join(self.tmp.name, "saved.jsonl")
        r.save(path)
        again = sinkscope.Result.from_jsonl(path)
        self.assertEqual(len(again.events), len(r.events))
        self.assertTrue(again.layers().equals(r.layers()))

    def test_batch_over_two_servers_with_a_failure_then_a_resume(self):
        out = os.path.join(self.tmp.name, "batch")
        servers = [addr for _, _, addr in self.servers]

        def jobs(tau_of_job_5):
            return [{"name": f"job-{i}", "models": ["tiny-rope" if i % 2 else "tiny-drope"],
                     "texts": [f"Python batch prompt {i}."], "analyses": ["sink_rate", "perplexity"],
                     "tau": tau_of_job_5 if i == 5 else 0.3} for i in range(12)]

        b = sinkscope.run_batch(jobs(3.0), out, servers=servers, concurrency=4, log=None)
        self.assertEqual(b.failed, ["job-5"])
        summary = b.summary()
        self.assertIn("tau", summary.set_index("name").loc["job-5", "error"])
        self.assertEqual(set(summary.server), set(servers))
        self.assertEqual(b.result().layers().job_id.nunique(), 11)
        lines = []
        b = sinkscope.run_batch(jobs(0.3), out, servers=servers, log=lines.append)
        self.assertEqual(b.failed, [])
        self.assertEqual(len(lines), 1, lines)  # only the fixed job ran
        self.assertEqual(len(sinkscope.load_batch(out).summary()), 12)

    @unittest.skipUnless(CLI, "SINKSCOPE_CLI not set")
    def test_cli_and_python_batches_share_a_directory(self):
        out = os.path.join(self.tmp.name, "shared")
        jobs_file = os.path.join(self.tmp.name, "shared.jsonl")
        with open(jobs_file, "w") as f:
            f.write('{"name":"a","spec":{"models":["tiny-rope"],"inputs":{"texts":{"texts":["Shared."]}},'
                    '"analyses":[{"sink_rate":{"tau":0.3}}]}}\n')
        p = subprocess.run([CLI, "-q", "-s", self.address, "batch", jobs_file, "--out", out], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        spec = sinkscope.build_spec(["tiny-rope"], texts=["Shared."], analyses=["sink_rate"], tau=0.3)
        lines = []
        b = sinkscope.run_batch([{"name": "a", "spec": spec}], out, servers=[self.address], log=lines.append)
        self.assertEqual(lines, [], "the python batch recognises the CLI's finished job (same fingerprint)")
        self.assertEqual(b.summary().state.tolist(), ["SUCCEEDED"])

    def test_study_figures_example(self):
        out = os.path.join(self.tmp.name, "figures")
        example = os.path.join(SOURCE, "python", "examples", "study_figures.py")
        p = subprocess.run([sys.executable, example, "--server", self.address, "--max-prompts", "3",
                            "--max-tokens", "48", "--control-seeds", "42,43", "--out", out],
                           capture_output=True, text=True, timeout=240)
        self.assertEqual(p.returncode, 0, p.stderr)
        for name in ("sink_rate", "bos_norm", "massive_qkv", "entropy", "perplexity"):
            w, h = png_size(os.path.join(out, name + ".png"))
            self.assertGreater(w, 300)
            self.assertGreater(h, 200)
        self.assertIn("qk_massive", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
