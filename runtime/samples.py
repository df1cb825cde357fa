"""Build the bundled sample models deterministically (no downloads).

`mlp_dense`: He-initialised MLP 256->1024->1024->1024->256 with ReLU (MatMul+Add).
`mlp_sparse24`: the same weights magnitude-pruned to 2:4 along K.
`mlp_int8`, `mlp_sparse24_int8`: both quantized to int8 (static QDQ, per-channel
symmetric weights, calibrated on seeded normal inputs), so the repository shows
the four variants side by side; the sparse one keeps its 2:4 pattern in int8.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.fileio import write_atomic
from runtime.sparsity.masks import magnitude_prune_2of4

LOGGER = logging.getLogger(__name__)

MLP_LAYERS: tuple[int, ...] = (256, 1024, 1024, 1024, 256)
SEED = 20240601
OPSET = 17


def mlp_weights(
    layers: Sequence[int] = MLP_LAYERS, seed: int = SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-initialised (W [K,N], b [N]) pairs, float32."""
    rng = np.random.default_rng(seed)
    out = []
    for k, n in zip(layers[:-1], layers[1:], strict=True):
        w = (rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32)
        b = (rng.standard_normal(n) * 0.01).astype(np.float32)
        out.append((w, b))
    return out


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """The sample models' common wrapper: default-domain opset OPSET, IR version 8."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sparse-runtime"
    )
    model.ir_version = 8
    return model


def mlp_model(weights: Sequence[tuple[np.ndarray, np.ndarray]], name: str) -> onnx.ModelProto:
    """MatMul+Add(+Relu) chain with input `x` [batch, K0] and output `y` [batch, N_last]."""
    nodes, inits = [], []
    prev = "x"
    for i, (w, b) in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"fc{i}.weight"))
        inits.append(numpy_helper.from_array(b, f"fc{i}.bias"))
        mm, add = f"fc{i}.matmul", f"fc{i}.add"
        nodes.append(
            helper.make_node("MatMul", [prev, f"fc{i}.weight"], [mm], name=f"fc{i}/MatMul")
        )
        last = i == len(weights) - 1
        add_out = "y" if last else add
        nodes.append(helper.make_node("Add", [mm, f"fc{i}.bias"], [add_out], name=f"fc{i}/Add"))
        if not last:
            nodes.append(helper.make_node("Relu", [add], [f"fc{i}.relu"], name=f"fc{i}/Relu"))
            prev = f"fc{i}.relu"
    k0, n_last = weights[0][0].shape[0], weights[-1][0].shape[1]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_last])],
        initializer=inits,
    )
    model = _model(graph)
    onnx.checker.check_model(model)
    return model


def mlp_pair(
    layers: Sequence[int] = MLP_LAYERS, seed: int = SEED
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense, 2:4-pruned) models sharing the same initial weights."""
    weights = mlp_weights(layers, seed)
    sparse = [(magnitude_prune_2of4(w, k_axis=0), b) for w, b in weights]
    return mlp_model(weights, "mlp_dense"), mlp_model(sparse, "mlp_sparse24")


def encoder_model(
    layers: int = 6,
    hidden: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    vocab: int = 8192,
    seq: int = 128,
    seed: int = SEED,
    prune_24: bool = False,
) -> onnx.ModelProto:
    """BERT-shaped encoder with random weights: `input_ids` int64 [batch, seq] -> `pooled`
    fp32 [batch, hidden] (first token). With `prune_24`, every linear weight is 2:4 along K.

    Why: a model whose GPU work outweighs its bytes on the wire (ids in, one vector out), to
    compare dense and 2:4 end to end through the server where the 8192-wide MLP cannot show
    it. Post-LN layers (MatMul+Add linears, softmax attention without a mask, erf-GELU).
    """
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: object, dtype: type = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def linear(name: str, x: str, k: int, n: int) -> str:
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        if prune_24:
            w = magnitude_prune_2of4(w, k_axis=0)
        const(f"{name}.weight", w)
        const(f"{name}.bias", rng.standard_normal(n) * 0.02)
        nodes.append(helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}.mm"],
                                      name=f"{name}/MatMul"))  # fmt: skip
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.bias"], [f"{name}.out"]))
        return f"{name}.out"

    def layer_norm(name: str, x: str) -> str:
        const(f"{name}.g", np.ones(hidden))
        const(f"{name}.b", np.zeros(hidden))
        nodes.append(helper.make_node("LayerNormalization", [x, f"{name}.g", f"{name}.b"],
                                      [f"{name}.out"], axis=-1, epsilon=1e-12))  # fmt: skip
        return f"{name}.out"

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    const("word_emb", rng.standard_normal((vocab, hidden)) * 0.5)
    const("pos_emb", rng.standard_normal((1, seq, hidden)) * 0.1)
    split = const("split_heads", [0, 0, heads, hd], np.int64)
    merge = const("merge_heads", [0, 0, hidden], np.int64)
    scale = const("attn_scale", 1.0 / np.sqrt(hd))
    sqrt2, one, half = const("sqrt2", np.sqrt(2.0)), const("one", 1.0), const("half", 0.5)
    x = node("Add", [node("Gather", ["word_emb", "input_ids"], "word"), "pos_emb"], "emb")
    x = layer_norm("emb_ln", x)
    for i in range(layers):
        p = f"layer{i}"
        qkv = {}
        for part in ("q", "k", "v"):
            flat = linear(f"{p}.attn.{part}", x, hidden, hidden)
            qkv[part] = node("Reshape", [flat, split], f"{p}.{part}4d")
        q = node("Transpose", [qkv["q"]], f"{p}.qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [qkv["k"]], f"{p}.kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [qkv["v"]], f"{p}.vt", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctxt",
                   perm=[0, 2, 1, 3])  # fmt: skip
        ctx = node("Reshape", [ctx, merge], f"{p}.ctx3d")
        attn = linear(f"{p}.attn.out", ctx, hidden, hidden)
        x = layer_norm(f"{p}.ln1", node("Add", [attn, x], f"{p}.res1"))
        h = linear(f"{p}.ffn.in", x, hidden, ffn)
        erf = node("Erf", [node("Div", [h, sqrt2], f"{p}.hs")], f"{p}.erf")
        gelu = node("Mul", [node("Mul", [h, node("Add", [erf, one], f"{p}.erf1")], f"{p}.g0"),
                            half], f"{p}.gelu")  # fmt: skip
        out = linear(f"{p}.ffn.out", gelu, ffn, hidden)
        x = layer_norm(f"{p}.ln2", node("Add", [out, x], f"{p}.res2"))
    first = const("first_token", 0, np.int64)
    node("Gather", [x, first], "pooled", axis=1)
    graph = helper.make_graph(
        nodes,
        "encoder_sparse24" if prune_24 else "encoder_dense",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits,
    )
    return _model(graph)


def write_if_missing(model: onnx.ModelProto, path: Path, force: bool = False) -> bool:
    if path.exists() and not force:
        return False
    write_atomic(path, model.SerializeToString())
    LOGGER.info("wrote %s", path)
    return True


def quantize_sample(model: onnx.ModelProto, seed: int = SEED) -> onnx.ModelProto:
    """int8 QDQ twin of a sample MLP, calibrated on seeded N(0, 1) inputs.

    QDQ rather than dynamic: it is the int8 form both CPU engines run as int8
    (OpenVINO needs QDQ), and measured here onnxruntime ran it as fast as dynamic.
    """
    # NOTE: imported here so loading samples never pulls in onnxruntime.quantization
    from runtime.quantize import quantize_for_samples

    k0 = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    rng = np.random.default_rng(seed + 1)
    calibration = {"x": rng.standard_normal((64, k0)).astype(np.float32)}
    return quantize_for_samples(model, calibration, mode="static")


def build_samples(repo: Path, force: bool = False) -> list[Path]:
    """Write the sample .onnx files into `repo` where missing; returns what was written."""
    dense, sparse = mlp_pair()
    written = []
    for model, name in ((dense, "mlp_dense"), (sparse, "mlp_sparse24")):
        path = repo / name / "1" / "model.onnx"
        if write_if_missing(model, path, force):
            written.append(path)
    for model, name in ((dense, "mlp_int8"), (sparse, "mlp_sparse24_int8")):
        path = repo / name / "1" / "model.onnx"
        if (force or not path.exists()) and write_if_missing(quantize_sample(model), path, force):
            written.append(path)
    return written
