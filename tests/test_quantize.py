"""`sparse-runtime quantize`: round trips within the reported deviation, 2:4 kept in int8,
clear errors on bad models and inputs, and the int8 samples served by the real server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper

from runtime.cli import main
from runtime.samples import mlp_pair
from runtime.sparsity.analysis import analyze_model
from runtime.sparsity.inputs import generate_inputs
from runtime.sparsity.prune import deviation
from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("quantize")
    dense, sparse = mlp_pair((64, 128, 128, 32))
    out = {"dense": tmp / "dense.onnx", "sparse": tmp / "sparse.onnx"}
    out["dense"].write_bytes(dense.SerializeToString())
    out["sparse"].write_bytes(sparse.SerializeToString())
    return out


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x})[0].astype(np.float64)


def _quantize(src: Path, dst: Path, *extra: str) -> tuple[int, dict]:
    report = dst.with_suffix(".json")
    rc = main(["quantize", str(src), "-o", str(dst), "--no-progress", "--json", str(report),
               *extra])
    return rc, (json.loads(report.read_text()) if rc == 0 else {})


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_round_trip_within_reported_deviation(
    models: dict[str, Path], tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{mode}.onnx"
    rc, report = _quantize(models["dense"], out, "--mode", mode)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "output deviation: max abs" in printed and "cosine mean" in printed
    assert f"wrote {out}" in printed
    # the report's numbers are what the written model does on the same generated inputs,
    # run in the same batches of 16 (dynamic int8 scales activations per call)
    x = generate_inputs(onnx.load(str(models["dense"])), seed=0)["x"]
    ref = np.concatenate([_outputs(models["dense"], x[i:i + 16]) for i in range(0, len(x), 16)])
    got = np.concatenate([_outputs(out, x[i:i + 16]) for i in range(0, len(x), 16)])
    d = deviation(ref, got)
    assert d.rel_l2 == pytest.approx(report["deviation"]["rel_l2"], rel=1e-4)
    assert d.max_abs == pytest.approx(report["deviation"]["max_abs"], rel=1e-4)
    assert report["deviation"]["rel_l2"] < 0.1 and report["deviation"]["cosine"] > 0.995
    assert report["quantized"]["gemm_nodes"] == 3 and report["left_float"] == []
    assert report["bytes_after"] < report["bytes_before"] / 3
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ("MatMulInteger" in ops) if mode == "dynamic" else ("DequantizeLinear" in ops)
    assert report["per_channel"] is True


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_prune_then_quantize_keeps_24_and_inspect_reports_it(
    models: dict[str, Path], tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pruned = tmp_path / "pruned.onnx"
    assert main(["prune", str(models["dense"]), "-o", str(pruned), "--no-progress"]) == 0
    out = tmp_path / "pruned_int8.onnx"
    rc, report = _quantize(pruned, out, "--mode", mode)
    assert rc == 0
    assert report["sparse24_layers_before"] == 3 == report["sparse24_layers_after"]
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    gemm = [r for r in inspected["layers"] if r["k_axis"] is not None]
    assert len(gemm) == 3
    assert all(r["dtype"] == "int8" and r["is_24"] and r["compliance_24"] == 1.0 for r in gemm)
    assert inspected["summary"]["pattern"] == "2:4"
    profile = analyze_model(onnx.load(str(out)))
    assert len(profile.sparse_24_layers) == 3


def test_static_with_calibration_file_and_per_tensor(
    models: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rng.standard_normal((40, 64)).astype(np.float32))
    out = tmp_path / "static.onnx"
    rc, report = _quantize(models["sparse"], out, "--mode", "static", "--calibration", str(cal),
                           "--per-tensor", "--samples", "24")
    assert rc == 0
    assert report["calibration_samples"] == 24 and report["per_channel"] is False
    assert report["deviation"]["cosine"] > 0.99


def test_exclude_keeps_a_layer_fp32(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "partial.onnx"
    rc, report = _quantize(models["dense"], out, "--exclude", "fc2/*")
    assert rc == 0
    assert report["left_float"] == ["fc2/MatMul"] and report["quantized"]["gemm_nodes"] == 2


# ---- bad inputs ----------------------------------------------------------------


def _model(nodes: list, inits: list, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info("x", dtype, ["batch", 8])],
        [helper.make_tensor_value_info("y", dtype, ["batch", 8])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _write(tmp: Path, name: str, model: onnx.ModelProto) -> Path:
    path = tmp / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _bad_cases(tmp: Path, models: dict[str, Path]) -> list[tuple[list[str], str]]:
    w8 = numpy_helper.from_array(np.ones((8, 8), np.float16), "w")
    fp16 = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w8], TensorProto.FLOAT16)
    no_gemm = _model([helper.make_node("Relu", ["x"], ["y"])], [])
    custom = _model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], [])
    garbage = tmp / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    dynamic_int8 = tmp / "already.onnx"
    assert main(["quantize", str(models["dense"]), "-o", str(dynamic_int8), "--no-progress"]) == 0
    wrong_name = tmp / "wrong_name.npz"
    np.savez(wrong_name, inputs=np.zeros((4, 64), np.float32))
    wrong_shape = tmp / "wrong_shape.npz"
    np.savez(wrong_shape, x=np.zeros((4, 63), np.float32))
    dense = str(models["dense"])
    return [
        ([str(tmp / "missing.onnx")], "no such file"),
        ([str(garbage)], "not a valid ONNX model"),
        ([str(dynamic_int8)], "already quantized"),
        ([str(_write(tmp, "fp16", fp16))], "needs fp32 weights"),
        ([str(_write(tmp, "no_gemm", no_gemm))], "nothing to quantize"),
        ([str(_write(tmp, "custom", custom))], "unsupported op com.example::Frobnicate"),
        ([dense, "--mode", "static", "--calibration", str(wrong_name)],
         "input names do not match the model"),
        ([dense, "--mode", "static", "--calibration", str(wrong_shape)], "dim 1 is 63"),
        ([dense, "--calibration", str(wrong_shape)], "applies to --mode static only"),
        ([dense, "--exclude", "nope*"], "matches no GEMM node"),
        ([dense, "--batch-size", "0"], "batch size must be >= 1"),
        ([dense, "--inputs", str(wrong_name)], "input names do not match"),
    ]


def test_bad_inputs_fail_with_clear_errors(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in _bad_cases(tmp_path, models):
        out = tmp_path / "out.onnx"
        capsys.readouterr()
        rc = main(["quantize", *args, "-o", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert message in err, (args, err)
        assert not out.exists()


# ---- the int8 samples through the real server -------------------------------------


def test_int8_samples_served_close_to_fp32(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    x = np.random.default_rng(11).standard_normal((16, 256)).astype(np.float32)

    def infer(model: str) -> np.ndarray:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return client.infer(model, [inp]).as_numpy("y").astype(np.float64)

    for fp32, int8 in (("mlp_dense", "mlp_int8"), ("mlp_sparse24", "mlp_sparse24_int8")):
        assert client.is_model_ready(int8)
        d = deviation(infer(fp32), infer(int8))
        assert d.rel_l2 < 0.05 and d.min_cosine > 0.99, (int8, d)
        params = client.get_model_config(int8).config.parameters
        assert params["sparse_runtime.engine"].string_value in ("onnxruntime", "openvino")
    params = client.get_model_config("mlp_sparse24_int8").config.parameters
    assert params["sparse_runtime.sparsity_pattern"].string_value == "2:4"
