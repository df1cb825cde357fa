"""ONNX graph -> a small torch interpreter for GEMM-centric models (MLPs, BERT-like encoders).

Why our own interpreter and not onnx2torch: we need every linear layer (MatMul/Gemm with a
constant weight, plus its bias Add) as one swappable object so the engine can put a 2:4
compressed kernel behind it, and we need shape arithmetic (Shape/Gather/Concat/...) to stay
on the CPU so a whole forward pass can be captured in a CUDA graph without host syncs.

Rules the interpreter keeps:
- float constants live on the compute device in the compute dtype; integer constants and
  everything derived from `Shape` stay on the CPU (they are shape arithmetic);
- nodes whose inputs are all constants are folded once at conversion time;
- every `Cast` to a float type casts to the compute dtype, so an fp16 run stays fp16.

This module imports torch at import time; only `runtime.engines.torch_sparse.load()` imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from onnx import helper, numpy_helper

Tensor = torch.Tensor
OpFn = Callable[[list[Any], dict[str, Any], "Ctx"], Any]

_FLOAT_ONNX = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}
INT_ONNX_TO_TORCH: dict[int, torch.dtype] = {
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


_HALF = (torch.float16, torch.bfloat16)


def to_compute_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A float constant in the compute dtype, saturated rather than overflowed.

    fp16/bf16 cannot hold the large negative constants exported attention masks use
    (-1e9, float32's minimum): a plain cast makes them -inf, and 0 * -inf is NaN. They
    become the format's largest finite value instead, and nonzero values that would round
    to zero (a 1e-12 epsilon in fp16) its smallest positive one, so an epsilon never turns
    into a 0/0.
    """
    if dtype not in _HALF or not t.is_floating_point():
        return t.to(dtype)
    info = torch.finfo(dtype)
    t = torch.where(torch.isfinite(t), t.clamp(info.min, info.max), t)
    out = t.to(dtype)
    smallest = torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype))
    vanished = (t != 0) & (out == 0)
    return torch.where(vanished, torch.sign(t).to(dtype) * smallest, out)


class UnsupportedModel(ValueError):
    """The graph uses an op or attribute this interpreter does not implement."""


@dataclass
class Ctx:
    """What ops need to know beyond their inputs."""

    opset: int
    float_dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    host_to_device: int = 0
    """Copies of CPU tensors to the device so far; such a pass cannot be put in a CUDA graph."""
    device_copies: dict[tuple[object, ...], Tensor] = field(default_factory=dict)
    """Device copies of small CPU tensors by content: see `_to`."""


# ----------------------------------------------------------------------------- helpers


_CACHED_COPY_MAX_NUMEL = 4096
_CACHED_COPIES_MAX = 256


def _to(t: Tensor, device: torch.device, ctx: Ctx) -> Tensor:
    """Move t to device, counting host->device copies (they rule out CUDA graph capture).

    A CPU tensor here is shape arithmetic or an integer constant, so its value depends only
    on the input shapes (an attention mask built from Range and Shape, say): a small one is
    copied once per value and reused, so the second pass at a batch bucket copies nothing
    and can be captured in a CUDA graph.
    """
    if t.device == device:
        return t
    if t.device.type != "cpu":
        return t.to(device)
    key: tuple[object, ...] | None = None
    if t.numel() <= _CACHED_COPY_MAX_NUMEL:
        raw = bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        key = (str(device), t.dtype, tuple(t.shape), raw)
        cached = ctx.device_copies.get(key)
        if cached is not None:
            return cached
    ctx.host_to_device += 1
    moved = t.to(device)
    if key is not None and len(ctx.device_copies) < _CACHED_COPIES_MAX:
        ctx.device_copies[key] = moved
    return moved


def _align(a: Tensor, b: Tensor, ctx: Ctx) -> tuple[Tensor, Tensor]:
    """Put two operands on one device; 0-d CPU tensors may stay (torch treats them as scalars)."""
    if a.device == b.device:
        return a, b
    if a.device.type == "cpu" and a.dim() == 0:
        return a, b
    if b.device.type == "cpu" and b.dim() == 0:
        return a, b
    if a.device.type == "cpu":
        return _to(a, b.device, ctx), b
    return a, _to(b, a.device, ctx)


def _ints(t: Tensor | Sequence[int] | None) -> list[int]:
    if t is None:
        return []
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
        a, b = _align(inputs[0], inputs[1], ctx)
        return fn(a, b)

    return op


def _div(a: Tensor, b: Tensor) -> Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _unary(fn: Callable[[Tensor], Tensor]) -> OpFn:
    return lambda inputs, attrs, ctx: fn(inputs[0])


def _cast_dtype(onnx_type: int, ctx: Ctx) -> torch.dtype:
    if onnx_type in _FLOAT_ONNX:
        return ctx.float_dtype
    if onnx_type in INT_ONNX_TO_TORCH:
        return INT_ONNX_TO_TORCH[onnx_type]
    raise UnsupportedModel(f"Cast to ONNX type {onnx_type} is not supported")


def tensor_from_proto(proto: onnx.TensorProto) -> Tensor:
    """An initializer or Constant value as a CPU tensor (floats as float32)."""
    arr = numpy_helper.to_array(proto)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    # NOTE: np.ascontiguousarray would turn 0-d scalars into 1-d arrays; np.array keeps rank.
    return torch.from_numpy(np.array(arr, copy=True, order="C"))


# ----------------------------------------------------------------------------- ops


def _gemm(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    a, b = inputs[0], inputs[1]
    a, b = _align(a, b, ctx)
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = float(attrs.get("alpha", 1.0)) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        c, y = _align(inputs[2], y, ctx)
        y = y + float(attrs.get("beta", 1.0)) * c
    return y


def _softmax(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    if x.dtype in _HALF:
        # NOTE: an additive mask at the format's minimum overflows to -inf when added to a
        # score, and a row of -inf gives NaN; clamped, a fully masked row stays finite
        x = x.clamp(min=torch.finfo(x.dtype).min)
    if ctx.opset >= 13:
        return torch.softmax(x, dim=int(attrs.get("axis", -1)))
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    flat = x.reshape(math.prod(x.shape[:axis]), -1)
    return torch.softmax(flat, dim=1).reshape(x.shape)


def _layer_norm(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(attrs.get("axis", -1)) % x.dim()
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, float(attrs.get("epsilon", 1e-5)))


def _reduce_axes(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> list[int]:
    if "axes" in attrs:
        return _ints(attrs["axes"])
    if len(inputs) > 1 and inputs[1] is not None:
        return _ints(inputs[1])
    return []


def _reshape(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    shape = _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _transpose(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    perm = _ints(attrs.get("perm")) or list(reversed(range(x.dim())))
    return x.permute(perm)


def _shape(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    dims = list(inputs[0].shape)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    dims = dims[start:] if end is None else dims[start : int(end)]
    return torch.tensor(dims, dtype=torch.int64)  # NOTE: CPU on purpose (shape arithmetic)


def _gather(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    data, idx = inputs[0], inputs[1]
    axis = int(attrs.get("axis", 0)) % data.dim()
    if idx.device != data.device and idx.device.type == "cpu" and idx.numel() > 0:
        # NOTE: position ids are a CPU range (shape arithmetic); a narrow() keeps the pass
        # free of host->device copies, so it can still be captured in a CUDA graph.
        flat = idx.reshape(-1).long()
        start = int(flat[0]) % data.shape[axis]
        if torch.equal(flat, torch.arange(int(flat[0]), int(flat[0]) + flat.numel())):
            if start + flat.numel() <= data.shape[axis]:
                picked = data.narrow(axis, start, flat.numel())
                shape = (*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])
                return picked.reshape(shape)
    idx = _to(idx, data.device, ctx)
    idx = idx.long()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    flat = torch.index_select(data, axis, idx.reshape(-1))
    return flat.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]))


def _unsqueeze(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    axes = _ints(attrs["axes"]) if "axes" in attrs else _ints(inputs[1])
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    second = inputs[1] if len(inputs) > 1 else None
    axes = _ints(attrs["axes"]) if "axes" in attrs else _ints(second)
    if not axes:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _concat(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    parts = [t for t in inputs if t is not None]
    devices = {t.device for t in parts}
    if len(devices) > 1:
        dev = next(d for d in devices if d.type != "cpu")
        parts = [_to(t, dev, ctx) for t in parts]
    return torch.cat(parts, dim=int(attrs["axis"]))


def _slice(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    if "starts" in attrs:  # opset < 10
        starts, ends = _ints(attrs["starts"]), _ints(attrs["ends"])
        axes = _ints(attrs.get("axes")) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else []
        axes = axes or list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else []
        steps = steps or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    flips: list[int] = []
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if st == 0:
            raise UnsupportedModel("Slice with a zero step is not valid ONNX")
        axis = a % x.dim()
        dim = x.shape[axis]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            index[axis] = slice(max(0, min(dim, s)), max(0, min(dim, e)), st)
            continue
        # NOTE: torch has no negative steps: take the reversed range, then flip it. ONNX
        # clamps a backwards start to [0, dim - 1] and its end to [-1, dim - 1]
        s, e = max(0, min(dim - 1, s)), max(-1, min(dim - 1, e))
        if s <= e:
            index[axis] = slice(0, 0)
            continue
        picked = list(range(s, e, st))
        index[axis] = slice(picked[-1], picked[0] + 1, -st)
        flips.append(axis)
    out = x[tuple(index)]
    return out.flip(flips) if flips else out


def _cast(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    return inputs[0].to(_cast_dtype(int(attrs["to"]), ctx))


def _matmul(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    a, b = _align(inputs[0], inputs[1], ctx)
    return torch.matmul(a, b)


def _gelu(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    approx = attrs.get("approximate", "none")
    return F.gelu(inputs[0], approximate="tanh" if approx == "tanh" else "none")


def _where(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    cond, x, y = inputs
    x, y = _align(x, y, ctx)
    dev = x.device if x.dim() else y.device
    cond = _to(cond, dev, ctx)
    return torch.where(cond.bool(), x, y)


def _expand(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x, shape = inputs[0], _ints(inputs[1])
    # ONNX Expand broadcasts both ways (a 1 in `shape` keeps x's dim).
    out = list(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))
    return x.expand(out)


def _constant_of_shape(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    value = attrs.get("value")
    fill = tensor_from_proto(value) if value is not None else torch.zeros(1)
    shape = _ints(inputs[0])
    if fill.is_floating_point():  # NOTE: a float tensor joins the compute, on its device
        v = to_compute_dtype(fill.reshape(-1)[:1], ctx.float_dtype)
        return torch.full(shape, float(v[0]), dtype=ctx.float_dtype, device=ctx.device)
    return fill.reshape(-1)[0].expand(shape).clone()  # shape arithmetic stays on the CPU


def _flatten(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    x = inputs[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis  # NOTE: ONNX counts back from the rank
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _range(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    start, limit, delta = (t.item() for t in inputs)
    dtype = inputs[0].dtype
    return torch.arange(start, limit, delta, dtype=dtype, device=inputs[0].device)


def _reduce(fn: Callable[..., Tensor]) -> OpFn:
    def op(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
        x = inputs[0]
        axes = _reduce_axes(inputs, attrs, ctx)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, axes, keep)

    return op


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> OpFn:
    def op(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
        acc = inputs[0]
        for t in inputs[1:]:
            acc, t = _align(acc, t, ctx)
            acc = fn(acc, t)
        return acc

    return op


_QRANGE: dict[torch.dtype, tuple[int, int]] = {
    torch.int8: (-128, 127),
    torch.uint8: (0, 255),
    torch.int16: (-32768, 32767),
    torch.int32: (-(2**31), 2**31 - 1),
}


def _per_axis(param: Tensor, x: Tensor, axis: int) -> Tensor:
    """Shape a per-tensor (0-d/1-element) or per-axis (1-D) scale/zero point to broadcast."""
    if param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = param.numel()
    return param.reshape(shape)


def _quantize_linear(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point)."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    qdtype = zp.dtype if zp is not None else torch.uint8
    if qdtype not in _QRANGE:
        raise UnsupportedModel(f"QuantizeLinear to {qdtype} is not supported")
    axis = int(attrs.get("axis", 1))
    scale = _per_axis(scale, x, axis)
    q = torch.round(x / _to(scale, x.device, ctx) if scale.dim() else x / scale)
    if zp is not None:
        zp_b = _per_axis(zp, x, axis)
        q = q + (_to(zp_b, x.device, ctx) if zp_b.dim() else zp_b)
    lo, hi = _QRANGE[qdtype]
    return q.clamp(lo, hi).to(qdtype)


def _dequantize_linear(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    """ONNX DequantizeLinear: (x - zero_point) * scale, in the compute dtype."""
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axis = int(attrs.get("axis", 1))
    # NOTE: int32 math first so that int8 - zero_point cannot wrap around.
    v = x.to(torch.int32) if not x.is_floating_point() else x
    if zp is not None:
        zp_b = _per_axis(zp, x, axis).to(torch.int32)
        v = v - (_to(zp_b, x.device, ctx) if zp_b.dim() else zp_b)
    scale = _per_axis(scale, x, axis)
    scale = _to(scale, x.device, ctx) if scale.dim() else scale
    return v.to(scale.dtype if scale.is_floating_point() else ctx.float_dtype) * scale


def _clip(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    """Clip: bounds as inputs (opset >= 11) or attributes (older); either may be absent.

    A bound already on x's device stays a tensor (reading it would sync the device inside a
    CUDA graph capture); a CPU or attribute bound is a number, saturated to x's format.
    """
    x = inputs[0]
    for i, key, side in ((1, "min", "min"), (2, "max", "max")):
        b = inputs[i] if len(inputs) > i and inputs[i] is not None else attrs.get(key)
        if b is None:
            continue
        if isinstance(b, Tensor) and b.device == x.device:
            bound: Tensor | float = b.to(x.dtype).reshape(())
        else:
            value = float(b.reshape(-1)[0]) if isinstance(b, Tensor) else float(b)
            if x.dtype in _HALF:
                value = float(to_compute_dtype(torch.tensor([value]), x.dtype)[0])
            bound = value if x.is_floating_point() else int(value)
        x = torch.clamp(x, **{side: bound})
    return x


def _split(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> tuple[Tensor, ...]:
    """Split: sizes from the `split` input (opset >= 13), the attribute, or equal parts
    (`num_outputs` at opset 18, else one per output, which `convert` passes in)."""
    x = inputs[0]
    axis = int(attrs.get("axis", 0)) % x.dim()
    sizes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else []
    sizes = sizes or _ints(attrs.get("split"))
    if not sizes:
        parts = int(attrs.get("num_outputs") or attrs["_outputs"])
        chunk = -(-x.shape[axis] // parts)  # ceil: the last part may be smaller, as in ONNX
        sizes = [max(0, min(chunk, x.shape[axis] - i * chunk)) for i in range(parts)]
    return tuple(torch.split(x, sizes, dim=axis))


def _dropout(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    return inputs[0]


def _constant(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    if "value" in attrs:
        return tensor_from_proto(attrs["value"])
    if "value_float" in attrs:
        return torch.tensor(float(attrs["value_float"]), dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor([float(v) for v in attrs["value_floats"]], dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(int(attrs["value_int"]), dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(_ints(attrs["value_ints"]), dtype=torch.int64)
    raise UnsupportedModel(f"Constant with attributes {sorted(attrs)} is not supported")


OPS: dict[str, OpFn] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(torch.pow),
    "Equal": _binary(torch.eq),
    "Sqrt": _unary(torch.sqrt),
    "Relu": _unary(torch.relu),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Sigmoid": _unary(torch.sigmoid),
    "Exp": _unary(torch.exp),
    "Neg": _unary(torch.neg),
    "Identity": _unary(lambda x: x),
    "Gelu": _gelu,
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep)),
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Slice": _slice,
    "Cast": _cast,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Where": _where,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Flatten": _flatten,
    "Dropout": _dropout,
    "Constant": _constant,
    "Range": _range,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
    "Not": _unary(torch.logical_not),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "ReduceSum": _reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep)),
    "ReduceMax": _reduce(lambda x, axes, keep: x.amax(dim=axes, keepdim=keep)),
    "ReduceL2": _reduce(
        lambda x, axes, keep: torch.linalg.vector_norm(x, 2, dim=axes, keepdim=keep)
    ),
    "GreaterOrEqual": _binary(torch.ge),
    "LessOrEqual": _binary(torch.le),
    "Clip": _clip,
    "Split": _split,
}
"""Supported ONNX ops (default domain)."""


# ----------------------------------------------------------------------------- linear layers


class LinearOp:
    """One linear layer y = x @ W^T + b (W in torch layout [N, K]) with swappable kernels.

    The engine registers kernels by name ("dense", "sparse") and a per-bucket choice, so a
    layer can run sparse at large batches and dense at small ones when that is what measured
    faster. Kernels receive a 2-D input [M, K] and return [M, N].
    """

    def __init__(self, name: str, weight: Tensor, bias: Tensor | None, min_rank: int = 1) -> None:
        self.name = name
        self.min_rank = min_rank
        """2 when a fused [1, N] bias Add broadcast a 1-D input's result up to [1, N]."""
        self.weight: Tensor | None = weight
        self.bias = bias
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.kernels: dict[str, Callable[[Tensor], Tensor]] = {}
        self.choice: dict[int, str] = {}
        self.default_kernel = "dense"
        self.rows_seen: dict[int, int] = {}

    def dense(self, x2: Tensor) -> Tensor:
        if self.weight is None:
            raise RuntimeError(f"layer {self.name}: dense weight was released")
        return F.linear(x2, self.weight, self.bias)

    def kernel_name(self, bucket: int | None) -> str:
        if bucket is not None and bucket in self.choice:
            return self.choice[bucket]
        return self.default_kernel

    def __call__(self, x: Tensor, bucket: int | None, force: str | None = None) -> Tensor:
        x2 = x.reshape(-1, self.in_features)
        if bucket is not None:
            self.rows_seen[bucket] = int(x2.shape[0])
        name = force or self.kernel_name(bucket)
        kernel = self.kernels.get(name, self.dense) if name != "dense" else self.dense
        y = kernel(x2).reshape(*x.shape[:-1], self.out_features)
        return y.unsqueeze(0) if y.dim() < self.min_rank else y


# ----------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class IOSpec:
    """Graph input/output: name, ONNX element type, dims (-1 = dynamic)."""

    name: str
    elem_type: int
    dims: tuple[int, ...]


@dataclass
class _Step:
    op_type: str
    fn: OpFn | None
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    linear: LinearOp | None = None
    release: list[str] = field(default_factory=list)


class TorchGraph:
    """A converted ONNX graph: call it with a dict of tensors, get a dict of tensors back."""

    def __init__(
        self,
        steps: list[_Step],
        consts: dict[str, Tensor],
        linears: dict[str, LinearOp],
        inputs: tuple[IOSpec, ...],
        outputs: tuple[IOSpec, ...],
        opset: int,
    ) -> None:
        self.steps = steps
        self.consts = consts
        self.linears = linears
        self.inputs = inputs
        self.outputs = outputs
        self.ctx = Ctx(opset=opset)
        self.bucket: int | None = None
        self.force_kernel: str | None = None

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def float_dtype(self) -> torch.dtype:
        return self.ctx.float_dtype

    def to(self, device: torch.device | str, float_dtype: torch.dtype) -> TorchGraph:
        """Move float constants and linear weights to `device`/`float_dtype`; ints stay on CPU."""
        device = torch.device(device)
        self.ctx.device, self.ctx.float_dtype = device, float_dtype
        self.ctx.device_copies.clear()
        for name, t in self.consts.items():
            if t.is_floating_point():
                self.consts[name] = to_compute_dtype(t, float_dtype).to(device).contiguous()
        for lin in self.linears.values():
            if lin.weight is not None:
                lin.weight = lin.weight.to(device=device, dtype=float_dtype).contiguous()
            if lin.bias is not None:
                lin.bias = lin.bias.to(device=device, dtype=float_dtype).contiguous()
        return self

    def prepare_input(self, name: str, value: Tensor | np.ndarray) -> Tensor:
        """Floats to the compute dtype, everything to the compute device."""
        t = torch.as_tensor(value)
        if t.is_floating_point():
            t = t.to(dtype=self.float_dtype)
        return t.to(self.device)

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        env: dict[str, Any] = dict(self.consts)
        env.update(feeds)
        ctx, bucket, force = self.ctx, self.bucket, self.force_kernel
        for step in self.steps:
            if step.linear is not None:
                env[step.outputs[0]] = step.linear(env[step.inputs[0]], bucket, force)
            else:
                args = [env[n] if n else None for n in step.inputs]
                result = step.fn(args, step.attrs, ctx)  # type: ignore[misc]
                if isinstance(result, tuple):
                    for out_name, val in zip(step.outputs, result, strict=False):
                        env[out_name] = val
                else:
                    env[step.outputs[0]] = result
            for name in step.release:
                env.pop(name, None)
        return {o.name: env[o.name] for o in self.outputs}


# ----------------------------------------------------------------------------- conversion


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _io(values: Sequence[onnx.ValueInfoProto]) -> tuple[IOSpec, ...]:
    specs = []
    for v in values:
        tt = v.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim
        )
        specs.append(IOSpec(v.name, tt.elem_type, dims))
    return tuple(specs)


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 13


def _as_linear(
    node: onnx.NodeProto, attrs: dict[str, Any], consts: Mapping[str, Tensor]
) -> tuple[Tensor, Tensor | None] | None:
    """(weight [N,K], bias) when `node` is a linear layer with a constant 2-D weight."""
    if len(node.input) < 2 or node.input[0] in consts:
        return None
    w = consts.get(node.input[1])
    if w is None or w.dim() != 2 or not w.is_floating_point():
        return None
    if node.op_type == "MatMul":
        return w.t().contiguous(), None
    if node.op_type != "Gemm" or attrs.get("transA", 0):
        return None
    weight = w if attrs.get("transB", 0) else w.t()
    weight = (weight * float(attrs.get("alpha", 1.0))).contiguous()
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = consts.get(node.input[2])
        n = weight.shape[0]
        if c is None or c.numel() != n or (c.dim() == 2 and c.shape[0] != 1):
            return None
        bias = (c.reshape(n) * float(attrs.get("beta", 1.0))).contiguous()
    return weight, bias


def _normalize_last_dim(inputs: list[Any], attrs: dict[str, Any], ctx: Ctx) -> Tensor:
    """A decomposed LayerNorm (no scale or bias), fused: see `_match_layer_norm`."""
    x = inputs[0]
    return F.layer_norm(x, (x.shape[-1],), None, None, float(attrs["epsilon"]))


def _match_layer_norm(
    node: onnx.NodeProto,
    consumers: Mapping[str, list[onnx.NodeProto]],
    value_of: Callable[[str], Tensor | None],
    graph_outputs: set[str],
) -> tuple[str, str, float, list[onnx.NodeProto]] | None:
    """(x, normalized output, epsilon, the nodes it replaces) when `node` starts the LayerNorm
    that exports before opset 17 spell out:

        m = ReduceMean(x); d = x - m; v = ReduceMean(d ** 2); y = d / Sqrt(v + eps)

    Why fuse it: in fp16, d ** 2 overflows (65504 is fp16's largest value) as soon as one
    hidden value is ~256 away from the mean, and every output of that row goes wrong;
    F.layer_norm accumulates in fp32. The scale and bias Mul/Add that follow stay as they are.
    """

    def last_axis_mean(n: onnx.NodeProto) -> bool:
        if n.op_type != "ReduceMean" or int(_attrs(n).get("keepdims", 1)) != 1:
            return False
        axes = _attrs(n).get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            t = value_of(n.input[1])
            axes = None if t is None else _ints(t)
        return axes is not None and list(axes) == [-1]

    def only(name: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        if name in graph_outputs or len(users) != 1 or users[0].op_type != op:
            return None
        return users[0]

    if not last_axis_mean(node):
        return None
    x, mean = node.input[0], node.output[0]
    sub = only(mean, "Sub")
    if sub is None or list(sub.input) != [x, mean]:
        return None
    d = sub.output[0]
    users = consumers.get(d, [])
    if d in graph_outputs or sorted(u.op_type for u in users) != ["Div", "Pow"]:
        return None
    pow_, div = sorted(users, key=lambda u: u.op_type == "Div")
    two = value_of(pow_.input[1])
    if list(pow_.input)[0] != d or two is None or two.numel() != 1 or float(two) != 2.0:
        return None
    var = only(pow_.output[0], "ReduceMean")
    if var is None or not last_axis_mean(var):
        return None
    add = only(var.output[0], "Add")
    if add is None:
        return None
    eps_name = add.input[1] if add.input[0] == var.output[0] else add.input[0]
    eps = value_of(eps_name)
    if eps is None or eps.numel() != 1:
        return None
    sqrt = only(add.output[0], "Sqrt")
    if sqrt is None or only(sqrt.output[0], "Div") is not div:
        return None
    if list(div.input) != [d, sqrt.output[0]]:
        return None
    return x, div.output[0], float(eps), [sub, pow_, var, add, sqrt, div]


def convert(model: onnx.ModelProto | bytes | str) -> TorchGraph:
    """Convert an ONNX model (proto, bytes or path) into a `TorchGraph` on the CPU in fp32."""
    if isinstance(model, bytes):
        model = onnx.load_from_string(model)
    elif isinstance(model, str):
        model = onnx.load(model)
    graph = model.graph
    opset = _opset(model)
    ctx = Ctx(opset=opset)
    consts: dict[str, Tensor] = {init.name: tensor_from_proto(init) for init in graph.initializer}
    init_names = {i.name for i in graph.initializer}
    inputs = tuple(s for s in _io(graph.input) if s.name not in init_names)
    outputs = _io(graph.output)
    graph_outputs = {o.name for o in outputs}

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def value_of(name: str) -> Tensor | None:
        """A constant's value, also for a Constant node not folded yet."""
        if name in consts:
            return consts[name]
        node = constant_nodes.get(name)
        return _constant([], _attrs(node), ctx) if node is not None else None

    steps: list[_Step] = []
    linears: dict[str, LinearOp] = {}
    fused: set[int] = set()  # id() of nodes folded into a linear layer or a LayerNorm
    for index, node in enumerate(graph.node):
        if id(node) in fused:
            continue
        if node.op_type == "ReduceMean" and node.input[0] not in consts:
            norm = _match_layer_norm(node, consumers, value_of, graph_outputs)
            if norm is not None:
                x, out, eps, replaced = norm
                fused.update(id(n) for n in replaced)
                steps.append(_Step("LayerNorm(decomposed)", _normalize_last_dim, [x], [out],
                                   {"epsilon": eps}))  # fmt: skip
                continue
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModel(f"op {node.domain}::{node.op_type} is not supported")
        fn = OPS.get(node.op_type)
        if fn is None:
            raise UnsupportedModel(f"ONNX op {node.op_type} (node {node.name!r}) is not supported")
        attrs = _attrs(node)
        if node.op_type == "Split":
            attrs["_outputs"] = len(node.output)
        elif any(o and (o in consumers or o in graph_outputs) for o in node.output[1:]):
            # NOTE: e.g. LayerNormalization's Mean/InvStdDev or Dropout's mask: only the
            # first output is computed, so a graph reading another one cannot run
            raise UnsupportedModel(
                f"{node.op_type} node {node.name!r}: only its first output is supported"
            )
        live = [n for n in node.input if n]
        foldable = node.op_type != "Shape" and all(n in consts for n in live)
        if foldable or node.op_type == "Constant":
            value = fn([consts[n] if n else None for n in node.input], attrs, ctx)
            values = value if isinstance(value, tuple) else (value,)
            for out_name, val in zip(node.output, values, strict=False):
                consts[out_name] = val
            continue
        if node.op_type in ("MatMul", "Gemm"):
            found = _as_linear(node, attrs, consts)
            if found is not None:
                weight, bias = found
                min_rank = 1
                out = node.output[0]
                users = consumers.get(out, [])
                if (
                    bias is None
                    and out not in graph_outputs
                    and len(users) == 1
                    and users[0].op_type == "Add"
                ):
                    add = users[0]
                    other = add.input[1] if add.input[0] == out else add.input[0]
                    c = consts.get(other)
                    n_out = int(weight.shape[0])
                    if c is not None and tuple(c.shape) in {(n_out,), (1, n_out)}:
                        bias = c.reshape(-1).contiguous()
                        out = add.output[0]
                        fused.add(id(add))
                        min_rank = c.dim()
                name = node.name or f"{node.op_type}_{index}"
                if name in linears:
                    name = f"{name}_{index}"
                lin = LinearOp(name, weight, bias, min_rank)
                linears[name] = lin
                steps.append(_Step(node.op_type, None, [node.input[0]], [out], {}, linear=lin))
                continue
        steps.append(_Step(node.op_type, fn, list(node.input), list(node.output), attrs))

    # Drop constants no step reads (folded intermediates, fused weights).
    used = {n for s in steps for n in s.inputs} | graph_outputs
    consts = {k: v for k, v in consts.items() if k in used}
    # Release each intermediate after its last reader, to keep peak memory down.
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for n in s.inputs:
            if n and n not in consts:
                last_use[n] = i
    for name, i in last_use.items():
        if name not in graph_outputs:
            steps[i].release.append(name)
    return TorchGraph(steps, consts, linears, inputs, outputs, opset)
