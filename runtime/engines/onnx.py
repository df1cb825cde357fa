"""onnxruntime engines: CPU by default, CUDA when the installed build offers it, and the
opt-in TensorRT execution provider (2:4 sparse tactics, fp16) when TensorRT is present."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime.dtypes import ORT_TO_NUMPY
from runtime.engines.base import EngineDescription, EngineOptions, ModelSource, TensorSpec
from runtime.errors import ConfigError, EngineUnavailable, InferenceFailed, ModelLoadError

LOGGER = logging.getLogger(__name__)

TRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
TRT_NEEDS = (
    "it needs onnxruntime-gpu built with TensorRT, the TensorRT libraries (libnvinfer) "
    "on the library path, and a CUDA GPU"
)
TRT_PRECISIONS = ("fp16", "fp32")
TRT_CACHE_PARAM = "trt_engine_cache_path"
TRT_WORKSPACE_PARAM = "trt_max_workspace_size"

Provider = str | tuple[str, dict[str, str]]
"""One entry of InferenceSession's `providers`: a name, or (name, options as strings)."""


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def require_tensorrt() -> None:
    """Raise EngineUnavailable, saying what is missing, unless onnxruntime offers TensorRT.

    Shared by the engine and by planning, so a model forced to `engine: tensorrt` on a
    host without it fails with the reason rather than a bare "not installed".
    """
    available = available_providers()
    if TRT_PROVIDER not in available:
        raise EngineUnavailable(
            f"TensorRT engine unavailable: this onnxruntime has no {TRT_PROVIDER} "
            f"(available providers: {', '.join(available)}); {TRT_NEEDS}"
        )


def _ort_bool(value: bool) -> str:
    # NOTE: onnxruntime's Python binding accepts only 'True'/'False' for TensorRT flags
    return "True" if value else "False"


def source_digest(source: ModelSource) -> str:
    """Short content hash of a model, so each model (and version) gets its own TRT cache."""
    digest = hashlib.sha256()
    if isinstance(source, Path):
        with source.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    else:
        digest.update(source)
    return digest.hexdigest()[:16]


def tensorrt_cache_dir(options: EngineOptions, source: ModelSource) -> Path:
    """The engine cache folder: config `trt_engine_cache_path`, else one per model content
    under the temp dir (engines of different models or versions never mix)."""
    configured = options.parameters.get(TRT_CACHE_PARAM, "").strip()
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"sparse-runtime-trt-{source_digest(source)}"


def tensorrt_options(options: EngineOptions, cache_dir: Path) -> dict[str, str]:
    """TensorRT EP options: sparse tactics always allowed (TensorRT times them and
    picks them only where faster), fp16 per precision, engine cache. Pure, so unit-tested."""
    if options.precision not in TRT_PRECISIONS:
        raise ConfigError(
            f"engine tensorrt supports precision {' or '.join(TRT_PRECISIONS)}, "
            f"got {options.precision!r}"
        )
    device_id = str(options.device_id)
    trt: dict[str, str] = {
        "device_id": device_id,
        "trt_sparsity_enable": _ort_bool(True),
        "trt_fp16_enable": _ort_bool(options.precision == "fp16"),
        "trt_engine_cache_enable": _ort_bool(True),
        TRT_CACHE_PARAM: str(cache_dir),
    }
    workspace = options.parameters.get(TRT_WORKSPACE_PARAM, "").strip()
    if workspace:
        if not (workspace.isascii() and workspace.isdigit()) or int(workspace) <= 0:
            raise ConfigError(
                f"parameter {TRT_WORKSPACE_PARAM} must be a positive number of bytes, "
                f"got {workspace!r}"
            )
        trt[TRT_WORKSPACE_PARAM] = workspace
    return trt


def tensorrt_providers(trt_options: Mapping[str, str]) -> list[Provider]:
    """TensorRT first, then CUDA and CPU for the nodes TensorRT does not take."""
    device = {"device_id": trt_options["device_id"]}
    return [(TRT_PROVIDER, dict(trt_options)), (CUDA_PROVIDER, device), CPU_PROVIDER]


def _numpy_type(name: str, ort_type: str) -> np.dtype:
    """The numpy dtype of an ORT tensor type; a type the wire cannot carry here (bfloat16,
    float8, a sequence...) refuses the model at load, as Triton's onnxruntime backend does,
    instead of advertising it as FP32 and failing every request."""
    dtype = ORT_TO_NUMPY.get(ort_type)
    if dtype is None:
        raise ModelLoadError(f"model input/output '{name}' has type {ort_type}, which the "
                             "onnxruntime engine cannot serve")  # fmt: skip
    return dtype


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

    def _providers(self) -> list[Provider]:
        """The providers to ask for, in priority order (subclasses pick others)."""
        available = available_providers()
        if self._options.device.startswith("cuda"):
            if CUDA_PROVIDER not in available:
                raise EngineUnavailable(
                    "onnxruntime CUDA execution provider is not installed "
                    f"(available: {available}); install onnxruntime-gpu"
                )
            return [(CUDA_PROVIDER, {"device_id": str(self._options.device_id)}), CPU_PROVIDER]
        return [CPU_PROVIDER]

    def _check_session(self, providers: Sequence[str]) -> None:
        """Hook: reject a session that did not get the providers this engine promises."""

    def _device(self, providers: Sequence[str]) -> str:
        """Where the session runs, with the GPU's index as the torch engine reports it."""
        return f"cuda:{self._options.device_id}" if CUDA_PROVIDER in providers else "cpu"

    def _details(self, providers: Sequence[str]) -> dict[str, str]:
        return {
            "providers": ",".join(providers),
            "intra_op_threads": str(self._options.intra_op_threads),
        }

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
        requested = self._providers()
        try:
            sess = ort.InferenceSession(model, so, providers=requested)
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelLoadError(f"onnxruntime could not load the model: {exc}") from exc
        providers = sess.get_providers()
        self._check_session(providers)  # NOTE: before keeping it: a rejected session is dropped
        self._session = sess
        inputs = tuple(
            TensorSpec(i.name, _numpy_type(i.name, i.type), _dims(i.shape))
            for i in sess.get_inputs()
        )
        outputs = tuple(
            TensorSpec(o.name, _numpy_type(o.name, o.type), _dims(o.shape))
            for o in sess.get_outputs()
        )
        self._output_names = [o.name for o in outputs]
        self._description = EngineDescription(
            engine=self.name,
            device=self._device(providers),
            inputs=inputs,
            outputs=outputs,
            details=self._details(providers),
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


class TensorRtEngine(OnnxRuntimeEngine):
    """onnxruntime with the TensorRT EP: TensorRT may pick 2:4 sparse tactics
    (`trt_sparsity_enable`) and fp16. Opt-in only (`engine: tensorrt`): it never falls
    back silently, a session that lost TensorRT is refused with the reason."""

    name = "tensorrt"

    def __init__(self, source: ModelSource, options: EngineOptions) -> None:
        super().__init__(source, options)
        self._trt_options: dict[str, str] = {}

    def _providers(self) -> list[Provider]:
        require_tensorrt()
        cache_dir = tensorrt_cache_dir(self._options, self._source)
        trt = tensorrt_options(self._options, cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"TensorRT engine cache {cache_dir} is not writable: {exc}") from exc
        self._trt_options = trt
        return tensorrt_providers(trt)

    def _check_session(self, providers: Sequence[str]) -> None:
        # NOTE: onnxruntime only warns and runs on CUDA/CPU when libnvinfer fails to load
        if TRT_PROVIDER not in providers:
            raise EngineUnavailable(
                f"TensorRT engine unavailable: onnxruntime lists {TRT_PROVIDER} but the "
                f"session fell back to {', '.join(providers)} (TensorRT or CUDA libraries "
                f"failed to load, or no usable GPU); {TRT_NEEDS}"
            )

    def _device(self, providers: Sequence[str]) -> str:
        return f"cuda:{self._options.device_id}"

    def _details(self, providers: Sequence[str]) -> dict[str, str]:
        keys = ("trt_sparsity_enable", "trt_fp16_enable", TRT_CACHE_PARAM, TRT_WORKSPACE_PARAM)
        trt = {k: self._trt_options[k] for k in keys if k in self._trt_options}
        return {**super()._details(providers), **trt}
