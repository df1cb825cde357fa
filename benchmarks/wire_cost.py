"""What moving large tensors through the server costs, and on which side: client or server.

Why: on a GPU the hidden-8192 MLP's three 8192x8192 layers take well under a millisecond
at batch 256, while its 16 MiB of fp32 in and out go through the wire; this measures that
part alone. The model is an Identity ([batch, WIDTH] fp32 in and out), served by our server
in a separate process; one tritonclient (sync, one call at a time) times each batch and
reads both processes' CPU time, so the table shows how much of a call is the client's own
work. Transports: gRPC, HTTP (binary tensor data), and system shared memory over gRPC and
HTTP (input written into a registered region, output read from one; the regions are
made and registered once, as a co-located client would).

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
from typing import Any

import numpy as np
import onnx
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """name: "ident"
max_batch_size: {max_batch}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width} ] }} ]
"""


def write_model(repo: Path, width: int, max_batch: int, batching: bool = False) -> None:
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
    config = CONFIG.format(width=width, max_batch=max_batch)
    if batching:  # NOTE: on the native frontend, what puts the model on a native lane
        config += "dynamic_batching { }\n"
    (repo / "ident" / "config.pbtxt").write_text(config)


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(
    repo: Path, tmp: Path, frontend: str, log_dir: Path
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
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
    return proc, json.loads(port_file.read_text())


TRANSPORTS = ("grpc", "http", "shm-grpc", "shm-http")


def _one_call(ports: dict[str, int], transport: str, x: np.ndarray) -> tuple[Any, Any]:
    """(do one call, clean up): the call sends x and gets y back over `transport`."""
    lib: Any = grpcclient if transport.endswith("grpc") else httpclient
    url = f"127.0.0.1:{ports['grpc' if transport.endswith('grpc') else 'http']}"
    client = lib.InferenceServerClient(url)
    deadline = time.monotonic() + 60
    while not client.is_model_ready("ident"):
        if time.monotonic() > deadline:
            raise RuntimeError("model 'ident' did not load in 60 s; see the server log")
        time.sleep(0.05)
    inp = lib.InferInput("x", list(x.shape), "FP32")
    if not transport.startswith("shm"):

        def call() -> None:
            inp.set_data_from_numpy(x)
            client.infer("ident", [inp]).as_numpy("y")

        return call, lambda: None
    tag = f"wire_cost_{os.getpid()}_{transport}"
    names = [f"{tag}_in", f"{tag}_out"]
    regions = [(n, shm.create_shared_memory_region(n, "/" + n, x.nbytes)) for n in names]
    for name, _ in regions:
        client.register_system_shared_memory(name, "/" + name, x.nbytes)
    inp.set_shared_memory(regions[0][0], x.nbytes)
    out = lib.InferRequestedOutput("y")
    out.set_shared_memory(regions[1][0], x.nbytes)

    def call_shm() -> None:
        shm.set_shared_memory_region(regions[0][1], [x])
        client.infer("ident", [inp], outputs=[out])
        shm.get_contents_as_numpy(regions[1][1], np.float32, list(x.shape))

    def clean() -> None:
        client.unregister_system_shared_memory()
        for _, handle in regions:
            shm.destroy_shared_memory_region(handle)

    return call_shm, clean


def measure(
    ports: dict[str, int], transport: str, pid: int, width: int, batch: int, calls: int
) -> dict[str, float]:
    x = np.random.default_rng(0).random((batch, width), dtype=np.float32)
    call, clean = _one_call(ports, transport, x)
    try:
        call()  # warm
        walls = []
        server0, client0 = cpu_seconds(pid), time.process_time()
        for _ in range(calls):
            t = time.perf_counter()
            call()
            walls.append(time.perf_counter() - t)
        server_cpu = (cpu_seconds(pid) - server0) / calls
        client_cpu = (time.process_time() - client0) / calls
    finally:
        clean()
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
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help=", ".join(TRANSPORTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/wire_cost.json")
    parser.add_argument("--dynamic-batching", action="store_true",
                        help="serve the model with dynamic batching (native frontend: its lane)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_model(tmp / "repo", args.width, max(batches), args.dynamic_batching)
        for frontend in args.frontends.split(","):
            proc, ports = start_server(tmp / "repo", tmp, frontend, args.out.parent)
            try:
                for batch in batches:
                    for transport in args.transports.split(","):
                        row = measure(ports, transport, proc.pid, args.width, batch, args.calls)
                        rows.append({"frontend": frontend, "transport": transport,
                                     "width": args.width, **row})  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(30)
    print(f"{'frontend':8} {'transport':9} {'batch':>6} {'MiB':>6} {'p50 ms':>8} {'MiB/s':>7} "
          f"{'client cpu ms':>14} {'server cpu ms':>14}")  # fmt: skip
    for r in rows:
        print(f"{r['frontend']:8} {r['transport']:9} {r['batch']:>6} {r['mib_in_and_out']:>6.0f} "
              f"{r['p50_ms']:>8.1f} {r['mib_per_s']:>7.0f} {r['client_cpu_ms']:>14.1f} "
              f"{r['server_cpu_ms']:>14.1f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
