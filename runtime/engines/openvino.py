"""OpenVINO engine: the ONNX model compiled by the OpenVINO CPU plugin.

On Intel CPUs with AVX-512 VNNI / AMX, OpenVINO runs int8 (QDQ) and bf16 models
faster than onnxruntime; elsewhere it may be slower, which is why `engine: auto`
measures instead of assuming (`runtime/cpu_dispatch.py`). The optional extra
`openvino` provides the package; it is imported in `load()` only.

Config parameters read here (all optional, config.pbtxt string parameters):
  precision: fp32 (default) | bf16 | fp16 | int8. int8 means "as quantized": the
      model's QDQ / integer ops run int8 and everything else f32.
  openvino_performance_hint: LATENCY (default) | THROUGHPUT
  openvino_cpu_pinning: true | false (default: OpenVINO's choice)
  openvino_sparse_weights_decompression_rate: 0..1, off by default. OpenVINO then
      keeps int8 weights at least this sparse compressed; it engages only on AMX for
      int8 weights stored as a plain constant (Gemm transB=1, not MatMul behind a
      Transpose) and was not faster where measured, so measure before turning it on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime.engines.base import (
    EngineDescription,
    EngineOptions,
    ModelSource,
    TensorSpec,
    bool_parameter,
)
from runtime.errors import ConfigError, EngineUnavailable, InferenceFailed, ModelLoadError

LOGGER = logging.getLogger(__name__)

# config precision -> OpenVINO INFERENCE_PRECISION_HINT
PRECISION_HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
PERFORMANCE_HINTS: tuple[str, ...] = ("LATENCY", "THROUGHPUT")
SPARSE_RATE_PARAM = "openvino_sparse_weights_decompression_rate"


def _dims(partial_shape: object) -> tuple[int, ...]:
    return tuple(d.get_length() if d.is_static else -1 for d in partial_shape)  # type: ignore[attr-defined]


# NOTE: OpenVINO's Type.to_dtype() fills a function-local static of numpy dtypes on first
# use, which needs the GIL. Two threads loading models at once deadlocked there (one inside
# the static's initializer waiting for the GIL, the other holding the GIL and waiting on the
# static's guard: py-spy showed __cxa_guard_acquire); a server hung at start-up about once in
# a hundred. A Python lock releases the GIL while it waits, so this one rules that out.
_PORT_SPEC_LOCK = threading.Lock()


def _spec(port: object) -> TensorSpec:
    with _PORT_SPEC_LOCK:
        return _spec_locked(port)


def _spec_locked(port: object) -> TensorSpec:
    name = port.get_any_name()  # type: ignore[attr-defined]
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())  # type: ignore[attr-defined]
    except (TypeError, RuntimeError):
        dtype = np.dtype(object)  # NOTE: string tensors have no numpy numeric dtype
    return TensorSpec(name, dtype, _dims(port.get_partial_shape()))  # type: ignore[attr-defined]


class OpenVinoEngine:
    """Runs an ONNX model with one OpenVINO compiled model and one infer request."""

    name = "openvino"

    def __init__(self, source: ModelSource, options: EngineOptions) -> None:
        self._source = source
        self._options = options
        params = {k.lower(): str(v) for k, v in dict(options.parameters).items()}
        self._precision = params.get("precision", options.precision or "fp32").lower()
        if self._precision not in PRECISION_HINTS:
            raise ConfigError(
                f"openvino precision must be one of {', '.join(PRECISION_HINTS)}, "
                f"got {self._precision!r}"
            )
        self._hint = params.get("openvino_performance_hint", "LATENCY").upper()
        if self._hint not in PERFORMANCE_HINTS:
            raise ConfigError(
                f"openvino_performance_hint must be one of {', '.join(PERFORMANCE_HINTS)}, "
                f"got {self._hint!r}"
            )
        self._pinning: bool | None = None
        if "openvino_cpu_pinning" in params:
            self._pinning = bool_parameter(params, "openvino_cpu_pinning", False)
        self._sparse_rate: float | None = None
        if params.get(SPARSE_RATE_PARAM, "").strip():
            try:
                rate = float(params[SPARSE_RATE_PARAM])
            except ValueError:
                rate = -1.0
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(
                    f"{SPARSE_RATE_PARAM} must be a number in [0, 1], "
                    f"got {params[SPARSE_RATE_PARAM]!r}"
                )
            self._sparse_rate = rate
        self._compiled = None
        self._request = None
        self._lock = threading.Lock()
        self._description: EngineDescription | None = None
        self._output_names: list[str] = []

    def _properties(self) -> dict[str, object]:
        props: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": PRECISION_HINTS[self._precision],
            "PERFORMANCE_HINT": self._hint,
            # NOTE: the manager calls infer one batch at a time; more streams only
            # split the cores the gRPC loop needs on small hosts.
            "NUM_STREAMS": 1,
        }
        if self._options.intra_op_threads > 0:
            props["INFERENCE_NUM_THREADS"] = self._options.intra_op_threads
        if self._pinning is not None:
            props["ENABLE_CPU_PINNING"] = self._pinning
        if self._sparse_rate is not None:
            props["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = self._sparse_rate
        return props

    def load(self) -> None:
        try:
            import openvino as ov  # NOTE: optional extra, imported only when this engine loads
        except ImportError as exc:
            raise EngineUnavailable(
                f"engine 'openvino' needs the openvino package (install the 'openvino' extra): "
                f"{exc}"
            ) from exc
        if self._options.device not in ("", "cpu"):
            raise EngineUnavailable(
                f"engine 'openvino' runs on the CPU only, not {self._options.device!r}"
            )
        core = ov.Core()
        try:
            if isinstance(self._source, Path):
                model = core.read_model(str(self._source))
            else:
                model = core.read_model(bytes(self._source))
            compiled = core.compile_model(model, "CPU", self._properties())
        except Exception as exc:  # OpenVINO raises RuntimeError and friends
            raise ModelLoadError(f"openvino could not load the model: {exc}") from exc
        inputs = tuple(_spec(p) for p in compiled.inputs)
        outputs = tuple(_spec(p) for p in compiled.outputs)
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._output_names = [o.name for o in outputs]
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        effective = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        threads = str(compiled.get_property("INFERENCE_NUM_THREADS"))
        requested = PRECISION_HINTS[self._precision]
        if self._precision != "int8" and requested != effective:
            LOGGER.warning(
                "openvino: precision %s requested but the CPU plugin runs %s on this host",
                self._precision,
                effective,
            )
        details = {
            "openvino_version": ov.get_version().split("-")[0],
            "precision": self._precision + (" (as quantized)" if self._precision == "int8" else ""),
            "inference_precision": effective,
            "threads": threads,
            "performance_hint": self._hint,
            "sparse_weights_decompression_rate": (
                "off" if self._sparse_rate is None else f"{self._sparse_rate:g}"
            ),
        }
        self._description = EngineDescription(
            engine=self.name, device="cpu", inputs=inputs, outputs=outputs, details=details
        )

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if self._request is None or self._compiled is None:
            raise InferenceFailed("engine is not loaded")
        names = list(outputs) if outputs else self._output_names
        feed = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        try:
            with self._lock:
                results = self._request.infer(feed)
                out = {n: np.asarray(results[self._compiled.output(n)]) for n in names}
        except Exception as exc:
            raise InferenceFailed(f"openvino inference failed: {exc}") from exc
        return out

    def unload(self) -> None:
        self._request = None
        self._compiled = None

    def describe(self) -> EngineDescription:
        if self._description is None:
            raise InferenceFailed("engine is not loaded")
        return self._description
