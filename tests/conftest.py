"""Fixtures that start the real server as a subprocess and talk to it over gRPC.

No mocks: every server test goes through `python -m runtime serve`, real ports
(picked by the OS: --grpc-port 0, reported through --port-file) and the real
tritonclient.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.compare.scrape import parse as parse_prometheus
from runtime.samples import build_samples

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_REPO = ROOT / "model_repo"



def native_bridge_missing() -> str:
    """Why the native gRPC bridge cannot be imported here ('' where it is built): the reason
    the native-frontend tests skip with."""
    from runtime.server.native_frontend import load_bridge

    try:
        load_bridge()
    except ImportError as exc:
        return str(exc)
    return ""

@dataclass
class ServerProcess:
    """A running server: its process, ports and log file."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log: Path
    repo: Path
    http_port: int = -1

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            return resp.read().decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(
    repo: Path, tmp: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None
) -> ServerProcess:
    """Start `python -m runtime serve` on free ports and wait until it reports them."""
    port_file = tmp / f"ports-{time.monotonic_ns()}.json"
    log = tmp / f"server-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable, "-X", "faulthandler", "-m", "runtime", "serve",
        "--model-repository", str(repo),
        "--host", "127.0.0.1",
        "--grpc-port", "0",
        "--http-port", "0",
        "--metrics-port", "0",
        "--port-file", str(port_file),
        *extra,
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists():
            ports = json.loads(port_file.read_text())
            return ServerProcess(
                proc, ports["grpc"], ports["metrics"], log, repo, ports.get("http", -1)
            )
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        time.sleep(0.05)
    # NOTE: SIGABRT makes faulthandler write every thread's Python stack into the log
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise RuntimeError(f"server did not start in 60 s:\n{log.read_text()}")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:  # noqa: ANN001
    """Poll `predicate` until it is true or `timeout` passes; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="session")
def sample_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample repository, models built by the project's own script."""
    build_samples(SAMPLE_REPO)
    return SAMPLE_REPO


@pytest.fixture(scope="session")
def server(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server over the sample repository (plus the multi-dtype test model)."""
    tmp = tmp_path_factory.mktemp("server")
    repo = tmp / "repo"
    copy_repo(sample_repo, repo)
    write_tensor_zoo(repo / "zoo")
    srv = start_server(repo, tmp)
    yield srv
    srv.stop()


@contextlib.contextmanager
def one_server_per_frontend(
    sample_repo: Path, tmp: Path, args: Sequence[str]
) -> Iterator[dict[str, ServerProcess]]:
    """A native and a python (grpc.aio + aiohttp) server on one copy of the sample repo, for
    tests that send both the same requests and compare the answers."""
    copy_repo(sample_repo, tmp / "repo")
    started: dict[str, ServerProcess] = {}
    try:
        for frontend in ("native", "python"):
            started[frontend] = start_server(tmp / "repo", tmp,
                                             ("--grpc-frontend", frontend, *args))  # fmt: skip
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def copy_repo(src: Path, dst: Path) -> None:
    """Copy configs, hard-link model files (cheap, and tests may then edit the copy)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix in (".onnx", ".sparse"):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


ZOO_CONFIG = """
name: "zoo"
max_batch_size: 8
input [
  { name: "f32" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "f16" data_type: TYPE_FP16 dims: [ 4 ] },
  { name: "i64" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "i8" data_type: TYPE_INT8 dims: [ 4 ] },
  { name: "b" data_type: TYPE_BOOL dims: [ 4 ] },
  { name: "s" data_type: TYPE_STRING dims: [ 2 ] }
]
output [
  { name: "f32_x2" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "f16_out" data_type: TYPE_FP16 dims: [ 4 ] },
  { name: "i64_x2" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "i8_out" data_type: TYPE_INT8 dims: [ 4 ] },
  { name: "b_not" data_type: TYPE_BOOL dims: [ 4 ] },
  { name: "s_out" data_type: TYPE_STRING dims: [ 2 ] }
]
dynamic_batching { }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""


def tensor_zoo_model() -> onnx.ModelProto:
    """Tiny model with one input/output per dtype family (fp32, fp16, int64, int8, bool,
    string) and several outputs, for dtype and output-filtering tests."""
    b = "batch"
    inputs = [
        helper.make_tensor_value_info("f32", TensorProto.FLOAT, [b, 4]),
        helper.make_tensor_value_info("f16", TensorProto.FLOAT16, [b, 4]),
        helper.make_tensor_value_info("i64", TensorProto.INT64, [b, 4]),
        helper.make_tensor_value_info("i8", TensorProto.INT8, [b, 4]),
        helper.make_tensor_value_info("b", TensorProto.BOOL, [b, 4]),
        helper.make_tensor_value_info("s", TensorProto.STRING, [b, 2]),
    ]
    outputs = [
        helper.make_tensor_value_info("f32_x2", TensorProto.FLOAT, [b, 4]),
        helper.make_tensor_value_info("f16_out", TensorProto.FLOAT16, [b, 4]),
        helper.make_tensor_value_info("i64_x2", TensorProto.INT64, [b, 4]),
        helper.make_tensor_value_info("i8_out", TensorProto.INT8, [b, 4]),
        helper.make_tensor_value_info("b_not", TensorProto.BOOL, [b, 4]),
        helper.make_tensor_value_info("s_out", TensorProto.STRING, [b, 2]),
    ]
    nodes = [
        helper.make_node("Add", ["f32", "f32"], ["f32_x2"]),
        helper.make_node("Identity", ["f16"], ["f16_out"]),
        helper.make_node("Add", ["i64", "i64"], ["i64_x2"]),
        helper.make_node("Identity", ["i8"], ["i8_out"]),
        helper.make_node("Not", ["b"], ["b_not"]),
        helper.make_node("Identity", ["s"], ["s_out"]),
    ]
    graph = helper.make_graph(nodes, "zoo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_tensor_zoo(model_dir: Path, config: str = ZOO_CONFIG) -> None:
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.onnx").write_bytes(tensor_zoo_model().SerializeToString())
    (model_dir / "config.pbtxt").write_text(config)


def zoo_inputs(rows: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {
        "f32": rng.standard_normal((rows, 4)).astype(np.float32),
        "f16": rng.standard_normal((rows, 4)).astype(np.float16),
        "i64": rng.integers(-1000, 1000, (rows, 4)).astype(np.int64),
        "i8": rng.integers(-100, 100, (rows, 4)).astype(np.int8),
        "b": rng.integers(0, 2, (rows, 4)).astype(bool),
        "s": np.array([[f"r{i}".encode(), "ß∂".encode()] for i in range(rows)], dtype=object),
    }


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(name, labels): value}; Triton counters under their bare names."""
    return parse_prometheus(text)


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= set(lv))
