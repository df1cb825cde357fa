"""`sparse-runtime compare`: dense vs pruned / 2:4 variants on a running server.

Drives any KServe v2 gRPC server (standard RPCs only; the metrics endpoint is
optional) and writes report.json, a self-contained report.html and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

from runtime.compare.errors import CompareError
from runtime.compare.options import (
    MAX_CONCURRENCY,
    CompareSettings,
    normalize_metrics_url,
    parse_duration,
    parse_int_list,
    parse_models,
)

LOGGER = logging.getLogger(__name__)
MAX_BATCH = 1 << 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="localhost:8001", help="gRPC HOST:PORT of the server")
    parser.add_argument("--models", required=True,
                        help="comma-separated model names; the first is the baseline")
    parser.add_argument("--concurrency", default="1,4,16", help="requests in flight, e.g. 1,4,16")
    parser.add_argument("--batch", default="1,8", help="rows per request, e.g. 1,8")
    parser.add_argument("--duration", default="10s", help="per run, e.g. 10s, 500ms (max 1h)")
    parser.add_argument("--metrics-url", default=None,
                        help="Prometheus endpoint HOST:8002 for queue/compute split and memory")
    parser.add_argument("--inputs", type=Path, default=None,
                        help=".npz with one array per input (rows first); default random data")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output directory")
    parser.add_argument("--max-requests", type=int, default=100_000,
                        help="upper bound on requests per run")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    parser.add_argument("--agreement-rows", type=int, default=64,
                        help="rows sent to every model for the agreement check")
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from runtime.commands.health import add_tls_arguments

    add_tls_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    """argv -> validated settings; every bad value becomes a CompareError."""
    if (args.client_cert is None) != (args.client_key is None):
        raise CompareError("--client-cert and --client-key go together")
    if args.max_requests < 1 or args.timeout <= 0 or args.agreement_rows < 1:
        raise CompareError("--max-requests, --timeout and --agreement-rows must be positive")
    url = re.sub(r"^(grpc|http)://", "", args.url.strip()).rstrip("/")
    if not url:
        raise CompareError("--url must be HOST:PORT of the gRPC endpoint")
    return CompareSettings(
        url=url,
        models=parse_models(args.models),
        concurrency=parse_int_list(args.concurrency, "--concurrency", MAX_CONCURRENCY),
        batch=parse_int_list(args.batch, "--batch", MAX_BATCH),
        duration_s=parse_duration(args.duration),
        metrics_url=normalize_metrics_url(args.metrics_url) if args.metrics_url else None,
        inputs=args.inputs,
        out=args.out,
        max_requests=args.max_requests,
        timeout_s=args.timeout,
        agreement_rows=args.agreement_rows,
        seed=args.seed,
        progress=not args.no_progress,
        ssl=args.ssl,
        root_cert=args.root_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )


def _make_out_dir(out: Path) -> None:
    """Before the load runs, so a bad --out fails in a second, not after the runs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CompareError(f"cannot create --out {out}: {err}") from None


def write_outputs(report: dict[str, Any], latencies: Any, out: Path) -> dict[str, Any]:
    """PNG plots, report.html (plots inlined) and report.json into `out`."""
    from runtime.compare import htmlreport, plots
    from runtime.compare.report import write_json

    _make_out_dir(out)
    # NOTE: only our own file names, so a rerun into the same directory never
    # leaves a stale plot next to a report that no longer refers to it
    for old in [*out.glob("latency_cdf_*.png"), out / "throughput.png", out / "memory.png"]:
        old.unlink(missing_ok=True)
    pngs = plots.write_all(report, latencies, out)
    html_path = out / "report.html"
    report["files"] = {"json": "report.json", "html": "report.html",
                       "plots": [p.name for p in pngs]}
    html_path.write_text(htmlreport.render(report, pngs), encoding="utf-8")
    write_json(report, out / "report.json")
    return report["files"]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from runtime.compare import plots, runner
    from runtime.compare.report import format_table

    try:
        settings = settings_from_args(args)
        plots.require_matplotlib()
        _make_out_dir(settings.out)
        report, latencies = asyncio.run(runner.collect(settings))
        write_outputs(report, latencies, settings.out)
    except CompareError as err:
        print(f"sparse-runtime compare: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparse-runtime compare: interrupted", file=sys.stderr)
        return 130
    print(format_table(report))
    print(f"\nreport: {settings.out / 'report.html'} (and report.json, "
          f"{len(report['files']['plots'])} PNG plots) in {settings.out}")
    empty = [r for r in report["runs"] if r["requests"] == 0]
    if empty:
        for r in empty:
            print(f"sparse-runtime compare: error: no successful request for {r['model']} "
                  f"c={r['concurrency']} b={r['batch']}: {r['error_sample']}", file=sys.stderr)
        return 1
    return 0
