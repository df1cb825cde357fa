"""A self-contained report.html: inline CSS, plots as base64 data URIs, no scripts.

One file an operator can mail or attach to a ticket and open anywhere offline.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

from runtime.compare.report import fmt, table_sections

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:16px 0 4px}
table{border-collapse:collapse;font-size:13px;margin:4px 0 12px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f4f4f4}.meta{color:#555;font-size:13px}
.ratio{background:#fbfbe8;font-weight:600}.good{color:#17672e}.bad{color:#a4161a}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:8px}
.grid>div{min-width:0;overflow-x:auto}
.grid.wide{grid-template-columns:1fr}
pre{font-size:11px;background:#f7f7f7;padding:8px;overflow:auto;max-height:300px}
"""

# for these rows a ratio above 1 is better; for the others (latency) below 1 is
HIGHER_IS_BETTER = ("infer/s", "rows/s", "top-1", "cosine")


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path) -> str:
    return (f"<h3>{escape(path.name)}</h3>"
            f"<img alt='{escape(path.stem)}' src='{_data_uri(path)}'>")


def _ratio_class(label: str, text: str) -> str:
    try:
        value = float(text.rstrip("x"))
    except ValueError:
        return "ratio"
    if label.startswith("errors") or label.startswith("server avg batch") or abs(value - 1) < 0.05:
        return "ratio"
    better = value > 1 if label.startswith(HIGHER_IS_BETTER) else value < 1
    if label.startswith("weights"):
        better = value < 1
    return "ratio good" if better else "ratio bad"


def _html_table(header: list[str], rows: list[list[str]], n_values: int) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f"<td>{escape(row[0])}</td>"]
        for i, cell in enumerate(row[1:], start=1):
            if i > n_values:
                cells.append(f'<td class="{_ratio_class(row[0], cell)}">{escape(cell)}</td>')
            else:
                cells.append(f"<td>{escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _models_table(report: dict[str, Any]) -> str:
    header = ["model", "platform", "versions", "max batch", "engine", "device", "pattern",
              "sparse / dense layers", "dispatch reason"]
    rows = []
    for name in report["settings"]["models"]:
        m = report["models"][name]
        info = m.get("info") or {}
        rows.append([
            name, m.get("platform") or "-", ",".join(m.get("versions") or []) or "-",
            fmt(m.get("max_batch_size")), info.get("engine", "-"), info.get("device", "-"),
            info.get("sparsity_pattern", "-"),
            f"{info.get('sparse_layers', '-')} / {info.get('dense_layers', '-')}",
            info.get("reason", "-"),
        ])
    return _html_table(header, rows, len(header))


def render(report: dict[str, Any], plots: list[Path]) -> str:
    """The report as one HTML string, plots inlined."""
    s = report["settings"]
    models = s["models"]
    base = models[0]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>sparse-runtime compare: {escape(', '.join(models))}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Model comparison: {escape(' vs '.join(models))}</h1>",
        "<p class='meta'>"
        f"server <b>{escape(str(report['server']['url']))}</b> "
        f"({escape(str(report['server'].get('name') or 'unknown'))} "
        f"{escape(str(report['server'].get('version') or ''))}), "
        f"metrics {escape(str(report['server'].get('metrics_url') or 'not given'))}<br>"
        f"baseline <b>{escape(base)}</b>; concurrency {s['concurrency']}, batch {s['batch']}, "
        f"{s['duration_s']:g}s per run; inputs: {escape(s['inputs'])}<br>"
        f"{escape(report['created'])} to {escape(report['finished'])}, "
        f"{escape(report['tool'])}</p>",
        "<p class='meta'>Ratio columns are model/baseline: above 1 is better for throughput, "
        "below 1 is better for latency and bytes (green better, red worse, 5% band "
        "neutral).</p>",
        "<h2>Models</h2>",
        _models_table(report),
    ]
    overview = [p for p in plots if not p.name.startswith("latency_cdf_")]
    cdfs = [p for p in plots if p.name.startswith("latency_cdf_")]
    parts.append("<h2>Overview</h2>")
    parts.extend(_img(p) for p in overview)
    sections = table_sections(report)
    # NOTE: with more than two models a run's table no longer fits half the page
    grid = "grid wide" if len(models) > 2 else "grid"
    parts.append(f"<h2>Throughput and latency per run</h2><div class='{grid}'>")
    for title, header, rows in sections:
        if title.startswith("concurrency"):
            parts.append(f"<div><h3>{escape(title)}</h3>"
                         f"{_html_table(header, rows, len(models))}</div>")
    parts.append("</div>")
    for title, header, rows in sections:
        if not title.startswith("concurrency"):
            parts.append(f"<h2>{escape(title[0].upper() + title[1:])}</h2>")
            parts.append(_html_table(header, rows, len(models)))
    mem = report.get("memory") or {}
    if mem.get("after"):
        cells = ", ".join(
            f"{escape(k.replace('_bytes', ''))} {v / 2**20:,.0f} MiB"
            for k, v in mem["after"].items() if v is not None
        )
        parts.append(f"<p class='meta'>Server memory after the runs: {cells}</p>")
    elif not report["server"].get("metrics_url"):
        parts.append("<p class='meta'>No --metrics-url given: no server-side queue/compute "
                     "split and no memory figures.</p>")
    parts.append("<h2>Latency CDF per model</h2><div class='grid'>")
    parts.extend(f"<div>{_img(p)}</div>" for p in cdfs)
    parts.append("</div>")
    summary = {k: report[k] for k in ("settings", "ratios")}
    parts.append("<h2>Settings and ratios (from report.json)</h2>")
    parts.append(f"<pre>{escape(json.dumps(summary, indent=1))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
