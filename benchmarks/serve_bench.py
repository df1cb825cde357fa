"""Serving benchmark: our server under gRPC load vs in-process onnxruntime on the same batches.

For each model and concurrency a load generator in another process drives the
server for a fixed time (Triton's perf_analyzer when it is available, else a
tritonclient asyncio closed-loop generator), and the server's own per-batch-size
statistics over that window say which batches it actually ran. The same
batches are then timed in-process on onnxruntime (same thread settings as the
server) to give the ceiling the server is compared with. Prints a table and
writes JSON (benchmarks/results/serve_bench.json by default).

    python benchmarks/serve_bench.py [--models mlp_dense,mlp_sparse24]
        [--concurrency 1,4,8,16] [--duration 5] [--client auto|perf_analyzer|python]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.samples import build_samples  # noqa: E402

PERF_ANALYZER = ROOT.parent / "shared" / "tools" / "perf_analyzer"


def start_server(repo: Path, tmp: Path, threads: int) -> tuple[subprocess.Popen[bytes], int, int]:
    port_file = tmp / "ports.json"
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0",
         "--port-file", str(port_file), "--intra-op-threads", str(threads)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server failed to start; see {tmp / 'server.log'}")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    return proc, ports["grpc"], ports["metrics"]


def batch_histogram(url: str, model: str) -> dict[int, int]:
    """Executions per batch size so far, from ModelStatistics."""
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def server_rss(metrics_port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    for line in text.decode().splitlines():
        if line.startswith("process_resident_memory_bytes "):
            return float(line.split()[1])
    return float("nan")


def run_perf_analyzer(url: str, model: str, concurrency: int, duration: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [str(PERF_ANALYZER), "-i", "grpc", "-u", url, "-m", model,
               "--concurrency-range", f"{concurrency}:{concurrency}",
               "--measurement-interval", str(int(duration * 1000)),
               "--stability-percentage", "100", "--max-trials", "6", "-f", out.name]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration * 8 + 120)
        # NOTE: exit 2 means "no stable measurement"; the CSV still has the last window
        rows = list(csv.DictReader(open(out.name))) if Path(out.name).stat().st_size else []
        if not rows:
            raise RuntimeError(f"perf_analyzer failed ({done.returncode}): {done.stderr[-2000:]}")
        row = rows[0]
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p95_ms": float(row["p95 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


async def _python_load(url: str, model: str, concurrency: int, duration: float) -> dict:
    import tritonclient.grpc.aio as aioclient

    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    latencies: list[float] = []
    async with aioclient.InferenceServerClient(url) as client:
        inp = aioclient.InferInput("x", [1, 256], "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(20):  # warm-up
            await client.infer(model, [inp])
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await client.infer(model, [inp])
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "throughput": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def run_python_load(url: str, model: str, concurrency: int, duration: float) -> dict:
    """The asyncio generator, in its own process so it never shares the server's GIL."""
    code = (
        f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); "
        "import benchmarks.serve_bench as b, asyncio; "
        f"print(json.dumps(asyncio.run(b._python_load({url!r}, {model!r}, {concurrency}, "
        f"{duration}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=duration * 4 + 60)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process_rows_per_sec(model_path: Path, batches: dict[int, int], threads: int) -> float:
    """Rows/s of onnxruntime in this process on exactly the server's batch mix."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    total_rows = total_time = 0.0
    for size, count in batches.items():
        if count <= 0:
            continue
        x = np.random.default_rng(size).standard_normal((size, 256)).astype(np.float32)
        for _ in range(5):
            sess.run(None, {"x": x})
        reps = max(20, min(200, count))
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(None, {"x": x})
        per_call = (time.perf_counter() - t0) / reps
        total_rows += size * count
        total_time += per_call * count
    return total_rows / total_time if total_time else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--models", default="mlp_dense,mlp_sparse24")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--client", choices=("auto", "perf_analyzer", "python"), default="auto")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_bench.json"
    )
    args = parser.parse_args()

    build_samples(args.repo)
    client = args.client
    if client == "auto":
        client = "perf_analyzer" if PERF_ANALYZER.exists() else "python"
    load = run_perf_analyzer if client == "perf_analyzer" else run_python_load
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        proc, grpc_port, metrics_port = start_server(args.repo, Path(tmpdir), args.threads)
        url = f"127.0.0.1:{grpc_port}"
        try:
            for model in models:
                for c in levels:
                    before = batch_histogram(url, model)
                    result = load(url, model, c, args.duration)
                    after = batch_histogram(url, model)
                    batches = {b: after.get(b, 0) - before.get(b, 0) for b in after}
                    execs = sum(batches.values())
                    rows_run = sum(b * n for b, n in batches.items())
                    ceiling = in_process_rows_per_sec(
                        args.repo / model / "1" / "model.onnx", batches, args.threads
                    )
                    row = {
                        "model": model, "concurrency": c, "client": client, **result,
                        "mean_batch": rows_run / execs if execs else float("nan"),
                        "in_process_rows_per_s": ceiling,
                        "ratio_vs_in_process": result["throughput"] / ceiling,
                        "server_rss_mb": server_rss(metrics_port) / 2**20,
                    }  # fmt: skip
                    rows.append(row)
                    print(
                        f"{model:14s} c={c:<3d} {row['throughput']:8.0f} infer/s  "
                        f"p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f}  "
                        f"p99 {row['p99_ms']:6.2f}  batch {row['mean_batch']:5.2f}  "
                        f"in-process {ceiling:8.0f}/s  ratio {row['ratio_vs_in_process']:5.2f}  "
                        f"RSS {row['server_rss_mb']:6.0f} MB",
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "client": client, "duration_s": args.duration,
            "threads": args.threads}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
