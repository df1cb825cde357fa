"""What moving large tensors through gRPC costs, and on which side: client or server.

Why: on a GPU the hidden-8192 MLP's three 8192x8192 layers take well under a millisecond
at batch 256, while its 16 MiB of fp32 in and out go through gRPC; this measures that part
alone. The model is an Identity ([batch, WIDTH] fp32 in and out), served by our server in a
separate process; one tritonclient (sync, one call at a time) times each batch and reads
both processes' CPU time, so the table shows how much of a call is the client's own work.

    python benchmarks/wire_cost.py --out benchmarks/results/wire_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """name: "ident"
max_batch_size: {max_batch}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width} ] }} ]
"""


def write_model(repo: Path, width: int, max_batch: int) -> None:
    """An Identity model: the engine does one copy, everything else is the wire."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "ident",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "ident" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "ident" / "1" / "model.onnx"))
    (repo / "ident" / "config.pbtxt").write_text(CONFIG.format(width=width, max_batch=max_batch))


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(
    repo: Path, tmp: Path, frontend: str, log_dir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """The server on a free port; its log goes beside the results, to outlive the run."""
    port_file = tmp / f"ports-{frontend}.json"
    cmd = [sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
           "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1", "--http-port", "0",
           "--grpc-frontend", frontend, "--port-file", str(port_file)]  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"wire_cost_server_{frontend}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start; see {log}")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{json.loads(port_file.read_text())['grpc']}"


def measure(url: str, pid: int, width: int, batch: int, calls: int) -> dict[str, float]:
    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + 60
    while not client.is_model_ready("ident"):
        if time.monotonic() > deadline:
            raise RuntimeError("model 'ident' did not load in 60 s; see the server log")
        time.sleep(0.05)
    x = np.random.default_rng(0).random((batch, width), dtype=np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("ident", [inp]).as_numpy("y")  # warm
    walls = []
    server0, client0 = cpu_seconds(pid), time.process_time()
    for _ in range(calls):
        t = time.perf_counter()
        inp.set_data_from_numpy(x)
        client.infer("ident", [inp]).as_numpy("y")
        walls.append(time.perf_counter() - t)
    server_cpu = (cpu_seconds(pid) - server0) / calls
    client_cpu = (time.process_time() - client0) / calls
    mib = 2 * x.nbytes / 2**20
    p50 = statistics.median(walls)
    return {"batch": batch, "mib_in_and_out": mib, "p50_ms": p50 * 1e3,
            "mib_per_s": mib / p50, "client_cpu_ms": client_cpu * 1e3,
            "server_cpu_ms": server_cpu * 1e3}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--batches", default="64,256,1024")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--frontends", default="python", help="python and/or native")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/wire_cost.json")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_model(tmp / "repo", args.width, max(batches))
        for frontend in args.frontends.split(","):
            proc, url = start_server(tmp / "repo", tmp, frontend, args.out.parent)
            try:
                for batch in batches:
                    row = measure(url, proc.pid, args.width, batch, args.calls)
                    rows.append({"frontend": frontend, "width": args.width, **row})
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"{'frontend':8} {'batch':>6} {'MiB':>6} {'p50 ms':>8} {'MiB/s':>7} "
          f"{'client cpu ms':>14} {'server cpu ms':>14}")  # fmt: skip
    for r in rows:
        print(f"{r['frontend']:8} {r['batch']:>6} {r['mib_in_and_out']:>6.0f} "
              f"{r['p50_ms']:>8.1f} {r['mib_per_s']:>7.0f} {r['client_cpu_ms']:>14.1f} "
              f"{r['server_cpu_ms']:>14.1f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
