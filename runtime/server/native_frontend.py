"""The native gRPC frontend: grpc++ threads take the calls, this loop answers them.

Same servicers, same stubs, same status codes as the grpc.aio frontend; only the
transport differs (runtime/server/native/grpc_bridge.cc). Each read request arrives
as (call, method, bytes) through an eventfd the event loop watches; it is parsed
with the tritonclient / grpc_health stubs, run by the servicer method of that name
as a task, and answered exactly once. Unary RPCs only: ModelStreamInfer and
Health.Watch answer UNIMPLEMENTED with a message naming the frontend that has them.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as pb

LOGGER = logging.getLogger(__name__)

INFERENCE = "/inference.GRPCInferenceService/"
HEALTH = "/grpc.health.v1.Health/"


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
    """The part of grpc.aio.ServicerContext our servicers use: abort, and status setters."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


@dataclass(frozen=True)
class _Handler:
    request_type: type[Message]
    method: Callable[[Any, Any], Awaitable[Any]]


def handlers(inference: Any, health: Any) -> tuple[dict[str, _Handler], set[str]]:
    """Full method path -> handler for every unary RPC; the streaming ones apart."""
    table: dict[str, _Handler] = {}
    streaming: set[str] = set()
    services = (
        (INFERENCE, pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], pb, inference),
        (HEALTH, health_pb2.DESCRIPTOR.services_by_name["Health"], health_pb2, health),
    )
    for prefix, service, module, servicer in services:
        for method in service.methods:
            path = prefix + method.name
            if method.client_streaming or method.server_streaming:
                streaming.add(path)
                continue
            function = getattr(servicer, method.name, None)
            if not inspect.iscoroutinefunction(function):
                continue  # NOTE: e.g. an RPC newer than our servicer: UNIMPLEMENTED, as on aio
            table[path] = _Handler(getattr(module, method.input_type.name), function)
    return table, streaming


class NativeFrontend:
    """Owns the bridge; dispatches its calls to the servicers on the running loop."""

    def __init__(self, inference: Any, health: Any, address: str, max_message_bytes: int) -> None:
        self._bridge = load_bridge().Bridge(address, max_message_bytes, 1)
        self._handlers, self._streaming = handlers(inference, health)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> int:
        """Bind and start; returns the bound port (OSError when the address is taken)."""
        try:
            port = int(self._bridge.start())
        except RuntimeError as exc:
            raise OSError(str(exc)) from exc
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._bridge.fileno(), self._on_ready)
        return port

    def _on_ready(self) -> None:
        assert self._loop is not None
        for call, method, payload in self._bridge.poll():
            handler = self._handlers.get(method)
            if handler is None:
                call.abort(grpc.StatusCode.UNIMPLEMENTED.value[0], self._unknown(method))
                continue
            task = self._loop.create_task(self._answer(handler, call, payload))
            self._tasks.add(task)  # NOTE: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    def _unknown(self, method: str) -> str:
        if method in self._streaming:
            return (
                f"{method} is a streaming RPC; the native frontend serves unary RPCs only "
                "(start the server with --grpc-frontend python for streaming)"
            )
        return f"unknown method {method}"

    async def _answer(self, handler: _Handler, call: Any, payload: bytes) -> None:
        """Parse, run, answer; every path answers the call exactly once."""
        context = _Context(call.peer)
        try:
            try:
                request = handler.request_type.FromString(payload)
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
        except asyncio.CancelledError:
            call.abort(grpc.StatusCode.CANCELLED.value[0], "server is stopping")
            raise
        except Exception:
            LOGGER.exception("unhandled error in %s", call.method)
            call.abort(grpc.StatusCode.INTERNAL.value[0], "internal error; see server log")

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

    def _on_ready_final(self) -> None:
        """Calls read but not yet dispatched when stopping get UNAVAILABLE, not silence."""
        for call, _method, _payload in self._bridge.poll():
            call.abort(grpc.StatusCode.UNAVAILABLE.value[0], "server is shutting down")
