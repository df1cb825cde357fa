"""The native gRPC frontend: grpc++ threads take the calls, this loop answers them.

Same servicers, same stubs, same status codes as the grpc.aio frontend; only the
transport differs (runtime/server/native/grpc_bridge.cc). Each read request arrives
as (call, method, bytes) through an eventfd the event loop watches; it is parsed
with the tritonclient / grpc_health stubs, run by the servicer method of that name
as a task, and answered exactly once; if its caller leaves first (cancelled, or past its
deadline), the task is cancelled, as grpc.aio does, so a request still queued never takes
engine time. Streaming RPCs (ModelStreamInfer, Health.Watch)
arrive as events on a stream id: each client message, the end of the client's messages,
and the call being over (finished or cancelled); one task per stream feeds the servicer
and writes what it yields, then finishes the stream exactly once. Answers are queued in
the bridge and flushed once per loop iteration: one wakeup of its sending thread carries
every answer a batch produced.

Models the bridge can serve alone get a native lane (`sync`): their ModelInfer requests are
parsed, checked, queued and batched in C++ and never reach this loop one by one; engine
threads take whole batches (runtime/batching/native_lane.py). Whatever a lane does not take
(see `lane_inputs` and grpc_bridge.cc) comes here as before.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as pb

from runtime.batching.native_lane import NativeLane, RequestObserver
from runtime.dtypes import WIRE_ITEMSIZE, WIRE_TO_NUMPY
from runtime.model import ServedModel
from runtime.server import codec
from runtime.server.restricted import Restriction

LOGGER = logging.getLogger(__name__)

INFERENCE = "/inference.GRPCInferenceService/"
HEALTH = "/grpc.health.v1.Health/"
CALLER_GONE = "the caller left before its answer"  # cancel message for such unary tasks
TLS_REFRESH_S = 5  # grpc++'s file watcher re-reads rotated certificate files this often


def load_bridge() -> Any:
    """The compiled bridge module, or ImportError saying how to build it."""
    try:
        return importlib.import_module("runtime.server.native._grpc_bridge")
    except ImportError as exc:
        raise ImportError(
            "the native gRPC frontend is not built here: run `make native` "
            "(needs g++, libgrpc++-dev and pybind11), or use --grpc-frontend python"
        ) from exc


class _Context:
    """The part of grpc.aio.ServicerContext our servicers use: abort, status setters and,
    on streams, write."""

    def __init__(self, peer: str, writer: Callable[[bytes], None] | None = None) -> None:
        self._peer = peer
        self._writer = writer
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def write(self, message: Message) -> None:
        if self._writer is None:
            raise RuntimeError("write() on a unary call")
        self._writer(message.SerializeToString())

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


@dataclass(frozen=True)
class _Handler:
    parse: Callable[[bytes], Any]
    method: Callable[[Any, Any], Any]
    client_streaming: bool = False
    server_streaming: bool = False

    @property
    def streaming(self) -> bool:
        return self.client_streaming or self.server_streaming


@dataclass
class _Stream:
    """One streaming call in progress: its parsed requests and the task serving it."""

    requests: asyncio.Queue[Message | codec.IncomingRequest | None] = field(
        default_factory=asyncio.Queue
    )
    task: asyncio.Task[None] | None = None
    abort: tuple[grpc.StatusCode, str] | None = None


def handlers(inference: Any, health: Any) -> dict[str, _Handler]:
    """Full method path -> handler for every RPC the servicers implement as coroutines
    (or async generators, for streams)."""
    table: dict[str, _Handler] = {}
    services = (
        (INFERENCE, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb, inference),
        (HEALTH, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2, health),
    )
    for prefix, service, module, servicer in services:
        for method in service.methods:
            function = getattr(servicer, method.name, None)
            if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
                continue  # NOTE: e.g. an RPC newer than our servicer: UNIMPLEMENTED, as on aio
            hand_coded = prefix == INFERENCE and method.name in codec.HAND_CODED_METHODS
            table[prefix + method.name] = _Handler(
                codec.parse_infer_request
                if hand_coded
                else getattr(module, method.input_type.name).FromString,
                function,
                method.client_streaming,
                method.server_streaming,
            )
    return table


LaneInputs = list[tuple[str, str, str, int, list[int]]]


def lane_inputs(model: ServedModel) -> tuple[LaneInputs, str]:
    """The input specs a native lane checks requests against, or ([], why) when the model
    stays on the Python path."""
    batcher = model.batcher
    config = model.config
    if batcher is None or not model.batched or not config.HasField("dynamic_batching"):
        return [], "no dynamic batching"
    db = config.dynamic_batching
    if batcher.policy()["timeout_us"]:
        return [], "queue policy timeouts"
    if db.priority_levels > 1 or db.priority_queue_policy:
        return [], "priority levels"
    if any(dt == "BYTES" for dt in model.output_datatypes.values()):
        return [], "BYTES outputs"
    if model.output_reshapes or any(s.reshape is not None for s in model.inputs.values()):
        return [], "config reshape"  # NOTE: the lane hands the engine what clients sent
    if not model.inputs:
        return [], "no inputs"  # NOTE: the lane takes a request's rows from its inputs
    specs = []
    for spec in model.inputs.values():
        if spec.optional or spec.datatype not in WIRE_ITEMSIZE:
            return [], "optional or BYTES inputs"
        dtype = WIRE_TO_NUMPY[spec.datatype].newbyteorder("<").str
        specs.append((spec.name, spec.datatype, dtype, WIRE_ITEMSIZE[spec.datatype],
                      list(spec.dims)))  # fmt: skip
    return specs, ""


class _StreamAbort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class NativeFrontend:
    """Owns the bridge; dispatches its calls to the servicers on the running loop."""

    def __init__(
        self,
        inference: Any,
        health: Any,
        address: str,
        max_message_bytes: int,
        request_observer: Callable[[str, int], RequestObserver] | None = None,
        tls: Any = None,
        restricted: dict[str, Any] | None = None,
    ) -> None:
        self._native = load_bridge()
        self._request_observer = request_observer
        self._lanes: dict[int, NativeLane] = {}  # lane id -> lane, for failures it reports
        self._lane_of: dict[str, NativeLane] = {}  # model name -> its lane now
        self._python_only: weakref.WeakSet[Any] = weakref.WeakSet()  # batchers judged so
        self._handlers = handlers(inference, health)
        streaming = [path for path, h in self._handlers.items() if h.streaming]
        self._bridge = self._native.Bridge(address, max_message_bytes, 1, streaming)
        if tls is not None:  # a runtime.server.tls.TlsFiles, already checked
            root = str(tls.root) if tls.root is not None else ""
            self._bridge.use_tls(str(tls.cert), str(tls.key), root, tls.mutual, TLS_REFRESH_S)
        for method, rule in (restricted or {}).items():  # method path -> Restriction
            self._bridge.restrict(method, rule.header, rule.value)
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, _Stream] = {}
        self._unary: dict[int, asyncio.Task[None]] = {}  # call id -> task answering it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_pending = False

    def start(self) -> int:
        """Bind and start; returns the bound port (OSError when the address is taken)."""
        try:
            port = int(self._bridge.start())
        except RuntimeError as exc:
            raise OSError(str(exc)) from exc
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._bridge.fileno(), self._on_ready)
        return port

    def sync(self, models: list[ServedModel]) -> None:
        """Give each ready model the bridge can serve a native lane; a model with several
        ready versions goes back to the Python path (a lane serves one version)."""
        versions: dict[str, int] = {}
        for m in models:
            versions[m.name] = versions.get(m.name, 0) + 1
        for name, lane in list(self._lane_of.items()):
            if versions.get(name, 0) != 1:
                self._bridge.remove_lane(lane.lane)
                del self._lane_of[name]
        for m in models:
            batcher = m.batcher
            if versions[m.name] != 1 or batcher is None or batcher.native is not None:
                continue
            if batcher.closed or batcher in self._python_only:
                continue
            specs, why = lane_inputs(m)
            if why:
                self._python_only.add(batcher)
                LOGGER.info("%s version %d: ModelInfer on the Python path (%s)", m.name,
                            m.version, why)  # fmt: skip
                continue
            policy = batcher.policy()
            lane = self._bridge.add_lane(
                m.name, str(m.version), specs, list(m.output_names), policy["max_rows"],
                policy["delay_us"], policy["target_rows"], policy["max_queue"],
            )  # fmt: skip
            assert self._loop is not None
            native = NativeLane(
                lane, batcher.engine, batcher.stats, m.output_names, batcher.slots, self._loop,
                batcher.observer,
                self._request_observer(m.name, m.version) if self._request_observer else None,
            )  # fmt: skip
            self._lanes[lane.id] = native
            self._lane_of[m.name] = native
            batcher.attach_native(native)
            LOGGER.info("%s version %d: ModelInfer served by a native lane", m.name, m.version)
        live = {id(lane) for lane in self._lane_of.values()}
        for key, lane in list(self._lanes.items()):
            if id(lane) not in live and not lane.lane.outstanding():
                del self._lanes[key]

    def serve_http(
        self, host: str, port: int, upstream: str, max_body: int,
        restriction: Restriction | None = None,
    ) -> int:
        """KServe v2 HTTP on host:port in the bridge (http_front.h): binary infer requests
        for models with a native lane are served there, everything else is forwarded to the
        aiohttp app on the Unix socket `upstream`. Returns the bound port (OSError when the
        address is taken). `restriction`: the inference group's, when --http-restricted-api
        restricts it (a request without its header is forwarded, and aiohttp refuses it)."""
        header, value = (restriction.header, restriction.value) if restriction else ("", "")
        try:
            return int(self._bridge.serve_http(host, port, upstream, max_body, header, value))
        except RuntimeError as exc:
            raise OSError(str(exc)) from exc

    def stop_lanes(self) -> None:
        """The server is stopping: new requests go to the Python path, which refuses them."""
        self._bridge.set_fast(False)

    def _on_ready(self) -> None:
        for call, method, payload, kind, call_id in self._bridge.poll():
            if kind == self._native.FAILED:  # a lane answered an error itself: count it
                if (lane := self._lanes.get(call_id)) is not None:
                    lane.record_failure(method, int(payload))
                continue
            if kind == self._native.UNARY:
                handler = self._handlers.get(method)
                if handler is None:
                    call.abort(grpc.StatusCode.UNIMPLEMENTED.value[0], f"unknown method {method}")
                    continue
                task = self._spawn(self._answer(handler, call, payload))
                self._unary[call_id] = task
                task.add_done_callback(lambda _, key=call_id: self._unary.pop(key, None))
            elif call_id in self._unary:  # GONE: the caller left before its answer
                self._unary[call_id].cancel(CALLER_GONE)
            elif (handler := self._handlers.get(method)) is not None and handler.streaming:
                self._on_stream_event(handler, kind, call_id, payload)
            # else: a unary call's GONE that crossed its own answer: nothing left to do
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Send what was answered in this loop iteration, once it has run."""
        if not self._flush_pending:
            assert self._loop is not None
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._bridge.flush()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)  # NOTE: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_stream_event(
        self, handler: _Handler, kind: int, stream_id: int, payload: bytes | None
    ) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            if kind == self._native.GONE:  # over before it began: let the bridge free it
                self._bridge.finish(stream_id, grpc.StatusCode.CANCELLED.value[0], "")
                return
            stream = self._streams[stream_id] = _Stream()
            stream.task = self._spawn(self._serve_stream(handler, stream_id, stream))
        if kind == self._native.MESSAGE:
            try:
                stream.requests.put_nowait(handler.parse(payload or b""))
            except DecodeError as exc:
                self._abort_stream(stream, grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {exc}")
        elif kind == self._native.END:
            stream.requests.put_nowait(None)
        # else OPEN: a native lane took its first message; the stream is served from here on
        elif kind == self._native.GONE:
            self._abort_stream(stream, grpc.StatusCode.CANCELLED, "the client went away")

    @staticmethod
    def _abort_stream(stream: _Stream, code: grpc.StatusCode, message: str) -> None:
        if stream.task is not None and not stream.task.done():
            stream.abort = stream.abort or (code, message)
            stream.task.cancel()

    async def _serve_stream(self, handler: _Handler, stream_id: int, stream: _Stream) -> None:
        """Feed the servicer this stream's requests, write what it answers, finish once."""
        def write(body: bytes) -> None:
            self._bridge.write(stream_id, body)
            self._flush_soon()

        context = _Context("", write)
        code, message = grpc.StatusCode.OK, ""

        async def requests() -> AsyncIterator[Message]:
            while (item := await stream.requests.get()) is not None:
                yield item

        try:
            if handler.client_streaming:
                result = handler.method(requests(), context)
            else:
                first = await stream.requests.get()
                if first is None:
                    raise _StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                result = handler.method(first, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    write(response.SerializeToString())
            else:
                await result
        except _StreamAbort as exc:
            code, message = exc.code, exc.message
        except grpc.aio.AbortError:
            code, message = context.code or grpc.StatusCode.UNKNOWN, context.details
        except asyncio.CancelledError:
            code, message = stream.abort or (grpc.StatusCode.CANCELLED, "server is stopping")
        except Exception:
            LOGGER.exception("unhandled error in stream %s", stream_id)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see server log"
        finally:
            self._streams.pop(stream_id, None)
            self._bridge.finish(stream_id, code.value[0], message)
            self._flush_soon()

    async def _answer(self, handler: _Handler, call: Any, payload: bytes) -> None:
        """Parse, run, answer; every path answers the call exactly once."""
        context = _Context(call.peer)
        try:
            try:
                request = handler.parse(payload)
            except DecodeError as exc:
                call.abort(grpc.StatusCode.INVALID_ARGUMENT.value[0], f"bad request: {exc}")
                return
            response = await handler.method(request, context)
            if context.code not in (None, grpc.StatusCode.OK):
                call.abort(context.code.value[0], context.details)
            else:
                call.finish(response.SerializeToString())
        except grpc.aio.AbortError:
            code = context.code or grpc.StatusCode.UNKNOWN
            call.abort(code.value[0], context.details)
        except asyncio.CancelledError as exc:
            gone = bool(exc.args) and exc.args[0] == CALLER_GONE
            call.abort(grpc.StatusCode.CANCELLED.value[0],
                       "the client went away" if gone else "server is stopping")  # fmt: skip
            raise
        except Exception:
            LOGGER.exception("unhandled error in %s", call.method)
            call.abort(grpc.StatusCode.INTERNAL.value[0], "internal error; see server log")
        finally:
            self._flush_soon()

    async def stop(self, grace: float) -> None:
        """Stop reading new calls, let running ones answer within `grace`, then close."""
        if self._loop is not None:
            self._loop.remove_reader(self._bridge.fileno())
            self._on_ready_final()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await asyncio.to_thread(self._bridge.shutdown, 0.0)
        native, python = self._bridge.infer_counts()
        LOGGER.info("ModelInfer calls: %d served by native lanes, %d by the Python path",
                    native, python)  # fmt: skip
        native, python = self._bridge.http_counts()
        if native or python:
            LOGGER.info("HTTP infer requests: %d served by native lanes, %d by the Python path",
                        native, python)  # fmt: skip

    def _on_ready_final(self) -> None:
        """Calls read but not yet dispatched when stopping get UNAVAILABLE, not silence;
        open streams are cancelled and finish themselves."""
        for call, method, payload, kind, stream_id in self._bridge.poll():
            if kind == self._native.FAILED:  # NOTE: its id is a lane's, not a call's or stream's
                if (lane := self._lanes.get(stream_id)) is not None:
                    lane.record_failure(method, int(payload))
                continue
            if kind == self._native.UNARY:
                call.abort(grpc.StatusCode.UNAVAILABLE.value[0], "server is shutting down")
            elif stream_id not in self._streams:
                self._bridge.finish(stream_id, grpc.StatusCode.UNAVAILABLE.value[0], "")
        for stream in list(self._streams.values()):
            self._abort_stream(stream, grpc.StatusCode.UNAVAILABLE, "server is shutting down")
