"""Choose the engine and device for a model from its sparsity profile and the host.

`decide` is a pure function of (profile, device capabilities, installed engines,
mode) so the whole policy is unit-tested on fake capability sets; only
`probe_device` and `installed_engines` look at the host.

Policy: 2:4 sparse tensor cores exist from compute capability 8.0 (Ampere) on.
Public measurements show the win is shape- and batch-dependent (often < 1.3x, and
slower at small batches), so `auto` hands capable hosts to the torch_sparse
engine, which measures each layer at load and keeps a layer dense where sparse
loses; everything else resolves to dense onnxruntime with the reason spelled out.
The TensorRT engine is never chosen here: a model's config has to ask for it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from runtime.errors import ConfigError, EngineUnavailable
from runtime.sparsity.analysis import ModelProfile

LOGGER = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("auto", "on", "off")
MIN_SPARSE_CC: tuple[int, int] = (8, 0)
ENGINE_ORT = "onnxruntime"
ENGINE_ORT_CUDA = "onnxruntime-cuda"
ENGINE_TORCH_SPARSE = "torch_sparse"
ENGINE_TENSORRT = "tensorrt"  # opt-in only: `decide` never picks it, a config must force it


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int

    @property
    def sm(self) -> str:
        """Architecture tag such as 'sm_90'."""
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"


@dataclass(frozen=True)
class DeviceCaps:
    """The host's GPUs (empty on CPU-only hosts)."""

    gpus: tuple[GpuInfo, ...] = ()


@dataclass(frozen=True)
class Decision:
    """Where a model runs, which layers run sparse, and why (shown to operators)."""

    engine: str
    device: str
    sparse_layers: tuple[str, ...]
    dense_layers: tuple[str, ...]
    pattern: str
    reason: str


def probe_device() -> DeviceCaps:
    """Read GPUs through NVML; an empty DeviceCaps on CPU hosts or on any NVML error."""
    try:
        import pynvml  # NOTE: lazy, so CPU hosts without the driver never load libnvidia-ml
    except ImportError:
        return DeviceCaps()
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure means "no usable GPU"
        LOGGER.debug("NVML unavailable; assuming a CPU-only host", exc_info=True)
        return DeviceCaps()
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):
                name = name.decode()
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(GpuInfo(index, str(name), (int(major), int(minor)), int(memory)))
        return DeviceCaps(tuple(gpus))
    except Exception:  # noqa: BLE001
        LOGGER.warning("NVML query failed; assuming a CPU-only host", exc_info=True)
        return DeviceCaps()
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            LOGGER.debug("nvmlShutdown failed", exc_info=True)


def installed_engines() -> frozenset[str]:
    """Engines usable on this host, found without importing torch."""
    engines = {ENGINE_ORT}
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" in providers:
            engines.add(ENGINE_ORT_CUDA)
        if "TensorrtExecutionProvider" in providers:
            engines.add(ENGINE_TENSORRT)
    except ImportError:  # pragma: no cover - core dependency
        pass
    try:
        has_engine = importlib.util.find_spec("runtime.engines.torch_sparse") is not None
    except ModuleNotFoundError:  # pragma: no cover
        has_engine = False
    if has_engine and importlib.util.find_spec("torch") is not None:
        engines.add(ENGINE_TORCH_SPARSE)
    return frozenset(engines)


def _dense(
    profile: ModelProfile, caps: DeviceCaps, engines: frozenset[str], reason: str
) -> Decision:
    device = "cpu"
    if ENGINE_ORT_CUDA in engines and caps.gpus:
        device = f"cuda:{caps.gpus[0].index}"
        reason = f"{reason}; onnxruntime CUDA"
    return Decision(
        engine=ENGINE_ORT,
        device=device,
        sparse_layers=(),
        dense_layers=tuple(layer.weight_name for layer in profile.gemm_layers),
        pattern=profile.pattern,
        reason=reason,
    )


def decide(
    profile: ModelProfile, caps: DeviceCaps, engines: frozenset[str], mode: str = "auto"
) -> Decision:
    """Pick engine, device and sparse layers for one model.

    Args:
        profile: the model's sparsity profile (`analyze_model`).
        caps: the host's GPUs (`probe_device`, or a fake in tests).
        engines: installed engine names (`installed_engines`).
        mode: the model's `sparsity` config parameter: auto | on | off.

    Returns:
        The decision, with a reason an operator can read.

    Raises:
        ConfigError: `mode` is not auto, on or off.
        EngineUnavailable: `mode` is on but this host or model cannot run 2:4 sparse.
    """
    if mode not in MODES:
        raise ConfigError(f"sparsity parameter must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return _dense(profile, caps, engines, "dense: sparsity=off")
    gemm = profile.gemm_layers
    sparse = profile.sparse_24_layers
    problem = ""
    capable = [g for g in caps.gpus if g.compute_capability >= MIN_SPARSE_CC]
    if not sparse:
        problem = f"no eligible 2:4 GEMM layers (pattern {profile.pattern})"
    elif not capable:
        problem = "no GPU with compute capability >= 8.0"
        if caps.gpus:
            seen = ", ".join(f"{g.index}: {g.name} {g.sm}" for g in caps.gpus)
            problem = f"{problem} (found {seen})"
    elif ENGINE_TORCH_SPARSE not in engines:
        problem = "sparse engine torch_sparse not installed (install the 'gpu' extra)"
    if problem:
        if mode == "on":
            raise EngineUnavailable(f"sparsity=on but {problem}")
        return _dense(profile, caps, engines, f"dense fallback: {problem}")
    gpu = capable[0]
    sparse_names = tuple(layer.weight_name for layer in sparse)
    dense_names = tuple(
        layer.weight_name for layer in gemm if layer.weight_name not in sparse_names
    )
    return Decision(
        engine=ENGINE_TORCH_SPARSE,
        device=f"cuda:{gpu.index}",
        sparse_layers=sparse_names,
        dense_layers=dense_names,
        pattern=profile.pattern,
        reason=f"sparse: {len(sparse)}/{len(gemm)} GEMM layers 2:4, {gpu.sm}",
    )
