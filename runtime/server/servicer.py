"""GRPCInferenceService: proto -> core -> proto, no business logic here.

Every RPC goes through `_rpc`, the one place that maps a `RuntimeServerError`
to its declared status code; anything else is logged and answered INTERNAL, so
a bug in one request never takes the server or other requests down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from runtime import SERVER_NAME, __version__
from runtime.errors import (
    ControlModeRefused,
    InvalidArgument,
    ModelNotFound,
    ModelNotReady,
    ResponseTooLarge,
    RuntimeServerError,
    ServerShuttingDown,
    Unsupported,
)
from runtime.metrics import Metrics
from runtime.model import ServedModel
from runtime.repository.config import wire_datatype
from runtime.repository.manager import ModelManager
from runtime.server import codec
from runtime.server.classification import classify
from runtime.server.shared_memory import SystemSharedMemory

LOGGER = logging.getLogger(__name__)

# Only what we really implement: clients and perf_analyzer key behaviour on these.
EXTENSIONS = (
    "classification", "model_repository", "model_repository(unload_dependents)", "statistics",
)

T = TypeVar("T")


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except RuntimeServerError as err:
            await context.abort(err.code, str(err))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            LOGGER.exception("unhandled error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see server log")
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


_StreamAnswer = pb.ModelStreamInferResponse | codec.Serialized
_STREAM_END = "end"  # the client half-closed its side
_STREAM_STOP = "stop"  # the server is stopping


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Triton / KServe v2 gRPC API over a ModelManager."""

    def __init__(
        self, manager: ModelManager, metrics: Metrics | None, max_response_bytes: int = 2**31 - 1
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._max_response_bytes = max_response_bytes
        self.shared_memory: SystemSharedMemory | None = None
        """Registered system shared-memory regions (set by the server that serves them)."""
        self.extensions: tuple[str, ...] = EXTENSIONS
        """What ServerMetadata advertises: EXTENSIONS plus what the server adds."""
        self.accepting = True
        self.started = False
        self.stopping = asyncio.Event()
        """Set when the server stops: streams end once nothing on them is in flight."""

    # ---- health -------------------------------------------------------------------
    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.server_ready())

    def server_ready(self) -> bool:
        return self.started and self.accepting and self._manager.all_started_ready()

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=self._manager.is_ready(request.name, request.version))

    # ---- metadata -----------------------------------------------------------------
    @_rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(self.extensions)
        )

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        model = self._manager.get(request.name, request.version)
        response = pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self._ready_versions(model.name)],
            platform=model.config.platform or "onnxruntime_onnx",
        )
        lead = [-1] if model.batched else []
        for t in model.config.input:
            response.inputs.add(
                name=t.name, datatype=wire_datatype(t.data_type), shape=lead + list(t.dims)
            )
        for t in model.config.output:
            response.outputs.add(
                name=t.name, datatype=wire_datatype(t.data_type), shape=lead + list(t.dims)
            )
        return response

    def _ready_versions(self, name: str) -> list[int]:
        return sorted(m.version for m in self._manager.ready_models() if m.name == name)

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        model = self._manager.get(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    @_rpc
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Any:
        models = self._manager.ready_models()
        if request.name:
            try:
                self._manager.get(request.name, request.version)
            except (ModelNotFound, ModelNotReady) as exc:  # NOTE: Triton's code and wording
                raise InvalidArgument(
                    (f"requested model version is not available for model '{request.name}'"
                     if request.version
                     else f"requested model '{request.name}' is not available") + f" ({exc})"
                ) from None  # fmt: skip
            models = [
                m
                for m in models
                if m.name == request.name
                and (not request.version or str(m.version) == request.version)
            ]
        response = pb.ModelStatisticsResponse()
        for m in sorted(models, key=lambda m: (m.name, m.version)):
            response.model_stats.append(model_statistics(m))
        return response

    # ---- repository ---------------------------------------------------------------
    @_rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> Any:
        response = pb.RepositoryIndexResponse()
        for name, version, state, reason in self._manager.index(request.ready):
            response.models.add(name=name, version=version, state=state, reason=reason)
        return response

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> Any:
        self._require_explicit()
        override = None
        if any(key.startswith("file:") for key in request.parameters):
            raise Unsupported(
                "loading a model from files sent in the request is not supported; "
                "put them in the model repository"
            )
        if "config" in request.parameters:
            text = request.parameters["config"].string_param
            override = mc.ModelConfig()
            try:  # Triton sends JSON here; accept pbtxt too
                if text.lstrip().startswith("{"):
                    json_format.Parse(text, override)
                else:
                    override = text_format.Parse(text, mc.ModelConfig())
            except (json_format.ParseError, text_format.ParseError) as exc:
                raise InvalidArgument(f"config parameter is not valid: {exc}") from exc
        await self._manager.load(request.model_name, override)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> Any:
        self._require_explicit()
        await self._manager.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _require_explicit(self) -> None:
        if not self.accepting:  # NOTE: a model loaded now would miss the shutdown drain
            raise ServerShuttingDown("server is shutting down; model load/unload not accepted")
        if self._manager.control_mode != "explicit":
            # NOTE: tritonserver's status (and, when polling, its words)
            raise ControlModeRefused(
                "explicit model load / unload is not allowed if polling is enabled"
                if self._manager.control_mode == "poll"
                else "explicit model load / unload is not allowed: the server runs with "
                "--model-control-mode none (start it with --model-control-mode explicit)"
            )

    # ---- inference ------------------------------------------------------------------
    async def _infer(
        self,
        request: codec.IncomingRequest,
        stream: bool = False,
        encode: Callable[..., Any] = codec.encode_response,
    ) -> Any:
        """Decode, validate, batch, encode; errors are counted against the model. On a
        `stream` the response must fit the message limit with the stream's wrapper."""
        start = time.perf_counter_ns()
        if not self.accepting:
            raise ServerShuttingDown("server is shutting down; request not accepted")
        if isinstance(request, codec.UndecodableRequest):
            raise InvalidArgument(f"bad request: {request.error}")
        model = self._manager.get(request.model_name, request.model_version)
        try:
            timeout = codec.timeout_us(request)
            shm = self.shared_memory
            requested = codec.requested_outputs(request, shm is not None)
            targets = shm.output_targets(request) if shm is not None else None
            arrays = codec.decode_inputs(
                request, lambda inputs: model.validate(inputs, requested), self.shared_memory
            )  # NOTE: Triton's order: data presence, then names/dtypes/shapes, then sizes
            infer_request = model.make_request(arrays, requested, timeout, validated=True)
            infer_request.arrival_ns = start
            classes = codec.requested_classes(request)
            outputs = await model.infer(infer_request)
            names = requested or [n for n in model.output_names if n in outputs] or list(outputs)
            if classes:
                outputs = dict(outputs)
                for name, k in classes.items():
                    outputs[name] = classify(
                        outputs[name], k, model.batched, model.labels.get(name, ()), name
                    )
            written = shm.write_outputs(targets, outputs) if shm and targets else ()
            response = encode(model.name, str(model.version), request.id, outputs, names, written)
            size = len(response.data)
            sent = size + (codec.stream_overhead(size) if stream else 0)
            if sent > self._max_response_bytes:
                # NOTE: gRPC would drop it while sending, after it had counted as a success
                raise ResponseTooLarge(
                    f"response of {size} bytes"
                    + (f" ({sent} with the stream's wrapper)" if stream else "")
                    + f" exceeds the {self._max_response_bytes}-byte limit "
                    "(--grpc-max-message-bytes)"
                )
        except RuntimeServerError as err:
            model.stats.record_failure(err.failure_reason, time.perf_counter_ns() - start)
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            model.stats.record_failure("CANCELED", time.perf_counter_ns() - start)
            raise
        except Exception:
            model.stats.record_failure("BACKEND", time.perf_counter_ns() - start)
            raise
        elapsed = time.perf_counter_ns() - start
        queued = infer_request.dispatch_ns - infer_request.arrival_ns
        model.stats.record_success(elapsed, queued, infer_request.compute_ns)
        if self._metrics is not None:
            h = self._metrics.histograms(model.name, model.version)
            h.request.observe(elapsed / 1e9)
            h.queue.observe(queued / 1e9)
        return response

    @_rpc
    async def ModelInfer(self, request: codec.IncomingRequest, context: Any) -> Any:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[codec.IncomingRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse | codec.Serialized]:
        """Each request is answered on the stream (errors as error_message, as Triton does),
        in request order as Triton answers a non-decoupled model; requests still run
        concurrently, so they can share batches. Once the server stops, the stream ends
        (UNAVAILABLE) as soon as nothing on it is in flight, instead of holding shutdown for
        its whole grace period while an idle client keeps it open."""
        order: asyncio.Queue[asyncio.Task[_StreamAnswer] | str] = asyncio.Queue()

        async def one(req: codec.IncomingRequest) -> _StreamAnswer:
            try:
                return codec.stream_response(await self._infer(req, stream=True))
            except RuntimeServerError as err:
                return self._stream_error(req, str(err))
            except Exception:
                LOGGER.exception("unhandled error in ModelStreamInfer")
                return self._stream_error(req, "internal error; see server log")

        async def reader() -> None:
            try:
                async for req in request_iterator:
                    order.put_nowait(asyncio.create_task(one(req)))
            finally:
                order.put_nowait(_STREAM_END)

        async def watch_stop() -> None:
            await self.stopping.wait()
            order.put_nowait(_STREAM_STOP)

        helpers = [asyncio.create_task(reader()), asyncio.create_task(watch_stop())]
        stopping = False
        current: asyncio.Task[_StreamAnswer] | None = None
        try:
            while True:
                if stopping and order.empty():
                    # NOTE: an error, not OK: a request the client sends from now on would
                    # otherwise vanish without a callback
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
                item = await order.get()
                if item is _STREAM_END:
                    break
                if item is _STREAM_STOP:
                    stopping = True
                    continue
                current = item  # type: ignore[assignment]
                yield await current
        finally:
            for task in (*helpers, current):
                if task is not None:
                    task.cancel()
            while not order.empty():
                item = order.get_nowait()
                if isinstance(item, asyncio.Task):
                    item.cancel()

    @staticmethod
    def _stream_error(req: codec.IncomingRequest, message: str) -> pb.ModelStreamInferResponse:
        resp = pb.ModelStreamInferResponse(error_message=message)
        resp.infer_response.model_name = req.model_name
        resp.infer_response.model_version = req.model_version
        resp.infer_response.id = req.id
        resp.infer_response.parameters["triton_final_response"].bool_param = True
        return resp

    # ---- system shared memory -----------------------------------------------------------
    def _system_shm(self) -> SystemSharedMemory:
        if self.shared_memory is None:
            raise Unsupported("system shared memory is not enabled on this server")
        return self.shared_memory

    @_rpc
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Any
    ) -> Any:
        response = pb.SystemSharedMemoryStatusResponse()
        for r in self._system_shm().status(request.name):
            response.regions[r.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size
                )
            )
        return response

    @_rpc
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
    ) -> Any:
        self._system_shm().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
    ) -> Any:
        self._system_shm().unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # ---- unsupported (not advertised) -------------------------------------------------
    async def _unimplemented(self, request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "CUDA shared memory, trace and log settings are not supported",
        )

    CudaSharedMemoryStatus = _unimplemented
    CudaSharedMemoryRegister = _unimplemented
    CudaSharedMemoryUnregister = _unimplemented
    TraceSetting = _unimplemented
    LogSettings = _unimplemented


def _duration(target: pb.StatisticDuration, ns: int, count: int) -> None:
    target.count = count
    target.ns = ns


def model_statistics(m: ServedModel) -> pb.ModelStatistics:
    """Triton's ModelStatistics message from our counters."""
    s = m.stats
    out = pb.ModelStatistics(
        name=m.name,
        version=str(m.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
    )
    st = out.inference_stats
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        d = getattr(s, field)
        _duration(getattr(st, field), d.ns, d.count)
    st.cache_hit.SetInParent()  # NOTE: present and zero, as Triton sends them (no cache here)
    st.cache_miss.SetInParent()
    for size, b in sorted(s.batches.items()):
        bs = out.batch_stats.add(batch_size=size)
        _duration(bs.compute_input, b.compute_input.ns, b.compute_input.count)
        _duration(bs.compute_infer, b.compute_infer.ns, b.compute_infer.count)
        _duration(bs.compute_output, b.compute_output.ns, b.compute_output.count)
    return out


__all__ = ["InferenceServicer", "ModelNotFound", "model_statistics"]
