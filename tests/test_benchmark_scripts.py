"""Benchmark scripts stay runnable: they import, and the gRPC floor server answers.

Benchmarks are not run in CI (timings belong in benchmarks, not tests), so a renamed
helper would otherwise only surface when someone next runs `make bench`.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NEEDS_TORCH = {"gpu_cslt_search_bench.py"}  # imports torch at module level


def load_script(script: str) -> ModuleType:
    """Import benchmarks/<script> as a module (its main() is guarded, so nothing runs)."""
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", BENCHMARKS / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NOTE: dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize(
    "script", sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in NEEDS_TORCH)
)
def test_benchmark_imports(script: str) -> None:
    """Importing runs every top-level import and definition (main() is guarded)."""
    load_script(script)


def test_grpc_echo_floor_answers_tritonclient(tmp_path: Path) -> None:
    port_file = tmp_path / "ports.json"
    proc = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "grpc_echo.py"), "--port-file", str(port_file)]
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "echo did not start"
            time.sleep(0.05)
        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{json.loads(port_file.read_text())['grpc']}"
        )
        x = grpcclient.InferInput("x", [3, 256], "FP32")
        x.set_data_from_numpy(np.ones((3, 256), np.float32))
        out = client.infer("echo", [x]).as_numpy("y")
        assert out.shape == (3, 256) and not out.any()
        stats = client.get_inference_statistics("echo").model_stats[0]
        assert stats.inference_stats.success.count == 1
        assert client.get_model_config("echo").config.max_batch_size == 64
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_native_echo_canned_answers_parse(tmp_path: Path) -> None:
    """The C++ echo replays these bytes verbatim, so they must be the stubs' messages."""
    from tritonclient.grpc import service_pb2 as pb

    load_script("grpc_echo.py").write_canned(tmp_path)
    infer = pb.ModelInferResponse.FromString((tmp_path / "ModelInfer.bin").read_bytes())
    assert list(infer.outputs[0].shape) == [1, 256] and len(infer.raw_output_contents[0]) == 1024
    config = pb.ModelConfigResponse.FromString((tmp_path / "ModelConfig.bin").read_bytes())
    assert config.config.max_batch_size == 64
    assert len(list(tmp_path.glob("*.bin"))) == 7


def test_ab_serve_reads_variants() -> None:
    """NAME=DIR[:REPO[:ENV=V,...]]: the repository defaults to the checkout's model_repo."""
    module = load_script("ab_serve.py")
    plain = module.parse_variant("base=/tmp/base")
    assert (plain.name, plain.repo, plain.env) == ("base", Path("/tmp/base/model_repo"), {})
    full = module.parse_variant("n=/x:/r:A=1,B=two")
    assert (full.directory, full.repo, full.env) == (Path("/x"), Path("/r"), {"A": "1", "B": "two"})


def test_chaos_short_run_loses_nothing(tmp_path: Path) -> None:
    """benchmarks/chaos.py end to end on two scenarios, briefly: every request accounted for,
    SIGTERM exits 0, every hostile model file refused with a reason."""
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "chaos.py"), "--only", "sigterm,hostile",
         "--seconds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())["scenarios"]
    assert all(r["tally"]["lost"] == 0 and r["pass"] for r in results.values())
    assert results["sigterm"]["notes"]["exit_code"] == 0
    assert all(m["reason"] for m in results["hostile"]["notes"]["models"].values())
