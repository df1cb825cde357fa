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
            t.name: InputSpec(t.name, wire_datatype(t.data_type), tuple(t.dims), t.optional)
            for t in self.config.input
        }
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

    def make_request(
        self,
        arrays: Mapping[str, tuple[np.ndarray, str]],
        requested: Sequence[str],
        timeout_us: int = 0,
    ) -> InferRequest:
        """Check names, dtypes, shapes and batch agreement; build the batcher request."""
        rows: int | None = None
        inputs: dict[str, np.ndarray] = {}
        for name, (array, datatype) in arrays.items():
            spec = self.inputs.get(name)
            if spec is None:
                raise InvalidArgument(
                    f"unexpected inference input '{name}' for model '{self.name}'; "
                    f"expected {sorted(self.inputs)}"
                )
            r = spec.check(array.shape, datatype, self.batched, self.max_rows, self.name)
            if rows is not None and r != rows:
                raise InvalidArgument(
                    f"input '{name}' has batch size {r}, other inputs have {rows}"
                )
            rows = r
            if datatype == "BYTES":
                _check_utf8(name, array)
            inputs[name] = array
        missing = [n for n, s in self.inputs.items() if n not in inputs and not s.optional]
        if missing:
            raise InvalidArgument(  # NOTE: Triton's wording
                f"expected {len(self.inputs)} inputs but got {len(inputs)} inputs for model "
                f"'{self.name}'. Got input(s) {sorted(inputs)}, but missing required input(s) "
                f"{missing}. Please provide all required input(s)."
            )
        for i, out in enumerate(requested):
            if out not in self.output_datatypes:
                raise InvalidArgument(
                    f"unexpected inference output '{out}' for model '{self.name}'"
                )
            if out in requested[:i]:
                raise InvalidArgument(f"output '{out}' is requested more than once")
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
        return await self.batcher.infer(request)

    def unload(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        try:
            self.engine.unload()
        except Exception:  # unload must never take the server down
            LOGGER.exception("engine unload failed for %s", self.name)
