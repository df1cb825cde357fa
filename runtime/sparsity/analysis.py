"""Per-layer sparsity profile of an ONNX model (numpy + onnx only, no hardware).

The profile answers the operator's questions: how sparse is each weight, does it
follow NVIDIA's 2:4 pattern along K, could sparse tensor cores run it, and how
much of the model's math sits in such layers. `runtime.dispatch.decide` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from runtime.sparsity.masks import compliance_2of4

# Ops whose weight maps onto a GEMM, with the input index that holds the weight.
GEMM_WEIGHT_INPUT: dict[str, int] = {
    "MatMul": 1,
    "Gemm": 1,
    "Conv": 1,
    "MatMulInteger": 1,
    "QLinearMatMul": 3,
    "QLinearConv": 3,
}
# Ops a weight may pass through on its way to a GEMM (quantized exports).
PASS_THROUGH_OPS: frozenset[str] = frozenset({"DequantizeLinear", "Cast"})

# NOTE: dtype -> multiple that K and N must be for sparse tensor cores. These follow
# the engine that consumes the weights (torch + cuSPARSELt, the path that also runs
# on sm_90): torch's cuSPARSELt config asks for dims that are multiples of 16 for
# fp16/bf16 (8 for fp32, which cuSPARSELt runs as TF32; we ask 16 because the engine
# may cast fp32 weights to fp16) and 32 for int8. 64 is not needed for int8: the
# int8 mma.sp tile is k=64 but kernels pad K inside a tile; the CUTLASS path would
# want K % 128 for int8, but it is sm_8x-only, so it does not set the rule.
ELIGIBLE_DTYPE_MULTIPLE: dict[str, int] = {
    "float16": 16,
    "bfloat16": 16,
    "float32": 16,
    "int8": 32,
}

BYTES_PER_DTYPE: dict[str, float] = {
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
    "int64": 8,
}


@dataclass(frozen=True)
class LayerProfile:
    """Sparsity facts for one weight initializer and the op that consumes it.

    `k_axis` is the axis of `shape` holding the reduction dimension K (for Conv,
    axis 1 stands for the flattened in_channels*kh*kw); None when the consumer is
    not a GEMM-like op. `flops` counts 2*K*N per row of the batch (per output
    pixel for Conv), so shares between layers are meaningful.
    """

    name: str
    op: str
    weight_name: str
    shape: tuple[int, ...]
    dtype: str
    k_axis: int | None
    k: int
    n: int
    sparsity: float
    compliance_24: float
    eligible: bool
    ineligible_reason: str
    dense_bytes: int
    stored_bytes: int
    compressed_bytes: int
    flops: int

    @property
    def is_24(self) -> bool:
        """True when every group of 4 along K has at most 2 non-zeros."""
        return self.k_axis is not None and self.compliance_24 == 1.0

    @property
    def is_gemm(self) -> bool:
        """True for weights consumed as the B operand of a GEMM-like op."""
        return self.k_axis is not None


@dataclass(frozen=True)
class ModelProfile:
    """Whole-model summary built from the per-layer profiles."""

    layers: tuple[LayerProfile, ...]
    zeros: int = field(default=0)
    elements: int = field(default=0)

    @property
    def dense_bytes(self) -> int:
        """Bytes of all weight initializers if stored dense."""
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def stored_bytes(self) -> int:
        """Bytes of all weight initializers as stored in the file."""
        return sum(layer.stored_bytes for layer in self.layers)

    @property
    def compressed_24_bytes(self) -> int:
        """Bytes if every 2:4-compliant eligible layer were stored 2:4-compressed."""
        return sum(
            layer.compressed_bytes if layer.eligible and layer.is_24 else layer.dense_bytes
            for layer in self.layers
        )

    @property
    def sparsity(self) -> float:
        """Overall fraction of zero weights."""
        return self.zeros / self.elements if self.elements else 0.0

    @property
    def gemm_layers(self) -> tuple[LayerProfile, ...]:
        """Layers whose weight is a GEMM operand (MatMul, Gemm, Conv, quantized forms)."""
        return tuple(layer for layer in self.layers if layer.is_gemm)

    @property
    def eligible_layers(self) -> tuple[LayerProfile, ...]:
        """GEMM layers sparse tensor cores could run (dtype, shape, op)."""
        return tuple(layer for layer in self.layers if layer.eligible)

    @property
    def sparse_24_layers(self) -> tuple[LayerProfile, ...]:
        """Eligible layers whose weights are exactly 2:4."""
        return tuple(layer for layer in self.layers if layer.eligible and layer.is_24)

    @property
    def pattern(self) -> str:
        """'2:4', 'mixed', 'unstructured' or 'dense' over the eligible GEMM layers."""
        eligible = self.eligible_layers
        n24 = len(self.sparse_24_layers)
        if eligible and n24 == len(eligible):
            return "2:4"
        if n24:
            return "mixed"
        if self.sparsity > 0.0 and any(layer.sparsity > 0.05 for layer in self.layers):
            return "unstructured"
        return "dense"

    @property
    def eligible_24_flops_share(self) -> float:
        """Share of GEMM FLOPs (per batch row) in eligible 2:4 layers."""
        total = sum(layer.flops for layer in self.gemm_layers)
        sparse = sum(layer.flops for layer in self.sparse_24_layers)
        return sparse / total if total else 0.0

    def summary(self) -> dict[str, object]:
        """JSON-ready summary for `inspect --json`, config parameters and metrics."""
        return {
            "layers": len(self.layers),
            "gemm_layers": len(self.gemm_layers),
            "eligible_layers": len(self.eligible_layers),
            "sparse_24_layers": len(self.sparse_24_layers),
            "pattern": self.pattern,
            "sparsity": round(self.sparsity, 6),
            "dense_bytes": self.dense_bytes,
            "stored_bytes": self.stored_bytes,
            "compressed_24_bytes": self.compressed_24_bytes,
            "eligible_24_flops_share": round(self.eligible_24_flops_share, 6),
        }


def compressed_24_bytes(numel: int, itemsize: float) -> int:
    """Size of a 2:4 weight as kept values plus 2-bit positions.

    Half the values are kept; each kept value carries a 2-bit index, i.e. 4 bits
    per group of 4 = numel/8 bytes. fp16: 0.5*2 + 1/8 = 1.125 B/elem = 56.25% of
    dense; fp32: 0.5*4 + 1/8 = 2.125 B/elem = 53.125%; int8: 62.5%.
    """
    return int(math.ceil(numel / 2 * itemsize)) + int(math.ceil(numel / 8))


@dataclass(frozen=True)
class _Consumer:
    op: str
    node_name: str
    attrs: Mapping[str, object]


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def gemm_weight_consumers(graph: onnx.GraphProto) -> dict[str, list[_Consumer]]:
    """Map initializer name -> every GEMM-like node using it as its weight operand, in order.

    A weight reached through DequantizeLinear/Cast counts as the GEMM's weight.
    """
    init_names = {init.name for init in graph.initializer}
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for out in node.output:
            producers[out] = node
    found: dict[str, list[_Consumer]] = {}
    for node in graph.node:
        idx = GEMM_WEIGHT_INPUT.get(node.op_type)
        if idx is None or len(node.input) <= idx:
            continue
        name = node.input[idx]
        hops = 0
        while name not in init_names and name in producers and hops < 3:
            prev = producers[name]
            if prev.op_type not in PASS_THROUGH_OPS or not prev.input:
                break
            name, hops = prev.input[0], hops + 1
        if name in init_names:
            found.setdefault(name, []).append(
                _Consumer(node.op_type, node.name or node.output[0], _attrs(node))
            )
    return found


def find_gemm_weights(graph: onnx.GraphProto) -> dict[str, _Consumer]:
    """Map initializer name -> the first GEMM-like node using it as its weight operand."""
    return {name: uses[0] for name, uses in gemm_weight_consumers(graph).items()}


def k_axes_disagree(uses: Sequence[_Consumer], shape: tuple[int, ...]) -> bool:
    """True when a shared weight's consumers reduce along different axes of it.

    Such a weight (a MatMul's B also fed to a Gemm with transB=1, say) cannot be
    2:4 along both K axes, so it is not eligible and `prune` leaves it alone.
    """
    return len({k_axis_for(u.op, shape, u.attrs) for u in uses}) > 1


def k_axis_for(op: str, shape: tuple[int, ...], attrs: Mapping[str, object]) -> int | None:
    """Axis of K in the weight: MatMul B [K,N] -> 0; Gemm B -> 1 if transB else 0; Conv -> 1.

    For Conv the weight [O, I/g, kh, kw] is viewed as [O, I/g*kh*kw] and K is that
    flattened axis 1 (groups of 4 run along I/g*kh*kw in row-major order).
    Batched MatMul weights [..., K, N] use axis ndim-2.
    """
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        return len(shape) - 2 if len(shape) >= 2 else None
    if op == "Gemm":
        return 1 if attrs.get("transB", 0) else 0
    if op in ("Conv", "QLinearConv"):
        return 1 if len(shape) >= 3 else None
    return None


def k_last_2d(weight: np.ndarray, op: str, k_axis: int) -> np.ndarray:
    """View a GEMM weight as 2-D [N, K] with K last (the layout 2:4 kernels compress)."""
    if op in ("Conv", "QLinearConv"):
        return weight.reshape(weight.shape[0], -1)
    w = np.moveaxis(weight, k_axis, -1)
    return w.reshape(-1, w.shape[-1])


def _eligibility(op: str, dtype: str, k: int, n: int, attrs: Mapping[str, object],
                 shape: tuple[int, ...]) -> str:
    """Empty string when eligible, else the reason it is not."""
    if dtype not in ELIGIBLE_DTYPE_MULTIPLE:
        return f"dtype {dtype}"
    if op in ("Conv", "QLinearConv"):
        spatial = shape[2:]
        if any(d != 1 for d in spatial) or int(attrs.get("group", 1)) != 1:
            return "conv is not 1x1 with group=1"
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul") and len(shape) != 2:
        return "batched weight"
    m = ELIGIBLE_DTYPE_MULTIPLE[dtype]
    if k % m or n % m:
        return f"K={k}, N={n} not multiples of {m}"
    return ""


def profile_weight(
    weight: np.ndarray,
    weight_name: str,
    op: str,
    node_name: str,
    attrs: Mapping[str, object] | None = None,
    stored_bytes: int | None = None,
) -> LayerProfile:
    """Profile one weight as consumed by `op` (vectorized numpy)."""
    attrs = attrs or {}
    shape = tuple(int(d) for d in weight.shape)
    dtype = str(weight.dtype) if weight.dtype.name != "void" else "unknown"
    itemsize = weight.dtype.itemsize
    numel = int(weight.size)
    zeros = numel - int(np.count_nonzero(weight))
    sparsity = zeros / numel if numel else 0.0
    dense = numel * itemsize
    k_axis = k_axis_for(op, shape, attrs) if op in GEMM_WEIGHT_INPUT else None
    k = n = 0
    compliance = 0.0
    reason = "not a GEMM weight"
    flops = 0
    if k_axis is not None:
        view = k_last_2d(weight, op, k_axis)
        n, k = int(view.shape[0]), int(view.shape[1])
        flops = 2 * k * n
        if k % 4 == 0 and view.size:
            compliance = compliance_2of4(view, k_axis=1)
            reason = _eligibility(op, dtype, k, n, attrs, shape)
        else:
            reason = f"K={k} not a multiple of 4"
    eligible = reason == ""
    return LayerProfile(
        name=node_name,
        op=op,
        weight_name=weight_name,
        shape=shape,
        dtype=dtype,
        k_axis=k_axis,
        k=k,
        n=n,
        sparsity=sparsity,
        compliance_24=compliance,
        eligible=eligible,
        ineligible_reason=reason,
        dense_bytes=dense,
        stored_bytes=dense if stored_bytes is None else stored_bytes,
        compressed_bytes=compressed_24_bytes(numel, itemsize) if k_axis is not None else dense,
        flops=flops,
    )


def _consumers(graph: onnx.GraphProto) -> dict[str, str]:
    ops: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            ops.setdefault(name, node.op_type)
    return ops


def iter_weight_initializers(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Initializers that are weights: at least 2-D, numeric (biases, scales and shapes excluded)."""
    for init in model.graph.initializer:
        if len(init.dims) >= 2 and init.data_type not in (
            onnx.TensorProto.STRING,
            onnx.TensorProto.BOOL,
        ):
            yield init


def analyze_model(model: onnx.ModelProto) -> ModelProfile:
    """Profile every weight initializer of `model` (main graph, data loaded in memory).

    Raises:
        ValueError: an initializer's data lives in an external file that is not loaded.
    """
    graph = model.graph
    gemm = gemm_weight_consumers(graph)
    consumers = _consumers(graph)
    layers: list[LayerProfile] = []
    zeros = elements = 0
    for init in iter_weight_initializers(model):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(
                f"initializer {init.name!r} uses external data; load the model with its data"
            )
        weight = numpy_helper.to_array(init)
        stored = len(init.raw_data) if init.HasField("raw_data") else weight.nbytes
        if init.name in gemm:
            uses = gemm[init.name]
            c = uses[0]
            layer = profile_weight(weight, init.name, c.op, c.node_name, c.attrs, stored)
            if k_axes_disagree(uses, layer.shape):
                layer = replace(layer, eligible=False,
                                ineligible_reason="shared by GEMMs with different K axes")
        else:
            op = consumers.get(init.name, "")
            layer = profile_weight(weight, init.name, op, init.name, None, stored)
        layers.append(layer)
        elements += int(weight.size)
        zeros += int(weight.size) - int(np.count_nonzero(weight))
    return ModelProfile(layers=tuple(layers), zeros=zeros, elements=elements)


def layer_row(layer: LayerProfile) -> dict[str, object]:
    """JSON-ready dict of a layer profile (for `inspect --json`)."""
    return {
        "name": layer.name,
        "op": layer.op,
        "weight_name": layer.weight_name,
        "shape": list(layer.shape),
        "dtype": layer.dtype,
        "k_axis": layer.k_axis,
        "k": layer.k,
        "n": layer.n,
        "sparsity": round(layer.sparsity, 6),
        "compliance_24": round(layer.compliance_24, 6),
        "is_24": layer.is_24,
        "eligible": layer.eligible,
        "ineligible_reason": layer.ineligible_reason,
        "dense_bytes": layer.dense_bytes,
        "stored_bytes": layer.stored_bytes,
        "compressed_bytes": layer.compressed_bytes,
        "flops": layer.flops,
    }
