"""PNG plots with matplotlib's object API (Agg canvas, no pyplot global state).

matplotlib is imported lazily so `compare --help` and the rest of the CLI stay light,
and a missing install fails with a clear message instead of an ImportError trace.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from runtime.compare.errors import CompareError

Latencies = dict[tuple[str, int, int], np.ndarray]


def require_matplotlib() -> None:
    """Checked before any load is sent, so a missing install costs seconds, not a run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CompareError(
            "matplotlib is needed for the report plots: pip install 'sparse-runtime[compare]' "
            "(or pip install matplotlib)"
        ) from None


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def latency_cdf(model: str, latencies: Latencies, path: Path) -> Path:
    """One line per (concurrency, batch): fraction of requests at or under a latency."""
    fig, (ax,) = _figure(7, 4.2)
    cells = sorted((c, b) for (m, c, b) in latencies if m == model)
    for c, b in cells:
        lat = np.sort(latencies[(model, c, b)]) * 1e3
        if lat.size == 0:
            continue
        y = np.arange(1, lat.size + 1) / lat.size
        ax.plot(lat, y, label=f"c={c} b={b} (p99 {np.percentile(lat, 99):.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency per request (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Latency CDF: {model}")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path)
    return path


def throughput(report: dict[str, Any], path: Path) -> Path:
    """infer/s and rows/s against concurrency; colour per model, line style per batch."""
    fig, (ax1, ax2) = _figure(11, 4.2, ncols=2)
    models = report["settings"]["models"]
    styles = ["-", "--", ":", "-."]
    colours = [f"C{i}" for i in range(10)]
    for mi, model in enumerate(models):
        for bi, b in enumerate(report["settings"]["batch"]):
            runs = sorted((r for r in report["runs"] if r["model"] == model and r["batch"] == b),
                          key=lambda r: r["concurrency"])
            xs = [r["concurrency"] for r in runs]
            kw = {"color": colours[mi % 10], "ls": styles[bi % 4], "marker": "o"}
            ax1.plot(xs, [r["infer_per_s"] for r in runs], label=f"{model} b={b}", **kw)
            ax2.plot(xs, [r["rows_per_s"] for r in runs], label=f"{model} b={b}", **kw)
    for ax, what in ((ax1, "requests/s"), (ax2, "rows/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["settings"]["concurrency"],
                      [str(c) for c in report["settings"]["concurrency"]])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(what)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"Throughput ({what}) vs concurrency")
    ax1.legend(fontsize=8)
    fig.savefig(path)
    return path


def memory(report: dict[str, Any], path: Path) -> Path | None:
    """Weight bytes per model and form; server RSS/GPU before and after. None: no data."""
    models = report["settings"]["models"]
    forms = ("dense", "stored", "compressed_24")
    weights = {m: report["models"][m].get("weight_bytes") or {} for m in models}
    mem = report.get("memory") or {}
    server = [(when, k, v) for when in ("before", "after")
              for k, v in (mem.get(when) or {}).items()
              if v is not None and k != "cpu_used_bytes"]
    if not any(weights.values()) and not server:
        return None
    fig, (ax1, ax2) = _figure(11, 4.2, ncols=2)
    x = np.arange(len(models))
    width = 0.8 / len(forms)
    for fi, form in enumerate(forms):
        vals = [(weights[m].get(form) or 0) / 2**20 for m in models]
        bars = ax1.bar(x + (fi - 1) * width, vals, width, label=form)
        ax1.bar_label(bars, fmt="%.1f", fontsize=7)
    ax1.set_xticks(x, models)
    ax1.set_ylabel("MiB")
    ax1.set_title("Model weight bytes (from sparse_runtime_model_weight_bytes)")
    if any(weights.values()):
        top = max((v or 0) for w in weights.values() for v in w.values()) / 2**20
        ax1.set_ylim(0, top * 1.3 or 1)
        ax1.legend(fontsize=8, ncols=3, loc="upper center")
    else:
        ax1.text(0.5, 0.5, "not exported by this server", ha="center", transform=ax1.transAxes)
    labels = [f"{k.replace('_bytes', '')}\n{when}" for when, k, _ in server]
    vals = [v / 2**20 for _, _, v in server]
    bars = ax2.bar(range(len(vals)), vals, color=["C0" if "before" in lb else "C1"
                                                 for lb in labels])
    ax2.bar_label(bars, fmt="%.0f", fontsize=7)
    if not vals:
        ax2.text(0.5, 0.5, "not exported by this server", ha="center", transform=ax2.transAxes)
    ax2.set_xticks(range(len(vals)), labels, fontsize=8)
    ax2.set_ylabel("MiB")
    ax2.set_title("Server memory (whole process) before/after the runs")
    fig.savefig(path)
    return path


def write_all(report: dict[str, Any], latencies: Latencies, out: Path) -> list[Path]:
    """Every plot the data allows; returns the files written."""
    written = []
    for model in report["settings"]["models"]:
        written.append(latency_cdf(model, latencies, out / f"latency_cdf_{safe_name(model)}.png"))
    written.append(throughput(report, out / "throughput.png"))
    mem = memory(report, out / "memory.png")
    if mem is not None:
        written.append(mem)
    return written
