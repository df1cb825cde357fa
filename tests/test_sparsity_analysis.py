"""analyze_model: K-axis rules, compliance, eligibility, sizes and FLOP shares."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.samples import mlp_pair
from runtime.sparsity.analysis import analyze_model, compressed_24_bytes
from runtime.sparsity.masks import magnitude_prune_2of4


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[int],
           y_shape: list[object], x_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info("y", x_type, y_shape)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mlp_samples() -> None:
    dense, sparse = mlp_pair((64, 128, 32))
    pd, ps = analyze_model(dense), analyze_model(sparse)
    assert pd.pattern == "dense" and ps.pattern == "2:4"
    assert all(layer.is_24 and layer.eligible and layer.k_axis == 0 for layer in ps.layers)
    assert [layer.shape for layer in ps.layers] == [(64, 128), (128, 32)]
    assert ps.eligible_24_flops_share == 1.0 and pd.eligible_24_flops_share == 0.0
    assert ps.sparsity == pytest.approx(0.5)
    assert ps.layers[0].flops == 2 * 64 * 128
    assert ps.dense_bytes == ps.stored_bytes == (64 * 128 + 128 * 32) * 4
    assert ps.compressed_24_bytes == compressed_24_bytes(64 * 128, 4) + compressed_24_bytes(
        128 * 32, 4
    )
    assert pd.compressed_24_bytes == pd.dense_bytes


def test_mixed_pattern_and_flops_share() -> None:
    dense, sparse = mlp_pair((64, 128, 32))
    w0 = numpy_helper.to_array(sparse.graph.initializer[0])
    mixed = onnx.ModelProto()
    mixed.CopyFrom(dense)
    mixed.graph.initializer[0].CopyFrom(numpy_helper.from_array(w0, "fc0.weight"))
    prof = analyze_model(mixed)
    assert prof.pattern == "mixed"
    assert prof.eligible_24_flops_share == pytest.approx(64 * 128 / (64 * 128 + 128 * 32))


def test_gemm_transb_k_axis_is_1() -> None:
    rng = np.random.default_rng(0)
    w = magnitude_prune_2of4(rng.standard_normal((32, 64)).astype(np.float32), k_axis=1)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    prof = analyze_model(_model([node], [numpy_helper.from_array(w, "w")], [1, 64], [1, 32]))
    layer = prof.layers[0]
    assert (layer.op, layer.k_axis, layer.k, layer.n) == ("Gemm", 1, 64, 32)
    assert layer.is_24 and layer.eligible
    # the same weight read with transB=0 has K along axis 0, where it is not 2:4
    node0 = helper.make_node("Gemm", ["x", "w"], ["y"])
    w2 = np.ascontiguousarray(w.T)
    prof0 = analyze_model(_model([node0], [numpy_helper.from_array(w2, "w")], [1, 64], [1, 32]))
    assert prof0.layers[0].k_axis == 0 and prof0.layers[0].is_24


def test_conv_k_is_in_channels_times_kernel() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    prof = analyze_model(_model([node], [numpy_helper.from_array(w, "w")], [1, 16, 8, 8],
                                [1, 32, 8, 8]))
    layer = prof.layers[0]
    assert (layer.k, layer.n) == (16 * 9, 32)
    assert not layer.eligible and "1x1" in layer.ineligible_reason
    w1 = magnitude_prune_2of4(rng.standard_normal((32, 16, 1, 1)).astype(np.float16), k_axis=1)
    node1 = helper.make_node("Conv", ["x", "w"], ["y"])
    prof1 = analyze_model(_model([node1], [numpy_helper.from_array(w1, "w")], [1, 16, 8, 8],
                                 [1, 32, 8, 8], TensorProto.FLOAT16))
    assert prof1.layers[0].eligible and prof1.layers[0].is_24 and prof1.pattern == "2:4"


@pytest.mark.parametrize(
    ("shape", "dtype", "eligible"),
    [
        ((64, 32), np.float16, True),
        ((64, 24), np.float16, False),  # N not a multiple of 16
        ((64, 32), np.float64, False),  # dtype
        ((32, 32), np.int8, True),
        ((48, 32), np.int8, False),  # int8 needs multiples of 32
    ],
)
def test_eligibility(shape: tuple[int, int], dtype: type, eligible: bool) -> None:
    w = np.ones(shape, dtype=dtype)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    prof = analyze_model(_model([node], [numpy_helper.from_array(w, "w")], [1, shape[0]],
                                [1, shape[1]]))
    assert prof.layers[0].eligible is eligible


def test_k_not_multiple_of_4_is_not_24() -> None:
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    w = np.zeros((6, 16), dtype=np.float32)
    layer = analyze_model(_model([node], [numpy_helper.from_array(w, "w")], [1, 6],
                                 [1, 16])).layers[0]
    assert not layer.is_24 and not layer.eligible and "multiple of 4" in layer.ineligible_reason


def test_compressed_size_math() -> None:
    assert compressed_24_bytes(1024, 2) / (1024 * 2) == 0.5625
    assert compressed_24_bytes(1024, 4) / (1024 * 4) == 0.53125
    assert compressed_24_bytes(1024, 1) / 1024 == 0.625


def test_weight_shared_along_two_k_axes_is_not_eligible_nor_pruned() -> None:
    """A MatMul's B also fed to a Gemm with transB=1 is reduced along both of its axes.

    It cannot be 2:4 along both, so inspect says why and 2:4 prune leaves it whole
    (it used to be pruned along the first consumer's K, breaking the other).
    """
    from runtime.sparsity.prune import PruneConfig, prune_model

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    v = rng.standard_normal((64, 32)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Gemm", ["h", "w"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "v"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")]
    model = _model(nodes, inits, [1, 64], [1, 32])
    layers = {layer.weight_name: layer for layer in analyze_model(model).layers}
    assert not layers["w"].eligible
    assert layers["w"].ineligible_reason == "shared by GEMMs with different K axes"
    assert layers["v"].eligible

    pruned, report = prune_model(model, PruneConfig(progress=False))
    assert [r.weight_name for r in report.layers] == ["v"]
    out = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    np.testing.assert_array_equal(out["w"], w)
    assert np.count_nonzero(out["v"]) == v.size // 2

    # the same weight used twice along the same K stays eligible
    same = _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("MatMul", ["h", "w"], ["g"]),
         helper.make_node("MatMul", ["g", "v"], ["y"])],
        inits, [1, 64], [1, 32],
    )
    assert {la.weight_name: la.eligible for la in analyze_model(same).layers} == {
        "w": True, "v": True}
