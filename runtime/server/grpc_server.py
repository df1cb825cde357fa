"""Server assembly: grpc.aio server, servicers, metrics endpoint, graceful stop.

SIGTERM/SIGINT: stop accepting (new RPCs get UNAVAILABLE, health goes
NOT_SERVING), let in-flight requests finish within the grace period, unload,
exit 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2_grpc

from runtime.fileio import write_atomic
from runtime.metrics import Metrics
from runtime.repository.manager import ModelManager
from runtime.server import codec, http_auth, restricted, tls
from runtime.server.health import HealthState
from runtime.server.http_server import HTTP_EXTENSIONS, HttpFrontend
from runtime.server.native_frontend import NativeFrontend, load_bridge
from runtime.server.servicer import InferenceServicer
from runtime.server.shared_memory import SystemSharedMemory
from runtime.settings import Settings, http_restricted_api, http_use_ssl

LOGGER = logging.getLogger(__name__)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.grpc_max_message_bytes
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


class _Capture:
    """Stands in for the server while the generated stub registers the service, so the
    handlers can be adjusted before the real server sees them."""

    def __init__(self) -> None:
        self.registered: tuple[str, dict[str, Any]] | None = None

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # NOTE: rebuilt below from the registered handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered = (service, handlers)


def add_inference_service(servicer: Any, server: grpc.aio.Server) -> None:
    """The generated registration, with `codec`'s parser and serializer for its hand-coded
    methods: requests whose raw inputs stay views of the received bytes, and answers taken
    as hand-built `codec.Serialized` as well as messages (the stub's own serializer insists
    on its message class)."""
    capture = _Capture()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    if capture.registered is None:  # NOTE: older stubs register only a generic handler
        raise RuntimeError("tritonclient's service stub did not register its method handlers")
    service, handlers = capture.registered
    handlers = {
        name: h._replace(
            request_deserializer=codec.parse_infer_request, response_serializer=_serialize
        )
        if name in codec.HAND_CODED_METHODS
        else h
        for name, h in handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


class Server:
    """One running server: gRPC + metrics over a ModelManager."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self._tasks: set[asyncio.Task[None]] = set()
        self.manager = ModelManager(
            settings, observer_factory=self._observer, on_change=self._changed
        )
        self.metrics = Metrics(self.registry, self.manager.ready_models)
        self.servicer = InferenceServicer(
            self.manager, self.metrics, settings.grpc_max_message_bytes
        )
        self.shared_memory = SystemSharedMemory()
        self.servicer.shared_memory = self.shared_memory
        self.servicer.extensions = (*self.servicer.extensions, "system_shared_memory")
        if settings.http_port >= 0:
            self.servicer.extensions = (*self.servicer.extensions, *HTTP_EXTENSIONS)
        self._http: HttpFrontend | None = None
        self.http_port = -1  # -1: HTTP disabled (as the flag says)
        self.http_front = "python"  # "native": the bridge serves the port (native/http_front.h)
        self._health = HealthState(self.manager)
        self._server: grpc.aio.Server | None = None
        self._native: NativeFrontend | None = None
        self._stopping = asyncio.Event()
        # NOTE: read at construction, so a bad file or flag fails before anything binds
        self._tls_files = tls.grpc_files(settings)
        self._tls = tls.CertificateReloader(self._tls_files) if self._tls_files else None
        self._metrics_tls = tls.metrics_context(settings)
        self._metrics_users = (
            http_auth.load_credentials(settings.metrics_basic_auth_file)
            if settings.metrics_basic_auth_file is not None
            else None
        )
        self._restricted = restricted.by_method(
            restricted.parse(settings.grpc_restricted_protocol)
        )
        http_files = tls.http_files(settings) if settings.http_port >= 0 else None
        self._http_tls = (
            tls.RotatingServerContext(tls.CertificateReloader(http_files)) if http_files else None
        )
        self._http_restricted = restricted.parse(
            *http_restricted_api(settings), header_prefix=""
        )  # NOTE: tritonserver's HTTP header is the bare key
        self.grpc_port = 0
        self.metrics_port = -1  # -1: metrics disabled (as the flag says)
        self.frontend = settings.grpc_frontend

    def _observer(self, name: str, version: int):  # noqa: ANN202 - BatchObserver
        return self.metrics.batch_observer(name, version)

    def _request_observer(self, name: str, version: int):  # noqa: ANN202 - RequestObserver
        def observe(elapsed_ns: int, queued_ns: int) -> None:
            h = self.metrics.histograms(name, version)
            h.request.observe(elapsed_ns / 1e9)
            h.queue.observe(queued_ns / 1e9)

        return observe

    def _changed(self) -> None:
        self.metrics.forget_unloaded((m.name, m.version) for m in self.manager.ready_models())
        if self._native is not None and self.servicer.accepting:
            self._native.sync(self.manager.ready_models())
        task = asyncio.get_running_loop().create_task(self._refresh_health())
        self._tasks.add(task)  # NOTE: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _refresh_health(self) -> None:
        await self._health.update(self.servicer.server_ready())

    def _bind_aio(self) -> grpc.aio.Server:
        s = self.settings
        interceptors = [restricted.grpc_interceptor(self._restricted)] if self._restricted else []
        server = grpc.aio.server(options=grpc_options(s), interceptors=interceptors)
        add_inference_service(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, server)
        address = f"{s.host}:{s.grpc_port}"
        try:
            if self._tls is not None:
                credentials = tls.grpc_server_credentials(self._tls)
                self.grpc_port = server.add_secure_port(address, credentials)
            else:
                self.grpc_port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc reports a taken port this way
            raise OSError(f"cannot bind gRPC port {s.host}:{s.grpc_port}: {exc}") from exc
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {s.host}:{s.grpc_port}")
        return server

    def _frontend(self) -> str:
        """The frontend to serve with: `auto` is native where the bridge is built, and says
        why not (and how to build it) where it is not."""
        if self.settings.grpc_frontend != "auto":
            return self.settings.grpc_frontend
        try:
            load_bridge()
        except ImportError as exc:
            LOGGER.warning("serving gRPC with grpc.aio, slower than the native frontend: %s (%s)",
                           exc, exc.__cause__)  # fmt: skip
            return "python"
        return "native"

    async def start(self) -> None:
        s = self.settings
        server: grpc.aio.Server | None = None
        self.frontend = self._frontend()
        if self.frontend == "native":
            address = f"{s.host}:{s.grpc_port}"
            self._native = NativeFrontend(
                self.servicer,
                self._health.servicer,
                address,
                s.grpc_max_message_bytes,
                self._request_observer,
                self._tls_files,
                self._restricted,
            )
        else:
            server = self._bind_aio()
        if s.metrics_port >= 0:
            try:
                self.metrics_port = self.metrics.serve(
                    s.host, s.metrics_port, self._metrics_tls, self._metrics_users
                )
            except OSError as exc:
                raise OSError(f"cannot bind metrics port {s.host}:{s.metrics_port}: {exc}") from exc
        if s.http_port >= 0:
            http_host = s.http_address or s.host
            self._http = HttpFrontend(
                self.servicer, s.http_max_input_size,
                self._http_tls.context if self._http_tls else None, self._http_restricted,
            )  # fmt: skip
            upstream = None
            if self._native is not None and self._http_tls is None:
                # NOTE: no TLS in the C++ front: HTTPS stays aiohttp's (ssl module)
                try:
                    upstream = await self._http.start_unix()
                except OSError as exc:  # e.g. a read-only filesystem with no writable TMPDIR
                    LOGGER.warning("HTTP served by aiohttp alone (slower): the native front "
                                   "needs a private socket in TMPDIR: %s", exc)  # fmt: skip
            try:
                if upstream is not None:
                    self.http_port = self._native.serve_http(
                        http_host, s.http_port, upstream, s.http_max_input_size,
                        self._http_restricted.get("inference"),
                    )  # fmt: skip
                    self.http_front = "native"
                else:
                    self.http_port = await self._http.start(http_host, s.http_port)
            except OSError as exc:
                await self._http.stop()
                raise OSError(f"cannot bind HTTP port {http_host}:{s.http_port}: {exc}") from exc
        await self._health.update(False)
        if self._native is not None:
            try:
                self.grpc_port = self._native.start()
            except OSError as exc:
                raise OSError(f"cannot bind gRPC port {s.host}:{s.grpc_port}: {exc}") from exc
        else:
            assert server is not None
            await server.start()
            self._server = server
        metrics_at = f"on {s.host}:{self.metrics_port}" if self.metrics_port >= 0 else "disabled"
        security = ("mutual TLS" if s.grpc_use_ssl_mutual else "TLS") if self._tls else "plaintext"
        http_at = f"on {s.http_address or s.host}:{self.http_port}" if self._http else "disabled"
        if self._http is not None:
            http_security = ("mutual TLS" if http_use_ssl(s)[1] else "TLS") if self._http_tls \
                else "plaintext"  # fmt: skip
            http_at += f" via the {self.http_front} front ({http_security})"
            if self._tls is not None and self._http_tls is None:
                LOGGER.warning(
                    "gRPC uses TLS but HTTP on port %d is plaintext (--http-use-ssl false): "
                    "drop that flag to serve HTTPS, or --http-port -1", self.http_port,
                )  # fmt: skip
            if self._restricted and not self._http_restricted:
                LOGGER.warning(
                    "gRPC protocols are restricted but HTTP on port %d restricts nothing "
                    "(--http-restricted-api none)", self.http_port,
                )  # fmt: skip
        LOGGER.info(
            "gRPC on %s:%d (%s frontend, %s), HTTP %s, metrics %s, repository %s (control mode %s)",
            s.host, self.grpc_port, self.frontend, security, http_at, metrics_at,
            s.model_repository, s.model_control_mode,
        )  # fmt: skip
        await self.manager.start_safely()
        self.servicer.started = True
        await self._refresh_health()
        if s.port_file is not None:  # NOTE: atomic: a reader polling for it never sees it empty
            ports = {"grpc": self.grpc_port, "http": self.http_port, "metrics": self.metrics_port}
            write_atomic(s.port_file, json.dumps(ports).encode())
        LOGGER.info("server ready: %s", self.servicer.server_ready())

    def request_stop(self) -> None:
        if self._stopping.is_set():
            # NOTE: a second SIGTERM/SIGINT (Ctrl-C twice) means now, as in tritonserver
            LOGGER.warning("second stop signal: exiting without waiting for in-flight requests")
            logging.shutdown()
            os._exit(1)
        self._stopping.set()

    async def wait_and_stop(self) -> None:
        await self._stopping.wait()
        LOGGER.info("stopping: draining in-flight requests")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_secs

        def left() -> float:  # NOTE: one grace period for the whole stop, not one per step
            return max(deadline - loop.time(), 0.0)

        self.servicer.accepting = False
        if self._native is not None:
            self._native.stop_lanes()
        self.servicer.stopping.set()
        await self._health.update(False)
        await self.manager.stop(left())
        await self._health.shutdown()
        if self._server is not None:
            await self._server.stop(left())
        if self._native is not None:
            await self._native.stop(left())
        if self._http is not None:
            await self._http.stop()
        self.shared_memory.close()
        await asyncio.to_thread(self.metrics.close)
        LOGGER.info("stopped")


async def serve(settings: Settings) -> None:
    server = Server(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    await server.start()
    await server.wait_and_stop()
