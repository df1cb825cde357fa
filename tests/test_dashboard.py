"""The Grafana dashboard (deploy/grafana/dashboards/sparse-runtime.json): it parses, it is what
deploy/grafana/make_dashboard.py writes, it has the dense-vs-sparse panels the issue asks for,
and every metric its queries name is one the runtime really exports (checked against a live
scrape of the real server). tests/test_prometheus.py also runs every query on a real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sparse-runtime.json"
GENERATOR = ROOT / "deploy" / "grafana" / "make_dashboard.py"

# What the runtime exports (the serving contract); histograms as their sample names.
HISTOGRAMS = (
    "sparse_runtime_request_duration_seconds",
    "sparse_runtime_queue_duration_seconds",
    "sparse_runtime_compute_duration_seconds",
    "sparse_runtime_batch_size",
)
EXPORTED = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count", "nv_model_load_duration_secs",
    "nv_cpu_memory_used_bytes", "nv_cpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes", "nv_gpu_utilization", "nv_gpu_power_usage",
    "sparse_runtime_model_info",
    "sparse_runtime_model_weight_bytes", "sparse_runtime_model_sparsity_ratio",
    "sparse_runtime_layer_kernel", "process_resident_memory_bytes",
    *(f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")),
}  # fmt: skip
# Exported only where an NVIDIA GPU is present.
GPU_ONLY = {
    "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization",
    "nv_gpu_power_usage", "sparse_runtime_layer_kernel",
}  # fmt: skip

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression: panel targets and query variables (label_values(metric, l))."""
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"unexpected variable query {query}"
            exprs.append(match.group(1))
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions, keywords,
    label names in matchers / grouping clauses, or range durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d[\w.]*", " ", text)  # numbers and durations (5m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # function call
        if match.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(a_bucket{model=~"$model"}'
        '[$__rate_interval]))) / ignoring(model) (b{le="1"} + on(x) c) and bool d offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def test_dashboard_parses_and_is_generated() -> None:
    dashboard = load()
    spec = importlib.util.spec_from_file_location("make_dashboard", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert dashboard == json.loads(json.dumps(module.build())), (
        "dashboard JSON is stale: .venv/bin/python deploy/grafana/make_dashboard.py"
    )


def test_dashboard_has_the_comparison_panels() -> None:
    dashboard = load()
    assert dashboard["uid"] == "sparse-runtime"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["model"]["multi"] and variables["model"]["includeAll"]
    assert variables["baseline"]["current"]["value"] == "mlp_dense"
    assert variables["variant"]["current"]["value"] == "mlp_sparse24"
    by_title = {p["title"]: p for p in panels(dashboard) if p["type"] != "row"}
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    exprs_of = {t: " ".join(x["expr"] for x in p["targets"]) for t, p in by_title.items()}

    def panel_using(metric: str) -> list[str]:
        return [t for t, e in exprs_of.items() if metric in e]

    assert panel_using("nv_inference_request_success"), "throughput"
    assert any("histogram_quantile(0.99" in e for e in exprs_of.values()), "latency quantiles"
    queue_compute = by_title["Queue vs compute per request"]
    assert "nv_inference_queue_duration_us" in exprs_of["Queue vs compute per request"]
    assert "nv_inference_compute_infer_duration_us" in exprs_of["Queue vs compute per request"]
    assert queue_compute["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert panel_using('sparse_runtime_model_weight_bytes{model=~"$model"}')
    assert panel_using("process_resident_memory_bytes") and panel_using("nv_gpu_memory_used_bytes")
    info = by_title["Where each model runs and why"]
    assert info["type"] == "table" and info["targets"][0]["format"] == "table"
    order = info["transformations"][0]["options"]["indexByName"]
    assert {"model", "engine", "device", "reason"} <= set(order)
    # every panel except the comparison stats is templated by model
    for title, expr in exprs_of.items():
        if "$variant" in expr:
            assert "$baseline" in expr, title
        elif not any(m in expr for m in ("process_", "nv_cpu_", "nv_gpu_")):
            assert '$model"' in expr, f"{title} ignores the model variable"
    for p in panels(dashboard):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]


def test_every_query_names_a_metric_of_the_contract() -> None:
    names = set().union(*(metric_names(e) for e in expressions(load())))
    assert names, "no metric found in the dashboard"
    assert names <= EXPORTED, f"not exported by the runtime: {sorted(names - EXPORTED)}"


def scrape_names(text: str) -> set[str]:
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_query_names_a_metric_the_live_runtime_exports(server) -> None:
    """Against a live scrape of the real server, after inferences on both sample models."""
    client = grpcclient.InferenceServerClient(server.url)
    for model in ("mlp_dense", "mlp_sparse24"):
        for _ in range(3):
            inp = grpcclient.InferInput("x", [1, 256], "FP32")
            inp.set_data_from_numpy(np.ones((1, 256), np.float32))
            client.infer(model, [inp])
    live = scrape_names(server.scrape())
    has_gpu = any(n.startswith("nv_gpu_") for n in live)
    for expr in expressions(load()):
        for name in metric_names(expr):
            if name in GPU_ONLY and not has_gpu:
                assert name in EXPORTED
                continue
            assert name in live, f"{name} (in `{expr}`) is not in the live scrape"
