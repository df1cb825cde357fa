"""Side-by-side A/B of server builds: the way to judge a change on a noisy shared host.

Single benchmark runs on a shared 2-core VM differ by 20-30%, more than most changes
are worth. This starts every variant's server once (all at the same time, each on its
own ports), then drives them with Triton's perf_analyzer in short alternating windows
(A B B A A B ...), so slow and fast periods of the host fall on every variant alike,
and prints the median, min and max infer/s, the median p50 and the median server CPU time
per request (all threads of the server process, from /proc, over the server's own success
count) per variant.

A variant is NAME=DIR[:REPO[:ENV=VALUE,...]]: DIR is a checkout to run the server from
(e.g. a `git worktree` of the baseline commit; its native bridge must be built there),
REPO a model repository (default the DIR's model_repo), then environment variables.

    python benchmarks/ab_serve.py --model mlp_dense --concurrency 1,8 --rounds 6 \\
        base=/tmp/base new=. new-native=.::SPARSE_RUNTIME_GRPC_FRONTEND=native

`--protocol http` drives each server's HTTP/REST port (perf_analyzer -i http) instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_bench import PERF_ANALYZER, run_perf_analyzer  # noqa: E402


@dataclass
class Variant:
    name: str
    directory: Path
    repo: Path
    env: dict[str, str]


def parse_variant(text: str) -> Variant:
    """NAME=DIR[:REPO[:K=V,...]] -> Variant."""
    name, _, spec = text.partition("=")
    if not name or not spec:
        raise argparse.ArgumentTypeError(f"variant {text!r} is not NAME=DIR[:REPO[:ENV=V,...]]")
    parts = spec.split(":")
    directory = Path(parts[0]).resolve()
    repo = Path(parts[1]).resolve() if len(parts) > 1 and parts[1] else directory / "model_repo"
    env = dict(kv.split("=", 1) for kv in parts[2].split(",") if kv) if len(parts) > 2 else {}
    return Variant(name, directory, repo, env)


def start(variant: Variant, port: int, log: Path, http: bool) -> subprocess.Popen[bytes]:
    """The variant's server: gRPC on `port`, metrics on port + 1, HTTP on port + 2 if `http`."""
    cmd = [sys.executable, "-m", "runtime", "serve", "--model-repository", str(variant.repo),
           "--grpc-port", str(port), "--metrics-port", str(port + 1)]  # fmt: skip
    # NOTE: by environment, which a variant from before the HTTP frontend ignores; no HTTP
    env = {**os.environ, "SPARSE_RUNTIME_HTTP_PORT": str(port + 2 if http else -1), **variant.env}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=variant.directory, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "server ready: True" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"server not ready:\n{log.read_text(errors='replace')[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_served(metrics_port: int) -> float:
    """The server's nv_inference_request_success, summed over models."""
    from runtime.compare.scrape import scrape, total

    return (
        total(scrape(f"http://localhost:{metrics_port}/metrics"), "nv_inference_request_success")
        or 0.0
    )


def measure(
    port: int, model: str, concurrency: int, seconds: float, batch: int = 1, pid: int = 0,
    protocol: str = "grpc",
) -> tuple[float, float, float]:
    """(infer/s, p50 ms, server CPU ms per request) of one perf_analyzer window
    (serve_bench's); NaN where it failed. CPU counts every thread of the server process."""
    url = f"localhost:{port + 2}" if protocol == "http" else f"localhost:{port}"
    cpu0, n0 = (cpu_seconds(pid), requests_served(port + 1)) if pid else (0.0, 0.0)
    try:
        point = run_perf_analyzer(url, model, concurrency, seconds, batch, protocol)
    except RuntimeError:
        return float("nan"), float("nan"), float("nan")
    cpu_ms = float("nan")
    if pid:
        served = requests_served(port + 1) - n0
        cpu_ms = (cpu_seconds(pid) - cpu0) * 1e3 / served if served else float("nan")
    return point["throughput"], point["p50_ms"], cpu_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", type=parse_variant)
    parser.add_argument("--model", default="mlp_dense")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0, help="per window")
    parser.add_argument("--base-port", type=int, default=18200)
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                        help="perf_analyzer -i; http: each server's HTTP port is its gRPC port + 2")
    parser.add_argument("--batch", type=int, default=1, help="rows per request (-b)")
    args = parser.parse_args()
    if not PERF_ANALYZER.exists():
        print(f"perf_analyzer not found at {PERF_ANALYZER}", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="ab_serve-"))
    servers: list[tuple[Variant, int, subprocess.Popen[bytes]]] = []
    try:
        for i, variant in enumerate(args.variants):
            port = args.base_port + 10 * i
            log = logs / f"{variant.name}.log"
            servers.append((variant, port, start(variant, port, log, args.protocol == "http")))
        for variant, _, proc in servers:
            wait_ready(logs / f"{variant.name}.log", proc)
        for _, port, _ in servers:
            measure(port, args.model, 8, 1.0, args.batch, protocol=args.protocol)  # warm-up
        results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for variant, port, proc in order:
                    point = measure(port, args.model, concurrency, args.seconds, args.batch,
                                    proc.pid, args.protocol)  # fmt: skip
                    results.setdefault((variant.name, concurrency), []).append(point)
        for (name, concurrency), points in results.items():
            rates = [p[0] for p in points]
            print(f"{name:14s} c={concurrency:<3d} median {statistics.median(rates):7.0f} infer/s "
                  f"(min {min(rates):6.0f} max {max(rates):6.0f})  "
                  f"p50 {statistics.median(p[1] for p in points):.2f} ms  "
                  f"server CPU {statistics.median(p[2] for p in points):.2f} ms/req")  # fmt: skip
    finally:
        for _, _, proc in servers:
            proc.terminate()
            proc.wait(30)
    print(f"server logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
