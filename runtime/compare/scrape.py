"""Read the server's Prometheus endpoint: Triton counters, memory gauges, model facts.

Works with real Triton too: metrics it lacks (RSS, weight bytes, model_info)
come back as None and the report says "not exported".
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from runtime.compare.errors import CompareError

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Triton's per-model counters (request counts and cumulative microseconds)
COUNTERS = {
    "success": "nv_inference_request_success",
    "failure": "nv_inference_request_failure",
    "inference_count": "nv_inference_count",
    "exec_count": "nv_inference_exec_count",
    "request_us": "nv_inference_request_duration_us",
    "queue_us": "nv_inference_queue_duration_us",
    "compute_input_us": "nv_inference_compute_input_duration_us",
    "compute_infer_us": "nv_inference_compute_infer_duration_us",
    "compute_output_us": "nv_inference_compute_output_duration_us",
}


def parse(text: str) -> Samples:
    """Prometheus text -> {(name, labels): value}, counters under their exposed names."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name
            # NOTE: the parser renames counter samples to <name>_total; Triton's have none
            if family.type == "counter" and name == family.name + "_total":
                name = family.name
            out[(name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(url: str, timeout_s: float = 10.0) -> Samples:
    """Fetch and parse; an unreachable endpoint is the operator's error, said clearly."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = repr(getattr(err, "reason", err))[:200]  # NOTE: a gRPC port answers binary
        raise CompareError(f"cannot scrape metrics at {url}: {reason}") from None
    try:
        return parse(text)
    except ValueError as err:
        raise CompareError(
            f"{url} did not return Prometheus text: {repr(str(err))[:200]}"
        ) from None


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """Sum of `name` samples whose labels include `labels`; None when none exist."""
    want = set(labels.items())
    values = [v for (n, lv), v in samples.items() if n == name and want <= lv]
    return sum(values) if values else None


def model_counters(samples: Samples, model: str) -> dict[str, float | None]:
    """Triton counters for one model, summed over its versions."""
    return {key: total(samples, name, model=model) for key, name in COUNTERS.items()}


def server_split(
    before: dict[str, float | None], after: dict[str, float | None]
) -> dict[str, Any] | None:
    """Per-request server averages over a run from counter deltas (Triton's definitions)."""
    if before.get("success") is None or after.get("success") is None:
        return None
    delta: dict[str, float | None] = {}
    for key in COUNTERS:
        a, b = after.get(key), before.get(key)
        delta[key] = a - b if a is not None and b is not None else None
    n = delta["success"] or 0.0
    if n <= 0:
        return {"requests": 0}

    def per_request_ms(key: str) -> float | None:
        value = delta[key]
        return value / n / 1e3 if value is not None else None

    queue = per_request_ms("queue_us")
    parts = [per_request_ms(k) for k in ("compute_input_us", "compute_infer_us",
                                         "compute_output_us")]
    known = [p for p in parts if p is not None]
    compute = sum(known) if known else None
    request = per_request_ms("request_us")
    overhead = (
        request - queue - compute
        if request is not None and queue is not None and compute is not None else None
    )
    execs = delta["exec_count"]
    rows = delta["inference_count"]
    return {
        "requests": int(n),
        "failures": int(delta["failure"] or 0),
        "request_ms": request,
        "queue_ms": queue,
        "compute_input_ms": parts[0],
        "compute_infer_ms": parts[1],
        "compute_output_ms": parts[2],
        "compute_ms": compute,
        "overhead_ms": overhead,
        "executions": int(execs) if execs is not None else None,
        "avg_server_batch": rows / execs if rows is not None and execs else None,
    }


def memory(samples: Samples) -> dict[str, float | None]:
    """Process and device memory (server-wide; one process serves every model)."""
    return {
        "rss_bytes": total(samples, "process_resident_memory_bytes"),
        "cpu_used_bytes": total(samples, "nv_cpu_memory_used_bytes"),
        "gpu_used_bytes": total(samples, "nv_gpu_memory_used_bytes"),
    }


def _first(samples: Samples, name: str, model: str) -> float | None:
    return next(
        (v for (n, lv), v in samples.items() if n == name and ("model", model) in lv), None
    )


def model_facts(samples: Samples, model: str) -> dict[str, Any]:
    """sparse-runtime's per-model gauges: engine, pattern, weight bytes, sparsity."""
    info = next(
        (dict(lv) for (n, lv), v in samples.items()
         if n == "sparse_runtime_model_info" and ("model", model) in lv and v),
        None,
    )
    if info is not None:
        info.pop("model", None)
    weights = {
        form: total(samples, "sparse_runtime_model_weight_bytes", model=model, form=form)
        for form in ("dense", "stored", "compressed_24")
    }
    return {
        "info": info,
        "weight_bytes": weights if any(v is not None for v in weights.values()) else None,
        "sparsity_ratio": _first(samples, "sparse_runtime_model_sparsity_ratio", model),
    }
