"""Side by side against real Triton: same ONNX model, same batching config, same load generator.

Starts real Triton 2.51 (the `nvidia-pytriton` wheel, installed once into its own venv,
benchmarks/.triton-venv; python backend running onnxruntime with default session
options; config.pbtxt made from ours: same max_batch_size and dynamic batching) and our
server once per gRPC frontend (and per --our-flags set), all up at once, then drives
them with Triton's perf_analyzer in alternating windows (Triton, ours..., then the
reverse order), so a busy period of a shared host falls on every server alike. Per
(model, server, concurrency) it prints the median infer/s (min-max of the windows),
median p50/p99, the mean batch size (nv_inference_count / nv_inference_exec_count
deltas on each server's metrics port), the server's CPU time per request (psutil, the
whole process tree: for Triton its python-backend stubs too) and the ratios to
Triton; writes JSON. Models: the sample `mlp_dense` and `mlp_wide2048`, a
compute-bound MLP generated here (256->2048x3->256 fp32, 4 layers).

    python benchmarks/vs_triton.py [--models mlp_dense,mlp_wide2048]
        [--concurrency 1,4,8,16] [--window-ms 1500] [--windows 2]
        [--frontends python,native] [--our-flags "--intra-op-threads 1" ...]
        [--http] [--json benchmarks/results/vs_triton.json] [--time-limit-s 900]

Each window is one perf_analyzer run of up to 3 measurement intervals of --window-ms
(it reports their average). Only ratios within one run mean anything on a shared host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_bench import PERF_ANALYZER, wait_port_file  # noqa: E402
from benchmarks.triton_peer import peer  # noqa: E402

# generated compute-bound models: name -> MLP layer widths (fp32, ReLU between)
GENERATED = {"mlp_wide2048": (256, 2048, 2048, 2048, 256)}
TEMPLATE_MODEL = "mlp_dense"  # the sample whose batching config generated models copy
COUNTERS = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count")


@dataclass
class Target:
    """One server endpoint that gets windows: a server process and a protocol."""

    label: str
    kind: str  # "triton" | "ours"
    protocol: str  # "grpc" | "http"
    url: str
    pid: int
    metrics_port: int
    flags: str = ""
    windows: dict[tuple[str, int], list[dict]] = field(default_factory=dict)


def our_config(name: str, repo: Path):  # noqa: ANN201 - mc.ModelConfig, imported lazily
    """The config our server reads for `name`: the sample's, or the template's for a
    generated model (same batching, the generated model's widths)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    source = name if name not in GENERATED else TEMPLATE_MODEL
    config = text_format.Parse((repo / source / "config.pbtxt").read_text(), mc.ModelConfig())
    if name in GENERATED:
        layers = GENERATED[name]
        config.name = name
        config.input[0].dims[:] = [layers[0]]
        config.output[0].dims[:] = [layers[-1]]
    return config


def prepare_models(models: list[str], sample_repo: Path, work: Path) -> tuple[Path, Path]:
    """Our repository and Triton's, each with every model (generated ones built here)."""
    from google.protobuf import text_format

    from runtime.samples import build_samples, mlp_model, mlp_weights, write_if_missing

    build_samples(sample_repo)
    ours, triton = work / "ours", work / "triton"
    for name in models:
        version = ours / name / "1"
        version.mkdir(parents=True)
        onnx_file = version / "model.onnx"
        if name in GENERATED:
            write_if_missing(mlp_model(mlp_weights(GENERATED[name]), name), onnx_file)
        else:
            source = sample_repo / name / "1" / "model.onnx"
            if not source.exists():
                raise SystemExit(f"{source} not found: models are the samples (`make models`) "
                                 f"or generated ones: {sorted(GENERATED)}")  # fmt: skip
            shutil.copy2(source, onnx_file)
        config = our_config(name, sample_repo)
        (ours / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        peer.write_model(triton, config, onnx_file)
    return ours, triton


def start_ours(repo: Path, work: Path, frontend: str, flags: str, index: int,
               started: list[subprocess.Popen]) -> dict:  # fmt: skip
    """`python -m runtime serve` on free ports; its ports and the frontend its log names."""
    port_file, log = work / f"ours-{index}.json", work / f"ours-{index}.log"
    cmd = [sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
           "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
           "--port-file", str(port_file), "--grpc-frontend", frontend,
           *shlex.split(flags)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)  # fmt: skip
    started.append(proc)
    try:
        ports = wait_port_file(proc, port_file, log)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}:\n{log.read_text(errors='replace')[-3000:]}") from None
    found = re.search(r"\((\w+) frontend[,)]", log.read_text(errors="replace"))
    return {**ports, "pid": proc.pid, "frontend": found.group(1) if found else frontend}


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (psutil)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for p in members:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def counters(metrics_port: int, model: str) -> dict[str, float]:
    """Triton's per-model counters from a server's Prometheus endpoint."""
    from runtime.compare.scrape import scrape, total

    samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    return {name: total(samples, name, model=model) or 0.0 for name in COUNTERS}


def perf_window(protocol: str, url: str, model: str, concurrency: int, window_ms: int) -> dict:
    """One perf_analyzer run (<= 3 intervals): infer/s, p50 and p99 in ms."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [str(PERF_ANALYZER), "-i", protocol, "-u", url, "-m", model,
               "--concurrency-range", f"{concurrency}:{concurrency}",
               "--measurement-interval", str(window_ms),
               "--stability-percentage", "100000", "--max-trials", "3", "-f", out.name]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=window_ms * 4 / 1000 + 60)  # fmt: skip
        # NOTE: any 3 intervals count as stable (even 1000% failed at c=1 on a loaded host),
        # so one run is 3 intervals; the alternation, not perf_analyzer, handles noise
        text = Path(out.name).read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {done.stderr[-1500:]}")
    import csv

    row = next(csv.DictReader(lines))
    return {
        "infer_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def measured_window(target: Target, model: str, concurrency: int, window_ms: int) -> dict:
    """A window plus what the server did in it (counter deltas, CPU of its process tree)."""
    before, cpu0 = counters(target.metrics_port, model), tree_cpu_s(target.pid)
    point = perf_window(target.protocol, target.url, model, concurrency, window_ms)
    cpu = tree_cpu_s(target.pid) - cpu0
    after = counters(target.metrics_port, model)
    delta = {k: after[k] - before[k] for k in COUNTERS}
    return {**point, "cpu_s": cpu, "requests": delta["nv_inference_request_success"],
            "rows": delta["nv_inference_count"],
            "executions": delta["nv_inference_exec_count"]}  # fmt: skip


def summarize(windows: list[dict]) -> dict:
    """Medians of the windows' rates and latencies; batch and CPU over all their requests."""
    rates = [w["infer_s"] for w in windows]
    requests = sum(w["requests"] for w in windows)
    executions = sum(w["executions"] for w in windows)
    return {
        "windows": len(windows),
        "infer_s": statistics.median(rates),
        "infer_s_min": min(rates),
        "infer_s_max": max(rates),
        "p50_ms": statistics.median(w["p50_ms"] for w in windows),
        "p99_ms": statistics.median(w["p99_ms"] for w in windows),
        "mean_batch": sum(w["rows"] for w in windows) / executions if executions else None,
        "cpu_us_per_req": sum(w["cpu_s"] for w in windows) / requests * 1e6 if requests else None,
    }


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row's infer/s and CPU per request relative to Triton's (same model, c, protocol)."""
    triton = {(r["model"], r["concurrency"], r["protocol"]): r for r in rows
              if r["kind"] == "triton"}  # fmt: skip
    for r in rows:
        ref = triton.get((r["model"], r["concurrency"], r["protocol"]))
        r["x_triton"] = r["infer_s"] / ref["infer_s"] if ref and ref["infer_s"] else None
        cpu, ref_cpu = r["cpu_us_per_req"], ref["cpu_us_per_req"] if ref else None
        r["cpu_x_triton"] = cpu / ref_cpu if cpu is not None and ref_cpu else None
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-".rjust(len(format(0.0, spec)))


def print_table(rows: list[dict]) -> None:
    width = max([len(r["server"]) for r in rows] + [6])
    print(f"\n{'model':14s} {'c':>3s} {'server':{width}s} {'infer/s':>8s} {'(min-max)':>13s} "
          f"{'xTriton':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'batch':>5s} "
          f"{'cpu us/req':>10s} {'cpu xTriton':>11s}")  # fmt: skip
    for r in rows:
        spread = f"({r['infer_s_min']:.0f}-{r['infer_s_max']:.0f})"
        print(f"{r['model']:14s} {r['concurrency']:3d} {r['server']:{width}s} "
              f"{r['infer_s']:8.0f} {spread:>13s} {_fmt(r['x_triton'], '7.2f')} "
              f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {_fmt(r['mean_batch'], '5.2f')} "
              f"{_fmt(r['cpu_us_per_req'], '10.0f')} {_fmt(r['cpu_x_triton'], '11.2f')}",
              flush=True)  # fmt: skip


def run(args: argparse.Namespace, work: Path, started: list[subprocess.Popen]) -> dict:
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    install = peer.ensure_installed(args.triton_venv)
    deadline = time.monotonic() + args.time_limit_s  # NOTE: after a first-time install
    ours_repo, triton_repo = prepare_models(models, args.repo, work)

    triton = peer.start(install, triton_repo, work / "triton.log")
    started.append(triton.proc)
    variants = [(f, flags) for flags in args.our_flags for f in args.frontends.split(",") if f]
    ours = []
    for i, (frontend, flags) in enumerate(variants):
        try:
            ours.append((frontend, flags, start_ours(ours_repo, work, frontend, flags, i,
                                                     started)))  # fmt: skip
        except RuntimeError as exc:
            print(f"ours [{frontend} {flags}] skipped: it did not start: {exc}", flush=True)
    if not ours:
        raise SystemExit("none of our servers started")
    peer.wait_ready(triton, timeout_s=max(60.0, min(300.0, deadline - time.monotonic())))
    import tritonclient.grpc as grpcclient

    triton_version = grpcclient.InferenceServerClient(
        f"127.0.0.1:{triton.grpc_port}").get_server_metadata().version

    loopback = "127.0.0.1"
    targets = [Target("triton grpc", "triton", "grpc", f"{loopback}:{triton.grpc_port}",
                      triton.proc.pid, triton.metrics_port)]  # fmt: skip
    notes = []
    for frontend, flags, info in ours:
        if info["frontend"] != frontend:
            notes.append(f"asked for the {frontend} frontend, the server ran {info['frontend']}")
        label = f"ours {info['frontend']}" + (f" [{flags}]" if flags else "")
        targets.append(Target(label, "ours", "grpc", f"{loopback}:{info['grpc']}", info["pid"],
                              info["metrics"], flags))  # fmt: skip
    if args.http:
        targets.append(Target("triton http", "triton", "http", f"{loopback}:{triton.http_port}",
                              triton.proc.pid, triton.metrics_port))  # fmt: skip
        for _, flags, info in ours:
            if "http" in info:
                label = f"ours {info['frontend']} http" + (f" [{flags}]" if flags else "")
                targets.append(Target(label, "ours", "http", f"{loopback}:{info['http']}",
                                      info["pid"], info["metrics"], flags))  # fmt: skip
        if not any(t.kind == "ours" and t.protocol == "http" for t in targets):
            notes.append("--http: our server reported no HTTP port; Triton HTTP measured alone")
    for note in notes:
        print(f"note: {note}", flush=True)

    for model in models:  # warm-up, not counted
        for t in targets:
            try:
                perf_window(t.protocol, t.url, model, 4, max(1000, args.window_ms))
            except RuntimeError as exc:
                print(f"warm-up {model} {t.label}: {exc}", flush=True)
    stopped = None
    for model in models:
        for c in levels:
            for w in range(args.windows):
                for t in targets if w % 2 == 0 else targets[::-1]:
                    if time.monotonic() > deadline:
                        stopped = f"time limit ({args.time_limit_s:.0f} s) reached at {model} c={c}"
                        break
                    point = None
                    for attempt in (1, 2):  # NOTE: one retry; then lost, and the run goes on
                        try:
                            point = measured_window(t, model, c, args.window_ms)
                            break
                        except RuntimeError as exc:
                            print(f"{model} c={c} {t.label}: attempt {attempt} failed: {exc}",
                                  flush=True)  # fmt: skip
                    if point is None:
                        notes.append(f"{model} c={c} {t.label}: a window was lost")
                        continue
                    t.windows.setdefault((model, c), []).append(point)
                    print(f"{model} c={c} {t.label}: {point['infer_s']:.0f} infer/s "
                          f"p50 {point['p50_ms']:.2f} ms", flush=True)  # fmt: skip
                if stopped:
                    break
            if stopped:
                break
        if stopped:
            break
    if stopped:
        print(f"note: {stopped}; the table has what was measured", flush=True)
        notes.append(stopped)

    rows = []
    for model in models:
        for c in levels:
            for t in targets:
                if (model, c) in t.windows:
                    rows.append({"model": model, "concurrency": c, "server": t.label,
                                 "kind": t.kind, "protocol": t.protocol, "flags": t.flags,
                                 **summarize(t.windows[(model, c)]),
                                 "raw": t.windows[(model, c)]})  # fmt: skip
    return {"triton_version": triton_version, "notes": notes, "rows": with_ratios(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp_dense,mlp_wide2048",
                        help=f"sample models, or generated: {','.join(GENERATED)}")  # fmt: skip
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--window-ms", type=int, default=1500,
                        help="perf_analyzer measurement interval (a window is up to 3)")
    parser.add_argument("--windows", type=int, default=2, help="windows per server and point")
    parser.add_argument("--frontends", default="python,native", help="our gRPC frontends")
    parser.add_argument("--our-flags", action="append", default=None,
                        help="extra `serve` flags for our server, e.g. '--intra-op-threads 1'; "
                             "repeat to run several variants side by side ('' = defaults)")
    parser.add_argument("--http", action="store_true",
                        help="also perf_analyzer -i http windows (Triton's HTTP port)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/vs_triton.json")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo",
                        help="where the sample models are (built when missing)")
    parser.add_argument("--triton-venv", type=Path, default=ROOT / "benchmarks/.triton-venv")
    parser.add_argument("--time-limit-s", type=float, default=900.0,
                        help="stop measuring after this long (the table keeps what was done)")
    args = parser.parse_args()
    args.our_flags = args.our_flags or [""]
    if not PERF_ANALYZER.exists():
        print(f"perf_analyzer not found at {PERF_ANALYZER} (set $PERF_ANALYZER)", file=sys.stderr)
        return 2
    # NOTE: SIGTERM unwinds like Ctrl-C, so `finally` stops every server we started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # NOTE: even where it was ignored
    started: list[subprocess.Popen] = []
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vs_triton-"))
    try:
        result = run(args, work, started)
    except KeyboardInterrupt:
        print("interrupted: stopping every server started", file=sys.stderr, flush=True)
        return 130
    finally:
        for proc in reversed(started):
            peer.stop_group(proc)
        shutil.rmtree(work, ignore_errors=True)
    print_table(result["rows"])
    for note in result["notes"]:
        print(f"note: {note}")
    meta = {"command": shlex.join(sys.argv), "triton_version": result["triton_version"],
            "cpus": os.cpu_count(), "machine": platform.machine(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "window_ms": args.window_ms, "windows": args.windows,
            "our_flags": args.our_flags, "perf_analyzer": str(PERF_ANALYZER)}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "notes": result["notes"],
                                     "results": result["rows"]}, indent=2))  # fmt: skip
    print(f"\nwrote {args.json} (load average before {load_before[0]:.1f}, "
          f"after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
