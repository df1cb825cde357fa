"""ONNX -> torch interpreter on CPU in fp32 must agree with onnxruntime (atol 1e-4).

Why 1e-4: both sides compute in fp32; only summation order differs, which for these sizes
(K <= 1024, values O(1)) moves results by ~1e-6..1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.samples import encoder_model, mlp_pair

torch = pytest.importorskip("torch")

from runtime.engines.onnx_to_torch import UnsupportedModel, convert  # noqa: E402

ATOL = 1e-4


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    graph = convert(model.SerializeToString())
    with torch.inference_mode():
        out = graph({k: graph.prepare_input(k, v) for k, v in feeds.items()})
    return [out[o.name].float().numpy() for o in graph.outputs]


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], atol: float = ATOL) -> None:
    onnx.checker.check_model(model)
    for want, got in zip(_ort(model, feeds), _torch(model, feeds), strict=True):
        assert want.shape == got.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("which", [0, 1], ids=["dense", "sparse24"])
def test_sample_mlp_matches_onnxruntime(which: int) -> None:
    model = mlp_pair()[which]
    x = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)
    _check(model, {"x": x})


def test_mlp_linears_are_extracted_with_fused_bias() -> None:
    graph = convert(mlp_pair()[1])
    assert len(graph.linears) == 4
    assert all(lin.bias is not None for lin in graph.linears.values())
    assert [s.op_type for s in graph.steps].count("Add") == 0  # bias Adds folded in
    first = next(iter(graph.linears.values()))
    assert (first.out_features, first.in_features) == (1024, 256)


@pytest.mark.parametrize("prune", [False, True], ids=["dense", "sparse24"])
def test_encoder_sample_matches_onnxruntime(prune: bool) -> None:
    """The benchmark's BERT-shaped encoder (tiny here): 6 linears per layer, all 2:4 when
    pruned, and the same numbers as onnxruntime."""
    from runtime.engines.sparse_linear import sparse_eligibility

    model = encoder_model(layers=2, hidden=64, heads=4, ffn=128, vocab=100, seq=16,
                          prune_24=prune)  # fmt: skip
    ids = np.random.default_rng(3).integers(0, 100, (3, 16)).astype(np.int64)
    # NOTE: 5e-4, not 1e-4: usually 1e-6 apart, but one clean-clone run under load differed by
    # 1.2e-4 on one of 192 values (not reproduced in reruns); two fp32 layers with LayerNorm
    # amplify GEMM rounding, and torch's CPU GEMMs are not bit-reproducible run to run
    _check(model, {"input_ids": ids}, atol=5e-4)
    graph = convert(model)
    assert len(graph.linears) == 12
    eligible = [not sparse_eligibility(lin.weight) for lin in graph.linears.values()]
    assert all(eligible) if prune else not any(eligible)


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.2):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _c(name: str, value: object, dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def bert_like(hidden: int = 32, heads: int = 4, ffn: int = 64, vocab: int = 50) -> onnx.ModelProto:
    """One BERT/MiniLM-style encoder layer + pooler, written the way exporters write it.

    It exercises the shape arithmetic exporters emit (Shape/Gather/Unsqueeze/Concat/Slice,
    Reshape with 0), attention (MatMul/Transpose/Softmax with an additive mask), both
    LayerNormalization and its decomposed form, erf-GELU, and a Gemm pooler with transB.
    """
    rng = np.random.default_rng(7)
    hd = hidden // heads
    inits = [
        _init(rng, "word_emb", (vocab, hidden), 1.0),
        _init(rng, "pos_emb", (64, hidden), 0.5),
        _c("pos_range", np.arange(64)[None, :]),
        numpy_helper.from_array(np.ones(hidden, np.float32), "ln1_g"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "ln1_b"),
        _init(rng, "ln2_g", (hidden,), 1.0),
        _init(rng, "ln2_b", (hidden,), 0.1),
        _c("i0", 0),
        _c("i1", 1),
        _c("ax0", [0]),
        _c("ax12", [1, 2]),
        _c("zero1", [0]),
        _c("heads_hd", [heads, hd]),
        _c("out_shape", [0, 0, hidden]),
        _c("red_axes", [-1]),
        _c("one_f", 1.0, np.float32),
        _c("neg_big", -10000.0, np.float32),
        _c("sqrt_hd", np.sqrt(hd), np.float32),
        _c("two", 2.0, np.float32),
        _c("eps", 1e-12, np.float32),
        _c("half", 0.5, np.float32),
        _c("sqrt2", np.sqrt(2.0), np.float32),
    ]
    for n, shape in {
        "Wq": (hidden, hidden),
        "Wk": (hidden, hidden),
        "Wv": (hidden, hidden),
        "Wo": (hidden, hidden),
        "W1": (hidden, ffn),
        "W2": (ffn, hidden),
        "Wp": (hidden, hidden),
    }.items():
        inits.append(_init(rng, n, shape, 1.0 / np.sqrt(shape[0])))
        inits.append(_init(rng, "b" + n[1:], (shape[1],), 0.05))
    nh = helper.make_node
    nodes = [
        nh("Gather", ["word_emb", "input_ids"], ["word"]),
        nh("Shape", ["input_ids"], ["ids_shape"]),
        nh("Gather", ["ids_shape", "i1"], ["seq"]),
        nh("Unsqueeze", ["seq", "ax0"], ["seq_u"]),
        nh("Slice", ["pos_range", "zero1", "seq_u", "ax0_1"], ["pos_ids"]),
        nh("Gather", ["pos_emb", "pos_ids"], ["pos"]),
        nh("Add", ["word", "pos"], ["emb"]),
        nh("LayerNormalization", ["emb", "ln1_g", "ln1_b"], ["h"], epsilon=1e-12),
        # additive attention mask [B,1,1,S]
        nh("Unsqueeze", ["attention_mask", "ax12"], ["m4"]),
        nh("Cast", ["m4"], ["mf"], to=TensorProto.FLOAT),
        nh("Sub", ["one_f", "mf"], ["inv"]),
        nh("Mul", ["inv", "neg_big"], ["madd"]),
        # dynamic [B, S, heads, hd]
        nh("Shape", ["h"], ["h_shape"]),
        nh("Gather", ["h_shape", "i0"], ["bsz"]),
        nh("Unsqueeze", ["bsz", "ax0"], ["bsz_u"]),
        nh("Concat", ["bsz_u", "seq_u", "heads_hd"], ["split_shape"], axis=0),
    ]
    for n in "qkv":
        w = "W" + n
        nodes += [
            nh("MatMul", ["h", w], [f"{n}_mm"], name=f"attn/{n}/MatMul"),
            nh("Add", [f"{n}_mm", "b" + n], [f"{n}_lin"]),
            nh("Reshape", [f"{n}_lin", "split_shape"], [f"{n}_4d"]),
        ]
    nodes += [
        nh("Transpose", ["q_4d"], ["q_t"], perm=[0, 2, 1, 3]),
        nh("Transpose", ["k_4d"], ["k_t"], perm=[0, 2, 3, 1]),
        nh("Transpose", ["v_4d"], ["v_t"], perm=[0, 2, 1, 3]),
        nh("MatMul", ["q_t", "k_t"], ["scores"]),
        nh("Div", ["scores", "sqrt_hd"], ["scaled"]),
        nh("Add", ["scaled", "madd"], ["masked"]),
        nh("Softmax", ["masked"], ["probs"], axis=-1),
        nh("MatMul", ["probs", "v_t"], ["ctx"]),
        nh("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        nh("Reshape", ["ctx_t", "out_shape"], ["ctx_flat"]),
        nh("MatMul", ["ctx_flat", "Wo"], ["o_mm"], name="attn/out/MatMul"),
        nh("Add", ["o_mm", "bo"], ["o_lin"]),
        nh("Add", ["o_lin", "h"], ["res"]),
        # decomposed LayerNorm, as older exporters write it
        nh("ReduceMean", ["res"], ["mu"], axes=[-1]),
        nh("Sub", ["res", "mu"], ["d"]),
        nh("Pow", ["d", "two"], ["d2"]),
        nh("ReduceMean", ["d2"], ["var"], axes=[-1]),
        nh("Add", ["var", "eps"], ["var_eps"]),
        nh("Sqrt", ["var_eps"], ["std"]),
        nh("Div", ["d", "std"], ["normed"]),
        nh("Mul", ["normed", "ln2_g"], ["scaled_n"]),
        nh("Add", ["scaled_n", "ln2_b"], ["h2"]),
        # FFN with erf GELU
        nh("MatMul", ["h2", "W1"], ["f1_mm"], name="ffn/1/MatMul"),
        nh("Add", ["f1_mm", "b1"], ["f1"]),
        nh("Div", ["f1", "sqrt2"], ["f1s"]),
        nh("Erf", ["f1s"], ["erf"]),
        nh("Add", ["erf", "one_f"], ["erf1"]),
        nh("Mul", ["f1", "erf1"], ["g0"]),
        nh("Mul", ["g0", "half"], ["gelu"]),
        nh("MatMul", ["gelu", "W2"], ["f2_mm"], name="ffn/2/MatMul"),
        nh("Add", ["f2_mm", "b2"], ["f2"]),
        nh("Add", ["f2", "h2"], ["last_hidden_state"]),
        # pooler on the first token: Gemm with transB
        nh("Gather", ["last_hidden_state", "i0"], ["first"], axis=1),
        nh("Transpose", ["Wp"], ["Wp_t"], perm=[1, 0]),
        nh("Gemm", ["first", "Wp_t", "bp"], ["pool_lin"], transB=1),
        nh("Tanh", ["pool_lin"], ["pooled"]),
    ]
    inits.append(_c("ax0_1", [1]))
    graph = helper.make_graph(
        nodes,
        "bert_like",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]
            ),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _bert_feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq // 2 :] = 0  # padded tail on one row
    return {"input_ids": rng.integers(0, 50, (batch, seq)).astype(np.int64), "attention_mask": mask}


@pytest.mark.parametrize(("batch", "seq"), [(1, 5), (3, 7), (2, 16)])
def test_bert_like_matches_onnxruntime(batch: int, seq: int) -> None:
    _check(bert_like(), _bert_feeds(batch, seq))


def test_bert_like_linears_and_cpu_shape_math() -> None:
    graph = convert(bert_like())
    # q/k/v/out/ffn1/ffn2 MatMuls + the Gemm pooler (its weight is a folded Transpose)
    assert len(graph.linears) == 7
    assert "attn/q/MatMul" in graph.linears
    # integer constants (shape arithmetic) stay on CPU even after moving floats to a device
    assert all(not t.is_floating_point() for n, t in graph.consts.items() if n == "pos_range")


def _single(node: onnx.NodeProto, inputs, outputs, inits, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph([node], "t", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset >= 19 else 8
    return model


def _fvi(name: str, shape: list[object]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20(approximate: str) -> None:
    node = helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)
    model = _single(node, [_fvi("x", ["b", 8])], [_fvi("y", ["b", 8])], [], 20)
    x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(3, 8)
    _check(model, {"x": x})


def test_reduce_mean_axes_as_input_opset18() -> None:
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
    model = _single(node, [_fvi("x", [2, 3, 4])], [_fvi("y", [2, 4])], [_c("axes", [1])], 18)
    _check(model, {"x": np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)})


def test_gemm_with_alpha_beta_and_2d_bias_is_a_linear() -> None:
    rng = np.random.default_rng(2)
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=0.5, beta=2.0, transB=1)
    inits = [_init(rng, "W", (16, 32)), _init(rng, "C", (1, 16))]
    model = _single(node, [_fvi("x", ["b", 32])], [_fvi("y", ["b", 16])], inits, 13)
    assert len(convert(model).linears) == 1
    _check(model, {"x": rng.standard_normal((4, 32)).astype(np.float32)})


def test_softmax_opset11_flattens_from_axis() -> None:
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    model = _single(node, [_fvi("x", [2, 3, 4])], [_fvi("y", [2, 3, 4])], [], 11)
    _check(model, {"x": np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)})


def test_unsupported_op_is_reported_by_name() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    rng = np.random.default_rng(4)
    model = _single(
        node,
        [_fvi("x", [1, 1, 4, 4])],
        [_fvi("y", [1, 1, 2, 2])],
        [_init(rng, "w", (1, 1, 3, 3))],
        13,
    )
    with pytest.raises(UnsupportedModel, match="Conv"):
        convert(model)


def test_linear_kernel_choice_per_bucket() -> None:
    """The engine's per-bucket dispatch: a layer can be sparse at one bucket, dense at another."""
    graph = convert(mlp_pair()[0])
    lin = next(iter(graph.linears.values()))
    calls: list[int] = []

    def fake_sparse(x2):
        calls.append(int(x2.shape[0]))
        return lin.dense(x2)

    lin.kernels["sparse"] = fake_sparse
    lin.choice = {1: "dense", 8: "sparse"}
    x = torch.zeros(8, 256)
    for bucket in (1, 8):
        graph.bucket = bucket
        graph({"x": x[:bucket]})
    graph.bucket = None
    assert calls == [8]
    assert lin.rows_seen == {1: 1, 8: 8}
    graph.force_kernel = "dense"
    graph.bucket = 8
    graph({"x": x})
    assert calls == [8]  # forced dense never calls the sparse kernel


def test_bert_like_forward_needs_no_host_to_device_copies() -> None:
    """Capture-readiness: with floats on another device (meta stands in for CUDA), shape math
    stays on the CPU and position ids become a narrow(), so nothing is copied host->device."""
    graph = convert(bert_like()).to("meta", torch.float16)
    feeds = {k: torch.as_tensor(v).to("meta") for k, v in _bert_feeds(2, 9).items()}
    out = graph(feeds)
    assert graph.ctx.host_to_device == 0
    assert tuple(out["last_hidden_state"].shape) == (2, 9, 32)
    assert tuple(out["pooled"].shape) == (2, 32)
    assert out["pooled"].dtype == torch.float16


def test_gather_with_cpu_range_on_device_data_is_a_narrow() -> None:
    from runtime.engines.onnx_to_torch import OPS, Ctx

    ctx = Ctx(opset=17)
    data = torch.arange(40.0).reshape(10, 4).to("meta")
    out = OPS["Gather"]([data, torch.arange(2, 6).reshape(1, 4)], {}, ctx)
    assert tuple(out.shape) == (1, 4, 4) and ctx.host_to_device == 0
    OPS["Gather"]([data, torch.tensor([3, 1])], {}, ctx)  # not a range: must copy
    assert ctx.host_to_device == 1
    cpu = torch.arange(40.0).reshape(10, 4)
    assert torch.equal(
        OPS["Gather"]([cpu, torch.tensor([[-2, -1]])], {}, ctx), cpu[8:10].reshape(1, 2, 4)
    )


def test_mask_helper_ops_match_onnxruntime() -> None:
    """Range / Less / Where / ReduceSum / Max: the helper ops HF exports use around masks."""
    nh = helper.make_node
    nodes = [
        nh("Shape", ["x"], ["shape"]),
        nh("Gather", ["shape", "i1"], ["n"]),
        nh("Range", ["zero", "n", "one"], ["r"]),
        nh("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
        nh("Less", ["rf", "x"], ["lt"]),
        nh("Not", ["lt"], ["ge"]),
        nh("Where", ["ge", "x", "neg"], ["w"]),
        nh("ReduceSum", ["w", "axes"], ["s"], keepdims=1),
        nh("Max", ["w", "s", "x"], ["y"]),
    ]
    inits = [_c("i1", 1), _c("zero", 0), _c("one", 1), _c("axes", [1]), _c("neg", -1.0, np.float32)]
    graph = helper.make_graph(
        nodes, "masks", [_fvi("x", ["b", "s"])], [_fvi("y", ["b", "s"])], initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = (np.random.default_rng(5).standard_normal((3, 6)) * 4).astype(np.float32)
    _check(model, {"x": x})


@pytest.mark.parametrize("which", [0, 1], ids=["dense_int8", "sparse24_int8"])
def test_qdq_int8_sample_matches_onnxruntime_reference(which: int) -> None:
    """Static QDQ (the int8 samples): weights' DequantizeLinear folds into fp32 constants, so
    the linears (and their 2:4 pattern) are found; activations are fake-quantized elementwise.

    Compared with onnxruntime's unoptimized (reference-semantics) run; the bound is two steps
    of the output's quantization scale, since x / scale landing on a .5 tie may round either way
    under a different summation order.
    """
    from runtime.samples import quantize_sample

    model = quantize_sample(mlp_pair()[which])
    graph = convert(model)
    assert len(graph.linears) == 4
    if which == 1:
        from runtime.engines.sparse_linear import is_2to4

        assert all(is_2to4(lin.weight) for lin in graph.linears.values())
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out_scale = float(inits["fc3.matmul_scale"])
    x = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    got = _torch(model, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * out_scale)


# ---- ops and edge cases found by review (each compared with onnxruntime in fp32)


@pytest.mark.parametrize("axis", [-1, -2, -4, 0, 2])
def test_flatten_counts_negative_axes_from_the_rank(axis: int) -> None:
    node = helper.make_node("Flatten", ["x"], ["y"], axis=axis)
    model = _single(node, [_fvi("x", [2, 3, 4, 5])], [_fvi("y", ["r", "c"])], [], 13)
    _check(model, {"x": np.random.default_rng(5).standard_normal((2, 3, 4, 5)).astype(np.float32)})


@pytest.mark.parametrize(
    ("starts", "ends", "steps"),
    [([-1], [-100], [-1]), ([4], [0], [-2]), ([2], [5], [-1]), ([10], [-10], [-3]),
     ([-100], [-(2**63) + 1], [-1])],
)  # fmt: skip
def test_slice_with_negative_steps(starts: list[int], ends: list[int], steps: list[int]) -> None:
    node = helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])
    inits = [_c("s", starts), _c("e", ends), _c("a", [1]), _c("st", steps)]
    model = _single(node, [_fvi("x", [2, 7])], [_fvi("y", ["r", "c"])], inits, 13)
    _check(model, {"x": np.arange(14, dtype=np.float32).reshape(2, 7)})


@pytest.mark.parametrize("form", ["attr-11", "input-13", "equal-13", "num_outputs-18"])
def test_split_in_each_opset_form(form: str) -> None:
    outs = [_fvi(f"y{i}", ["r", f"c{i}"]) for i in range(3)]
    names = [o.name for o in outs]
    inits: list[onnx.TensorProto] = []
    if form == "attr-11":
        node, opset = helper.make_node("Split", ["x"], names, axis=1, split=[1, 2, 4]), 11
    elif form == "input-13":
        node, opset = helper.make_node("Split", ["x", "sp"], names, axis=1), 13
        inits = [_c("sp", [3, 3, 1])]
    elif form == "equal-13":
        node, opset = helper.make_node("Split", ["x"], names, axis=1), 13
    else:
        node, opset = helper.make_node("Split", ["x"], names, axis=1, num_outputs=3), 18
    width = 6 if form == "equal-13" else 7
    model = _single(node, [_fvi("x", [2, width])], outs, inits, opset)
    _check(model, {"x": np.arange(2 * width, dtype=np.float32).reshape(2, width)})


def test_minilm_pooling_ops_match_onnxruntime() -> None:
    """What a sentence-embedding export adds after the encoder: GreaterOrEqual/LessOrEqual
    masks, Clip (bounds as inputs, one omitted), ReduceL2 normalisation; and Clip with
    attribute bounds (opset 6)."""
    nodes = [
        helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]),
        helper.make_node("LessOrEqual", ["x", "zero"], ["le"]),
        helper.make_node("Cast", ["ge"], ["gef"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["le"], ["lef"], to=TensorProto.FLOAT),
        helper.make_node("Clip", ["x", "lo", ""], ["c"]),
        helper.make_node("ReduceL2", ["c"], ["n"], axes=[1], keepdims=1),
        helper.make_node("Clip", ["n", "eps"], ["nc"]),
        helper.make_node("Div", ["c", "nc"], ["unit"]),
        helper.make_node("Add", ["unit", "gef"], ["s"]),
        helper.make_node("Sub", ["s", "lef"], ["y"]),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    lo = numpy_helper.from_array(np.array(-0.5, np.float32), "lo")
    eps = numpy_helper.from_array(np.array(1e-9, np.float32), "eps")
    graph = helper.make_graph(nodes, "pool", [_fvi("x", ["b", 6])], [_fvi("y", ["b", 6])],
                              initializer=[zero, lo, eps])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    x[0] = 0.0  # an all-zero row: the eps keeps it finite
    _check(model, {"x": x})
    old = _single(helper.make_node("Clip", ["x"], ["y"], min=-0.25, max=0.5),
                  [_fvi("x", ["b", 6])], [_fvi("y", ["b", 6])], [], 6)  # fmt: skip
    old.ir_version = 7
    _check(old, {"x": x})


def _masked_attention(mask_value: float, opset: int = 17) -> onnx.ModelProto:
    """scores + (1 - mask) * C, then Softmax: the HF extended attention mask."""
    nodes = [
        helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mf"], ["inv"]),
        helper.make_node("Mul", ["inv", "C"], ["bias"]),
        helper.make_node("Add", ["scores", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["y"], axis=-1),
    ]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(mask_value, np.float32), "C")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "mask",
        [_fvi("scores", ["b", 5]), helper.make_tensor_value_info("mask", TensorProto.INT64,
                                                                 ["b", 5])],
        [_fvi("y", ["b", 5])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("mask_value", [float(np.finfo(np.float32).min), -1e9])
def test_attention_mask_constants_stay_finite_in_half_precision(
    dtype: str, mask_value: float
) -> None:
    """A plain cast makes these -inf in fp16 (and finfo.min in bf16), and 0 * -inf = NaN:
    every output was NaN. Saturated, the result matches fp32 onnxruntime; a fully masked
    row stays finite."""
    model = _masked_attention(mask_value)
    scores = np.random.default_rng(7).standard_normal((3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int64)
    want = _ort(model, {"scores": scores, "mask": mask})[0]
    graph = convert(model).to("cpu", getattr(torch, dtype))
    with torch.inference_mode():
        out = graph({"scores": graph.prepare_input("scores", scores),
                     "mask": graph.prepare_input("mask", mask)})["y"].float().numpy()  # fmt: skip
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:2], want[:2], atol=2e-2)  # rows with a real token


def test_dynamic_constant_of_shape_joins_the_compute_dtype() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("ConstantOfShape", ["s"], ["c"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Mul", ["x", "c"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "cos", [_fvi("x", ["b", 4])], [_fvi("y", ["b", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.ones((2, 4), np.float32)
    _check(model, {"x": x})
    half = convert(model).to("cpu", torch.float16)
    with torch.inference_mode():
        y = half({"x": half.prepare_input("x", x)})["y"]
    assert y.dtype == torch.float16 and torch.equal(y.float(), torch.full((2, 4), 0.5))


def test_extra_outputs_are_rejected_at_conversion() -> None:
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], axis=-1)
    rng = np.random.default_rng(8)
    model = _single(node, [_fvi("x", ["b", 4])], [_fvi("y", ["b", 4]), _fvi("mean", ["b", 1])],
                    [_init(rng, "g", (4,))], 17)  # fmt: skip
    with pytest.raises(UnsupportedModel, match="only its first output"):
        convert(model)


def test_matmul_of_a_vector_with_a_row_bias_keeps_its_rank() -> None:
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"])]  # fmt: skip
    inits = [_init(rng, "W", (8, 6)), _init(rng, "b", (1, 6))]
    graph = helper.make_graph(nodes, "vec", [_fvi("x", [8])], [_fvi("y", [1, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert len(convert(model).linears) == 1
    _check(model, {"x": rng.standard_normal(8).astype(np.float32)})


MINILM = Path(__file__).resolve().parents[1] / "model_repo" / "minilm_dense" / "1" / "model.onnx"


@pytest.mark.skipif(not MINILM.exists(), reason="MiniLM is exported from a local HF cache")
@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-5), ("float16", 2e-3),
                                             ("bfloat16", 2e-2)])  # fmt: skip
def test_minilm_export_matches_onnxruntime(dtype: str, atol: float) -> None:
    """The sentence-embedding export (GreaterOrEqual masks, Clip, ReduceL2, a float32-min
    mask): every precision agrees with fp32 onnxruntime, and a fully padded row stays finite."""
    rng = np.random.default_rng(0)
    mask = np.ones((3, 16), np.int64)
    mask[1, 10:] = 0
    mask[2, :] = 0
    feeds = {"input_ids": rng.integers(100, 2000, (3, 16)).astype(np.int64),
             "attention_mask": mask, "token_type_ids": np.zeros((3, 16), np.int64)}  # fmt: skip
    want = _ort(onnx.load(str(MINILM)), feeds)[0]
    graph = convert(str(MINILM)).to("cpu", getattr(torch, dtype))
    with torch.inference_mode():
        got = graph({k: graph.prepare_input(k, v) for k, v in feeds.items()})
    out = got[graph.outputs[0].name].float().numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:2], want[:2], rtol=0, atol=atol)


def _decomposed_layer_norm(opset: int) -> onnx.ModelProto:
    """LayerNorm as exports before opset 17 write it, with scale and bias after."""
    axes_attr = {"axes": [-1]} if opset < 18 else {}
    axes_in = [] if opset < 18 else ["axes"]
    nodes = [
        helper.make_node("ReduceMean", ["x", *axes_in], ["m"], **axes_attr),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["p"]),
        helper.make_node("ReduceMean", ["p", *axes_in], ["v"], **axes_attr),
        helper.make_node("Constant", [], ["eps"],
                         value=numpy_helper.from_array(np.array(1e-12, np.float32))),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["n"]),
        helper.make_node("Mul", ["n", "g"], ["ng"]),
        helper.make_node("Add", ["ng", "b"], ["y"]),
    ]  # fmt: skip
    rng = np.random.default_rng(10)
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             _init(rng, "g", (16,), 1.0), _init(rng, "b", (16,))]  # fmt: skip
    if opset >= 18:
        inits.append(_c("axes", [-1]))
    graph = helper.make_graph(nodes, "ln", [_fvi("x", ["b", 3, 16])], [_fvi("y", ["b", 3, 16])],
                              initializer=inits)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset >= 18 else 8
    return model


@pytest.mark.parametrize("opset", [13, 18])
def test_decomposed_layer_norm_is_fused_and_safe_in_fp16(opset: int) -> None:
    """(x - mean) ** 2 overflows fp16 once a hidden value is ~256 from the mean (a BERT
    outlier dimension): fused into F.layer_norm, fp16 stays close to fp32 onnxruntime."""
    model = _decomposed_layer_norm(opset)
    x = np.random.default_rng(11).standard_normal((2, 3, 16)).astype(np.float32)
    x[0, 1, 5] = 300.0
    _check(model, {"x": x})
    graph = convert(model)
    assert [s.op_type for s in graph.steps][:1] == ["LayerNorm(decomposed)"]
    want = _ort(model, {"x": x})[0]
    half = graph.to("cpu", torch.float16)
    with torch.inference_mode():
        got = half({"x": half.prepare_input("x", x)})["y"].float().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2)


def test_shape_derived_masks_are_copied_to_the_device_once() -> None:
    """A mask built from Range/Shape (CPU) meeting a device tensor is copied once per value:
    the second pass at the same shapes copies nothing, so it can be captured in a CUDA graph
    (meta stands in for CUDA)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "step"], ["r"]),
        helper.make_node("Less", ["r", "four"], ["lt"]),
        helper.make_node("And", ["m", "lt"], ["mm"]),
        helper.make_node("Where", ["mm", "x", "fzero"], ["y"]),
    ]
    inits = [_c("one", 1), _c("zero", 0), _c("step", 1), _c("four", 4),
             numpy_helper.from_array(np.array(0.0, np.float32), "fzero")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "mask",
        [_fvi("x", ["b", "s"]), helper.make_tensor_value_info("m", TensorProto.BOOL, ["b", "s"])],
        [_fvi("y", ["b", "s"])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(12).standard_normal((2, 6)).astype(np.float32)
    m = np.array([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 0]], bool)
    _check(model, {"x": x, "m": m})
    meta = convert(model).to("meta", torch.float16)
    feeds = {"x": torch.empty((2, 6), device="meta"), "m": torch.empty((2, 6), dtype=torch.bool,
                                                                        device="meta")}  # fmt: skip
    meta(feeds)
    assert meta.ctx.host_to_device == 1
    meta.ctx.host_to_device = 0
    meta(feeds)
    assert meta.ctx.host_to_device == 0
    meta({"x": torch.empty((2, 7), device="meta"),
          "m": torch.empty((2, 7), dtype=torch.bool, device="meta")})  # fmt: skip
    assert meta.ctx.host_to_device == 1  # another length: another mask, copied once


def test_decomposed_layer_norm_whose_parts_are_used_elsewhere_is_left_alone() -> None:
    """Fusing would drop the Sqrt output that the graph also returns: no fusion then."""
    model = _decomposed_layer_norm(13)
    model.graph.output.append(_fvi("s", ["b", 3, 1]))
    x = np.random.default_rng(13).standard_normal((2, 3, 16)).astype(np.float32)
    _check(model, {"x": x})
    assert "LayerNorm(decomposed)" not in [s.op_type for s in convert(model).steps]
