"""sinkscope: a Python client for sinkscoped (attention sinks, massive activations and ablated perplexity in
RoPE/DroPE Llama models).

    import sinkscope
    c = sinkscope.Client("127.0.0.1:50051")                     # token=..., tls_ca=... when the server needs them
    r = c.run(models=["tiny-rope", "tiny-drope"], dataset="brown-heldout", analyses=["phase"], max_prompts=16)
    r.layers()        # one row per model x layer
    r.perplexity()    # one row per model x condition
    r.summary()       # one row per metric, one column per model
    b = sinkscope.run_batch(jobs, "runs/x", servers=["a:50051", "b:50051"])   # resumable, like `sinkscope batch`

Reference: docs/client.md. Stubs are generated from proto/sinkscope/v1 at build time (PYTHONPATH=<build>/python).
"""

from sinkscope.batch import BatchResult, load_batch, run_batch
from sinkscope.client import Client
from sinkscope.errors import (AuthError, JobCancelledError, JobFailedError, SinkscopeError, UnavailableError,
                              UsageError)
from sinkscope.results import Result, load_events
from sinkscope.spec import ANALYSES, OPTIONS, build_spec

__all__ = ["Client", "Result", "load_events", "build_spec", "run_batch", "load_batch", "BatchResult", "ANALYSES",
           "OPTIONS", "SinkscopeError", "UsageError", "UnavailableError", "AuthError", "JobFailedError",
           "JobCancelledError"]
