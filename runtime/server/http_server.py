"""KServe v2 HTTP/REST frontend (Triton's routes and extensions) over the gRPC servicer.

Every route builds the servicer's request message, awaits the same servicer method the
gRPC frontends call, and writes its answer as Triton's HTTP API does; errors are
`{"error": "..."}` with the HTTP status tritonserver maps each status code to.

Why aiohttp: it serves on the running asyncio (uvloop) loop beside either gRPC frontend,
so both transports share one servicer, batcher and event loop with no thread hand-off;
its HTTP parser is C (llhttp), it is well kept, and tritonclient[http] (its aio client)
installs it anyway. With the native frontend and plain HTTP, the bridge's HTTP front
(native/http_front.h) owns the TCP port, serves binary infers for native lanes itself and
forwards everything else here, over a private Unix socket (`start_unix`).
"""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

from runtime.errors import InvalidArgument, RuntimeServerError
from runtime.server import http_codec
from runtime.server.restricted import HTTP_MESSAGE, Restriction
from runtime.server.servicer import InferenceServicer

LOGGER = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.ALREADY_EXISTS: 400,
    grpc.StatusCode.CANCELLED: 400,
    grpc.StatusCode.UNKNOWN: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
}
"""gRPC status -> HTTP status, as tritonserver's HttpCodeFromError maps its error codes
(INVALID_ARG/UNKNOWN/ALREADY_EXISTS/CANCELLED 400, NOT_FOUND 404, UNAVAILABLE 503,
UNSUPPORTED 501, INTERNAL 500)."""

HTTP_EXTENSIONS = ("binary_tensor_data",)
"""Extensions only the HTTP frontend serves (advertised when it runs)."""


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of grpc.aio.ServicerContext the servicer uses on unary calls."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _json(data: Any) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), content_type="application/json"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Servicer aborts and our errors -> Triton's status and `{"error": ...}` body."""
    try:
        return await handler(request)
    except _Abort as err:
        return _error(HTTP_STATUS.get(err.code, 400), err.details)
    except RuntimeServerError as err:
        return _error(HTTP_STATUS.get(err.code, 400), str(err))
    except web.HTTPRequestEntityTooLarge:
        # NOTE: tritonserver's code (400) and wording; aiohttp stops reading at the limit
        size = request.content_length
        return _error(400, (
            f"Request size of {'over ' if size is None else ''}"
            f"{request.client_max_size if size is None else size} bytes exceeds the maximum "
            f"allowed value of {request.client_max_size} bytes. Use --http-max-input-size to "
            "increase the limit."
        ))
    except web.HTTPMethodNotAllowed:
        return _error(405, "Method Not Allowed")
    except web.HTTPNotFound:
        return _error(404, "Not Found")
    except (web.HTTPException, ConnectionResetError):  # NOTE: the latter: a client gone mid-body
        raise  # aiohttp answers these (or, for a client gone, logs it at debug level)
    except Exception:
        LOGGER.exception("unhandled error in HTTP %s %s", request.method, request.path)
        return _error(500, "internal error; see server log")


def _restricting(
    groups: Mapping[str, str], restrictions: Mapping[str, Restriction]
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware for --http-restricted-api: a route of a restricted API group answers 403
    `{"error": "This API is restricted, expecting header '<key>'"}` unless the request
    carries header <key> with the agreed value (tritonserver's RespondIfRestricted)."""

    @web.middleware
    async def restricted(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = getattr(request.match_info.route, "resource", None)
        if resource is None and isinstance(
            getattr(request.match_info, "http_exception", None), web.HTTPMethodNotAllowed
        ):  # NOTE: as tritonserver, the restriction is checked before the method
            for candidate in request.app.router.resources():
                if (await candidate.resolve(request))[1]:  # its path matched, its method not
                    resource = candidate
                    break
        group = groups.get(resource.canonical) if resource is not None else None
        rule = restrictions.get(group) if group is not None else None
        if rule is not None and request.headers.get(rule.header) != rule.value:
            return _error(403, HTTP_MESSAGE.format(rule.header))
        return await handler(request)

    return restricted


async def _body_json(request: web.Request) -> dict[str, Any]:
    """An optional JSON object body (repository and shared-memory routes)."""
    body = await request.read()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("failed to parse the request JSON buffer: not a JSON object")
    return data


class HttpFrontend:
    """The aiohttp application and its listening site."""

    def __init__(
        self,
        servicer: InferenceServicer,
        max_body_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        restrictions: Mapping[str, Restriction] | None = None,
    ) -> None:
        self.servicer = servicer
        self._ctx = _Context()
        self._ssl = ssl_context
        self.groups: dict[str, str] = {}  # canonical path -> API group (restricted.PROTOCOLS)
        middlewares: list[Any] = [_errors]
        if restrictions:  # NOTE: no per-request cost unless something is restricted
            middlewares.insert(0, _restricting(self.groups, restrictions))
        self.app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
        self._routes()
        self._runner: web.AppRunner | None = None
        self._socket_dir: Path | None = None
        self.port = -1

    def _routes(self) -> None:
        r = self.app.router

        def add(method: str, path: str, handler: Handler, group: str) -> None:
            route = r.add_route(method, path, handler)
            # NOTE: keyed as the middleware looks it up: aiohttp's canonical form drops a
            # placeholder's regex ('/v2/trace/{tail:.*}' -> '/v2/trace/{tail}')
            self.groups[route.resource.canonical] = group  # tritonserver's RestrictedCategory

        m = "/v2/models/{model}"
        mv = "/v2/models/{model}/versions/{version}"
        add("GET", "/v2/health/live", self.live, "health")
        add("GET", "/v2/health/ready", self.ready, "health")
        add("GET", "/v2", self.server_metadata, "metadata")
        add("GET", "/v2/models/stats", self.statistics, "statistics")
        for base in (m, mv):
            add("GET", base, self.model_metadata, "metadata")
            add("GET", base + "/ready", self.model_ready, "health")
            add("GET", base + "/config", self.model_config, "model-config")
            add("GET", base + "/stats", self.statistics, "statistics")
            add("POST", base + "/infer", self.infer, "inference")
        add("POST", "/v2/repository/index", self.repository_index, "model-repository")
        add("POST", "/v2/repository/models/{model}/load", self.load, "model-repository")
        add("POST", "/v2/repository/models/{model}/unload", self.unload, "model-repository")
        shm = "/v2/systemsharedmemory"
        add("GET", shm + "/status", self.shm_status, "shared-memory")
        add("GET", shm + "/region/{region}/status", self.shm_status, "shared-memory")
        add("POST", shm + "/region/{region}/register", self.shm_register, "shared-memory")
        add("POST", shm + "/unregister", self.shm_unregister, "shared-memory")
        add("POST", shm + "/region/{region}/unregister", self.shm_unregister, "shared-memory")
        add("*", "/v2/cudasharedmemory/{tail:.*}", self.unsupported, "shared-memory")
        add("*", "/v2/trace/{tail:.*}", self.unsupported, "trace")
        add("*", "/v2/logging", self.unsupported, "logging")

    # ---- lifecycle ------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Serve on host:port; returns the bound port."""
        runner = await self._serve(
            lambda r: web.TCPSite(
                r, host, port, shutdown_timeout=1.0, reuse_address=True, ssl_context=self._ssl
            )
        )
        self.port = int(runner.addresses[0][1])
        return self.port

    async def start_unix(self) -> str:
        """Serve on a private Unix socket, behind the native HTTP front (http_front.h, which
        forwards what it does not serve itself); returns the socket's path."""
        self._socket_dir = Path(tempfile.mkdtemp(prefix="sparse-runtime-http-"))  # mode 0700
        path = str(self._socket_dir / "aiohttp.sock")
        await self._serve(lambda r: web.UnixSite(r, path, shutdown_timeout=1.0))
        return path

    async def _serve(self, site_of: Callable[[web.AppRunner], web.BaseSite]) -> web.AppRunner:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await site_of(runner).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        return runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # ---- routes -----------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        reply = await self.servicer.ServerLive(pb.ServerLiveRequest(), self._ctx)
        return web.Response(status=200 if reply.live else 400)

    async def ready(self, request: web.Request) -> web.Response:
        reply = await self.servicer.ServerReady(pb.ServerReadyRequest(), self._ctx)
        return web.Response(status=200 if reply.ready else 400)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        reply = await self.servicer.ModelReady(
            pb.ModelReadyRequest(name=name, version=version), self._ctx
        )
        return web.Response(status=200 if reply.ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        reply = await self.servicer.ServerMetadata(pb.ServerMetadataRequest(), self._ctx)
        return _json(
            {"name": reply.name, "version": reply.version, "extensions": list(reply.extensions)}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        reply = await self.servicer.ModelMetadata(
            pb.ModelMetadataRequest(name=name, version=version), self._ctx
        )
        return _json(http_codec.model_metadata_json(reply))

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        reply = await self.servicer.ModelConfig(
            pb.ModelConfigRequest(name=name, version=version), self._ctx
        )
        return _json(http_codec.message_json(reply.config, defaults=True))

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        reply = await self.servicer.ModelStatistics(
            pb.ModelStatisticsRequest(name=name, version=version), self._ctx
        )
        stats = [http_codec.message_json(s, defaults=True) for s in reply.model_stats]
        return _json({"model_stats": stats})

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await _body_json(request)
        reply = await self.servicer.RepositoryIndex(
            pb.RepositoryIndexRequest(ready=bool(body.get("ready", False))), self._ctx
        )
        return _json([http_codec.message_json(m) for m in reply.models])

    async def load(self, request: web.Request) -> web.Response:
        body = await _body_json(request)
        message = pb.RepositoryModelLoadRequest(model_name=request.match_info["model"])
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        if isinstance(params.get("config"), dict):  # NOTE: JSON config given as an object
            params = {**params, "config": json.dumps(params["config"])}
        http_codec.parameters_message(params, message.parameters, "load")
        await self.servicer.RepositoryModelLoad(message, self._ctx)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        body = await _body_json(request)
        message = pb.RepositoryModelUnloadRequest(model_name=request.match_info["model"])
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        http_codec.parameters_message(params, message.parameters, "unload")
        await self.servicer.RepositoryModelUnload(message, self._ctx)
        return web.Response(status=200)

    async def shm_status(self, request: web.Request) -> web.Response:
        reply = await self.servicer.SystemSharedMemoryStatus(
            pb.SystemSharedMemoryStatusRequest(name=request.match_info.get("region", "")),
            self._ctx,
        )
        regions = [http_codec.message_json(r, defaults=True) for r in reply.regions.values()]
        return _json(regions)

    async def shm_register(self, request: web.Request) -> web.Response:
        body = await _body_json(request)
        key, offset, size = body.get("key"), body.get("offset", 0), body.get("byte_size")
        if not isinstance(key, str) or not isinstance(offset, int) or not isinstance(size, int):
            raise InvalidArgument(
                "shared memory register needs 'key' (string), 'offset' and 'byte_size' (integers)"
            )
        try:
            message = pb.SystemSharedMemoryRegisterRequest(
                name=request.match_info["region"], key=key, offset=offset, byte_size=size
            )
        except ValueError as exc:  # NOTE: protobuf: an offset or size past uint64
            raise InvalidArgument(f"shared memory register: {exc}") from None
        await self.servicer.SystemSharedMemoryRegister(message, self._ctx)
        return web.Response(status=200)

    async def shm_unregister(self, request: web.Request) -> web.Response:
        await self.servicer.SystemSharedMemoryUnregister(
            pb.SystemSharedMemoryUnregisterRequest(name=request.match_info.get("region", "")),
            self._ctx,
        )
        return web.Response(status=200)

    async def unsupported(self, request: web.Request) -> web.Response:
        return _error(501, "CUDA shared memory, trace and log settings are not supported")

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        body = await request.read()
        try:
            parsed, binary_default, binary = http_codec.parse_infer_request(
                body, request.headers.get(http_codec.HEADER_LENGTH), name, version
            )
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # NOTE: a safety net: every shape of bad body should get a 400, never a 500
            raise InvalidArgument(f"failed to parse the request: {exc}") from None

        def encode(*args: Any) -> http_codec.HttpBody:
            model_name, model_version, request_id, outputs, names, in_shm = args
            return http_codec.encode_response(
                model_name, model_version, request_id, outputs, names,
                binary_default, binary, in_shm,
            )  # fmt: skip

        try:
            answer = await self.servicer._infer(parsed, encode=encode)
        except RuntimeServerError as err:  # NOTE: as ModelInfer's _rpc wrapper answers
            return _error(HTTP_STATUS.get(err.code, 400), str(err))
        if answer.header_length is None:
            return web.Response(body=answer.data, content_type="application/json")
        return web.Response(
            body=answer.data,
            content_type="application/octet-stream",
            headers={http_codec.HEADER_LENGTH: str(answer.header_length)},
        )


__all__ = ["HTTP_EXTENSIONS", "HttpFrontend"]
