"""benchmarks/vs_triton.py's pure parts: the Triton peer's config and the summary arithmetic.

Triton itself is not started here (it needs the nvidia-pytriton venv; `make bench-triton`).
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tests.test_benchmark_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vs_triton() -> ModuleType:
    return load_script("vs_triton.py")


def test_triton_config_keeps_our_batching(vs_triton: ModuleType, tmp_path: Path) -> None:
    """The generated config.pbtxt parses as Triton's ModelConfig and batches as ours does."""
    ours = vs_triton.our_config("mlp_dense", ROOT / "model_repo")
    ours.parameters["intra_op_thread_count"].string_value = "2"
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"")
    model_dir = vs_triton.peer.write_model(tmp_path / "repo", ours, onnx_file)
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert (config.name, config.backend, config.platform) == ("mlp_dense", "python", "")
    assert config.max_batch_size == ours.max_batch_size > 1
    assert config.dynamic_batching == ours.dynamic_batching
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.input) == list(ours.input) and list(config.output) == list(ours.output)
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_CPU)
    ]
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    assert (model_dir / "1" / "model.onnx").resolve() == onnx_file.resolve()
    ast.parse((model_dir / "1" / "model.py").read_text())  # the python backend's model


def test_generated_model_copies_the_template_batching(vs_triton: ModuleType) -> None:
    wide = vs_triton.our_config("mlp_wide2048", ROOT / "model_repo")
    dense = vs_triton.our_config("mlp_dense", ROOT / "model_repo")
    assert wide.name == "mlp_wide2048"
    assert wide.dynamic_batching == dense.dynamic_batching
    assert wide.max_batch_size == dense.max_batch_size
    assert list(wide.input[0].dims) == [256] and list(wide.output[0].dims) == [256]


def test_summary_and_ratios(vs_triton: ModuleType) -> None:
    """Medians of windows; batch and CPU per request over all the windows' requests."""

    def window(rate: float, requests: int, executions: int, cpu_s: float) -> dict:
        return {"infer_s": rate, "p50_ms": 1.0, "p99_ms": 2.0, "requests": requests,
                "rows": requests, "executions": executions, "cpu_s": cpu_s}  # fmt: skip

    triton = vs_triton.summarize([window(100, 100, 20, 0.1), window(300, 300, 60, 0.3)])
    assert (triton["infer_s"], triton["mean_batch"], triton["cpu_us_per_req"]) == (200, 5, 1000)
    ours = vs_triton.summarize([window(240, 240, 80, 0.12)])
    rows = vs_triton.with_ratios([
        {"model": "m", "concurrency": 8, "protocol": "grpc", "kind": "triton", **triton},
        {"model": "m", "concurrency": 8, "protocol": "grpc", "kind": "ours", **ours},
        {"model": "m", "concurrency": 8, "protocol": "http", "kind": "triton", **triton},
    ])  # fmt: skip
    assert rows[1]["x_triton"] == pytest.approx(1.2)
    assert rows[1]["cpu_x_triton"] == pytest.approx(0.5)
    assert rows[1]["mean_batch"] == 3
    empty = vs_triton.summarize([window(0, 0, 0, 0.0)])
    assert empty["mean_batch"] is None and empty["cpu_us_per_req"] is None
