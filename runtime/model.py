"""A loaded model version: its config, engine, batcher and statistics.

Validation of a decoded request against the model's config lives here, so the
gRPC codec stays a pure translation layer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from runtime.batching.batcher import BatchObserver, DynamicBatcher, InferRequest
from runtime.engines.base import Engine, EngineDescription
from runtime.errors import InvalidArgument
from runtime.repository.config import wire_datatype
from runtime.stats import ModelStats

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What a request's input must look like (dims exclude the batch dim if batched)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None
    """config `reshape`: the shape the model takes (after the batch dim), where it differs
    from the `dims` clients send."""

    def check(
        self, array_shape: Sequence[int], datatype: str, batched: bool, max_rows: int, model: str
    ) -> int:
        """Validate one input; returns its batch rows (1 when not batched)."""
        if datatype != self.datatype:
            raise InvalidArgument(  # NOTE: Triton's wording
                f"inference input '{self.name}' data-type is '{datatype}', but model "
                f"'{model}' expects '{self.datatype}'"
            )
        shape = tuple(array_shape)
        dims = shape[1:] if batched else shape
        if batched and not shape:
            raise InvalidArgument(  # NOTE: Triton's wording
                f"input '{self.name}' has no shape but model requires batch dimension for "
                f"'{model}'"
            )
        if len(dims) != len(self.dims) or any(
            want != -1 and want != got for want, got in zip(self.dims, dims, strict=True)
        ):
            want = ("[-1," if batched else "[") + ",".join(map(str, self.dims)) + "]"
            raise InvalidArgument(
                f"unexpected shape for input '{self.name}' for model '{model}'. Expected {want}, "
                f"got [{','.join(map(str, shape))}]"
            )
        if not batched:
            return 1
        rows = shape[0]
        if rows < 1:
            raise InvalidArgument(
                f"input '{self.name}' has batch size 0; a request needs at least one row"
            )
        if rows > max_rows:
            raise InvalidArgument(  # NOTE: Triton's wording, then the rows sent
                f"inference request batch-size must be <= {max_rows} for '{model}' "
                f"(input '{self.name}' has {rows} rows)"
            )
        return rows


def map_variable_dims(
    shape: Sequence[int], pattern: Sequence[int], target: Sequence[int]
) -> tuple[int, ...]:
    """`shape` (which matches `pattern`) in the `target` pattern: target's fixed dims as they
    are, its -1 dims filled with shape's values at pattern's -1 dims, in order, as Triton
    applies a config `reshape` (inputs: dims -> reshape; outputs: reshape -> dims)."""
    variable = [got for want, got in zip(pattern, shape, strict=True) if want == -1]
    variable.reverse()
    return tuple(variable.pop() if d == -1 else d for d in target)


def _check_utf8(name: str, array: np.ndarray) -> None:
    """BYTES elements must be UTF-8: onnxruntime's string tensors take Python str. Checked per
    request, so one bad element fails its own request, not the batch it would have joined."""
    for i, value in enumerate(array.reshape(-1)):
        if isinstance(value, bytes):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(
                    f"input '{name}': element {i} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); string tensors must be UTF-8"
                ) from None


@dataclass
class ServedModel:
    """A READY model version that can take requests."""

    name: str
    version: int
    config: mc.ModelConfig
    engine: Engine
    description: EngineDescription
    stats: ModelStats = field(default_factory=ModelStats)
    batcher: DynamicBatcher | None = None
    load_seconds: float = 0.0
    info: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Class labels per output (config `label_filename`), for classification requests."""

    def __post_init__(self) -> None:
        self.inputs: dict[str, InputSpec] = {
            t.name: InputSpec(
                t.name, wire_datatype(t.data_type), tuple(t.dims), t.optional,
                tuple(t.reshape.shape) if t.HasField("reshape") else None,
            )
            for t in self.config.input
        }  # fmt: skip
        self.output_reshapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
            o.name: (tuple(o.reshape.shape), tuple(o.dims))
            for o in self.config.output
            if o.HasField("reshape")
        }
        """Output name -> (the model's shape, the config dims clients see)."""
        self.output_names: tuple[str, ...] = tuple(o.name for o in self.config.output)
        self.output_datatypes: dict[str, str] = {
            o.name: wire_datatype(o.data_type) for o in self.config.output
        }
        self.batched = self.config.max_batch_size > 0
        self.max_rows = self.config.max_batch_size if self.batched else 1

    def start(self, max_queue_size: int, observer: BatchObserver | None) -> None:
        db = self.config.dynamic_batching
        has_batching = self.config.HasField("dynamic_batching") and self.batched
        self.batcher = DynamicBatcher(
            self.engine,
            self.stats,
            max_batch_size=self.config.max_batch_size,
            preferred_batch_sizes=tuple(db.preferred_batch_size),
            max_queue_delay_us=int(db.max_queue_delay_microseconds),
            max_queue_size=int(db.default_queue_policy.max_queue_size or max_queue_size),
            batching=has_batching,
            observer=observer,
            name=self.name,
            instances=sum(g.count or 1 for g in self.config.instance_group) or 1,
            queue_timeout_us=int(db.default_queue_policy.default_timeout_microseconds),
            delay_on_timeout=db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.DELAY,
            allow_timeout_override=db.default_queue_policy.allow_timeout_override,
        )
        if db.priority_levels > 1 or db.priority_queue_policy:
            LOGGER.warning(
                "%s: dynamic_batching priority levels are not supported; every request "
                "shares one queue under default_queue_policy",
                self.name,
            )

    def validate(
        self, inputs: Sequence[tuple[str, str, Sequence[int]]], requested: Sequence[str]
    ) -> int:
        """Check a request's outputs, input names, datatypes and shapes in Triton's order
        (InferenceRequest::Normalize), so a request breaking several rules gets the error
        Triton would give; returns the batch rows."""
        for i, out in enumerate(requested):
            if out not in self.output_datatypes:
                raise InvalidArgument(
                    f"unexpected inference output '{out}' for model '{self.name}'"
                )
            if out in requested[:i]:
                raise InvalidArgument(f"output '{out}' is requested more than once")
        names = [name for name, _, _ in inputs]
        required = [n for n, s in self.inputs.items() if not s.optional]
        if len(names) > len(self.inputs) or len(names) < len(required):
            missing = [n for n in required if n not in names]
            raise InvalidArgument(  # NOTE: Triton's wording
                f"expected {len(self.inputs)} inputs but got {len(names)} inputs for model "
                f"'{self.name}'. Got input(s) {sorted(names)}, but missing required input(s) "
                f"{missing}. Please provide all required input(s)."
            )
        for name in names:
            if name not in self.inputs:
                raise InvalidArgument(
                    f"unexpected inference input '{name}' for model '{self.name}'; "
                    f"expected {sorted(self.inputs)}"
                )
        rows: int | None = None
        if self.batched:
            for name, _, shape in inputs:
                if not len(shape):
                    raise InvalidArgument(  # NOTE: Triton's wording
                        f"input '{name}' has no shape but model requires batch dimension for "
                        f"'{self.name}'"
                    )
                if rows is not None and shape[0] != rows:
                    raise InvalidArgument(  # NOTE: Triton's wording, then the rows
                        f"input '{name}' batch size does not match other inputs for "
                        f"'{self.name}' ({shape[0]} rows, other inputs have {rows})"
                    )
                rows = shape[0]
            if rows is not None and rows > self.max_rows:
                raise InvalidArgument(  # NOTE: Triton's wording, then the rows sent
                    f"inference request batch-size must be <= {self.max_rows} for "
                    f"'{self.name}' (input '{inputs[0][0]}' has {rows} rows)"
                )
        for name, datatype, shape in inputs:
            self.inputs[name].check(shape, datatype, self.batched, self.max_rows, self.name)
        missing = [n for n in required if n not in names]
        if missing:  # NOTE: a required input replaced by an optional one
            raise InvalidArgument(
                f"expected {len(self.inputs)} inputs but got {len(names)} inputs for model "
                f"'{self.name}'. Got input(s) {sorted(names)}, but missing required input(s) "
                f"{missing}. Please provide all required input(s)."
            )
        return rows or 1

    def make_request(
        self,
        arrays: Mapping[str, tuple[np.ndarray, str]],
        requested: Sequence[str],
        timeout_us: int = 0,
        validated: bool = False,
    ) -> InferRequest:
        """The batcher request (after `validate`, which runs here unless `validated`)."""
        if validated:
            rows = next(iter(arrays.values()))[0].shape[0] if self.batched and arrays else 1
        else:
            rows = self.validate([(n, dt, a.shape) for n, (a, dt) in arrays.items()], requested)
        inputs: dict[str, np.ndarray] = {}
        for name, (array, datatype) in arrays.items():
            spec = self.inputs[name]
            if datatype == "BYTES":
                _check_utf8(name, array)
            if spec.reshape is not None:  # NOTE: clients send dims, the model takes reshape
                lead = array.shape[:1] if self.batched else ()
                dims = array.shape[len(lead) :]
                array = array.reshape(lead + map_variable_dims(dims, spec.dims, spec.reshape))
            inputs[name] = array
        signature = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
        return InferRequest(
            inputs=inputs,
            outputs=tuple(requested) or None,
            rows=rows or 1,
            signature=signature,
            timeout_us=max(timeout_us, 0),
        )

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        assert self.batcher is not None
        outputs = await self.batcher.infer(request)
        if not self.output_reshapes:
            return outputs
        outputs = dict(outputs)
        for name, (model_shape, dims) in self.output_reshapes.items():
            array = outputs.get(name)
            if array is None:
                continue
            lead = array.shape[:1] if self.batched else ()
            got = array.shape[len(lead) :]
            if len(got) == len(model_shape):  # NOTE: else the engine's shape goes out as it is
                outputs[name] = array.reshape(lead + map_variable_dims(got, model_shape, dims))
        return outputs

    def unload(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        try:
            self.engine.unload()
        except Exception:  # unload must never take the server down
            LOGGER.exception("engine unload failed for %s", self.name)
