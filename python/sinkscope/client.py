"""The sinkscope client: one connection to a sinkscoped server (address, bearer token, TLS)."""

import os
import sys
import time

import grpc
import pandas as pd

from sinkscope.errors import JobCancelledError, JobFailedError, UsageError, from_rpc_error
from sinkscope.results import Result
from sinkscope.spec import build_spec
from sinkscope.v1 import jobs_pb2, models_pb2, service_pb2, service_pb2_grpc

_STATE_PREFIX = "JOB_STATE_"
_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class Client:
    """A connection to sinkscoped.

    Client("127.0.0.1:50051")                                  plaintext
    Client("gpu1:50051", token="...", tls_ca="ca.pem")          bearer token over TLS
    Unset arguments come from SINKSCOPE_SERVER, SINKSCOPE_TOKEN / SINKSCOPE_TOKEN_FILE and SINKSCOPE_TLS_CA, as
    for the CLI. `timeout` bounds unary calls (a job's stream has no deadline). `tls_name` is the name TLS
    verifies when `server` is an address resolved from it (batch replicas).
    """

    def __init__(self, server=None, token=None, tls_ca=None, timeout=30.0, token_file=None, tls_name=None):
        self.server = server or os.environ.get("SINKSCOPE_SERVER", "127.0.0.1:50051")
        token_file = token_file or os.environ.get("SINKSCOPE_TOKEN_FILE")
        self.token = token or os.environ.get("SINKSCOPE_TOKEN")
        if not self.token and token_file:
            with open(token_file) as f:
                self.token = f.read().strip()
        tls_ca = tls_ca or os.environ.get("SINKSCOPE_TLS_CA")
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if tls_ca:
            with open(tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            if tls_name:
                options.append(("grpc.ssl_target_name_override", tls_name))
            self._channel = grpc.secure_channel(self.server, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.server, options=options)
        self._stub = service_pb2_grpc.SinkscopeStub(self._channel)
        # grpc.health.v1.Health/Watch without generated stubs: the request (all services) is empty, the response
        # is field 1, the status enum, as one varint.
        self._health_watch = self._channel.unary_stream(
            "/grpc.health.v1.Health/Watch", request_serializer=lambda _: b"",
            response_deserializer=lambda b: b[1] if len(b) >= 2 and b[0] == 0x08 else 0)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _metadata(self):
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def _call(self, method, request):
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata())
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.server) from None

    # -- what the server has -------------------------------------------------------------------------------------

    def info(self):
        """Server version, devices, limits and queue (a sinkscope.v1.ServerInfo)."""
        return self._call("GetServerInfo", service_pb2.GetServerInfoRequest())

    def models(self):
        """One row per configured model: name, state, positional scheme, layers, heads, dtype, device, digests."""
        resp = self._call("ListModels", models_pb2.ListModelsRequest())
        return pd.DataFrame([{
            "name": m.name, "state": models_pb2.ModelState.Name(m.state).replace("MODEL_STATE_", ""),
            "positional": "rope" if m.positional_scheme == models_pb2.POSITIONAL_SCHEME_ROPE else m.attention_type,
            "layers": m.num_layers, "d_model": m.hidden_size, "heads": m.num_heads, "kv_heads": m.num_kv_heads,
            "head_dim": m.head_dim, "parameters": int(m.num_parameters), "dtype": m.dtype, "device": m.device,
            "weights_digest": m.weights_digest, "tokenizer_digest": m.tokenizer_digest, "error": m.error,
        } for m in resp.models])

    def model(self, name):
        """One model's full record (a sinkscope.v1.ModelInfo, with its hook point names)."""
        return self._call("GetModel", models_pb2.GetModelRequest(name=name))

    def datasets(self):
        resp = self._call("ListDatasets", models_pb2.ListDatasetsRequest())
        return pd.DataFrame([{"name": d.name, "prompts": d.num_prompts, "digest": d.digest,
                              "description": d.description} for d in resp.datasets])

    def wait_ready(self, timeout=300.0):
        """Waits until the server is SERVING (listening, every model loaded); returns models().

        Like `sinkscope health --wait`: one grpc.health.v1 Watch stream with wait_for_ready, so gRPC waits for the
        server to accept connections and the server pushes each status change (no polling). TimeoutError after
        `timeout` seconds, naming the last status seen.
        """
        last = "UNREACHABLE"
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            try:
                for status in self._health_watch(None, timeout=until - time.monotonic(), wait_for_ready=True,
                                                 metadata=self._metadata()):
                    last = _HEALTH_STATUS.get(status, str(status))
                    if last == "SERVING":
                        return self.models()
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise from_rpc_error(e, self.server) from None
            time.sleep(0.1)  # the stream broke (the server went away): watch again, waiting for it
        raise TimeoutError(f"{self.server} not SERVING after {timeout} s (last status: {last})")

    # -- jobs ----------------------------------------------------------------------------------------------------

    def submit(self, models=None, texts=None, dataset=None, token_ids=None, analyses=("phase",), spec=None,
               **options):
        """Submits a job and returns its id. `spec` (a JobSpec) replaces the keyword description."""
        if spec is None:
            spec = build_spec(models, texts=texts, dataset=dataset, token_ids=token_ids, analyses=analyses,
                              **options)
        return self._call("SubmitJob", service_pb2.SubmitJobRequest(spec=spec)).job_id

    def run(self, models=None, texts=None, dataset=None, token_ids=None, analyses=("phase",), spec=None,
            progress=False, on_event=None, check=True, **options):
        """Submits a job, streams its events and returns a Result.

        analyses: names from sinkscope.spec.ANALYSES ("sink_rate", "massive_values", "residual_stats",
        "matrix_entropy", "perplexity", "activation_stats", or "phase" for the study's comparison); options: the
        keywords of sinkscope.spec.OPTIONS (tau=, bos_mlp=["spike"], qk_disruption=True, control_seeds=[42, 43],
        per_prompt=True, max_prompts=, ...). progress=True prints a progress line on stderr; on_event(ev) sees
        every event. A failed or cancelled job raises JobFailedError / JobCancelledError (with .result) unless
        check=False. Ctrl-C (KeyboardInterrupt) cancels the job.
        """
        job_id = self.submit(models, texts=texts, dataset=dataset, token_ids=token_ids, analyses=analyses,
                             spec=spec, **options)
        try:
            return self.watch(job_id, progress=progress, on_event=on_event, check=check)
        except KeyboardInterrupt:
            self.cancel(job_id)
            raise

    def watch(self, job_id, from_seq=0, progress=False, on_event=None, check=True):
        """Streams a job's events (stored ones first) until it finishes; returns a Result."""
        events = []
        req = service_pb2.StreamJobRequest(job_id=job_id, from_seq=from_seq)
        try:
            for ev in self._stub.StreamJob(req, metadata=self._metadata()):
                events.append(ev)
                if on_event:
                    on_event(ev)
                if progress and ev.HasField("progress"):
                    p = ev.progress
                    sys.stderr.write(f"\r[{100 * p.fraction:3.0f}%] {p.model} {p.condition} "
                                     f"prompt {p.prompt + 1}/{p.num_prompts}\033[K")
                    sys.stderr.flush()
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.server) from None
        finally:
            if progress:
                sys.stderr.write("\r\033[K")
        result = Result(events)
        if check and result.state == "FAILED":
            raise JobFailedError(f"job {job_id} failed: {result.error}", result)
        if check and result.state == "CANCELLED":
            raise JobCancelledError(f"job {job_id} was cancelled: {result.error}", result)
        return result

    def get(self, job_id):
        """The job's record (a sinkscope.v1.Job: state, progress, spec, summary)."""
        return self._call("GetJob", service_pb2.GetJobRequest(job_id=job_id))

    def cancel(self, job_id):
        """Cancels a job; returns its state afterwards ("CANCELLED", or the terminal state it had reached)."""
        resp = self._call("CancelJob", service_pb2.CancelJobRequest(job_id=job_id))
        return jobs_pb2.JobState.Name(resp.state).replace(_STATE_PREFIX, "")

    def jobs(self, states=None, limit=50):
        """Jobs, newest first: id, state, progress, models, label."""
        req = service_pb2.ListJobsRequest(limit=limit)
        for s in states or []:
            try:
                req.states.append(jobs_pb2.JobState.Value(_STATE_PREFIX + s.upper()))
            except ValueError:
                raise UsageError(f"unknown state {s!r}") from None
        resp = self._call("ListJobs", req)
        return pd.DataFrame([{"id": j.id, "state": jobs_pb2.JobState.Name(j.state).replace(_STATE_PREFIX, ""),
                              "progress": j.progress, "models": list(j.spec.models), "label": j.spec.label,
                              "submitted": j.submitted_at.ToDatetime()} for j in resp.jobs])
