"""Structured pruning on the ONNX graph: find FFN blocks and attention heads, slice them away.

Why: on a CPU a 2:4 model runs as fast as the dense one; only removing whole FFN
neurons and whole attention heads shrinks the matrices. This module is the graph
side only (pattern finding and slicing, no statistics): the math lives in
`runtime.sparsity.compensate` and `runtime.sparsity.heads`, the sweep in
`runtime.sparsity.structured_prune`.

An FFN block is MatMul(x, W1) -> [Add b1] -> element-wise activation (Gelu, Relu,
or the Erf-spelled GELU exporters write: Div, Erf, Add, Mul, Mul with scalar
constants) -> MatMul(., W2) [-> Add b2]. Every op between the two MatMuls must be
element-wise with scalar constants, so slicing the hidden axis is exact.

An attention block is the BERT-style chain: Q/K/V = MatMul(x, W) [+ b] -> Reshape
[B, S, heads, head_dim] -> Transpose; Softmax(Q K^T [* scale] [+ mask]) V ->
Transpose -> Reshape [B, S, hidden] -> MatMul(Wo) [+ bo]. Anything else is refused
with a message naming what was found, never pruned on a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime.errors import ConfigError

# element-wise ops an activation region may contain (other inputs: scalar constants only)
_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Sigmoid", "Relu", "Gelu",
    "FastGelu", "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "HardSwish", "Clip",
    "Neg", "Abs", "Exp", "Mish",
})
_NONLINEAR = frozenset({
    "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "FastGelu", "LeakyRelu", "Elu", "Selu",
    "Softplus", "HardSigmoid", "HardSwish", "Clip", "Mish",
})
_FUSED_ATTENTION = frozenset({
    "Attention", "MultiHeadAttention", "PackedAttention", "GroupQueryAttention",
    "DecoderMaskedMultiHeadAttention", "QAttention",
})


class StructuredError(ConfigError):
    """The graph does not have the structure needed to prune it safely."""


# ---- graph index --------------------------------------------------------------


class GraphIndex:
    """Producers, consumers and constant values of one graph (read-only view)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.position: dict[int, int] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for pos, node in enumerate(self.nodes):
            self.position[id(node)] = pos
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        self.graph_outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.array(helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.array(helper.get_attribute_value(a))
        return None

    def is_scalar_const(self, name: str) -> bool:
        value = self.const(name)
        return value is not None and value.size == 1

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The single node reading `tensor`, or None (several, none, or a graph output)."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph_outputs:
            return None
        return users[0]

    def weight(self, name: str, ndim: int) -> np.ndarray | None:
        """A float initializer of rank `ndim` used by exactly one node, else None."""
        if name not in self.inits or len(self.consumers.get(name, [])) != 1:
            return None
        arr = numpy_helper.to_array(self.inits[name])
        return arr if arr.ndim == ndim and arr.dtype.kind == "f" else None

    def pos(self, node: onnx.NodeProto) -> int:
        return self.position[id(node)]


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def _bias_add(ix: GraphIndex, tensor: str, width: int) -> tuple[onnx.NodeProto, str] | None:
    """The Add right after `tensor` when its other input is a 1-D bias of `width`."""
    node = ix.only_consumer(tensor)
    if node is None or node.op_type != "Add" or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    bias = ix.weight(other, 1)
    if bias is None or bias.shape[0] != width:
        return None
    return node, other


# ---- FFN blocks ---------------------------------------------------------------


@dataclass(frozen=True)
class FFNBlock:
    """MatMul -> [Add] -> activation -> MatMul [-> Add], hidden width `hidden`."""

    name: str
    w1: str
    b1: str | None
    w2: str
    b2: str | None
    activation: str
    """Tensor feeding the second MatMul (the neurons' outputs)."""
    mm2_output: str
    output: str
    """The block's output: after b2 when there is one."""
    hidden: int
    position: int


def _activation_region(ix: GraphIndex, start: str) -> tuple[str, onnx.NodeProto] | None:
    """Follow element-wise ops from `start` to the one MatMul they feed; None if not clean."""
    region = {start}
    frontier = [start]
    nodes_in: set[int] = set()
    exits: list[tuple[str, onnx.NodeProto]] = []
    nonlinear = False
    while frontier:
        tensor = frontier.pop()
        if tensor in ix.graph_outputs:
            return None
        users = ix.consumers.get(tensor, [])
        if not users:
            return None
        for node in users:
            if id(node) in nodes_in:
                continue
            if node.op_type == "MatMul" and node.input[0] == tensor and node.input[1] in ix.inits:
                exits.append((tensor, node))
                nodes_in.add(id(node))
                continue
            if node.op_type not in _ELEMENTWISE or node.domain not in ("", "ai.onnx",
                                                                        "com.microsoft"):
                return None
            if not all(not i or i in region or ix.is_scalar_const(i) for i in node.input):
                # NOTE: an input not (yet) from the region: the node is met again once that
                # input joins the region; if it never does, the final reader check refuses
                continue
            nodes_in.add(id(node))
            nonlinear |= node.op_type in _NONLINEAR
            region.add(node.output[0])
            frontier.append(node.output[0])
    if len(exits) != 1 or not nonlinear:
        return None
    tensor, mm2 = exits[0]
    if len(ix.consumers.get(tensor, [])) != 1:
        return None
    # every region tensor must be read only inside the region
    for t in region:
        for user in ix.consumers.get(t, []):
            if id(user) not in nodes_in:
                return None
    return tensor, mm2


def find_ffn_blocks(model: onnx.ModelProto) -> list[FFNBlock]:
    """Every FFN block of the graph, in graph order."""
    ix = GraphIndex(model)
    blocks = []
    for node in ix.nodes:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        w1 = ix.weight(node.input[1], 2)
        if w1 is None:
            continue
        hidden = w1.shape[1]
        pre = node.output[0]
        b1 = None
        found = _bias_add(ix, pre, hidden)
        if found is not None:
            pre, b1 = found[0].output[0], found[1]
        region = _activation_region(ix, pre)
        if region is None:
            continue
        act, mm2 = region
        w2 = ix.weight(mm2.input[1], 2)
        if w2 is None or w2.shape[0] != hidden:
            continue
        out = mm2.output[0]
        b2 = None
        found2 = _bias_add(ix, out, w2.shape[1])
        if found2 is not None:
            out, b2 = found2[0].output[0], found2[1]
        name = _common_prefix(node.name or node.input[1], mm2.name or mm2.input[1])
        blocks.append(FFNBlock(name, node.input[1], b1, mm2.input[1], b2, act, mm2.output[0],
                               out, hidden, ix.pos(mm2)))
    return blocks


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    prefix = a[:n].rstrip("/._")
    return prefix or a


# ---- attention blocks ---------------------------------------------------------


@dataclass(frozen=True)
class ShapeConst:
    """A Reshape's target shape and where each of its constant values lives."""

    reshape: str
    """Name of the Reshape node (its output name when unnamed)."""
    values: tuple[int | None, ...]
    """The shape, None where the value is computed at run time."""


@dataclass(frozen=True)
class AttentionBlock:
    """One multi-head self-attention of a BERT-style encoder."""

    name: str
    q: tuple[str, str | None]
    k: tuple[str, str | None]
    v: tuple[str, str | None]
    wo: str
    bo: str | None
    heads: int
    head_dim: int
    split: tuple[ShapeConst, ShapeConst, ShapeConst]
    merge: ShapeConst
    context: str
    """Tensor feeding the output projection (the merged heads)."""
    wo_output: str
    output: str
    position: int


def _shape_values(ix: GraphIndex, tensor: str) -> tuple[int | None, ...] | None:
    value = ix.const(tensor)
    if value is not None:
        return tuple(int(v) for v in value.reshape(-1))
    node = ix.producer.get(tensor)
    if node is None or node.op_type != "Concat":
        return None
    out: list[int | None] = []
    for part in node.input:
        pv = ix.const(part)
        if pv is not None:
            out.extend(int(v) for v in pv.reshape(-1))
        else:
            out.append(None)  # NOTE: a run-time part (Unsqueeze(Gather(Shape))) is one value
    return tuple(out)


def _refuse(where: str, found: str) -> StructuredError:
    return StructuredError(
        f"attention not recognised at {where}: found {found}; head pruning supports BERT-style "
        "encoders only (Q/K/V MatMul[+Add] -> Reshape [B,S,heads,head_dim] -> Transpose, "
        "Softmax(Q K^T) V -> Transpose -> Reshape [B,S,hidden] -> MatMul); nothing was pruned"
    )


def _trace_back(ix: GraphIndex, tensor: str, where: str) -> tuple[list[int], onnx.NodeProto]:
    """From a heads tensor back through Transposes / scalar scales to its split Reshape."""
    perm = [0, 1, 2, 3]
    while True:
        node = ix.producer.get(tensor)
        if node is None:
            raise _refuse(where, f"graph input or constant {tensor!r} instead of a projection")
        if ix.only_consumer(tensor) is None:
            raise _refuse(where, f"{tensor!r} read by several nodes")
        if node.op_type == "Transpose":
            p = list(next(helper.get_attribute_value(a) for a in node.attribute
                          if a.name == "perm"))
            perm = [p[i] for i in perm]
            tensor = node.input[0]
        elif node.op_type in ("Mul", "Div") and any(ix.is_scalar_const(i) for i in node.input[1:]):
            tensor = node.input[0]
        elif node.op_type == "Mul" and ix.is_scalar_const(node.input[0]):
            tensor = node.input[1]
        elif node.op_type == "Reshape":
            return perm, node
        else:
            raise _refuse(where, f"{_label(node)} where a Transpose or Reshape was expected")


def _projection(ix: GraphIndex, reshape: onnx.NodeProto, where: str
                ) -> tuple[str, str | None, str]:
    """(weight, bias, input) of the MatMul[+Add] feeding a split Reshape."""
    tensor = reshape.input[0]
    if ix.only_consumer(tensor) is None:
        raise _refuse(where, f"projection output {tensor!r} read by several nodes")
    node = ix.producer.get(tensor)
    bias = None
    if node is not None and node.op_type == "Add":
        cand = [i for i in node.input if ix.weight(i, 1) is not None]
        rest = [i for i in node.input if i not in cand]
        if len(cand) != 1 or len(rest) != 1:
            raise _refuse(where, f"{_label(node)} that is not a bias add")
        bias = cand[0]
        if ix.only_consumer(rest[0]) is None:
            raise _refuse(where, f"{rest[0]!r} read by several nodes")
        node = ix.producer.get(rest[0])
    if node is None or node.op_type != "MatMul" or ix.weight(node.input[1], 2) is None:
        found = _label(node) if node is not None else "a graph input"
        raise _refuse(where, f"{found} instead of a MatMul with a weight used once")
    return node.input[1], bias, node.input[0]


def _attention_at(ix: GraphIndex, softmax: onnx.NodeProto) -> AttentionBlock:
    where = _label(softmax)
    # scores: Softmax <- [Add mask] <- [Mul/Div scale] <- MatMul(Q, K^T)
    tensor = softmax.input[0]
    node = ix.producer.get(tensor)
    while node is not None and node.op_type in ("Add", "Mul", "Div", "Where", "Cast"):
        if node.op_type in ("Mul", "Div") and not any(ix.is_scalar_const(i)
                                                      for i in node.input):
            raise _refuse(where, f"{_label(node)} scaling by a non-constant")
        tensor = node.input[1] if node.op_type == "Where" else node.input[0]
        if node.op_type == "Mul" and ix.is_scalar_const(node.input[0]):
            tensor = node.input[1]
        node = ix.producer.get(tensor)
    if node is None or node.op_type != "MatMul":
        raise _refuse(where, f"{_label(node) if node else 'an input'} instead of MatMul(Q, K^T)")
    scores = node
    q_perm, q_split = _trace_back(ix, scores.input[0], where)
    k_perm, k_split = _trace_back(ix, scores.input[1], where)
    # context: Softmax -> MatMul(P, V) -> Transpose(0,2,1,3) -> Reshape -> MatMul(Wo) [+ bo]
    ctx_mm = ix.only_consumer(softmax.output[0])
    if ctx_mm is None or ctx_mm.op_type != "MatMul" or ctx_mm.input[0] != softmax.output[0]:
        raise _refuse(where, "Softmax output not read by exactly one MatMul(P, V)")
    v_perm, v_split = _trace_back(ix, ctx_mm.input[1], where)
    if q_perm != [0, 2, 1, 3] or v_perm != [0, 2, 1, 3] or k_perm != [0, 2, 3, 1]:
        raise _refuse(where, f"head transposes Q {q_perm}, K {k_perm}, V {v_perm} "
                             "(expected [0,2,1,3], [0,2,3,1], [0,2,1,3])")
    t = ix.only_consumer(ctx_mm.output[0])
    if t is None or t.op_type != "Transpose" or list(
            next(helper.get_attribute_value(a) for a in t.attribute if a.name == "perm")
    ) != [0, 2, 1, 3]:
        raise _refuse(where, f"{_label(t) if t else 'several readers'} after MatMul(P, V) "
                             "instead of Transpose [0,2,1,3]")
    merge = ix.only_consumer(t.output[0])
    if merge is None or merge.op_type != "Reshape":
        raise _refuse(where, f"{_label(merge) if merge else 'several readers'} instead of the "
                             "merge-heads Reshape")
    out_mm = ix.only_consumer(merge.output[0])
    if out_mm is None or out_mm.op_type != "MatMul" or out_mm.input[0] != merge.output[0]:
        raise _refuse(where, "merged heads not read by exactly one output-projection MatMul")
    wo = ix.weight(out_mm.input[1], 2)
    if wo is None:
        raise _refuse(where, f"{_label(out_mm)} whose weight is not a 2-D initializer used once")
    projections = [_projection(ix, s, where) for s in (q_split, k_split, v_split)]
    if len({p[2] for p in projections}) != 1:
        raise _refuse(where, "Q, K and V projections of different inputs (cross-attention)")
    widths = {ix.weight(p[0], 2).shape[1] for p in projections}  # type: ignore[union-attr]
    hidden = wo.shape[0]
    if widths != {hidden}:
        raise _refuse(where, f"projection widths {sorted(widths)} vs output projection {hidden}")
    splits = [_shape_values(ix, s.input[1]) for s in (q_split, k_split, v_split)]
    merged = _shape_values(ix, merge.input[1])
    heads = _heads_from(splits, hidden, where)
    if merged is None or len(merged) != 3 or merged[2] not in (hidden, -1):
        raise _refuse(where, f"merge-heads Reshape to {merged} (expected [B, S, {hidden}] or "
                             "[B, S, -1])")
    bo_found = _bias_add(ix, out_mm.output[0], wo.shape[1])
    bo = bo_found[1] if bo_found else None
    output = bo_found[0].output[0] if bo_found else out_mm.output[0]
    name = _common_prefix(q_split.name or q_split.output[0], out_mm.name or out_mm.output[0])
    return AttentionBlock(
        name=name, q=projections[0][:2], k=projections[1][:2], v=projections[2][:2],
        wo=out_mm.input[1], bo=bo, heads=heads, head_dim=hidden // heads,
        split=tuple(ShapeConst(s.name or s.output[0], v)  # type: ignore[arg-type]
                    for s, v in zip((q_split, k_split, v_split), splits, strict=True)),
        merge=ShapeConst(merge.name or merge.output[0], merged),
        context=merge.output[0], wo_output=out_mm.output[0], output=output, position=ix.pos(out_mm),
    )


def _heads_from(splits: Sequence[tuple[int | None, ...] | None], hidden: int, where: str) -> int:
    heads = set()
    for shape in splits:
        if shape is None or len(shape) != 4:
            raise _refuse(where, f"split-heads Reshape to {shape} (expected 4 values "
                                 "[B, S, heads, head_dim])")
        h, d = shape[2], shape[3]
        if d is not None and d > 0 and hidden % d == 0 and h in (-1, hidden // d):
            heads.add(hidden // d)
        elif h is not None and h > 0 and hidden % h == 0 and d in (-1, hidden // h):
            heads.add(h)
        else:
            raise _refuse(where, f"split-heads Reshape to {list(shape)} for width {hidden}")
    if len(heads) != 1:
        raise _refuse(where, f"Q/K/V split into different head counts {sorted(heads)}")
    return heads.pop()


def find_attention_blocks(model: onnx.ModelProto) -> list[AttentionBlock]:
    """Every self-attention block, in graph order.

    Raises:
        StructuredError: a fused attention op, no Softmax, or any Softmax whose
            surroundings are not the BERT pattern (the message names what was found).
    """
    ix = GraphIndex(model)
    fused = [n for n in ix.nodes if n.op_type in _FUSED_ATTENTION]
    if fused:
        raise StructuredError(
            f"attention not recognised: found the fused op {_label(fused[0])} "
            f"({len(fused)} in all); head pruning needs the unfused BERT-style graph"
        )
    softmaxes = [n for n in ix.nodes if n.op_type == "Softmax"]
    if not softmaxes:
        raise StructuredError("attention not recognised: the graph has no Softmax, so no "
                              "attention heads were found to prune (use --head-sparsity 0)")
    return [_attention_at(ix, s) for s in softmaxes]


# ---- edits --------------------------------------------------------------------


@dataclass
class Edit:
    """What pruning one block changes: weights, reshape constants, a new bias."""

    block: str
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    reshapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    """Reshape node name -> new shape values (None: leave that position as it is)."""
    new_bias: tuple[str, str, np.ndarray] | None = None
    """(MatMul output to add it after, new initializer name, bias) when there was no bias."""
    masked: dict[str, np.ndarray] | None = None
    """The same block at full shape: output-projection rows of removed units zeroed, the
    new bias. Equal outputs, so many variants can run in one session; None where the
    block has no bias to carry the compensation."""


def masked_weights(edits: Iterable[Edit]) -> dict[str, np.ndarray] | None:
    """Full-shape weights equivalent to `edits` (None if some edit has no masked form)."""
    out: dict[str, np.ndarray] = {}
    for edit in edits:
        if edit.masked is None:
            return None
        out.update(edit.masked)
    return out


def _masked(rows: int, keep: np.ndarray, kept: np.ndarray) -> np.ndarray:
    full = np.zeros((rows, kept.shape[1]), dtype=kept.dtype)
    full[keep] = kept
    return full


def ffn_edit(block: FFNBlock, keep: np.ndarray, w1: np.ndarray, b1: np.ndarray | None,
             w2_kept: np.ndarray, b2_new: np.ndarray | None) -> Edit:
    """Slice W1 columns / b1 to `keep`, set W2's kept rows and the compensated b2."""
    edit = Edit(block.name)
    edit.weights[block.w1] = np.ascontiguousarray(w1[:, keep])
    if block.b1 is not None and b1 is not None:
        edit.weights[block.b1] = np.ascontiguousarray(b1[keep])
    edit.weights[block.w2] = np.ascontiguousarray(w2_kept)
    _compensate_bias(edit, block.w2, block.b2, block.mm2_output, b2_new, block.hidden, keep)
    return edit


def _compensate_bias(edit: Edit, weight: str, bias: str | None, output: str,
                     new_bias: np.ndarray | None, rows: int, keep: np.ndarray) -> None:
    """The compensated bias after a sliced projection `weight`: into its bias when it has one
    (and then the masked form too), else as a new Add on `output`."""
    if new_bias is None:
        return
    if bias is None:
        edit.new_bias = (output, f"{weight}.compensation_bias", new_bias)
        return
    edit.weights[bias] = new_bias
    edit.masked = {weight: _masked(rows, keep, edit.weights[weight]), bias: new_bias}


def head_columns(keep_heads: Iterable[int], head_dim: int) -> np.ndarray:
    """Indices of the hidden units that belong to the kept heads."""
    return np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in keep_heads])


def attention_edit(block: AttentionBlock, keep_heads: Sequence[int],
                   weights: Mapping[str, np.ndarray], wo_kept: np.ndarray,
                   bo_new: np.ndarray | None) -> Edit:
    """Drop the other heads from Q/K/V columns and Wo rows; fix both reshapes."""
    cols = head_columns(keep_heads, block.head_dim)
    edit = Edit(block.name)
    for w, b in (block.q, block.k, block.v):
        edit.weights[w] = np.ascontiguousarray(weights[w][:, cols])
        if b is not None:
            edit.weights[b] = np.ascontiguousarray(weights[b][cols])
    edit.weights[block.wo] = np.ascontiguousarray(wo_kept)
    n = len(keep_heads)
    for split in block.split:
        v = split.values
        edit.reshapes[split.reshape] = (None, None, n if v[2] not in (-1, None) else None,
                                        None)
    m = block.merge.values
    edit.reshapes[block.merge.reshape] = (None, None,
                                          n * block.head_dim if m[2] not in (-1, None) else None)
    _compensate_bias(edit, block.wo, block.bo, block.wo_output, bo_new,
                     block.heads * block.head_dim, cols)
    return edit


def apply_edits(model: onnx.ModelProto, edits: Iterable[Edit]) -> onnx.ModelProto:
    """A copy of `model` with the edits applied (weights replaced in place by name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    edits = list(edits)
    inits = {i.name: i for i in g.initializer}
    extra_bias: list[tuple[str, str, np.ndarray]] = []
    for edit in edits:
        for name, arr in edit.weights.items():
            init = inits[name]
            init.CopyFrom(numpy_helper.from_array(arr.astype(
                helper.tensor_dtype_to_np_dtype(init.data_type)), name))
        if edit.new_bias is not None:
            extra_bias.append(edit.new_bias)
        for reshape_name, values in edit.reshapes.items():
            _set_reshape(out, reshape_name, values)
    for mm_out, bias_name, bias in extra_bias:
        _add_bias_after(out, mm_out, bias_name, bias)
    del g.value_info[:]  # NOTE: stale intermediate shapes would contradict the sliced weights
    _drop_dead_nodes(out)
    return out


def _set_reshape(model: onnx.ModelProto, reshape_name: str,
                 values: tuple[int | None, ...]) -> None:
    """Point a Reshape at a new shape: its own constant, or its own copy of the Concat."""
    g = model.graph
    if all(v is None for v in values):
        return
    node = next(n for n in g.node if n.op_type == "Reshape"
                and (n.name or n.output[0]) == reshape_name)
    ix = GraphIndex(model)
    shape_in = node.input[1]
    const = ix.const(shape_in)
    tag = f"{reshape_name}.pruned_shape"
    if const is not None:
        new = [int(v) if values[i] is None else int(values[i])  # type: ignore[arg-type]
               for i, v in enumerate(const.reshape(-1))]
        g.initializer.append(numpy_helper.from_array(np.array(new, dtype=np.int64), tag))
        node.input[1] = tag
        return
    concat = ix.producer[shape_in]
    clone = onnx.NodeProto()
    clone.CopyFrom(concat)
    clone.name = f"{tag}.concat"
    del clone.output[:]
    clone.output.append(tag)
    pos = 0
    for j, part in enumerate(concat.input):
        pv = ix.const(part)
        width = 1 if pv is None else pv.size
        if pv is not None and any(values[pos + t] is not None for t in range(width)):
            new = [int(x) if values[pos + t] is None else int(values[pos + t])  # type: ignore
                   for t, x in enumerate(pv.reshape(-1))]
            name = f"{tag}.part{j}"
            g.initializer.append(numpy_helper.from_array(np.array(new, dtype=pv.dtype), name))
            clone.input[j] = name
        pos += width
    nodes = list(g.node)
    idx = next(i for i, n in enumerate(nodes) if n is node)
    g.node.insert(idx, clone)
    node.input[1] = tag


def _add_bias_after(model: onnx.ModelProto, mm_output: str, bias_name: str,
                    bias: np.ndarray) -> None:
    g = model.graph
    nodes = list(g.node)
    idx = next(i for i, n in enumerate(nodes) if mm_output in n.output)
    mm = nodes[idx]
    raw = f"{mm_output}.before_compensation"
    mm.output[0] = raw
    g.initializer.append(numpy_helper.from_array(bias, bias_name))
    g.node.insert(idx + 1, helper.make_node("Add", [raw, bias_name], [mm_output],
                                            name=f"{bias_name}.add"))


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes no graph output depends on (in any node order), then unused initializers."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    live: set[int] = set()
    stack = [o.name for o in g.output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        idx = producer.get(name)
        if idx is None or idx in live:
            continue
        live.add(idx)
        stack.extend(i for i in g.node[idx].input if i)
    if len(live) != len(g.node):
        keep = [n for i, n in enumerate(g.node) if i in live]
        del g.node[:]
        g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    graph_inputs = {x.name for x in g.input}
    for init in [i for i in g.initializer if i.name not in used and i.name not in graph_inputs]:
        g.initializer.remove(init)
