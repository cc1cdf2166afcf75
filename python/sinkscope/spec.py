"""Builds a sinkscope.v1.JobSpec from keyword arguments: the same vocabulary as `sinkscope run`'s flags."""

from sinkscope.v1 import jobs_pb2 as pb

# Analysis names accepted by Client.run(analyses=[...]) (aliases on the right).
ANALYSES = {
    "sink_rate": "sink_rate",
    "massive_values": "massive_values", "massive": "massive_values",
    "residual_stats": "residual_stats", "residual": "residual_stats",
    "matrix_entropy": "matrix_entropy", "entropy": "matrix_entropy",
    "perplexity": "perplexity",
    "activation_stats": "activation_stats", "stats": "activation_stats",
    # The study's RoPE-vs-DroPE phase comparison: every observational analysis, perplexity, and the BOS-MLP
    # ablation at the spike layer (what `sinkscope run --phase` runs).
    "phase": "phase",
}

OPTIONS = {
    "max_prompts": "use only the first N prompts", "max_tokens": "truncate prompts to N tokens (BOS included)",
    "tau": "sink threshold in [0,1] (0.3)", "query_rows": "'all' (study) or 'exclude-bos'",
    "attention": "'model' (true attention) or 'pre-rotary' (the study's manual method)",
    "lambda_": "massive threshold (5)", "post_rotary": "massive values on post-rotary q/k",
    "scope": "'layer' (study) or 'head'", "top_k": "top entries to report",
    "final_norm_last_layer": "study quirk: last layer after the final norm",
    "normalized_entropy": "also entropy / ln(rank)", "weight_by_t": "perplexity weighted by T",
    "bos_mlp": "BOS-MLP ablations: 'spike', 'jump' or a layer (list)", "qk_disruption": "Q/K massive-dim disruption",
    "qk_replacement": "'zero' (study) or 'mean'", "control_seeds": "random-control seeds for the disruption",
    "top_per_head": "Jin-style top-k per head mean replacement (k)", "ablate_heads": "[(layer, head), ...]",
    "hooks": "hook points for activation_stats", "per_prompt": "also each prompt's own results",
    "emit_token_ids": "also each prompt's token ids", "priority": "[-10, 10]", "deadline": "seconds",
    "label": "free text", "seed": "seed for random controls (42)",
    "truncate_to_context": "cut prompts longer than a model's context (else such a prompt is an error)",
    "no_cache": "run even when the server has this job's results cached",
}

_CHOICES = {
    "query_rows": {"all": pb.QUERY_ROWS_ALL, "exclude-bos": pb.QUERY_ROWS_EXCLUDE_BOS},
    "attention": {"model": pb.ATTENTION_SOURCE_MODEL, "pre-rotary": pb.ATTENTION_SOURCE_PRE_ROTARY},
    "scope": {"layer": pb.THRESHOLD_SCOPE_LAYER, "head": pb.THRESHOLD_SCOPE_HEAD},
    "qk_replacement": {"zero": pb.REPLACEMENT_ZERO, "mean": pb.REPLACEMENT_MEAN},
}


def _choice(name, value):
    if value is None:
        return 0  # unspecified: the server's default
    try:
        return _CHOICES[name][value]
    except KeyError:
        raise ValueError(f"{name}: expected one of {', '.join(_CHOICES[name])}, got {value!r}") from None


def build_spec(models, texts=None, dataset=None, token_ids=None, analyses=("phase",), **options):
    """A JobSpec for `models` on one input source (texts, a built-in dataset, or token id lists).

    Unknown options raise TypeError; bad values ValueError. Intervention labels are left to the server, which
    generates the documented ones (bos_mlp@spike, bos_mlp@L2, qk_massive, ...).
    """
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(OPTIONS))}")
    o = options.get
    if isinstance(models, str):
        models = [models]
    if not models:
        raise ValueError("models: at least one model")
    spec = pb.JobSpec(models=list(models))
    sources = sum(x is not None for x in (texts, dataset, token_ids))
    if sources != 1:
        raise ValueError("give exactly one of texts=, dataset=, token_ids=")
    if texts is not None:
        spec.inputs.texts.texts.extend([texts] if isinstance(texts, str) else list(texts))
    elif dataset is not None:
        spec.inputs.dataset = dataset
    else:
        for ids in token_ids:
            spec.inputs.token_ids.prompts.add(ids=list(ids))
    spec.inputs.max_prompts = o("max_prompts") or 0
    if o("max_tokens"):  # an empty Limits message would change the spec's fingerprint (batch resumes)
        spec.limits.max_tokens = o("max_tokens")

    if isinstance(analyses, str):
        analyses = [analyses]
    kinds = set()
    for a in analyses:
        if a not in ANALYSES:
            raise ValueError(f"unknown analysis {a!r}; known: {', '.join(sorted(ANALYSES))}")
        kinds.add(ANALYSES[a])
    phase = "phase" in kinds
    bos = list(o("bos_mlp") or ([] if not phase else ["spike"]))
    interventions = bos or o("qk_disruption") or o("top_per_head") or o("ablate_heads")
    if o("control_seeds") and not o("qk_disruption"):
        raise ValueError("control_seeds: only with qk_disruption=True")
    if o("hooks"):
        kinds.add("activation_stats")
    if not kinds and not interventions:
        raise ValueError("analyses: choose at least one")

    if phase or "sink_rate" in kinds:
        s = spec.analyses.add().sink_rate
        s.SetInParent()
        if o("tau") is not None:
            s.tau = o("tau")
        s.query_rows = _choice("query_rows", o("query_rows"))
        s.source = _choice("attention", o("attention"))
    if phase or "residual_stats" in kinds:
        spec.analyses.add().residual_stats.final_norm_last_layer = bool(o("final_norm_last_layer"))
    if phase or "matrix_entropy" in kinds:
        e = spec.analyses.add().matrix_entropy
        e.final_norm_last_layer = bool(o("final_norm_last_layer"))
        e.normalized = bool(o("normalized_entropy"))
    if phase or "massive_values" in kinds:
        m = spec.analyses.add().massive_values
        m.SetInParent()
        if o("lambda_") is not None:
            setattr(m, "lambda", o("lambda_"))
        m.post_rotary = bool(o("post_rotary"))
        m.scope = _choice("scope", o("scope"))
        m.top_k = o("top_k") or 0
    if "activation_stats" in kinds:
        a = spec.analyses.add().activation_stats
        a.hooks.extend(o("hooks") or [])
        a.top_k = o("top_k") or 0
    if phase or "perplexity" in kinds or interventions:
        p = spec.analyses.add().perplexity
        p.SetInParent()
        p.weight_by_t = bool(o("weight_by_t"))
        for b in bos:
            iv = p.interventions.add()
            if b in ("spike", "jump"):
                iv.bos_mlp.spike = pb.SPIKE_RULE_ARGMAX_RATIO if b == "spike" else pb.SPIKE_RULE_ARGMAX_JUMP
            elif isinstance(b, int) and b >= 0:
                iv.bos_mlp.layer = b
            else:
                raise ValueError(f"bos_mlp: {b!r} is not 'spike', 'jump' or a layer number")
        if o("qk_disruption"):
            q = p.interventions.add().qk_massive
            if o("lambda_") is not None:
                setattr(q, "lambda", o("lambda_"))
            q.replacement = _choice("qk_replacement", o("qk_replacement") or "zero")
            q.control_seeds.extend(o("control_seeds") or [])
        if o("top_per_head"):
            p.interventions.add().top_per_head.k = int(o("top_per_head"))
        if o("ablate_heads"):
            h = p.interventions.add().heads
            for layer, head in o("ablate_heads"):
                h.heads.add(layer=layer, head=head)
    spec.priority = o("priority") or 0
    spec.deadline_seconds = o("deadline") or 0
    spec.label = o("label") or ""
    spec.seed = o("seed") or 0
    spec.per_prompt = bool(o("per_prompt") or o("emit_token_ids"))
    spec.emit_token_ids = bool(o("emit_token_ids"))
    spec.truncate_to_context = bool(o("truncate_to_context"))
    spec.no_cache = bool(o("no_cache"))
    return spec
