"""Serving benchmark: our server under gRPC load vs in-process onnxruntime on the same batches.

For each model and concurrency a load generator in another process drives the
server for a fixed time (Triton's perf_analyzer when it is available, else a
tritonclient asyncio closed-loop generator), and the server's own per-batch-size
statistics over that window say which batches it actually ran. The same
batches are then timed in-process on onnxruntime (same thread settings as the
server) to give the ceiling the server is compared with.

Beside it, in the same run, `grpc_echo.py` (the same gRPC stack and stubs, no
model) gives the floor that any Python grpc.aio server has on this machine (and,
where g++ and Debian's libgrpc++-dev are installed, `native_echo/echo.cc` the floor
of a C++ gRPC layer: what a native frontend would leave for the model), and
CPU time per request is split between the server process and the load
generator (from /proc and the child's rusage), so a target can be checked
against what the machine has left. Triton's figures from the issue are printed
as the target column. Prints a table and writes JSON
(benchmarks/results/serve_bench.json by default).

    python benchmarks/serve_bench.py [--models mlp_dense,mlp_sparse24]
        [--concurrency 1,4,8,16] [--duration 5] [--client auto|perf_analyzer|python]
        [--no-floor] [--native-floor auto|yes|no] [--frontends python,native]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.samples import build_samples  # noqa: E402


def _find_perf_analyzer() -> Path:
    """$PERF_ANALYZER, else perf_analyzer on PATH (Triton's SDK), else the team's shared copy."""
    if os.environ.get("PERF_ANALYZER"):
        return Path(os.environ["PERF_ANALYZER"])
    on_path = shutil.which("perf_analyzer")
    return Path(on_path) if on_path else ROOT.parent / "shared" / "tools" / "perf_analyzer"


PERF_ANALYZER = _find_perf_analyzer()
ECHO = ROOT / "benchmarks" / "grpc_echo.py"
NATIVE_ECHO = ROOT / "benchmarks" / "native_echo" / "echo.cc"
# real Triton 2.51 (python backend + onnxruntime CPU, dynamic batching 500 us) per the issue;
# the target is 1.2x these
TRITON_INFER_S = {1: 690.0, 4: 2295.0, 8: 4000.0}
TARGET_FACTOR = 1.2
ECHO_MODEL = "echo"


def wait_port_file(proc: subprocess.Popen[bytes], port_file: Path, log: Path) -> dict:
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server failed to start; see {log}")
        time.sleep(0.05)
    return json.loads(port_file.read_text())


def start_server(
    repo: Path, tmp: Path, threads: int, frontend: str = "python"
) -> tuple[subprocess.Popen[bytes], int, int]:
    port_file = tmp / f"ports-{frontend}.json"
    log_path = tmp / f"server-{frontend}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "-1",
         "--port-file", str(port_file), "--intra-op-threads", str(threads),
         "--grpc-frontend", frontend],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    ports = wait_port_file(proc, port_file, log_path)
    return proc, ports["grpc"], ports["metrics"]


def start_echo(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "echo_ports.json"
    log = tmp / "echo.log"
    proc = subprocess.Popen(
        [sys.executable, str(ECHO), "--port", "0", "--port-file", str(port_file)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    return proc, wait_port_file(proc, port_file, log)["grpc"]


def build_native_echo(tmp: Path) -> Path | None:
    """Compile the C++ echo; None (and why, printed) when the toolchain or grpc++ is missing."""
    pkg = shutil.which("pkg-config")
    if shutil.which("g++") is None or pkg is None:
        print("native floor skipped: needs g++ and pkg-config", flush=True)
        return None
    flags = subprocess.run([pkg, "--cflags", "--libs", "grpc++", "protobuf"],
                           capture_output=True, text=True)  # fmt: skip
    if flags.returncode != 0:
        print("native floor skipped: grpc++ not found (apt install libgrpc++-dev)", flush=True)
        return None
    binary = tmp / "native_echo"
    cmd = ["g++", "-O2", "-std=c++17", str(NATIVE_ECHO), "-o", str(binary), *flags.stdout.split()]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0:
        print(f"native floor skipped: build failed: {built.stderr[-500:]}", flush=True)
        return None
    import benchmarks.grpc_echo as grpc_echo

    grpc_echo.write_canned(tmp / "canned")
    return binary


def start_native_echo(binary: Path, tmp: Path) -> tuple[subprocess.Popen[str], int, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stats = tmp / "native_stats.txt"
    proc = subprocess.Popen([str(binary), str(port), str(tmp / "canned"), str(stats)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    if not proc.stdout.readline().startswith("listening"):
        raise RuntimeError("native echo did not start")
    return proc, port, stats


def native_served(proc: subprocess.Popen[str], stats: Path) -> int:
    """ModelInfer calls so far, as the native echo writes them on SIGUSR1."""
    stats.unlink(missing_ok=True)  # NOTE: mtimes are too coarse for back-to-back reads
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not stats.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("native echo did not report its count")
        time.sleep(0.01)
    return int(stats.read_text())


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def requests_served(url: str, model: str) -> int:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model).model_stats[0]
    return int(stats.inference_stats.success.count)


def measure(load, url: str, model: str, c: int, duration: float, pid: int,
            served_so_far=None) -> dict:  # fmt: skip
    """One load point plus CPU per request: server process and load generator."""
    count = served_so_far or (lambda: requests_served(url, model))
    served0, server0, client0 = count(), process_cpu_s(pid), children_cpu_s()
    result = load(url, model, c, duration)
    served = count() - served0
    server_cpu, client_cpu = process_cpu_s(pid) - server0, children_cpu_s() - client0
    result["requests_total"] = served
    result["server_cpu_us_per_req"] = server_cpu / served * 1e6 if served else float("nan")
    result["client_cpu_us_per_req"] = client_cpu / served * 1e6 if served else float("nan")
    return result


def target(c: int) -> float | None:
    triton = TRITON_INFER_S.get(c)
    return triton * TARGET_FACTOR if triton else None


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


def run_perf_analyzer(
    url: str, model: str, concurrency: int, duration: float, batch: int = 1,
    protocol: str = "grpc",
) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [str(PERF_ANALYZER), "-i", protocol, "-u", url, "-m", model, "-b", str(batch),
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


def floor_rows(label: str, proc: subprocess.Popen, url: str, load, client: str,
               levels: list[int], duration: float, served_so_far=None) -> list[dict]:  # fmt: skip
    """The same load against a no-model echo server at each level; stops the server after."""
    rows = []
    try:
        for c in levels:
            result = measure(load, url, ECHO_MODEL, c, duration, proc.pid, served_so_far)
            row = {"model": label, "concurrency": c, "client": client, **result,
                   "target_infer_s": target(c)}  # fmt: skip
            rows.append(row)
            print_row(row)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def echo_floor(tmp: Path, load, client: str, levels: list[int], duration: float) -> list[dict]:
    """The Python grpc.aio echo: the gRPC stack's own ceiling."""
    proc, port = start_echo(tmp)
    return floor_rows("grpc-echo (no model)", proc, f"127.0.0.1:{port}", load, client, levels,
                      duration)  # fmt: skip


def native_floor(tmp: Path, load, client: str, levels: list[int], duration: float,
                 ) -> list[dict]:  # fmt: skip
    """The C++ echo: what a native gRPC layer costs (nothing when it cannot be built)."""
    binary = build_native_echo(tmp)
    if binary is None:
        return []
    proc, port, stats = start_native_echo(binary, tmp)
    return floor_rows("native-echo (C++)", proc, f"127.0.0.1:{port}", load, client, levels,
                      duration, lambda: native_served(proc, stats))  # fmt: skip


def print_row(row: dict) -> None:
    goal = row.get("target_infer_s")
    extra = ""
    if "mean_batch" in row:
        extra = (
            f"  batch {row['mean_batch']:5.2f}  in-process {row['in_process_rows_per_s']:8.0f}/s"
            f"  ratio {row['ratio_vs_in_process']:5.2f}  RSS {row['server_rss_mb']:5.0f} MB"
        )
    print(
        f"{row['model']:24s} c={row['concurrency']:<3d} {row['throughput']:7.0f} infer/s "
        f"(target {goal or float('nan'):5.0f})  p50 {row['p50_ms']:6.2f} ms  "
        f"p95 {row['p95_ms']:6.2f}  p99 {row['p99_ms']:6.2f}  "
        f"cpu/req server {row['server_cpu_us_per_req']:4.0f} us "
        f"client {row['client_cpu_us_per_req']:4.0f} us{extra}",
        flush=True,
    )


def print_summary(rows: list[dict]) -> None:
    """What the machine leaves for a server at each target: the budget a target implies."""
    cores = os.cpu_count() or 1
    echo = {r["concurrency"]: r for r in rows if r["model"].startswith("grpc-echo")}
    native = {r["concurrency"]: r for r in rows if r["model"].startswith("native-echo")}
    for c, row in sorted(echo.items()):
        goal = row.get("target_infer_s")
        if not goal:
            continue
        budget = (cores / goal - row["client_cpu_us_per_req"] / 1e6) * 1e6
        print(
            f"c={c}: target {goal:.0f}/s leaves {budget:.0f} us of CPU per request for the "
            f"server on {cores} cores (load generator {row['client_cpu_us_per_req']:.0f} us); "
            f"the no-model gRPC echo alone used {row['server_cpu_us_per_req']:.0f} us "
            f"and reached {row['throughput']:.0f}/s"
        )
        if c in native:
            n = native[c]
            print(
                f"     the C++ echo used {n['server_cpu_us_per_req']:.0f} us and reached "
                f"{n['throughput']:.0f}/s, leaving {budget - n['server_cpu_us_per_req']:.0f} us "
                f"per request for everything past the gRPC layer"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--models", default="mlp_dense,mlp_sparse24")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--client", choices=("auto", "perf_analyzer", "python"), default="auto")
    parser.add_argument("--no-floor", action="store_true", help="skip the no-model gRPC echo")
    parser.add_argument(
        "--frontends",
        default="python",
        help="server gRPC frontends to measure side by side: python,native",
    )
    parser.add_argument(
        "--native-floor",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also measure the C++ echo (auto: when g++ and grpc++ exist)",
    )
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
    frontends = [f for f in args.frontends.split(",") if f]
    if "native" in frontends:
        from runtime.server.native_frontend import load_bridge

        try:
            load_bridge()
        except ImportError as exc:
            print(f"native frontend skipped: {exc}", flush=True)
            frontends = [f for f in frontends if f != "native"] or ["python"]
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        if not args.no_floor:
            rows += echo_floor(Path(tmpdir), load, client, levels, args.duration)
        if args.native_floor != "no":
            native = native_floor(Path(tmpdir), load, client, levels, args.duration)
            if args.native_floor == "yes" and not native:
                raise SystemExit("--native-floor yes: the C++ echo could not be built")
            rows += native
        servers = {f: start_server(args.repo, Path(tmpdir), args.threads, f) for f in frontends}
        try:
            for model in models:
                for c in levels:
                    for frontend, (proc, grpc_port, metrics_port) in servers.items():
                        url = f"127.0.0.1:{grpc_port}"
                        before = batch_histogram(url, model)
                        result = measure(load, url, model, c, args.duration, proc.pid)
                        after = batch_histogram(url, model)
                        batches = {b: after.get(b, 0) - before.get(b, 0) for b in after}
                        execs = sum(batches.values())
                        rows_run = sum(b * n for b, n in batches.items())
                        ceiling = in_process_rows_per_sec(
                            args.repo / model / "1" / "model.onnx", batches, args.threads
                        )
                        label = model if len(servers) == 1 else f"{model} [{frontend}]"
                        row = {
                            "model": label, "frontend": frontend, "concurrency": c,
                            "client": client, **result,
                            "mean_batch": rows_run / execs if execs else float("nan"),
                            "in_process_rows_per_s": ceiling,
                            "ratio_vs_in_process": result["throughput"] / ceiling,
                            "server_rss_mb": server_rss(metrics_port) / 2**20,
                            "target_infer_s": target(c),
                        }  # fmt: skip
                        rows.append(row)
                        print_row(row)
        finally:
            for proc, _, _ in servers.values():
                proc.terminate()
                proc.wait(60)
    print_summary(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": os.cpu_count(), "client": client, "duration_s": args.duration,
            "threads": args.threads}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
