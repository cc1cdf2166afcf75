"""Many jobs over one or more servers, resumable: the python side of `sinkscope batch` (docs/client.md).

    jobs = [{"name": f"sink-{i}", "models": ["tiny-rope"], "texts": [t], "analyses": ["sink_rate"]}
            for i, t in enumerate(texts)]
    b = sinkscope.run_batch(jobs, "runs/x", servers=["gpu1:50051", "gpu2:50051"], concurrency=4)
    b.summary()          # one row per job: name, state, server, job_id, seconds, error
    b.result().layers()  # every job's layer rows (job_id column tells them apart)

The output directory has the CLI's layout and manifest: DIR/manifest.json, DIR/jobs/<name>.jsonl. A rerun with the
same directory skips finished jobs, re-attaches to queued or running ones and resubmits failed ones; a job whose
content changed is a new job. KeyboardInterrupt cancels the submitted jobs unless detach=True.
"""

import concurrent.futures
import ipaddress
import json
import os
import socket
import threading
import time

import pandas as pd
from google.protobuf import json_format

from sinkscope.client import Client
from sinkscope.errors import SinkscopeError, UnavailableError, UsageError
from sinkscope.results import Result
from sinkscope.spec import build_spec
from sinkscope.v1 import jobs_pb2 as pb
from sinkscope.v1 import service_pb2

_TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def fingerprint(spec):
    """FNV-1a 64 of the deterministic binary encoding: the CLI computes the same for the same JobSpec."""
    h = 1469598103934665603
    for b in spec.SerializeToString(deterministic=True):
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _as_spec(job):
    """(name, JobSpec) of one job: a JobSpec, or a dict with "name" and either "spec" (JobSpec or dict) or the
    keyword arguments of Client.run."""
    if isinstance(job, pb.JobSpec):
        return job.label, job
    job = dict(job)
    name = job.pop("name", "")
    spec = job.pop("spec", None)
    if spec is None:
        spec = build_spec(job.pop("models"), **job)
    elif isinstance(spec, dict):
        spec = json_format.ParseDict(spec, pb.JobSpec())
    return name or spec.label, spec


class BatchResult:
    def __init__(self, out, manifest):
        self.out = out
        self.manifest = manifest

    def summary(self):
        return pd.DataFrame([{k: e.get(k) for k in ("name", "state", "server", "job_id", "seconds", "error")}
                             for e in self.manifest["jobs"]])

    @property
    def failed(self):
        return [e["name"] for e in self.manifest["jobs"] if e["state"] != "SUCCEEDED"]

    def result(self, name=None):
        """A Result over every job's events (or one job's)."""
        paths = [os.path.join(self.out, "jobs", e["name"] + ".jsonl") for e in self.manifest["jobs"]
                 if (name is None or e["name"] == name)]
        return Result.from_jsonl(*[p for p in paths if os.path.exists(p)])


def load_batch(out):
    """The BatchResult of a directory written by `sinkscope batch` or run_batch."""
    with open(os.path.join(out, "manifest.json")) as f:
        return BatchResult(out, json.load(f))


def replicas(servers):
    """{address: tls_name}: a "host:port" whose name resolves to several addresses is one replica per address."""
    out = {}
    for s in servers:
        host, _, port = s.strip().removeprefix("dns:///").rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
            addrs = [host]
        except ValueError:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addrs = list(dict.fromkeys(f"[{i[4][0]}]" if i[0] == socket.AF_INET6 else i[4][0] for i in infos))
        if len(addrs) == 1:
            out[f"{host}:{port}"] = None
        else:
            out.update({f"{a}:{port}": host for a in addrs})
    return out


def run_batch(jobs, out, servers=None, concurrency=None, token=None, tls_ca=None, detach=False, log=print):
    """Runs `jobs` (see the module doc) over `servers` (default $SINKSCOPE_SERVER); returns a BatchResult."""
    names = replicas(servers or os.environ.get("SINKSCOPE_SERVER", "127.0.0.1:50051").split(","))
    servers = list(names)
    clients = {s: Client(s, token=token, tls_ca=tls_ca, tls_name=n) for s, n in names.items()}
    os.makedirs(os.path.join(out, "jobs"), exist_ok=True)
    path = os.path.join(out, "manifest.json")
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = {e["name"]: e for e in json.load(f)["jobs"]}
    named, seen = [], set()
    for i, job in enumerate(jobs):
        name, spec = _as_spec(job)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or f"job-{i + 1:03d}"
        base, k = name, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        named.append((name, spec))
    lock = threading.Lock()
    manifest = {"version": 1, "jobs_file": "", "jobs": []}
    todo = []
    for name, spec in named:
        e = {"name": name, "fingerprint": fingerprint(spec), "server": "", "tls_name": "", "job_id": "",
             "state": "PENDING", "attempt": 0, "error_code": 0, "error": "", "seconds": 0.0}
        prev = old.get(name)
        action = "submit"
        if prev and prev.get("fingerprint") == e["fingerprint"]:
            e.update(prev)
            if e["state"] == "SUCCEEDED" and os.path.exists(os.path.join(out, "jobs", name + ".jsonl")):
                action = None
            elif e["job_id"] and e["state"] not in _TERMINAL:
                action = "attach"
            elif e["state"] in _TERMINAL:
                e.update(attempt=e["attempt"] + 1, job_id="", server="", state="PENDING")
            e.update(error="", error_code=0)
        manifest["jobs"].append(e)
        if action:
            todo.append((len(manifest["jobs"]) - 1, spec, action))
    inflight = {s: 0 for s in servers}
    stopping = threading.Event()

    def save():
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, path)

    def one(i, spec, action):
        e = manifest["jobs"][i]
        t0 = time.monotonic()
        if action == "submit":
            spec = pb.JobSpec.FromString(spec.SerializeToString())
            if not spec.label:
                spec.label = "batch:" + e["name"]
            with lock:  # a crash after this resubmits to the same server with the same key: the same job
                order = [e["server"]] if e["state"] == "SUBMITTING" and e["server"] else []
                order += sorted((s for s in servers if s not in order), key=lambda s: inflight.get(s, 0))
            last = None
            for server in order:
                with lock:
                    e.update(server=server, state="SUBMITTING")
                    save()
                client = clients.setdefault(server, Client(server, token=token, tls_ca=tls_ca))
                key = f"sinkscope-batch:{os.path.abspath(out)}:{e['name']}:{e['fingerprint']}:{e['attempt']}"
                try:
                    req = service_pb2.SubmitJobRequest(spec=spec, idempotency_key=key)
                    e["job_id"] = client._call("SubmitJob", req).job_id
                    last = None
                    break
                except UnavailableError as err:  # down or busy: the next server
                    last = err
                except SinkscopeError as err:
                    last = err
                    break
            if last is not None:
                with lock:
                    e.update(state="FAILED", error=f"rejected by {e['server']}: {last}",
                             error_code=last.code.value[0] if last.code else 0)
                    save()
                if log:
                    log(f"{e['name']:24} FAILED     {e['error']}")
                return
            with lock:
                e["state"] = "QUEUED"
                save()
        server = e["server"]
        client = clients.setdefault(server, Client(server, token=token, tls_ca=tls_ca))
        resubmit = False
        with lock:
            inflight[server] = inflight.get(server, 0) + 1
        try:
            r = client.watch(e["job_id"], check=False)
            r.save(os.path.join(out, "jobs", e["name"] + ".jsonl"))
            with lock:
                e.update(state=r.state if r.state in _TERMINAL else "LOST", error=r.error)
        except UsageError:  # the server forgot the job (restarted): submit again
            resubmit = True
            with lock:
                e.update(attempt=e["attempt"] + 1, job_id="", server="", state="PENDING")
        except SinkscopeError as err:
            with lock:
                e.update(state="LOST" if not stopping.is_set() else e["state"], error=str(err))
        finally:
            with lock:
                inflight[server] -= 1
                e["seconds"] = time.monotonic() - t0
                save()
        if resubmit:
            return one(i, spec, "submit")
        if log:
            log(f"{e['name']:24} {e['state']:10} {e['server']} {e['job_id']} {e['seconds']:.1f} s {e['error']}")

    save()
    n = concurrency or 2 * len(servers)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=n)
    try:
        futures = [pool.submit(one, *t) for t in todo]
        for f in futures:
            f.result()
    except KeyboardInterrupt:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        if not detach:
            for e in manifest["jobs"]:
                if e["job_id"] and e["state"] not in _TERMINAL:
                    e["state"] = clients[e["server"]].cancel(e["job_id"])
        with lock:
            save()
        raise
    pool.shutdown()
    return BatchResult(out, manifest)
