"""onnxruntime engine: CPU by default, CUDA when the installed build offers it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime.dtypes import ORT_TO_NUMPY
from runtime.engines.base import EngineDescription, EngineOptions, ModelSource, TensorSpec
from runtime.errors import EngineUnavailable, InferenceFailed, ModelLoadError

LOGGER = logging.getLogger(__name__)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _dims(shape: Sequence[object]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _as_ort_strings(array: np.ndarray) -> np.ndarray:
    """Wire BYTES arrive as bytes objects; onnxruntime string tensors want str."""
    flat = [
        v.decode("utf-8", errors="surrogateescape") if isinstance(v, bytes) else str(v)
        for v in array.reshape(-1)
    ]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)


class OnnxRuntimeEngine:
    """Runs an ONNX model with one onnxruntime InferenceSession."""

    name = "onnxruntime"

    def __init__(self, source: ModelSource, options: EngineOptions) -> None:
        self._source = source
        self._options = options
        self._session = None
        self._description: EngineDescription | None = None
        self._output_names: list[str] = []

    def _providers(self) -> list[str | tuple[str, dict[str, str]]]:
        available = available_providers()
        if self._options.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise EngineUnavailable(
                    "onnxruntime CUDA execution provider is not installed "
                    f"(available: {available}); install onnxruntime-gpu"
                )
            return [
                ("CUDAExecutionProvider", {"device_id": str(self._options.device_id)}),
                "CPUExecutionProvider",
            ]
        return ["CPUExecutionProvider"]

    def load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self._options.intra_op_threads
        so.inter_op_num_threads = self._options.inter_op_threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # NOTE: spinning worker threads burn the cores the gRPC loop needs on small hosts.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = str(self._source) if isinstance(self._source, Path) else self._source
        try:
            self._session = ort.InferenceSession(model, so, providers=self._providers())
        except EngineUnavailable:
            raise
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"onnxruntime could not load the model: {exc}") from exc
        sess = self._session
        inputs = tuple(
            TensorSpec(i.name, ORT_TO_NUMPY.get(i.type, np.dtype(np.float32)), _dims(i.shape))
            for i in sess.get_inputs()
        )
        outputs = tuple(
            TensorSpec(o.name, ORT_TO_NUMPY.get(o.type, np.dtype(np.float32)), _dims(o.shape))
            for o in sess.get_outputs()
        )
        self._output_names = [o.name for o in outputs]
        providers = sess.get_providers()
        device = "cuda" if "CUDAExecutionProvider" in providers else "cpu"
        self._description = EngineDescription(
            engine=self.name,
            device=device,
            inputs=inputs,
            outputs=outputs,
            details={
                "providers": ",".join(providers),
                "intra_op_threads": str(self._options.intra_op_threads),
            },
        )

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if self._session is None:
            raise InferenceFailed("engine is not loaded")
        names = list(outputs) if outputs else self._output_names
        feed = {k: _as_ort_strings(v) if v.dtype == object else v for k, v in inputs.items()}
        try:
            results = self._session.run(names, feed)
        except Exception as exc:
            raise InferenceFailed(f"onnxruntime inference failed: {exc}") from exc
        return dict(zip(names, results, strict=True))

    def unload(self) -> None:
        self._session = None

    def describe(self) -> EngineDescription:
        if self._description is None:
            raise InferenceFailed("engine is not loaded")
        return self._description
