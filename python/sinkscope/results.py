"""A job's events as pandas DataFrames.

Every number the server streams is kept at full precision. DataFrame columns use the CLI's metric names
(docs/client.md); 64-bit integers (num_targets, num_tokens, seed) are Python ints here, not JSON strings.
"""

import json
import math

import pandas as pd
from google.protobuf import json_format

from sinkscope.v1 import jobs_pb2 as pb

_TENSORS = {pb.QKV_TENSOR_Q: "q", pb.QKV_TENSOR_K: "k", pb.QKV_TENSOR_V: "v"}


def _stat(row, name, s):
    row[name] = s.mean
    row[name + "_std"] = s.std
    row[name + "_n"] = s.n


def load_events(path):
    """Reads a JSON-lines event file (`sinkscope -f json run`, `run --save`, `batch` DIR/jobs/*.jsonl)."""
    events = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            ev = pb.JobEvent()
            try:
                json_format.Parse(line, ev, ignore_unknown_fields=True)
            except json_format.ParseError as e:
                raise ValueError(f"{path}:{n}: not a job event: {e}") from None
            events.append(ev)
    return events


class Result:
    """The events of one job (or of several, when loaded from files), with DataFrame views.

    layers()             one row per (job, model, layer): sink rate, BOS norms and ratio, entropy, massive counts
    heads()              one row per (job, model, layer, head): the sink score of each head
    perplexity()         one row per (job, model, condition)
    summary()            one row per metric, one column per model (the comparison table's values)
    comparison()         one row per (metric, model): value, diff and ratio to the first model (NaN where a ratio
                         means nothing: layer indices, percentages)
    provenance()         one row per model: digests, dtype, device, prompts (truncated), tokens, forward passes
    prompts()            per prompt and layer (per_prompt=True)
    prompt_perplexity()  per prompt and condition (per_prompt=True)
    token_ids()          per prompt: the ids as run (emit_token_ids=True)
    """

    def __init__(self, events):
        self.events = list(events)

    @classmethod
    def from_jsonl(cls, *paths):
        events = []
        for p in paths:
            events.extend(load_events(p))
        return cls(events)

    @property
    def job_id(self):
        return self.events[0].job_id if self.events else ""

    @property
    def state(self):
        """SUCCEEDED, FAILED, CANCELLED, or RUNNING while the stream has no Finished event."""
        for ev in reversed(self.events):
            if ev.HasField("finished"):
                return pb.JobState.Name(ev.finished.state).replace("JOB_STATE_", "")
        return "RUNNING"

    @property
    def error(self):
        for ev in reversed(self.events):
            if ev.HasField("finished"):
                return ev.finished.error.message
        return ""

    def _of(self, kind):
        return [(ev.job_id, getattr(ev, kind)) for ev in self.events if ev.WhichOneof("event") == kind]

    def layers(self):
        rows = []
        for job, r in self._of("layer"):
            row = {"job_id": job, "model": r.model, "layer": r.layer}
            if r.HasField("sink_rate"):
                _stat(row, "sink_rate", r.sink_rate.sink_rate)
                row["tau"] = r.sink_rate.tau
            if r.HasField("residual_stats"):
                _stat(row, "bos_norm", r.residual_stats.bos_norm)
                _stat(row, "mean_other_norm", r.residual_stats.mean_other_norm)
                _stat(row, "bos_ratio", r.residual_stats.ratio)
            if r.HasField("matrix_entropy"):
                _stat(row, "entropy", r.matrix_entropy.entropy)
                _stat(row, "anisotropy", r.matrix_entropy.anisotropy)
                if r.matrix_entropy.normalized_entropy.n > 0:
                    _stat(row, "normalized_entropy", r.matrix_entropy.normalized_entropy)
            if r.HasField("massive_values"):
                for t in r.massive_values.tensors:
                    name = _TENSORS.get(t.tensor, str(t.tensor))
                    _stat(row, f"massive_{name}", t.count)
                    row[f"massive_{name}_threshold"] = t.threshold
                    row[f"massive_{name}_gini"] = t.gini
                    if t.top:
                        row[f"massive_{name}_top"] = t.top[0].value
            if r.HasField("activation_stats"):
                for e in r.activation_stats.entries:
                    pos = pb.PositionClass.Name(e.positions).replace("POSITION_CLASS_", "").lower()
                    for k in ("mean", "std", "max_abs", "mean_norm", "max_norm"):
                        row[f"{e.hook}.{pos}.{k}"] = getattr(e, k)
            rows.append(row)
        return pd.DataFrame(rows)

    def heads(self):
        rows = [{"job_id": job, "model": r.model, "layer": r.layer, "head": h, "score": s}
                for job, r in self._of("layer") if r.HasField("sink_rate")
                for h, s in enumerate(r.sink_rate.head_scores)]
        return pd.DataFrame(rows, columns=["job_id", "model", "layer", "head", "score"])

    def perplexity(self):
        rows = []
        for job, r in self._of("perplexity"):
            rows.append({"job_id": job, "model": r.model, "condition": r.condition, "perplexity": r.perplexity,
                         "mean_nll": r.mean_nll, "num_targets": int(r.num_targets),
                         "ratio_to_baseline": r.ratio_to_baseline,
                         "control_mean": r.control.mean if r.control_perplexities else math.nan,
                         "control_std": r.control.std if r.control_perplexities else math.nan,
                         "control_n": r.control.n, "control_perplexities": list(r.control_perplexities),
                         "resolved_layer": r.resolved_layer, "disrupted_dims": r.disrupted_dims,
                         "detail": r.detail})
        return pd.DataFrame(rows)

    def _summary(self):
        for _, s in reversed(self._of("summary")):
            return s
        return None

    def summary(self):
        s = self._summary()
        if s is None:
            return pd.DataFrame()
        data = {m.model: dict(m.metrics) for m in s.models}
        df = pd.DataFrame(data)
        df.index.name = "metric"
        return df.sort_index()

    def comparison(self):
        s = self._summary()
        rows = []
        if s is not None:
            for r in s.comparison:
                meaningful = "layer" not in r.metric and not r.metric.endswith("_pct")
                for i, m in enumerate(s.models):
                    rows.append({"metric": r.metric, "model": m.model, "value": r.values[i],
                                 "diff": r.diffs[i] if i < len(r.diffs) else math.nan,
                                 "ratio": r.ratios[i] if meaningful and r.values[0] != 0 and i < len(r.ratios)
                                 else math.nan})
        return pd.DataFrame(rows, columns=["metric", "model", "value", "diff", "ratio"])

    def provenance(self):
        s = self._summary()
        if s is None:
            return pd.DataFrame()
        return pd.DataFrame([{"model": m.model, "weights_digest": m.weights_digest,
                              "tokenizer_digest": m.tokenizer_digest, "dtype": m.dtype, "device": m.device,
                              "num_prompts": m.num_prompts, "num_tokens": int(m.num_tokens),
                              "num_forward_passes": m.num_forward_passes, "truncated_prompts": m.truncated_prompts,
                              "inputs_digest": s.inputs_digest, "seed": int(s.seed),
                              "server_version": s.server_version, "elapsed_seconds": s.elapsed_seconds,
                              "cached_from": s.cached_from if s.cached else ""} for m in s.models])

    def _tensor_names(self):
        names = {}
        for _, r in self._of("layer"):
            if r.HasField("massive_values"):
                names[r.model] = [_TENSORS.get(t.tensor, str(t.tensor)) for t in r.massive_values.tensors]
        return names

    def prompts(self):
        tensors = self._tensor_names()
        rows = []
        for job, p in self._of("prompt"):
            for l in p.layers:
                row = {"job_id": job, "model": p.model, "prompt": p.prompt, "num_tokens": p.num_tokens,
                       "layer": l.layer}
                for k in ("sink_rate", "bos_norm", "mean_other_norm", "bos_ratio", "entropy", "anisotropy"):
                    if l.HasField(k):
                        row[k] = getattr(l, k)
                names = tensors.get(p.model, ["q", "k", "v"])
                for i, c in enumerate(l.massive_counts):
                    row[f"massive_{names[i] if i < len(names) else i}"] = c
                if l.head_scores:
                    row["head_scores"] = list(l.head_scores)
                rows.append(row)
        return pd.DataFrame(rows)

    def prompt_perplexity(self):
        rows = [{"job_id": job, "model": p.model, "prompt": p.prompt, "num_tokens": p.num_tokens,
                 "condition": c.condition, "nll_sum": c.nll_sum, "num_targets": c.num_targets,
                 "perplexity": c.perplexity}
                for job, p in self._of("prompt") for c in p.perplexity]
        return pd.DataFrame(rows, columns=["job_id", "model", "prompt", "num_tokens", "condition", "nll_sum",
                                           "num_targets", "perplexity"])

    def token_ids(self):
        rows = [{"job_id": job, "model": p.model, "prompt": p.prompt, "num_tokens": p.num_tokens,
                 "token_ids": list(p.token_ids)} for job, p in self._of("prompt")]
        return pd.DataFrame(rows, columns=["job_id", "model", "prompt", "num_tokens", "token_ids"])

    def save(self, path):
        """Writes the events as JSON lines, as `sinkscope -f json` does (readable by `sinkscope plot`)."""
        with open(path, "w") as f:
            for ev in self.events:
                d = json_format.MessageToDict(ev, including_default_value_fields=True,
                                              preserving_proto_field_name=True)
                f.write(json.dumps(d, separators=(",", ":")) + "\n")

    def __repr__(self):
        return f"<sinkscope.Result job {self.job_id} {self.state}, {len(self.events)} events>"
