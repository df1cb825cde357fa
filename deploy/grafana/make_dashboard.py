"""Write deploy/grafana/dashboards/sparse-runtime.json (run from the repository root):

    .venv/bin/python deploy/grafana/make_dashboard.py

The dashboard compares models served by sparse-runtime (a dense model and its pruned / 2:4
variant) using only metrics the runtime exports, queried raw (no recording rules needed), so it
works with any Prometheus that scrapes the runtime: deploy/compose.yaml, the Prometheus Operator
(ServiceMonitor), or Triton itself for the nv_* panels.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "sparse-runtime.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
RI = "[$__rate_interval]"


def per_request(counter: str, sel: str) -> str:
    """Average microseconds per successful request over the rate window."""
    return (
        f"sum by (model) (rate({counter}{{{sel}}}{RI}))"
        f" / sum by (model) (rate(nv_inference_request_success{{{sel}}}{RI}))"
    )


def quantile(q: float, hist: str, sel: str, by: str = "model") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({hist}_bucket{{{sel}}}{RI})))"


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "id": len(self.panels) + 1,
            }
        )
        self.y += 1

    def newline(self) -> None:
        self.y += self.row_h
        self.x, self.row_h = 0, 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = len(self.panels) + 1
        panel.setdefault("datasource", DS)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr: str, legend: str = "", ref: str = "A", **extra: object) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def label_table(
    title: str, description: str, expr: str, columns: tuple[str, ...] = ()
) -> dict:
    """A table of an info-style gauge's labels (value and scrape labels hidden)."""
    organize: dict[str, object] = {
        "excludeByName": {
            "Time": True,
            "Value": True,
            "__name__": True,
            "job": True,
            "instance": True,
            "site": True,
        }
    }
    if columns:
        organize["indexByName"] = {name: i for i, name in enumerate(columns)}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "targets": [target(expr, "", format="table", instant=True)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "transformations": [{"id": "organize", "options": organize}],
        "options": {"showHeader": True, "cellHeight": "sm"},
    }


def timeseries(
    title: str,
    targets: list[dict],
    unit: str,
    description: str = "",
    stack: bool = False,
    bars: bool = False,
) -> dict:
    custom: dict = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "lineWidth": 1,
        "showPoints": "never",
    }
    if stack:
        custom["stacking"] = {"group": "A", "mode": "normal"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "mean", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str, expr: str, unit: str, description: str, thresholds: list[dict] | None = None
) -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": [target(expr, "", instant=True)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 2,
                "thresholds": {
                    "mode": "absolute",
                    "steps": thresholds or [{"color": "text", "value": None}],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "value",
        },
    }


def build() -> dict:
    lay = Layout()
    base, var = 'model="$baseline"', 'model="$variant"'
    lower_is_better = [
        {"color": "green", "value": None},
        {"color": "orange", "value": 1.0},
        {"color": "red", "value": 1.2},
    ]
    higher_is_better = [
        {"color": "red", "value": None},
        {"color": "orange", "value": 0.9},
        {"color": "green", "value": 1.0},
    ]

    lay.row("Variant vs baseline ($variant / $baseline)")
    lay.add(
        stat(
            "Throughput ratio",
            f"sum(rate(nv_inference_request_success{{{var}}}{RI}))"
            f" / sum(rate(nv_inference_request_success{{{base}}}{RI}))",
            "x",
            "Successful requests/s of the variant divided by the baseline's (>1: variant "
            "serves more). Meaningful when both get the same load.",
            higher_is_better,
        ),
        6,
        5,
    )
    lay.add(
        stat(
            "p95 latency ratio",
            f"{quantile(0.95, 'sparse_runtime_request_duration_seconds', var, '')}"
            f" / {quantile(0.95, 'sparse_runtime_request_duration_seconds', base, '')}",
            "x",
            "p95 end-to-end request latency, variant / baseline (<1: variant is faster).",
            lower_is_better,
        ),
        6,
        5,
    )
    lay.add(
        stat(
            "Compute per request ratio",
            f"({per_request('nv_inference_compute_infer_duration_us', var)})"
            f" / ignoring(model) ({per_request('nv_inference_compute_infer_duration_us', base)})",
            "x",
            "Engine (infer) time per request, variant / baseline: the kernel-level effect of "
            "sparsity without queueing.",
            lower_is_better,
        ),
        6,
        5,
    )
    lay.add(
        stat(
            "Stored weight bytes ratio",
            f'sum(sparse_runtime_model_weight_bytes{{{var},form="stored"}})'
            f' / sum(sparse_runtime_model_weight_bytes{{{base},form="stored"}})',
            "x",
            "Bytes of weights as stored on disk, variant / baseline (packed 2:4 and "
            "compressed formats shrink this).",
            lower_is_better,
        ),
        6,
        5,
    )

    lay.row("Throughput")
    lay.add(
        timeseries(
            "Requests/s by model",
            [
                target(
                    f"sum by (model) (rate(nv_inference_request_success{{{M}}}{RI}))", "{{model}}"
                )
            ],
            "reqps",
            "Successful inference requests per second.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Inferences/s (rows) by model",
            [target(f"sum by (model) (rate(nv_inference_count{{{M}}}{RI}))", "{{model}}")],
            "short",
            "Batch rows inferred per second.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Failures/s by model and reason",
            [
                target(
                    f"sum by (model, reason) (rate(nv_inference_request_failure{{{M}}}{RI}))",
                    "{{model}} {{reason}}",
                )
            ],
            "reqps",
            "Failed requests per second.",
        ),
        8,
        8,
    )

    lay.row("Latency")
    lay.add(
        timeseries(
            "Request latency quantiles",
            [
                target(
                    quantile(q, "sparse_runtime_request_duration_seconds", M),
                    f"{{{{model}}}} p{int(q * 100)}",
                    ref,
                )
                for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
            ],
            "s",
            "End-to-end request latency from the runtime's histogram.",
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            "Queue vs compute per request",
            [
                target(per_request("nv_inference_queue_duration_us", M), "{{model}} queue", "A"),
                target(
                    f"sum by (model) (rate(nv_inference_compute_input_duration_us{{{M}}}{RI})"
                    f" + rate(nv_inference_compute_infer_duration_us{{{M}}}{RI})"
                    f" + rate(nv_inference_compute_output_duration_us{{{M}}}{RI}))"
                    f" / sum by (model) (rate(nv_inference_request_success{{{M}}}{RI}))",
                    "{{model}} compute",
                    "B",
                ),
            ],
            "µs",
            "Average time per request waiting in the queue and in the engine "
            "(input + infer + output), from Triton's cumulative microsecond counters.",
            stack=True,
            bars=True,
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            "Queue and compute p95",
            [
                target(
                    quantile(0.95, "sparse_runtime_queue_duration_seconds", M),
                    "{{model}} queue p95",
                    "A",
                ),
                target(
                    quantile(0.95, "sparse_runtime_compute_duration_seconds", M),
                    "{{model}} compute p95",
                    "B",
                ),
            ],
            "s",
            "p95 of queue wait and of engine time per batch.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Average batch size",
            [
                target(
                    f"sum by (model) (rate(sparse_runtime_batch_size_sum{{{M}}}{RI}))"
                    f" / sum by (model) (rate(sparse_runtime_batch_size_count{{{M}}}{RI}))",
                    "{{model}}",
                )
            ],
            "short",
            "Rows per engine call (dynamic batching).",
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Pending requests",
            [target(f"sum by (model) (nv_inference_pending_request_count{{{M}}})", "{{model}}")],
            "short",
            "Requests waiting in each model's queue.",
        ),
        8,
        8,
    )

    lay.row("Models")
    lay.add(
        {
            "type": "bargauge",
            "title": "Weight bytes: dense vs stored",
            "description": "dense: the weights as dense fp tensors; stored: as served from disk; "
            "compressed_24: the 2:4 packed form.",
            "targets": [
                target(
                    f"sparse_runtime_model_weight_bytes{{{M}}}", "{{model}} {{form}}", instant=True
                )
            ],
            "fieldConfig": {"defaults": {"unit": "bytes", "min": 0}, "overrides": []},
            "options": {
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        },
        12,
        8,
    )
    lay.add(
        {
            "type": "bargauge",
            "title": "Weight sparsity",
            "description": "Fraction of weights that are zero.",
            "targets": [
                target(f"sparse_runtime_model_sparsity_ratio{{{M}}}", "{{model}}", instant=True)
            ],
            "fieldConfig": {
                "defaults": {"unit": "percentunit", "min": 0, "max": 1},
                "overrides": [],
            },
            "options": {
                "orientation": "horizontal",
                "displayMode": "gradient",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        },
        6,
        8,
    )
    lay.add(
        {
            "type": "bargauge",
            "title": "Model load time",
            "targets": [target(f"nv_model_load_duration_secs{{{M}}}", "{{model}}", instant=True)],
            "fieldConfig": {"defaults": {"unit": "s", "min": 0}, "overrides": []},
            "options": {
                "orientation": "horizontal",
                "displayMode": "basic",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        },
        6,
        8,
    )
    lay.add(
        label_table(
            "Where each model runs and why",
            "sparse_runtime_model_info: engine and device chosen per model, the "
            "sparsity pattern found and the dispatch reason.",
            f"sparse_runtime_model_info{{{M}}}",
            ("model", "version", "engine", "device", "sparsity_pattern", "sparse_layers",
             "dense_layers", "reason"),
        ),
        24,
        7,
    )

    lay.row("Memory and GPU")
    lay.add(
        timeseries(
            "Process and host memory",
            [
                target("process_resident_memory_bytes", "RSS {{instance}}", "A"),
                target("nv_cpu_memory_used_bytes", "host used {{instance}}", "B"),
                target("nv_cpu_memory_total_bytes", "host total {{instance}}", "C"),
            ],
            "bytes",
            "Server resident memory (all models) and host memory.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "GPU memory",
            [
                target("nv_gpu_memory_used_bytes", "used {{gpu_uuid}}", "A"),
                target("nv_gpu_memory_total_bytes", "total {{gpu_uuid}}", "B"),
            ],
            "bytes",
            "Only on GPU hosts (NVML).",
        ),
        6,
        8,
    )
    lay.add(
        timeseries(
            "GPU utilization",
            [target("nv_gpu_utilization", "{{gpu_uuid}}", "A")],
            "percentunit",
            "Only on GPU hosts (NVML).",
        ),
        6,
        8,
    )
    lay.add(
        label_table(
            "Kernel per layer (GPU)",
            "sparse_runtime_layer_kernel: which kernel (2:4 sparse or dense) each "
            "layer runs with, on GPU hosts.",
            f"sparse_runtime_layer_kernel{{{M}}}",
        ),
        24,
        7,
    )

    def model_var(name: str, label: str, multi: bool, default: str | None) -> dict:
        var = {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "definition": "label_values(nv_inference_request_success, model)",
            "query": {
                "query": "label_values(nv_inference_request_success, model)",
                "refId": f"{name}-query",
                "qryType": 1,
            },
            "refresh": 2,
            "sort": 1,
            "multi": multi,
            "includeAll": multi,
            "current": {},
        }
        if default is not None:
            var["current"] = {"selected": True, "text": default, "value": default}
        elif multi:
            var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        return var

    return {
        "uid": "sparse-runtime",
        "title": "sparse-runtime: dense vs sparse",
        "description": "Throughput, latency, queue/compute split, weight bytes and memory of "
        "models served by sparse-runtime; compare a dense model with its "
        "pruned / 2:4 variant.",
        "tags": ["sparse-runtime", "triton", "inference"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "links": [],
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Prometheus",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                model_var("model", "Models", True, None),
                model_var("baseline", "Baseline (dense)", False, "mlp_dense"),
                model_var("variant", "Variant (sparse)", False, "mlp_sparse24"),
            ]
        },
        "panels": lay.panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
