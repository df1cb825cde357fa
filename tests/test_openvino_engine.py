"""OpenVINO engine: answers like onnxruntime (fp32 and int8 QDQ), honours config, fails clearly.

Skipped with a reason where the optional `openvino` extra is not installed (CI installs it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from runtime.engines.base import EngineOptions, create_engine
from runtime.errors import ConfigError, EngineUnavailable, ModelLoadError
from runtime.samples import mlp_pair, quantize_sample
from runtime.sparsity.prune import deviation
from tests.conftest import metric, parse_metrics, start_server

pytest.importorskip("openvino", reason="the optional 'openvino' extra is not installed")

CONFIG = """
name: "{name}"
max_batch_size: 64
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 32 ] }} ]
parameters {{ key: "engine" value: {{ string_value: "openvino" }} }}
{extra}
"""


@pytest.fixture(scope="module")
def small() -> dict[str, bytes]:
    dense, sparse = mlp_pair((64, 128, 128, 32))
    return {
        "dense": dense.SerializeToString(),
        "sparse": sparse.SerializeToString(),
        "int8": quantize_sample(sparse).SerializeToString(),
    }


def _load(source: bytes | Path, **params: str):  # noqa: ANN202
    engine = create_engine("openvino", source, EngineOptions(intra_op_threads=1,
                                                             parameters=params))
    engine.load()
    return engine


def _ort(source: bytes, x: np.ndarray) -> np.ndarray:
    engine = create_engine("onnxruntime", source, EngineOptions(intra_op_threads=1))
    engine.load()
    return engine.infer({"x": x})["y"]


@pytest.mark.parametrize("which", ["dense", "sparse"])
def test_fp32_matches_onnxruntime(small: dict[str, bytes], which: str) -> None:
    engine = _load(small[which])
    d = engine.describe()
    assert d.engine == "openvino" and d.device == "cpu"
    assert [(s.name, s.dtype, s.shape) for s in d.inputs] == [("x", np.float32, (-1, 64))]
    assert [(s.name, s.shape) for s in d.outputs] == [("y", (-1, 32))]
    assert d.details["inference_precision"] == "f32" and d.details["threads"] == "1"
    rng = np.random.default_rng(1)
    for rows in (1, 7, 64):  # dynamic batch, like the onnxruntime engine
        x = rng.standard_normal((rows, 64)).astype(np.float32)
        y = engine.infer({"x": x})["y"]
        np.testing.assert_allclose(y, _ort(small[which], x), rtol=1e-4, atol=1e-4)
    engine.unload()


def test_int8_qdq_close_to_onnxruntime_int8_and_fp32(small: dict[str, bytes]) -> None:
    engine = _load(small["int8"], precision="int8")
    assert engine.describe().details["precision"] == "int8 (as quantized)"
    x = np.random.default_rng(2).standard_normal((32, 64)).astype(np.float32)
    y = engine.infer({"x": x})["y"].astype(np.float64)
    ort_int8 = _ort(small["int8"], x).astype(np.float64)
    fp32 = _ort(small["sparse"], x).astype(np.float64)
    assert deviation(ort_int8, y).rel_l2 < 0.03  # two int8 kernels, rounding differs
    assert deviation(fp32, y).min_cosine > 0.99


def test_path_source_bf16_and_sparse_rate(small: dict[str, bytes], tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(small["int8"])
    engine = _load(path, precision="bf16", openvino_sparse_weights_decompression_rate="0.5")
    d = engine.describe().details
    # bf16 runs only where the CPU has it (AMX / AVX-512 BF16); otherwise OpenVINO runs f32
    assert d["inference_precision"] in ("bf16", "f32")
    assert d["sparse_weights_decompression_rate"] == "0.5"
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    fp32 = _ort(small["sparse"], x).astype(np.float64)
    assert deviation(fp32, engine.infer({"x": x})["y"].astype(np.float64)).min_cosine > 0.99


@pytest.mark.parametrize(("params", "message"), [
    ({"precision": "int4"}, "openvino precision must be one of"),
    ({"openvino_performance_hint": "FAST"}, "openvino_performance_hint must be one of"),
    ({"openvino_sparse_weights_decompression_rate": "2"}, "must be a number in [0, 1]"),
    ({"openvino_sparse_weights_decompression_rate": "half"}, "must be a number in [0, 1]"),
    ({"openvino_cpu_pinning": "maybe"}, "must be true or false"),
])
def test_bad_parameters(small: dict[str, bytes], params: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        create_engine("openvino", small["dense"], EngineOptions(parameters=params))


def test_bad_model_and_device(small: dict[str, bytes]) -> None:
    with pytest.raises(ModelLoadError, match="openvino could not load the model"):
        _load(b"not an onnx model")
    engine = create_engine("openvino", small["dense"], EngineOptions(device="cuda"))
    with pytest.raises(EngineUnavailable, match="CPU only"):
        engine.load()


def test_forced_openvino_through_server_with_metrics(
    small: dict[str, bytes], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    for name, model, extra in (("ov_fp32", "dense", ""),
                               ("ov_int8", "int8",
                                'parameters { key: "precision" value: { string_value: "int8" } }')):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(small[model])
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, extra=extra))
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
        inp = grpcclient.InferInput("x", [3, 64], "FP32")
        inp.set_data_from_numpy(x)
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            client.is_model_ready("ov_fp32") and client.is_model_ready("ov_int8")
        ):
            time.sleep(0.2)
        y = client.infer("ov_fp32", [inp]).as_numpy("y")
        np.testing.assert_allclose(y, _ort(small["dense"], x), rtol=1e-4, atol=1e-4)
        y8 = client.infer("ov_int8", [inp]).as_numpy("y").astype(np.float64)
        assert deviation(_ort(small["sparse"], x).astype(np.float64), y8).min_cosine > 0.99
        params = client.get_model_config("ov_int8").config.parameters
        assert params["sparse_runtime.engine"].string_value == "openvino"
        assert params["sparse_runtime.engine_precision"].string_value == "int8 (as quantized)"
        samples = parse_metrics(srv.scrape())
        assert metric(samples, "nv_inference_request_success", model="ov_fp32") == 1
        assert metric(samples, "nv_inference_count", model="ov_int8") == 3
    finally:
        srv.stop()
