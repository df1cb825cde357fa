"""Turn a model version on disk into a ServedModel: read, analyse, dispatch, load.

Blocking (file I/O, sparsity analysis, engine start-up): the manager runs it in
a worker thread. The dispatch decision and its reason are written into the
model's config parameters, so ModelConfig shows where and why it runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from tritonclient.grpc import model_config_pb2 as mc

from runtime import cpu_dispatch, cpufeatures, dispatch
from runtime.engines.base import (
    Engine,
    EngineOptions,
    ModelSource,
    create_engine,
    device_parts,
)
from runtime.engines.onnx import require_tensorrt
from runtime.errors import ConfigError, ModelLoadError
from runtime.fileio import read_model
from runtime.model import ServedModel
from runtime.repository import repository
from runtime.repository.config import complete_config, parameter, set_parameter
from runtime.settings import Settings
from runtime.sparsity import analysis
from runtime.sparsity.inputs import generate_inputs, take

LOGGER = logging.getLogger(__name__)
_CPU_TIMING_LOCK = threading.Lock()

# config parameters this runtime reads (all optional)
ENGINE_PARAM = "engine"  # auto | onnxruntime | openvino | torch_sparse | tensorrt
SPARSITY_PARAM = "sparsity"  # auto | on | off
CPU_BUDGET_PARAM = "cpu_dispatch_budget_s"  # seconds for the measured CPU choice (default 3)
GPU_ENGINES = (dispatch.ENGINE_TORCH_SPARSE, dispatch.ENGINE_TENSORRT)  # need a GPU, fp16 default


def read_source(path: Path) -> tuple[ModelSource, onnx.ModelProto, str]:
    """(engine source, parsed graph for analysis, stored form) of a model file."""
    data, graph, stored = read_model(path)
    # NOTE: onnxruntime maps a plain file itself; a packed one is handed over as bytes
    return (data if stored == "packed" else path), graph, stored


def batch_buckets(config: mc.ModelConfig | None) -> tuple[int, ...]:
    if config is None or config.max_batch_size <= 0:
        return (1,)
    preferred = tuple(sorted(set(config.dynamic_batching.preferred_batch_size)))
    top = config.max_batch_size
    powers = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < top)
    return tuple(sorted(set(powers + preferred + (top,))))


def _int_parameter(params: dict[str, str], key: str, default: int) -> int:
    """A non-negative integer config parameter, or a ConfigError that names it."""
    raw = params.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"parameter '{key}' must be a non-negative integer, got {raw!r}")
    return value


def build_model(
    name: str,
    model_dir: Path,
    version: int,
    config: mc.ModelConfig | None,
    settings: Settings,
) -> ServedModel:
    """Load one version; raises ModelLoadError (or a subclass) with a clear reason."""
    if config is not None:  # NOTE: versions load concurrently; each gets its own copy
        config = _copy(config)
    filename = config.default_model_filename if config is not None else ""
    path = repository.model_file(model_dir / str(version), filename)
    if settings.trusted_keys is not None:
        from runtime.signing import verify_for_serving

        signer = verify_for_serving(path, settings.trusted_keys)
        LOGGER.info("%s version %d: %s signed by trusted key %s", name, version, path.name, signer)
    source, graph, stored_form = read_source(path)
    profile = analysis.analyze_model(graph)
    io_stub = _io_stub(graph)
    del graph
    mode = parameter(config, SPARSITY_PARAM, "auto") if config is not None else "auto"
    forced = parameter(config, ENGINE_PARAM, "auto") if config is not None else "auto"
    caps = dispatch.probe_device()
    cpu_engines = cpu_dispatch.installed_cpu_engines()
    engines = dispatch.installed_engines() | frozenset(cpu_engines)
    decision = dispatch.decide(profile, caps, engines, mode)
    engine_name, device = decision.engine, decision.device
    reason = decision.reason
    if forced not in ("", "auto"):
        if forced == dispatch.ENGINE_TENSORRT:
            require_tensorrt()  # NOTE: says what is missing, not just "not installed"
        if forced not in engines:
            raise ConfigError(
                f"engine '{forced}' is not installed here; installed: {sorted(engines)}"
            )
        if forced != engine_name:
            reason = f"engine forced by config to {forced} ({reason})"
            engine_name = forced
            if forced in cpu_dispatch.CPU_ENGINES:
                device = "cpu"
            elif forced in GPU_ENGINES and not device.startswith("cuda"):
                if not caps.gpus:
                    raise ConfigError(f"engine '{forced}' needs a CUDA GPU; none found")
                device = f"cuda:{caps.gpus[0].index}"
    params = {k: v.string_value for k, v in (config.parameters.items() if config else [])}
    kind, device_id = device_parts(device)
    options = EngineOptions(
        device=kind,
        device_id=device_id,
        intra_op_threads=_int_parameter(params, "intra_op_thread_count", settings.intra_op_threads),
        inter_op_threads=_int_parameter(params, "inter_op_thread_count", 0),
        precision=params.get("precision", "fp16" if engine_name in GPU_ENGINES else "fp32"),
        batch_buckets=batch_buckets(config),
        parameters=params,
    )
    try:
        budget = float(params.get(CPU_BUDGET_PARAM, cpu_dispatch.DEFAULT_BUDGET_S))
    except ValueError as exc:
        raise ConfigError(f"{CPU_BUDGET_PARAM} must be a number of seconds: {exc}") from exc
    if not math.isfinite(budget) or budget < 0:
        raise ConfigError(f"{CPU_BUDGET_PARAM} must be a finite number of seconds >= 0")
    timings = ""
    if forced in ("", "auto") and device == "cpu" and engine_name in cpu_engines:
        engine, cpu_reason, timings = _measured_cpu_engine(
            name, source, options, cpu_engines, lambda: _timing_feeds(io_stub, config), budget
        )
        reason = f"{reason}; {cpu_reason}"
    elif engine_name == dispatch.ENGINE_TORCH_SPARSE and forced in ("", "auto") and mode != "on":
        try:
            engine = create_engine(engine_name, source, options)
            engine.load()
        except ConfigError:
            raise  # a mistake in the config is the operator's to fix, not to hide
        except ModelLoadError as exc:
            # NOTE: e.g. an op the ONNX->torch interpreter lacks: the model still serves, dense
            decision = dispatch.decide(profile, caps, engines, "off")
            engine_name, device = decision.engine, decision.device
            where = "onnxruntime CUDA" if device.startswith("cuda") else "onnxruntime CPU"
            reason = (
                f"dense fallback: {dispatch.ENGINE_TORCH_SPARSE} could not load the model "
                f"({cpu_dispatch.shorten(str(exc))}); {where}"
            )
            LOGGER.warning("%s: %s", name, reason)
            kind, device_id = device_parts(device)
            options = dataclasses.replace(
                options, device=kind, device_id=device_id, precision="fp32"
            )
            engine = create_engine(engine_name, source, options)
            engine.load()
    else:
        engine = create_engine(engine_name, source, options)
        engine.load()
    try:
        return _served(name, version, config, engine, reason, profile, decision, path,
                       stored_form, timings, model_dir)  # fmt: skip
    except BaseException:
        engine.unload()
        raise


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return copy


def _served(
    name: str,
    version: int,
    config: mc.ModelConfig | None,
    engine: Engine,
    reason: str,
    profile: analysis.ModelProfile,
    decision: dispatch.Decision,
    path: Path,
    stored_form: str,
    timings: str,
    model_dir: Path,
) -> ServedModel:
    """Complete the config from the loaded engine and record where and why it runs."""
    description = engine.describe()
    config = complete_config(config, name, description)
    info = {
        "engine": description.engine,
        "device": description.device,
        "dispatch_reason": reason,
        "sparsity_pattern": profile.pattern,
        "sparse_layers": str(len(decision.sparse_layers)),
        "dense_layers": str(len(decision.dense_layers)),
        "sparsity_ratio": f"{profile.sparsity:.4f}",
        "weight_bytes_dense": str(profile.dense_bytes),
        "weight_bytes_stored": str(
            path.stat().st_size if stored_form == "packed" else profile.stored_bytes
        ),
        "weight_bytes_compressed_24": str(profile.compressed_24_bytes),
        "stored_form": stored_form,
    }
    if description.device == "cpu":
        info["cpu_features"] = cpufeatures.detect().summary()
    if timings:
        info["cpu_engine_timings"] = timings
    for key, value in description.details.items():
        info[f"engine_{key}"] = value
    for key, value in info.items():
        set_parameter(config, f"sparse_runtime.{key}", value)
    return ServedModel(
        name=name,
        version=version,
        config=config,
        engine=engine,
        description=description,
        info=info,
        labels=_labels(config, model_dir),
    )


MAX_LABEL_FILE_BYTES = 64 * 2**20


def _labels(config: mc.ModelConfig, model_dir: Path) -> dict[str, list[str]]:
    """Each output's class labels, one per line of its `label_filename` (in the model's
    folder, as Triton reads it), for classification requests."""
    labels = {}
    for output in config.output:
        if not output.label_filename:
            continue
        path = model_dir / output.label_filename
        # NOTE: a config (even one sent with RepositoryModelLoad) must not read other files
        if not repository.is_inside_name(output.label_filename) or not path.is_file():
            raise ConfigError(
                f"output '{output.name}': label_filename '{output.label_filename}' is not a "
                "file in the model's folder"
            )
        if path.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise ConfigError(f"output '{output.name}': label file {path} is over "
                              f"{MAX_LABEL_FILE_BYTES} bytes")  # fmt: skip
        try:
            labels[output.name] = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"output '{output.name}': cannot read label_filename {path}: "
                              f"{exc}") from exc  # fmt: skip
    return labels


def _io_stub(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The graph's inputs and initializer names only: enough to generate inputs later
    without keeping the weights in memory."""
    stub = onnx.ModelProto()
    stub.graph.input.extend(graph.graph.input)
    stub.graph.initializer.extend(onnx.TensorProto(name=i.name) for i in graph.graph.initializer)
    return stub


def _timing_feeds(
    graph: onnx.ModelProto, config: mc.ModelConfig | None
) -> tuple[dict[str, np.ndarray] | None, str]:
    """Synthetic inputs for the measured CPU choice, or None and why there are none."""
    batched = config is not None and config.max_batch_size > 0
    samples = max(batch_buckets(config)) if batched else 1
    try:
        return generate_inputs(graph, samples=samples), ""
    except (ModelLoadError, ValueError) as exc:  # NOTE: e.g. string inputs
        return None, str(exc)


def _measured_cpu_engine(
    name: str,
    source: ModelSource,
    options: EngineOptions,
    candidates: tuple[str, ...],
    make_feeds: Callable[[], tuple[dict[str, np.ndarray] | None, str]],
    budget: float,
) -> tuple[Engine, str, str]:
    """Load every installed CPU engine, time them on the model, keep the fastest.

    Returns (the loaded engine, the reason, the timing table). With one engine
    installed nothing is timed. Engines that fail to load or run are skipped, with
    their error in the reason; if all fail, the default engine's error is raised.
    """
    default = cpu_dispatch.DEFAULT_ENGINE
    if len(candidates) < 2:
        engine = create_engine(default, source, options)
        engine.load()
        return engine, f"cpu: {default} (the only CPU engine installed)", ""
    inputs, no_inputs = make_feeds()
    if inputs is None:
        engine = create_engine(default, source, options)
        engine.load()
        return engine, f"cpu: {default} (not measured: {no_inputs})", ""
    loaded: dict[str, Engine] = {}
    failures: dict[str, str] = {}
    errors: dict[str, Exception] = {}
    for candidate in candidates:
        try:
            engine = create_engine(candidate, source, options)
            engine.load()
            loaded[candidate] = engine
        except Exception as exc:  # noqa: BLE001 - a candidate failing must not fail the model
            failures[candidate] = cpu_dispatch.shorten(str(exc))
            errors[candidate] = exc
    if not loaded:
        raise errors[default]
    if len(loaded) == 1:
        only = next(iter(loaded))
        choice = cpu_dispatch.choose({}, failures, default=only)
        return loaded[only], choice.reason, ""
    buckets = options.batch_buckets or (1,)

    def feeds_for(batch: int) -> dict[str, np.ndarray]:
        # NOTE: buckets other than (1,) exist only for batched models (axis 0 = batch)
        return inputs if buckets == (1,) else take(inputs, slice(0, batch))

    runners = {e: (lambda f, eng=eng: eng.infer(f)) for e, eng in loaded.items()}
    chosen = ""
    try:
        # NOTE: one model timed at a time: models loading side by side distorted the ratios
        # (OpenVINO timed 3.6-11x slower while six models loaded at once, 1.2-3.8x alone)
        with _CPU_TIMING_LOCK:
            measured, run_failures = cpu_dispatch.time_engines(runners, feeds_for, buckets, budget)
        failures.update(run_failures)
        choice = cpu_dispatch.choose(measured, failures)
        if choice.engine not in loaded:  # nothing measured: keep whichever default loaded
            choice = cpu_dispatch.choose({}, failures, default=next(iter(loaded)))
        chosen = choice.engine
    finally:  # NOTE: every engine not kept is unloaded, also when the timing fails
        for engine_name, engine in loaded.items():
            if engine_name != chosen:
                engine.unload()
    LOGGER.info("%s: %s; timings: %s", name, choice.reason, choice.table or "none")
    return loaded[choice.engine], choice.reason, choice.table
