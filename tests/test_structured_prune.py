"""Structured pruning (FFN neurons, attention heads) on small generated transformers and MLPs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from runtime.cli import main
from runtime.sparsity import compensate
from runtime.sparsity.heads import greedy_heads
from runtime.sparsity.speed_target import allocate
from runtime.sparsity.structured import (
    StructuredError,
    apply_edits,
    attention_edit,
    find_attention_blocks,
    find_ffn_blocks,
    head_columns,
)
from runtime.sparsity.structured_prune import StructuredConfig, prune_structured
from tests.structured_models import bert_inputs, tiny_bert, tiny_mlp


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_finds_blocks_and_the_erf_gelu() -> None:
    model = tiny_bert()
    ffn = find_ffn_blocks(model)
    att = find_attention_blocks(model)
    assert len(ffn) == 2 and all(b.hidden == 32 for b in ffn)
    assert len(att) == 2 and all((a.heads, a.head_dim) == (4, 4) for a in att)
    for activation in ("Relu", "Gelu", "GeluErf"):
        (block,) = find_ffn_blocks(tiny_mlp(activation=activation))
        assert block.hidden == 16


@pytest.mark.parametrize("style", ["const", "concat"])
def test_shapes_and_reshape_constants(style: str) -> None:
    model = tiny_bert(style=style)
    feeds = bert_inputs()
    config = StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5, refit=True, progress=False)
    pruned, report = prune_structured(model, config, feeds, feeds)
    onnx.checker.check_model(pruned)
    w = inits(pruned)
    for block in find_ffn_blocks(model):
        assert w[block.w1].shape == (16, 16) and w[block.w2].shape == (16, 16)
        assert w[block.b1].shape == (16,)
    for att in find_attention_blocks(model):
        for name, bias in (att.q, att.k, att.v):
            assert w[name].shape == (16, 8) and w[bias].shape == (8,)
        assert w[att.wo].shape == (8, 16)
    # the pruned graph is itself recognised, with the new head count
    assert [a.heads for a in find_attention_blocks(pruned)] == [2, 2]
    if style == "const":  # the head count written in the constants was updated, both reshapes
        shapes = sorted(tuple(v.tolist()) for k, v in w.items() if "pruned_shape" in k)
        assert shapes.count((0, 0, 2, 4)) == 6 and shapes.count((0, 0, 8)) == 2
    out = run(pruned, feeds)
    assert out.shape == run(model, feeds).shape and np.isfinite(out).all()
    assert {r.kind for r in report.rows} == {"ffn", "heads"} and len(report.rows) == 4
    assert all(r.after == r.before // 2 for r in report.rows)


@pytest.mark.parametrize("style", ["const", "concat"])
def test_head_bookkeeping_matches_zeroed_heads(style: str) -> None:
    """Slicing heads 1 and 3 away equals the dense graph with their Wo rows zeroed."""
    model = tiny_bert(style=style, layers=1)
    (att,) = find_attention_blocks(model)
    w = inits(model)
    keep_heads = [0, 2]
    cols = head_columns(keep_heads, att.head_dim)
    bo = w[att.bo] + 0.25
    edit = attention_edit(att, keep_heads, w, w[att.wo][cols], bo)
    pruned = apply_edits(model, [edit])
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    wo = np.zeros_like(w[att.wo])
    wo[cols] = w[att.wo][cols]
    for init in zeroed.graph.initializer:
        if init.name == att.wo:
            init.CopyFrom(numpy_helper.from_array(wo, att.wo))
        if init.name == att.bo:
            init.CopyFrom(numpy_helper.from_array(bo, att.bo))
    feeds = bert_inputs()
    np.testing.assert_allclose(run(pruned, feeds), run(zeroed, feeds), atol=1e-5)


@pytest.mark.parametrize("bias2", [True, False])
def test_bias_compensation_is_exact_for_a_constant_neuron(bias2: bool) -> None:
    model = tiny_mlp(constant_neuron=5, activation="GeluErf", bias2=bias2)
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    (block,) = find_ffn_blocks(model)
    config = StructuredConfig(ffn_sparsity=1 / 16, progress=False)
    pruned, report = prune_structured(model, config, {"x": x}, {"x": x})
    assert inits(pruned)[block.w2].shape == (15, 4)
    assert report.rows[0].error < 1e-6
    dense, got = run(model, {"x": x}), run(pruned, {"x": x})
    np.testing.assert_allclose(got, dense, atol=1e-5)
    # without compensation the same slice moves the output by gelu(2) * W2[5]
    w2 = inits(model)[block.w2]
    assert np.abs(w2[5]).max() * 1.9 > 0.05


def test_refit_beats_bias_compensation_and_damping_from_held_out_rows() -> None:
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((24, 24))
    a = rng.standard_normal((2000, 24)) @ mix  # correlated units: the kept ones can stand in
    w = rng.standard_normal((24, 6))
    fit, held = compensate.Moments(24), compensate.Moments(24)
    fit.add(a[:1500])
    held.add(a[1500:])
    keep = compensate.lowest(compensate.unit_scores(fit.cov, w), 8)
    plain = compensate.compensate(fit, w, None, keep, None)
    refit = compensate.compensate(fit, w, None, keep, 0.01)
    assert (compensate.output_error(held, w, None, keep, refit)
            < compensate.output_error(held, w, None, keep, plain))
    assert compensate.choose_damping(fit, held, w, None, keep) in compensate.DAMPING_GRID


def test_greedy_heads_takes_a_silent_head_first() -> None:
    rng = np.random.default_rng(1)
    mom = compensate.Moments(16)
    mom.add(rng.standard_normal((500, 16)))
    wo = rng.standard_normal((16, 8))
    wo[8:12] = 0.0  # head 2 writes nothing
    assert greedy_heads(mom, wo, None, 4, 4, 2, None)[0] == 2
    assert len(greedy_heads(mom, wo, None, 4, 4, 9, None)) == 3  # one head always stays


def test_allocation_spends_loss_where_it_is_cheapest() -> None:
    losses = {0: [0.0, 0.01, 0.5], 1: [0.0, 0.2, 0.3]}
    savings = {0: [0.0, 1.0, 2.0], 1: [0.0, 1.0, 2.0]}
    assert allocate(losses, savings, 1.0) == {0: 1, 1: 0}
    assert sum(savings[i][lv] for i, lv in allocate(losses, savings, 3.0).items()) >= 3.0


def _fused_attention_model() -> onnx.ModelProto:
    node = helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft",
                            num_heads=2, name="fused")
    graph = helper.make_graph(
        [node], "fused",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", 8])],
        initializer=[numpy_helper.from_array(np.zeros((8, 24), np.float32), "w"),
                     numpy_helper.from_array(np.zeros(24, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _softmax_without_qk() -> onnx.ModelProto:
    """A Softmax over a projection (a classifier head), not over Q K^T."""
    model = tiny_mlp()
    g = model.graph
    last = g.node[-1]
    soft = helper.make_node("Softmax", [last.input[0]], ["probs"], axis=-1, name="cls_softmax")
    last.input[0] = "probs"
    g.node.insert(len(g.node) - 1, soft)
    return model


def _wrong_key_transpose() -> onnx.ModelProto:
    model = tiny_bert(layers=1)
    for node in model.graph.node:
        if node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 2, 3, 1]:
            node.attribute[0].CopyFrom(helper.make_attribute("perm", [0, 2, 1, 3]))
    return model


@pytest.mark.parametrize("build, words", [
    (_fused_attention_model, "fused op Attention 'fused'"),
    (_softmax_without_qk, "Softmax 'cls_softmax'"),
    (_wrong_key_transpose, "head transposes"),
    (tiny_mlp, "no Softmax"),
])
def test_unknown_attention_is_refused_with_what_was_found(build, words: str) -> None:  # noqa: ANN001
    with pytest.raises(StructuredError, match="attention not recognised") as info:
        find_attention_blocks(build())
    assert words in str(info.value)


def _write_npz(path: Path, feeds: dict[str, np.ndarray]) -> Path:
    np.savez(path, **feeds)
    return path


def test_cli_prints_the_table_and_refuses_clearly(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "bert.onnx"
    onnx.save(tiny_bert(), str(model_path))
    cal = _write_npz(tmp_path / "cal.npz", bert_inputs(n=30))
    out = tmp_path / "pruned.onnx"
    rc = main(["prune", str(model_path), "-o", str(out), "--structured", "--ffn-sparsity", "0.5",
               "--head-sparsity", "0.25", "--refit", "--calibration", str(cal), "--no-progress",
               "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "heads" in text and "16 neurons" in text and "calib. error" in text
    assert [a.heads for a in find_attention_blocks(onnx.load(str(out)))] == [3, 3]
    # stop condition: a bound no pruning meets keeps every block dense
    rc = main(["prune", str(model_path), "-o", str(tmp_path / "s.onnx"), "--structured",
               "--ffn-sparsity", "0.5", "--calibration", str(cal), "--no-progress",
               "--min-cosine", "1.0"])
    text = capsys.readouterr().out
    assert rc == 0 and "kept dense" in text and "pruned  " not in text
    # no calibration, and a graph whose attention is not recognised
    rc = main(["prune", str(model_path), "-o", str(tmp_path / "x.onnx"), "--structured",
               "--ffn-sparsity", "0.5"])
    assert rc == 2 and "needs --calibration" in capsys.readouterr().err
    mlp_path = tmp_path / "mlp.onnx"
    onnx.save(_softmax_without_qk(), str(mlp_path))
    cal_mlp = _write_npz(tmp_path / "mlp.npz", {"x": np.ones((4, 8), np.float32)})
    rc = main(["prune", str(mlp_path), "-o", str(tmp_path / "y.onnx"), "--structured",
               "--head-sparsity", "0.5", "--calibration", str(cal_mlp)])
    err = capsys.readouterr().err
    assert rc == 2 and "attention not recognised" in err and not (tmp_path / "y.onnx").exists()


def test_masked_variant_equals_the_sliced_model() -> None:
    """The one-session form the sweep measures with gives the sliced model's outputs."""
    from runtime.sparsity.structure_diff import compare_structure
    from runtime.sparsity.structured import masked_weights
    from runtime.sparsity.structured_prune import MaskedModel, plan_stages, sweep

    model = tiny_bert(style="concat")
    feeds = bert_inputs()
    config = StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5, refit=True, progress=False)
    edits, _ = sweep(model, plan_stages(model, config), feeds, config)
    weights = masked_weights(edits)
    assert weights is not None
    masked = MaskedModel(model, list(weights)).outputs(feeds, weights, 8)
    sliced = apply_edits(model, edits)
    np.testing.assert_allclose(masked, run(sliced, feeds).reshape(len(masked), -1), atol=1e-4)
    assert compare_structure(model, sliced).params < compare_structure(model, model).params


def test_target_speedup_reports_what_it_measured(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "bert.onnx"
    onnx.save(tiny_bert(hidden=32, heads=4, ffn=128), str(model_path))
    cal = _write_npz(tmp_path / "cal.npz", bert_inputs(n=30, hidden=32))
    rc = main(["prune", str(model_path), "-o", str(tmp_path / "t.onnx"), "--structured",
               "--target-speedup", "1.3", "--refit", "--calibration", str(cal),
               "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "measured onnxruntime CPU speed-up" in text and "target 1.3x" in text
    rc = main(["prune", str(model_path), "-o", str(tmp_path / "u.onnx"), "--structured",
               "--target-speedup", "0.9", "--calibration", str(cal)])
    assert rc == 2 and "must be > 1" in capsys.readouterr().err
    rc = main(["prune", str(model_path), "-o", str(tmp_path / "v.onnx"), "--structured",
               "--target-speedup", "1.5", "--ffn-sparsity", "0.5", "--calibration", str(cal)])
    assert rc == 2 and "chooses each block's amount itself" in capsys.readouterr().err


def test_max_deviation_keeps_the_bound_on_held_out_rows() -> None:
    model = tiny_bert()
    cal, hold = bert_inputs(n=40, seed=1), bert_inputs(n=16, seed=2)
    loose = StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5, refit=True, progress=False)
    _, free = prune_structured(model, loose, cal, hold, hold)
    bound = free.deviation.rel_l2 / 2
    strict = StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5, refit=True, progress=False,
                              max_deviation=bound)
    pruned, report = prune_structured(model, strict, cal, hold, hold)
    assert report.deviation.rel_l2 <= bound + 1e-9
    assert report.stop_metric.startswith("relative L2")
    kept_dense = [r for r in report.rows if not r.pruned]
    assert kept_dense and all(r.after == r.before for r in kept_dense)
    onnx.checker.check_model(pruned)


def test_fp16_model_with_nodes_out_of_order() -> None:
    """The fp16 converter appends its input Casts at the end of the node list."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dense32 = tiny_bert()
    model = convert_float_to_float16(dense32, keep_io_types=True)
    feeds = bert_inputs()
    config = StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5, refit=True, progress=False)
    pruned, report = prune_structured(model, config, feeds, feeds)
    _, report32 = prune_structured(dense32, config, feeds, feeds)
    assert inits(pruned)[find_ffn_blocks(model)[0].w1].dtype == np.float16
    assert run(pruned, feeds).shape == (24, 6, 16)
    assert report.deviation.cosine > report32.deviation.cosine - 0.05
