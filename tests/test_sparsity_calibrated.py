"""Wanda and SparseGPT: layer reconstruction ordering, exact 2:4, determinism, bad calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime.cli import main
from runtime.errors import ConfigError
from runtime.samples import mlp_pair
from runtime.sparsity import methods
from runtime.sparsity.analysis import analyze_model
from runtime.sparsity.inputs import CalibrationError, load_npz
from runtime.sparsity.masks import is_2of4
from runtime.sparsity.prune import PruneConfig, prune_model


def _correlated_inputs(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) / np.sqrt(k)
    scales = np.exp(rng.standard_normal(k))  # uneven feature scales, as in real activations
    return (rng.standard_normal((rows, k)) @ mix + 0.3 * rng.standard_normal((rows, 1))) * scales


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_ordering(seed: int) -> None:
    k, n = 128, 64
    x = _correlated_inputs(4096, k, seed)
    w = np.random.default_rng(seed + 10).standard_normal((n, k))
    acc = methods.HessianAccumulator(k)
    for chunk in np.array_split(x, 4):  # streamed, as the model-level sweep does
        acc.add(chunk)
    ref = x @ w.T

    def err(pruned: np.ndarray) -> float:
        return float(np.linalg.norm(ref - x @ pruned.T))

    mag = methods.magnitude(w)
    wan = methods.wanda(w, acc.column_norms())
    sgpt = methods.sparsegpt(w, acc.hessian())
    sgpt_diag = methods.sparsegpt(w, acc.hessian(), mask_selection="diag")
    assert err(sgpt) < err(wan) < err(mag)
    assert err(sgpt) <= err(sgpt_diag) * 1.001
    for pruned in (mag, wan, sgpt, sgpt_diag):
        assert is_2of4(pruned, k_axis=1)
        assert np.count_nonzero(pruned) == n * k // 2


def test_unstructured_variants_hit_the_budget() -> None:
    x = _correlated_inputs(1024, 64, 5)
    w = np.random.default_rng(6).standard_normal((32, 64))
    acc = methods.HessianAccumulator(64)
    acc.add(x)
    for pruned in (methods.wanda(w, acc.column_norms(), None, 0.5),
                   methods.sparsegpt(w, acc.hessian(), None, 0.5, blocksize=32)):
        assert np.count_nonzero(pruned) == w.size // 2


@pytest.fixture(scope="module")
def mlp() -> onnx.ModelProto:
    return mlp_pair((64, 128, 128, 32))[0]


def _calibration(n: int = 256, held_out: int = 32) -> tuple[dict[str, np.ndarray],
                                                             dict[str, np.ndarray]]:
    """Calibration and held-out inputs drawn from one distribution."""
    x = _correlated_inputs(n + held_out, 64, 0).astype(np.float32)
    return {"x": x[:n]}, {"x": x[n:]}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_model_level_exact_24_and_deterministic(mlp: onnx.ModelProto, method: str) -> None:
    config = PruneConfig(method=method, progress=False)
    cal, ev = _calibration()
    a, report = prune_model(mlp, config, cal, ev)
    b, _ = prune_model(mlp, config, cal, ev)
    assert a.SerializeToString() == b.SerializeToString()
    prof = analyze_model(a)
    assert prof.pattern == "2:4" and all(layer.is_24 for layer in prof.layers)
    mag, mag_report = prune_model(mlp, PruneConfig(progress=False), None, ev)
    assert report.deviation.rel_l2 < mag_report.deviation.rel_l2


def test_sparsegpt_beats_wanda_at_model_level(mlp: onnx.ModelProto) -> None:
    cal, ev = _calibration()
    _, w = prune_model(mlp, PruneConfig(method="wanda", progress=False), cal, ev)
    _, s = prune_model(mlp, PruneConfig(method="sparsegpt", progress=False), cal, ev)
    assert s.deviation.rel_l2 < w.deviation.rel_l2


def test_stop_condition_keeps_sensitive_layers_dense(mlp: onnx.ModelProto) -> None:
    cal, hold = _calibration()
    _, full = prune_model(mlp, PruneConfig(method="sparsegpt", progress=False), cal, hold)
    bound = full.deviation.rel_l2 * 0.6
    model, report = prune_model(
        mlp, PruneConfig(method="sparsegpt", max_deviation=bound, progress=False), cal, hold, hold
    )
    assert report.stop_metric.startswith("relative L2")
    assert report.deviation.rel_l2 <= bound
    pruned = [r for r in report.layers if r.pruned]
    assert 0 < len(pruned) < 3
    sens = [r.sensitivity for r in report.layers]
    assert sens == sorted(sens)
    assert analyze_model(model).pattern == "mixed"


def test_calibrated_methods_need_calibration(mlp: onnx.ModelProto) -> None:
    with pytest.raises(ConfigError, match="needs --calibration"):
        prune_model(mlp, PruneConfig(method="wanda", progress=False))


@pytest.mark.parametrize(("arrays", "message"), [
    ({"input": np.zeros((4, 64), np.float32)}, "missing \\['x'\\]"),
    ({"x": np.zeros((4, 32), np.float32)}, "dim 1 is 32, model expects 64"),
    ({"x": np.zeros((4, 64), np.float64)}, "dtype float64, model expects float32"),
    ({"x": np.zeros((4, 2, 64), np.float32)}, "rank 2"),
    ({"x": np.zeros((0, 64), np.float32)}, "no samples"),
])
def test_bad_calibration_files(mlp: onnx.ModelProto, tmp_path: Path,
                               arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match=message):
        load_npz(path, mlp)


def test_cli_calibration_errors(mlp: onnx.ModelProto, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(mlp.SerializeToString())
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--method", "sparsegpt",
                 "--calibration", str(junk)]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    assert main(["prune", str(model), "-o", str(tmp_path / "o.onnx"), "--method", "wanda"]) == 2
    assert "needs --calibration" in capsys.readouterr().err


def test_cli_sparsegpt_with_stop_table(mlp: onnx.ModelProto, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, cal = tmp_path / "m.onnx", tmp_path / "cal.npz"
    model.write_bytes(mlp.SerializeToString())
    np.savez(cal, **_calibration(80, 0)[0])
    out = tmp_path / "o.onnx"
    assert main(["prune", str(model), "-o", str(out), "--method", "sparsegpt", "--calibration",
                 str(cal), "--min-cosine", "0.999", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "sensitivity" in text and "kept dense" in text


def _branchy_model() -> onnx.ModelProto:
    """Two layers sharing an input, a residual add, then a third layer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), n)
             for n in ("wa", "wb", "wc")]
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"]),
        helper.make_node("Relu", ["a"], ["h"]),
        helper.make_node("MatMul", ["x", "wb"], ["g"]),
        helper.make_node("Add", ["h", "g"], ["s"]),
        helper.make_node("Add", ["s", "x"], ["r"]),
        helper.make_node("MatMul", ["r", "wc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_segmented_sweep_matches_full_reruns(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.sparsity import calibrate

    model = _branchy_model()
    x = _correlated_inputs(300, 32, 3).astype(np.float32)
    cal, ev = {"x": x[:256]}, {"x": x[256:]}
    config = PruneConfig(method="sparsegpt", progress=False)
    seg_model, seg_report = prune_model(model, config, cal, ev)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise ValueError("forced fallback")

    monkeypatch.setattr(calibrate.SegmentedModel, "__init__", refuse)
    full_model, full_report = prune_model(model, config, cal, ev)
    for a, b in zip(seg_model.graph.initializer, full_model.graph.initializer, strict=True):
        np.testing.assert_allclose(onnx.numpy_helper.to_array(a),
                                   onnx.numpy_helper.to_array(b), rtol=1e-4, atol=1e-5)
    assert seg_report.deviation.rel_l2 == pytest.approx(full_report.deviation.rel_l2, rel=1e-3)
    assert analyze_model(seg_model).pattern == "2:4"
