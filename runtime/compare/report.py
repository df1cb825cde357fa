"""report.json assembly helpers and the terminal table (ratio other/baseline per row)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# (label, getter path in a run dict, unit scale) for the rows that get a ratio
RUN_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("infer/s", ("infer_per_s",)),
    ("rows/s", ("rows_per_s",)),
    ("p50 ms", ("latency_ms", "p50")),
    ("p95 ms", ("latency_ms", "p95")),
    ("p99 ms", ("latency_ms", "p99")),
    ("server queue ms", ("server", "queue_ms")),
    ("server compute ms", ("server", "compute_ms")),
    ("server request ms", ("server", "request_ms")),
    ("server avg batch", ("server", "avg_server_batch")),
    ("errors", ("errors",)),
]

RATIO_KEYS: dict[str, tuple[str, ...]] = {
    "infer_per_s": ("infer_per_s",),
    "rows_per_s": ("rows_per_s",),
    "p50_ms": ("latency_ms", "p50"),
    "p95_ms": ("latency_ms", "p95"),
    "p99_ms": ("latency_ms", "p99"),
    "queue_ms": ("server", "queue_ms"),
    "compute_ms": ("server", "compute_ms"),
    "request_ms": ("server", "request_ms"),
}


def dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def ratio(other: Any, base: Any) -> float | None:
    """other/base, or None when either is missing or the base is zero."""
    if not isinstance(other, int | float) or not isinstance(base, int | float) or base == 0:
        return None
    return float(other) / float(base)


def find_run(runs: list[dict[str, Any]], model: str, c: int, b: int) -> dict[str, Any] | None:
    return next(
        (r for r in runs if r["model"] == model and r["concurrency"] == c and r["batch"] == b),
        None,
    )


def ratios(runs: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """One entry per non-baseline model and (concurrency, batch): other/baseline."""
    base = models[0]
    out = []
    cells = sorted({(r["concurrency"], r["batch"]) for r in runs})
    for model in models[1:]:
        for c, b in cells:
            r_base, r_other = find_run(runs, base, c, b), find_run(runs, model, c, b)
            if r_base is None or r_other is None:
                continue
            entry: dict[str, Any] = {"model": model, "baseline": base, "concurrency": c,
                                     "batch": b}
            for key, path in RATIO_KEYS.items():
                entry[key] = ratio(dig(r_other, path), dig(r_base, path))
            out.append(entry)
    return out


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON; write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2e}"
    return str(value)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return lines


def table_sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) sections shared by the terminal table and the HTML."""
    models: list[str] = report["settings"]["models"]
    base = models[0]
    runs = report["runs"]
    header = ["metric", *models, *[f"{m}/{base}" for m in models[1:]]]
    sections = []
    for c in report["settings"]["concurrency"]:
        for b in report["settings"]["batch"]:
            per_model = [find_run(runs, m, c, b) for m in models]
            rows = []
            for label, path in RUN_ROWS:
                values = [dig(r, path) for r in per_model]
                if path[0] == "server" and all(v is None for v in values):
                    continue
                rows.append([label, *[fmt(v) for v in values],
                             *[fmt_ratio(ratio(v, values[0])) for v in values[1:]]])
            sections.append((f"concurrency {c}, batch {b}", header, rows))
    mem_rows = []
    for form in ("dense", "stored", "compressed_24"):
        values = [dig(report["models"][m], ("weight_bytes", form)) for m in models]
        if all(v is None for v in values):
            continue
        mib = [v / 2**20 if v is not None else None for v in values]
        mem_rows.append([f"weights {form} MiB", *[fmt(v) for v in mib],
                         *[fmt_ratio(ratio(v, values[0])) for v in values[1:]]])
    ratios_ = [dig(report["models"][m], ("sparsity_ratio",)) for m in models]
    if any(v is not None for v in ratios_):
        mem_rows.append(["sparsity ratio", *[fmt(v) for v in ratios_],
                         *[fmt_ratio(ratio(v, ratios_[0])) for v in ratios_[1:]]])
    if mem_rows:
        sections.append(("model weights (from metrics)", header, mem_rows))
    agree_header = ["agreement vs " + base, *models]
    agree_rows = []
    for label, key in (("max abs diff", "max_abs_diff"), ("mean abs diff", "mean_abs_diff"),
                       ("cosine mean", "cosine_mean"), ("cosine min", "cosine_min"),
                       ("top-1 agreement", "top1_agreement"), ("exact", "exact")):
        for out_name in report["agreement"]["outputs"]:
            values = [dig(report["agreement"]["models"].get(m, {}), (out_name, key))
                      for m in models]
            suffix = f" [{out_name}]" if len(report["agreement"]["outputs"]) > 1 else ""
            agree_rows.append([label + suffix, *[fmt(v) for v in values]])
    sections.append((
        f"output agreement on {report['agreement']['rows']} identical rows "
        f"({base} column: a second run of {base})",
        agree_header, agree_rows,
    ))
    return sections


def format_table(report: dict[str, Any]) -> str:
    """Plain-text tables for the terminal."""
    lines: list[str] = []
    for title, header, rows in table_sections(report):
        lines.append("")
        lines.append(f"== {title}")
        lines.extend(_table(header, rows))
    mem = report.get("memory") or {}
    after = mem.get("after") or {}
    if after:
        parts = [f"{k.replace('_bytes', '')} {v / 2**20:,.0f} MiB"
                 for k, v in after.items() if v is not None]
        if parts:
            lines.append("")
            lines.append("server memory after the runs: " + ", ".join(parts))
    return "\n".join(lines)
