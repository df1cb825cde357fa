"""Turn a model version on disk into a ServedModel: read, analyse, dispatch, load.

Blocking (file I/O, sparsity analysis, engine start-up): the manager runs it in
a worker thread. The dispatch decision and its reason are written into the
model's config parameters, so ModelConfig shows where and why it runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from tritonclient.grpc import model_config_pb2 as mc

from runtime import dispatch
from runtime.engines.base import EngineOptions, ModelSource, create_engine
from runtime.errors import ConfigError, ModelLoadError
from runtime.model import ServedModel
from runtime.repository import repository
from runtime.repository.config import complete_config, parameter, set_parameter
from runtime.settings import Settings
from runtime.sparsity import analysis, pack

LOGGER = logging.getLogger(__name__)

# config parameters this runtime reads (all optional)
ENGINE_PARAM = "engine"  # auto | onnxruntime | torch_sparse
SPARSITY_PARAM = "sparsity"  # auto | on | off


def read_source(path: Path) -> tuple[ModelSource, onnx.ModelProto, str]:
    """(engine source, parsed graph for analysis, stored form) of a model file."""
    if pack.is_packed(path):
        data = pack.load_packed(path)
        source: ModelSource = data
        stored = "packed"
    else:
        data = path.read_bytes()
        source = path
        stored = "onnx"
    try:
        graph = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    if not graph.graph.node:
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: the graph has no nodes")
    return source, graph, stored


def batch_buckets(config: mc.ModelConfig | None) -> tuple[int, ...]:
    if config is None or config.max_batch_size <= 0:
        return (1,)
    preferred = tuple(sorted(set(config.dynamic_batching.preferred_batch_size)))
    top = config.max_batch_size
    powers = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < top)
    return tuple(sorted(set(powers + preferred + (top,))))


def build_model(
    name: str,
    model_dir: Path,
    version: int,
    config: mc.ModelConfig | None,
    settings: Settings,
) -> ServedModel:
    """Load one version; raises ModelLoadError (or a subclass) with a clear reason."""
    filename = config.default_model_filename if config is not None else ""
    path = repository.model_file(model_dir / str(version), filename)
    source, graph, stored_form = read_source(path)
    profile = analysis.analyze_model(graph)
    del graph
    mode = parameter(config, SPARSITY_PARAM, "auto") if config is not None else "auto"
    forced = parameter(config, ENGINE_PARAM, "auto") if config is not None else "auto"
    caps = dispatch.probe_device()
    engines = dispatch.installed_engines()
    decision = dispatch.decide(profile, caps, engines, mode)
    engine_name, device = decision.engine, decision.device
    reason = decision.reason
    if forced not in ("", "auto"):
        if forced not in engines:
            raise ConfigError(
                f"engine '{forced}' is not installed here; installed: {sorted(engines)}"
            )
        if forced != engine_name:
            reason = f"engine forced by config to {forced} ({reason})"
            engine_name = forced
            if forced == "onnxruntime":
                device = "cpu"
    params = {k: v.string_value for k, v in (config.parameters.items() if config else [])}
    options = EngineOptions(
        device=device.split(":")[0],
        device_id=int(device.split(":")[1]) if ":" in device else 0,
        intra_op_threads=int(params.get("intra_op_thread_count", settings.intra_op_threads)),
        inter_op_threads=int(params.get("inter_op_thread_count", 0)),
        precision=params.get("precision", "fp32" if engine_name == "onnxruntime" else "fp16"),
        batch_buckets=batch_buckets(config),
        parameters=params,
    )
    engine = create_engine(engine_name, source, options)
    engine.load()
    try:
        description = engine.describe()
        config = complete_config(config, name, description)
    except Exception:
        engine.unload()
        raise
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
    )
