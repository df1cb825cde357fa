"""The engine protocol: the seam between serving and every backend.

Every backend (onnxruntime CPU/CUDA, torch + cuSPARSELt, OpenVINO, ...) implements
`Engine`. Engines are synchronous and thread-safe for one caller at a time; the
model manager runs them off the event loop. Dispatch (`runtime/dispatch.py`)
only picks an engine name; `create_engine` builds it from the registry, importing
heavy modules lazily so a CPU install never touches torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.errors import ConfigError, EngineUnavailable


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the engine sees it (-1 marks a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class EngineOptions:
    """Knobs an engine may honour; unknown ones are ignored by engines that lack them."""

    device: str = "cpu"
    device_id: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    precision: str = "fp32"
    batch_buckets: tuple[int, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineDescription:
    """What an engine reports about itself for config, metadata, logs and metrics."""

    engine: str
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    details: Mapping[str, str] = field(default_factory=dict)


def device_parts(device: str) -> tuple[str, int]:
    """Split "cuda:1" into ("cuda", 1); "cpu" or "cuda" give index 0."""
    kind, _, index = device.partition(":")
    return kind, int(index) if index else 0


def bool_parameter(parameters: Mapping[str, str], key: str, default: bool) -> bool:
    """A true/false config parameter; anything else is a clear ConfigError."""
    value = parameters.get(key, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"parameter {key} must be true or false, got {parameters[key]!r}")


ModelSource = Path | bytes
"""An ONNX model as a file path or as serialized bytes (e.g. unpacked from .sparse)."""


@runtime_checkable
class Engine(Protocol):
    """Load once, infer many times on batches of named numpy arrays, unload."""

    def load(self) -> None: ...

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]: ...

    def unload(self) -> None: ...

    def describe(self) -> EngineDescription: ...


# name -> "module:Class"; modules are imported only when that engine is built.
ENGINE_REGISTRY: dict[str, str] = {
    "onnxruntime": "runtime.engines.onnx:OnnxRuntimeEngine",
    "tensorrt": "runtime.engines.onnx:TensorRtEngine",  # opt-in only (`engine: tensorrt`)
    "torch_sparse": "runtime.engines.torch_sparse:TorchSparseEngine",
    "openvino": "runtime.engines.openvino:OpenVinoEngine",
}


def create_engine(name: str, source: ModelSource, options: EngineOptions) -> Engine:
    """Build (not load) the engine registered under `name`."""
    target = ENGINE_REGISTRY.get(name)
    if target is None:
        raise EngineUnavailable(f"unknown engine '{name}'; known: {sorted(ENGINE_REGISTRY)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(f"engine '{name}' is not installed: {exc}") from exc
    return getattr(module, class_name)(source, options)
