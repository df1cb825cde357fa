"""Tiny BERT-style encoders and MLPs built with onnx.helper for the structured pruning tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}_{self.n}"

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: tuple[int, ...], scale: float = 0.3) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32), "w")

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def constant_node(self, value: np.ndarray) -> str:
        out = self.name("const")
        self.nodes.append(helper.make_node("Constant", [], [out], name=out + "_node",
                                           value=numpy_helper.from_array(np.asarray(value))))
        return out


def _gelu_erf(b: _Builder, x: str) -> str:
    """GELU as the torch exporter spells it: x * 0.5 * (1 + erf(x / sqrt 2))."""
    div = b.node("Div", [x, b.constant_node(np.array(1.4142135, dtype=np.float32))])
    erf = b.node("Erf", [div])
    add = b.node("Add", [erf, b.constant_node(np.array(1.0, dtype=np.float32))])
    mul = b.node("Mul", [x, add])
    return b.node("Mul", [mul, b.constant_node(np.array(0.5, dtype=np.float32))])


def _split_shape(b: _Builder, x: str, heads: int, head_dim: int, style: str) -> str:
    if style == "const":
        return b.const(np.array([0, 0, heads, head_dim], dtype=np.int64), "split_shape")
    # the dynamic spelling of torch exports: Concat(B, S, -1, head_dim)
    shape = b.node("Shape", [x])
    bdim = b.node("Unsqueeze", [b.node("Gather", [shape, b.constant_node(np.array(0))]),
                                b.constant_node(np.array([0]))])
    sdim = b.node("Unsqueeze", [b.node("Gather", [shape, b.constant_node(np.array(1))]),
                                b.constant_node(np.array([0]))])
    return b.node("Concat", [bdim, sdim, b.constant_node(np.array([-1])),
                             b.constant_node(np.array([head_dim]))], axis=0)


def tiny_bert(layers: int = 2, hidden: int = 16, heads: int = 4, ffn: int = 32, seed: int = 0,
              style: str = "const", bias_after_ffn: bool = True) -> onnx.ModelProto:
    """Encoder: x [B, S, hidden] float + attention_mask [B, S] int64 -> y [B, S, hidden].

    style "const": reshape shapes are constant initializers with the head count
    ([0, 0, heads, head_dim], [0, 0, hidden]); "concat": built at run time from
    Shape like torch exports ([B, S, -1, head_dim], [B, S, -1]).
    """
    b = _Builder(seed)
    head_dim = hidden // heads
    mask_f = b.node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inv = b.node("Sub", [b.constant_node(np.array(1.0, dtype=np.float32)), mask_f])
    bias_mask = b.node("Mul", [inv, b.constant_node(np.array(-1e4, dtype=np.float32))])
    bias_mask = b.node("Unsqueeze", [bias_mask, b.constant_node(np.array([1, 2]))])
    x = "x"
    for _ in range(layers):
        proj = []
        for perm in ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]):
            h = b.node("Add", [b.const(b.rng.standard_normal(hidden).astype(np.float32) * 0.1,
                                       "b"), b.node("MatMul", [x, b.weight((hidden, hidden))])])
            h = b.node("Reshape", [h, _split_shape(b, x, heads, head_dim, style)])
            proj.append(b.node("Transpose", [h], perm=perm))
        scores = b.node("MatMul", [proj[0], proj[1]])
        scores = b.node("Mul", [scores, b.constant_node(
            np.array(1 / np.sqrt(head_dim), dtype=np.float32))])
        scores = b.node("Add", [scores, bias_mask])
        probs = b.node("Softmax", [scores], axis=-1)
        ctx = b.node("Transpose", [b.node("MatMul", [probs, proj[2]])], perm=[0, 2, 1, 3])
        if style == "const":
            merge = b.const(np.array([0, 0, hidden], dtype=np.int64), "merge_shape")
        else:
            shape = b.node("Shape", [x])
            merge = b.node("Concat", [
                b.node("Unsqueeze", [b.node("Gather", [shape, b.constant_node(np.array(0))]),
                                     b.constant_node(np.array([0]))]),
                b.node("Unsqueeze", [b.node("Gather", [shape, b.constant_node(np.array(1))]),
                                     b.constant_node(np.array([0]))]),
                b.constant_node(np.array([-1]))], axis=0)
        ctx = b.node("Reshape", [ctx, merge])
        att = b.node("Add", [b.node("MatMul", [ctx, b.weight((hidden, hidden))]),
                             b.const(np.zeros(hidden, dtype=np.float32), "bo")])
        x = b.node("LayerNormalization", [b.node("Add", [att, x]),
                                          b.const(np.ones(hidden, dtype=np.float32)),
                                          b.const(np.zeros(hidden, dtype=np.float32))], axis=-1)
        h = b.node("Add", [b.node("MatMul", [x, b.weight((hidden, ffn))]),
                           b.const(b.rng.standard_normal(ffn).astype(np.float32) * 0.1, "b1")])
        h = b.node("MatMul", [_gelu_erf(b, h), b.weight((ffn, hidden))])
        if bias_after_ffn:
            h = b.node("Add", [h, b.const(np.zeros(hidden, dtype=np.float32), "b2")])
        x = b.node("LayerNormalization", [b.node("Add", [h, x]),
                                          b.const(np.ones(hidden, dtype=np.float32)),
                                          b.const(np.zeros(hidden, dtype=np.float32))], axis=-1)
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        b.nodes, "tiny_bert",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_mlp(width: int = 8, hidden: int = 16, out: int = 4, seed: int = 0,
             activation: str = "Relu", constant_neuron: int | None = None,
             bias2: bool = True) -> onnx.ModelProto:
    """x [B, width] -> MatMul -> Add -> activation -> MatMul [-> Add] -> y [B, out].

    `constant_neuron`: that neuron's W1 column is zero and its bias 2.0, so its
    activation is the same constant for every input.
    """
    b = _Builder(seed)
    w1 = (b.rng.standard_normal((width, hidden)) * 0.5).astype(np.float32)
    b1 = (b.rng.standard_normal(hidden) * 0.1).astype(np.float32)
    if constant_neuron is not None:
        w1[:, constant_neuron] = 0.0
        b1[constant_neuron] = 2.0
    h = b.node("Add", [b.node("MatMul", ["x", b.const(w1, "w1")]), b.const(b1, "b1")])
    h = _gelu_erf(b, h) if activation == "GeluErf" else b.node(activation, [h])
    y = b.node("MatMul", [h, b.weight((hidden, out), 0.5)])
    if bias2:
        y = b.node("Add", [y, b.const(np.full(out, 0.1, dtype=np.float32), "b2")])
    b.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    graph = helper.make_graph(
        b.nodes, "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        initializer=b.inits,
    )
    opset = 20 if activation == "Gelu" else OPSET  # NOTE: Gelu became an ONNX op in opset 20
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bert_inputs(n: int = 24, seq: int = 6, hidden: int = 16, seed: int = 1
                ) -> dict[str, np.ndarray]:
    """Float token features and a mask with some padding."""
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), dtype=np.int64)
    for i in range(n):
        mask[i, seq - (i % 3):] = 0
    return {"x": rng.standard_normal((n, seq, hidden)).astype(np.float32),
            "attention_mask": mask}
