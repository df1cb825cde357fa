"""config.pbtxt <-> `model_config_pb2.ModelConfig`, parsed with protobuf text_format.

Using Triton's own message type means Triton configs paste in unchanged and
ModelConfig RPC answers are the parsed message itself, plus the parameters we add.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from runtime.dtypes import CONFIG_TO_WIRE, WIRE_TO_CONFIG, numpy_to_wire
from runtime.engines.base import EngineDescription, TensorSpec, device_parts
from runtime.errors import ConfigError, InvalidArgument

CONFIG_FILE = "config.pbtxt"
SUPPORTED_PLATFORMS = {"", "onnxruntime_onnx", "sparse_runtime"}
SUPPORTED_BACKENDS = {"", "onnxruntime", "sparse_runtime"}


def parse_config_text(text: str, source: str = CONFIG_FILE) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: malformed config: {exc}") from exc
    return config


def read_config(model_dir: Path) -> mc.ModelConfig | None:
    """The parsed config.pbtxt of a model folder, or None when there is none."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from exc
    return parse_config_text(text, str(path))


def parameter(config: mc.ModelConfig, key: str, default: str = "") -> str:
    """A string parameter from config.pbtxt `parameters { key: .. value { string_value } }`."""
    if key in config.parameters:
        return config.parameters[key].string_value
    return default


def set_parameter(config: mc.ModelConfig, key: str, value: str) -> None:
    config.parameters[key].string_value = value


def _wire(spec: TensorSpec) -> str:
    try:
        return numpy_to_wire(spec.dtype)
    except InvalidArgument as exc:
        raise ConfigError(f"tensor '{spec.name}': {exc}") from None


def _tensor(spec: TensorSpec, batched: bool, cls: type) -> object:
    dims = list(spec.shape[1:] if batched else spec.shape)
    return cls(name=spec.name, data_type=mc.DataType.Value(WIRE_TO_CONFIG[_wire(spec)]), dims=dims)


def batchable(description: EngineDescription) -> bool:
    """All inputs and outputs have a leading dynamic dim: the model can take a batch."""
    tensors = description.inputs + description.outputs
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)


def complete_config(
    config: mc.ModelConfig | None,
    name: str,
    description: EngineDescription,
    default_max_batch: int = 64,
) -> mc.ModelConfig:
    """Fill what the config leaves out (or derive all of it) from the model's graph.

    Declared inputs and outputs are checked against the graph: a name the graph
    does not have, or a dtype that differs, is a ConfigError rather than a
    failure on the first request.
    """
    derived = config is None
    config = mc.ModelConfig() if config is None else config
    if config.name and config.name != name:
        raise ConfigError(f"config name '{config.name}' does not match folder name '{name}'")
    config.name = name
    if config.platform not in SUPPORTED_PLATFORMS or config.backend not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"unsupported platform/backend '{config.platform or config.backend}' "
            "(this runtime serves ONNX models: platform onnxruntime_onnx)"
        )
    if not config.platform and not config.backend:
        config.platform = "onnxruntime_onnx"
    if not config.backend:
        config.backend = "onnxruntime"
    if derived:
        config.max_batch_size = default_max_batch if batchable(description) else 0
        config.dynamic_batching.SetInParent()
    if config.max_batch_size < 0:
        raise ConfigError("max_batch_size must be >= 0")
    if config.max_batch_size > 0 and not batchable(description):
        raise ConfigError(
            f"max_batch_size {config.max_batch_size} needs a dynamic leading dim on every "
            "input and output of the model; set max_batch_size: 0"
        )
    batched = config.max_batch_size > 0
    graph = {t.name: t for t in description.inputs}
    graph_out = {t.name: t for t in description.outputs}
    for kind, declared, known, cls in (
        ("input", config.input, graph, mc.ModelInput),
        ("output", config.output, graph_out, mc.ModelOutput),
    ):
        if not declared:
            declared.extend(_tensor(t, batched, cls) for t in known.values())
            continue
        for tensor in declared:
            spec = known.get(tensor.name)
            if spec is None:
                raise ConfigError(
                    f"{kind} '{tensor.name}' is not in the model; it has {sorted(known)}"
                )
            want = WIRE_TO_CONFIG[_wire(spec)]
            got = mc.DataType.Name(tensor.data_type)
            if want != got:
                raise ConfigError(f"{kind} '{tensor.name}': config says {got}, model has {want}")
            graph_dims = spec.shape[1:] if batched else spec.shape
            dims = list(tensor.dims)
            if tensor.HasField("reshape"):  # NOTE: the model sees reshape, clients see dims
                _check_reshape(kind, tensor.name, dims, list(tensor.reshape.shape))
                dims = list(tensor.reshape.shape)
            if len(dims) != len(graph_dims) or any(
                g not in (-1, d) and d != -1 for g, d in zip(graph_dims, dims, strict=True)
            ):
                raise ConfigError(
                    f"{kind} '{tensor.name}': config "
                    + ("reshape" if tensor.HasField("reshape") else "dims")
                    + f" {dims} do not match the model's {list(graph_dims)}"
                    + (" (after the batch dim)" if batched else "")
                )
    # NOTE: every model input needs a declaration (a request could never feed an undeclared
    # one); declaring a subset of the outputs is fine, as in Triton
    undeclared = sorted(set(graph) - {t.name for t in config.input})
    if undeclared:
        raise ConfigError(
            f"model inputs {undeclared} are not declared in the config's input list "
            f"(declared: {sorted(t.name for t in config.input)})"
        )
    _normalize_as_triton(config, description)
    return config


def _check_reshape(kind: str, name: str, dims: list[int], reshape: list[int]) -> None:
    """Triton's rule: dims and reshape hold the same elements; each run of fixed dims
    between variable (-1) ones has the same element count on both sides, so the variable
    dims map onto each other in order."""

    def runs(shape: list[int]) -> list[int]:
        counts = [1]
        for d in shape:
            if d == -1:
                counts.append(1)
            else:
                counts[-1] *= d
        return counts

    if any(d < -1 or d == 0 for d in reshape):
        raise ConfigError(f"model {kind} '{name}': reshape {reshape} has an invalid dim")
    if runs(dims) != runs(reshape):
        raise ConfigError(  # NOTE: Triton's wording
            f"model {kind} '{name}' has different size for dims and reshape"
        )


def _normalize_as_triton(config: mc.ModelConfig, description: EngineDescription) -> None:
    """The defaults tritonserver writes into a config it serves, so a client reading
    ModelConfig sees the same fields: the version policy, and named instance groups of the
    kind the engine runs on (one instance unless the config says more)."""
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    on_gpu = description.device.startswith("cuda")
    kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    if not config.instance_group:
        config.instance_group.add(count=1, kind=kind)
    for i, group in enumerate(config.instance_group):
        group.name = group.name or f"{config.name}_{i}"
        group.count = group.count or 1
        if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
            group.kind = kind
        if on_gpu and group.kind == mc.ModelInstanceGroup.KIND_GPU and not group.gpus:
            group.gpus.append(device_parts(description.device)[1])


def wire_datatype(data_type: int) -> str:
    """config DataType enum value -> KServe wire datatype string."""
    return CONFIG_TO_WIRE[mc.DataType.Name(data_type)]
