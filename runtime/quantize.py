"""int8 post-training quantization of ONNX models (onnxruntime.quantization).

On CPU hosts 2:4 sparsity buys no speed; precision does. Two modes:

* dynamic: int8 weights, activations quantized per call (MatMulInteger /
  ConvInteger). No calibration data; usually onnxruntime's fastest CPU int8 form.
* static: QDQ (QuantizeLinear/DequantizeLinear pairs around each GEMM) with
  activation ranges calibrated on inputs; the form OpenVINO turns into int8 kernels.

Weights are quantized symmetrically (zero point 0), so a weight that is zero stays
zero: a 2:4-pruned model keeps its 2:4 pattern in the int8 weights, which `inspect`
reports. Every run ends with the same deviation report as `prune` (max abs,
relative L2, cosine of the outputs against the fp32 model).
"""

from __future__ import annotations

import fnmatch
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from runtime.errors import ConfigError, ModelLoadError
from runtime.sparsity.analysis import analyze_model
from runtime.sparsity.inputs import Feeds, iter_batches, num_samples
from runtime.sparsity.prune import Deviation, deviation, float_outputs

LOGGER = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("dynamic", "static")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
# float GEMMs onnxruntime's quantizer turns into int8 compute
GEMM_OPS: frozenset[str] = frozenset({"MatMul", "Gemm", "Conv"})
# ops that mark a model as already quantized
QUANTIZED_OPS: frozenset[str] = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat", "QGemm",
})
FLOAT_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}
# domains onnxruntime's CPU provider runs besides the standard one
ORT_DOMAINS: frozenset[str] = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


class QuantizeError(ConfigError):
    """The model or the request cannot be quantized (said why, before any work)."""


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize; validated before any work starts."""

    mode: str = "dynamic"
    per_channel: bool = True
    calibrate_method: str = "minmax"
    exclude: tuple[str, ...] = ()
    batch_size: int = 16
    progress: bool = True

    def validate(self) -> None:
        """Raise QuantizeError on an unknown mode/method or a bad batch size."""
        if self.mode not in MODES:
            raise QuantizeError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.calibrate_method not in CALIBRATION_METHODS:
            raise QuantizeError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got {self.calibrate_method!r}"
            )
        if self.batch_size < 1:
            raise QuantizeError(f"batch size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_model` did, for printing and JSON."""

    mode: str
    per_channel: bool
    quantized: Mapping[str, int]
    left_float: tuple[str, ...]
    deviation: Deviation
    bytes_before: int
    bytes_after: int
    sparse24_before: int
    sparse24_after: int
    int8_24_layers: tuple[str, ...]
    seconds: float
    calibration_samples: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "quantized": dict(self.quantized),
            "left_float": list(self.left_float),
            "deviation": self.deviation.as_dict(),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "sparse24_layers_before": self.sparse24_before,
            "sparse24_layers_after": self.sparse24_after,
            "int8_24_layers": list(self.int8_24_layers),
            "seconds": self.seconds,
            "calibration_samples": self.calibration_samples,
            "notes": list(self.notes),
        }


# ---- checks ------------------------------------------------------------------


def _weight_initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """GEMM nodes (MatMul, Gemm, Conv) whose weight operand is an initializer."""
    inits = _weight_initializers(model)
    return [
        node for node in model.graph.node
        if node.op_type in GEMM_OPS and len(node.input) > 1 and node.input[1] in inits
    ]


def check_model(model: onnx.ModelProto, config: QuantizeConfig) -> list[onnx.NodeProto]:
    """Fail early, naming the problem: already quantized, unknown ops, non-fp32 weights,
    nothing to quantize, or --exclude globs that match nothing.

    Returns:
        The GEMM nodes that will be quantized.
    """
    config.validate()
    graph = model.graph
    if not graph.node:
        raise QuantizeError("the model has no nodes")
    already = sorted({n.op_type for n in graph.node if n.op_type in QUANTIZED_OPS})
    if already:
        raise QuantizeError(
            f"the model is already quantized (it has {', '.join(already)} nodes); "
            "quantize the fp32 model instead"
        )
    for node in graph.node:
        where = node.name or (node.output[0] if node.output else "?")
        if node.domain not in ORT_DOMAINS:
            raise QuantizeError(
                f"unsupported op {node.domain}::{node.op_type} (node {where!r}): "
                "onnxruntime cannot run it, so it cannot be calibrated or checked"
            )
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise QuantizeError(
                f"unsupported op {node.op_type} (node {where!r}): not an ONNX operator"
            )
        if node.op_type in ("Loop", "If", "Scan"):
            raise QuantizeError(
                f"unsupported op {node.op_type} (node {where!r}): "
                "control flow subgraphs are not quantized"
            )
    nodes = quantizable_nodes(model)
    inits = _weight_initializers(model)
    for node in nodes:
        w = inits[node.input[1]]
        kind = FLOAT_TYPES.get(w.data_type)
        if kind != "float32":
            raise QuantizeError(
                f"weight {w.name!r} of {node.op_type} {node.name or node.output[0]!r} is "
                f"{kind or onnx.TensorProto.DataType.Name(w.data_type)}; int8 quantization "
                "needs fp32 weights (convert the model to fp32 first)"
            )
    for pattern in config.exclude:
        if not any(fnmatch.fnmatchcase(n.name, pattern) for n in nodes):
            raise QuantizeError(
                f"--exclude {pattern!r} matches no GEMM node (names: "
                f"{', '.join(n.name or '?' for n in nodes[:8])}{', ...' if len(nodes) > 8 else ''})"
            )
    if not nodes:
        ops = ", ".join(sorted(Counter(n.op_type for n in graph.node)))
        raise QuantizeError(
            f"nothing to quantize: no MatMul/Gemm/Conv with a constant weight (ops: {ops})"
        )
    return nodes


# ---- onnxruntime helpers -----------------------------------------------------


def _session(model: onnx.ModelProto | bytes, what: str):  # -> ort.InferenceSession
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise ModelLoadError(f"onnxruntime cannot run the {what} model: {exc}") from exc


def run_outputs(session, feeds: Feeds, batch_size: int,
                on_batch: Callable[[], None] | None = None) -> np.ndarray:
    """Float outputs of `session` over `feeds`, flattened to [samples, F]."""
    names = [o.name for o in session.get_outputs()]
    chunks = []
    for batch in iter_batches(feeds, batch_size):
        try:
            outs = dict(zip(names, session.run(names, batch), strict=True))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"onnxruntime failed on the inputs: {exc}") from exc
        chunks.append(float_outputs(outs, names))
        if on_batch:
            on_batch()
    return np.concatenate(chunks, axis=0)


class _Reader:
    """onnxruntime CalibrationDataReader over fixed batches, ticking a progress bar."""

    def __init__(self, feeds: Feeds, batch_size: int, bar: tqdm) -> None:
        self._batches = list(iter_batches(feeds, batch_size))
        self._it: Iterator[Feeds] = iter(self._batches)
        self._bar = bar

    def get_next(self) -> Feeds | None:
        batch = next(self._it, None)
        if batch is not None:
            self._bar.update(1)
        return batch

    def rewind(self) -> None:
        self._it = iter(self._batches)


class _QuietPreprocessHint(logging.Filter):
    """onnxruntime logs a pre-processing hint on the root logger on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


# ---- the entry point ---------------------------------------------------------


def quantize_model(
    model: onnx.ModelProto,
    config: QuantizeConfig,
    calibration: Feeds | None,
    evaluation: Feeds,
) -> tuple[onnx.ModelProto, QuantizeReport]:
    """Quantize `model` to int8 and measure the output deviation on `evaluation`.

    Args:
        model: fp32 ONNX model (data loaded in memory).
        config: mode and options.
        calibration: inputs for static activation ranges (static only; required).
        evaluation: inputs for the deviation report.

    Raises:
        QuantizeError: the model or options cannot be quantized (see `check_model`).
        ModelLoadError: onnxruntime cannot run the model on the inputs.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    start = time.perf_counter()
    nodes = check_model(model, config)
    if config.mode == "static" and calibration is None:
        raise QuantizeError("static quantization needs calibration inputs")
    exclude = [
        n.name for n in nodes if any(fnmatch.fnmatchcase(n.name, p) for p in config.exclude)
    ]
    original = model.SerializeToString()
    ref_session = _session(original, "fp32")
    eval_batches = -(-num_samples(evaluation) // config.batch_size)
    calib_batches = (
        -(-num_samples(calibration) // config.batch_size) if config.mode == "static"
        and calibration is not None else 0
    )
    bar = tqdm(total=calib_batches + 1 + 2 * eval_batches, desc=f"quantize ({config.mode})",
               unit="step", disable=not config.progress, file=sys.stderr, leave=False)
    hint_filter = _QuietPreprocessHint()
    root = logging.getLogger()
    root.addFilter(hint_filter)
    for handler in root.handlers:
        handler.addFilter(hint_filter)
    try:
        ref = run_outputs(ref_session, evaluation, config.batch_size, lambda: bar.update(1))
        del ref_session
        with tempfile.TemporaryDirectory(prefix="sparse-runtime-quantize-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            src.write_bytes(original)
            # NOTE: only GEMMs with a constant weight: that is where int8 buys speed, and
            # quantizing activation x activation MatMuls, Softmax or LayerNorm inputs costs
            # transformers most of their accuracy (MiniLM cosine 0.24 vs 0.99 here).
            common = {
                "op_types_to_quantize": sorted(GEMM_OPS),
                "per_channel": config.per_channel,
                "weight_type": QuantType.QInt8,
                "nodes_to_exclude": exclude,
            }
            try:
                if config.mode == "dynamic":
                    quantize_dynamic(src, dst, extra_options={
                        "WeightSymmetric": True, "MatMulConstBOnly": True,
                    }, **common)
                else:
                    assert calibration is not None
                    method = {
                        "minmax": CalibrationMethod.MinMax,
                        "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile,
                    }[config.calibrate_method]
                    quantize_static(
                        src, dst, _Reader(calibration, config.batch_size, bar),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8,
                        calibrate_method=method,
                        extra_options={
                            "WeightSymmetric": True,
                            "MatMulConstBOnly": True,
                            # NOTE: per output column for MatMul's [K, N] weight
                            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                        },
                        **common,
                    )
            except QuantizeError:
                raise
            except Exception as exc:  # noqa: BLE001 - the quantizer raises many types
                raise QuantizeError(f"onnxruntime quantization failed: {exc}") from exc
            bar.update(1)
            quantized_bytes = dst.read_bytes()
        got = run_outputs(_session(quantized_bytes, "quantized"), evaluation, config.batch_size,
                          lambda: bar.update(1))
    finally:
        bar.close()
        root.removeFilter(hint_filter)
        for handler in root.handlers:
            handler.removeFilter(hint_filter)
    quantized = onnx.load_model_from_string(quantized_bytes)
    counts = Counter(n.op_type for n in quantized.graph.node
                     if n.op_type in ("MatMulInteger", "ConvInteger", "DequantizeLinear"))
    left = _left_float(quantized)
    if len(left) == len(nodes) and not exclude:
        raise QuantizeError(
            "onnxruntime quantized none of the GEMM nodes "
            f"({', '.join(n.name or n.op_type for n in nodes[:8])}); nothing to write"
        )
    before, after = analyze_model(model), analyze_model(quantized)
    int8_24 = tuple(layer.weight_name for layer in after.layers
                    if layer.dtype == "int8" and layer.is_24)
    notes = []
    if left:
        notes.append(f"left in fp32: {', '.join(left)}")
    if len(before.sparse_24_layers) > len(int8_24):
        notes.append(
            f"2:4 pattern lost: {len(before.sparse_24_layers)} fp32 layers were 2:4, "
            f"{len(int8_24)} int8 layers are"
        )
    report = QuantizeReport(
        mode=config.mode,
        per_channel=config.per_channel,
        quantized={"gemm_nodes": len(nodes) - len(left), **counts},
        left_float=tuple(left),
        deviation=deviation(ref, got),
        bytes_before=len(original),
        bytes_after=len(quantized_bytes),
        sparse24_before=len(before.sparse_24_layers),
        sparse24_after=len(int8_24),
        int8_24_layers=int8_24,
        seconds=time.perf_counter() - start,
        calibration_samples=num_samples(calibration) if calibration is not None else 0,
        notes=tuple(notes),
    )
    return quantized, report


def _left_float(model: onnx.ModelProto) -> list[str]:
    """GEMM nodes still fed a float weight initializer (not quantized)."""
    inits = _weight_initializers(model)
    return [
        n.name or n.output[0] for n in model.graph.node
        if n.op_type in GEMM_OPS and len(n.input) > 1 and n.input[1] in inits
        and inits[n.input[1]].data_type in FLOAT_TYPES
    ]


def format_report(report: QuantizeReport) -> str:
    """Human-readable summary with the deviation line in prune's wording."""
    d = report.deviation
    q = report.quantized
    ops = ", ".join(f"{k} {v}" for k, v in q.items() if k != "gemm_nodes")
    lines = [
        f"mode {report.mode} ({'per-channel' if report.per_channel else 'per-tensor'} int8 "
        f"weights): {q.get('gemm_nodes', 0)} GEMM nodes quantized ({ops}) in "
        f"{report.seconds:.1f} s"
        + (f", calibrated on {report.calibration_samples} samples"
           if report.calibration_samples else ""),
        f"size: {report.bytes_before / 2**20:.2f} MiB -> {report.bytes_after / 2**20:.2f} MiB",
        f"2:4 layers: {report.sparse24_before} before (fp32), {report.sparse24_after} after (int8)",
        f"output deviation: max abs {d.max_abs:.5g}, relative L2 {d.rel_l2:.5f}, "
        f"cosine mean {d.cosine:.5f} min {d.min_cosine:.5f}",
    ]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def quantize_for_samples(model: onnx.ModelProto, calibration: Feeds,
                         mode: str = "static") -> onnx.ModelProto:
    """Quantize a bundled sample deterministically and without a progress bar."""
    config = QuantizeConfig(mode=mode, progress=False)
    quantized, _ = quantize_model(model, config, calibration if mode == "static" else None,
                                  calibration)
    return quantized

