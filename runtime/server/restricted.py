"""Restricted protocols, as tritonserver 2.51: a group of APIs answers only callers that
send an agreed header.

`--grpc-restricted-protocol=<protocols>:<key>=<value>` (the flag may repeat) restricts each
protocol named; a gRPC call to one of its methods must carry the metadata
`triton-grpc-protocol-<key>: <value>`, else it is answered UNAVAILABLE "This protocol is
restricted, expecting header 'triton-grpc-protocol-<key>'". The grouping of RPCs into
protocols is tritonserver's (grpc.health.v1 counts as health there too). `parse` takes the
header prefix, so the HTTP endpoint reuses it for `--http-restricted-api`: there
tritonserver (http_server.cc RespondIfRestricted) expects the bare key as the header and
answers 403 `{"error": "This API is restricted, expecting header '<key>'"}` (HTTP_MESSAGE).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
MESSAGE = "This protocol is restricted, expecting header '{}'"
HTTP_MESSAGE = "This API is restricted, expecting header '{}'"

_TRITON = "/inference.GRPCInferenceService/"
_HEALTH = "/grpc.health.v1.Health/"

# protocol -> the RPCs it covers (tritonserver's RestrictedCategory per RPC)
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "health": (_TRITON + "ServerLive", _TRITON + "ServerReady", _TRITON + "ModelReady",
               _HEALTH + "Check", _HEALTH + "Watch"),
    "metadata": (_TRITON + "ServerMetadata", _TRITON + "ModelMetadata"),
    "inference": (_TRITON + "ModelInfer", _TRITON + "ModelStreamInfer"),
    "shared-memory": tuple(
        _TRITON + kind + "SharedMemory" + op
        for kind in ("System", "Cuda") for op in ("Status", "Register", "Unregister")
    ),
    "model-config": (_TRITON + "ModelConfig",),
    "model-repository": (_TRITON + "RepositoryIndex", _TRITON + "RepositoryModelLoad",
                         _TRITON + "RepositoryModelUnload"),
    "statistics": (_TRITON + "ModelStatistics",),
    "trace": (_TRITON + "TraceSetting",),
    "logging": (_TRITON + "LogSettings",),
}  # fmt: skip

_TOKEN = re.compile(r"^[a-z0-9_.-]+$")  # NOTE: what gRPC accepts in a metadata key


@dataclass(frozen=True)
class Restriction:
    """The header a restricted protocol's caller must send, and its value."""

    header: str
    value: str

    @property
    def message(self) -> str:
        return MESSAGE.format(self.header)


def parse(
    specs: Iterable[str],
    flag: str = "--grpc-restricted-protocol",
    header_prefix: str = GRPC_HEADER_PREFIX,
) -> dict[str, Restriction]:
    """Flag values -> protocol -> Restriction; ValueError says which value is wrong."""
    out: dict[str, Restriction] = {}
    for spec in specs:
        protocols, sep, pair = spec.partition(":")
        key, eq, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or not eq or not key or not protocols.strip():
            raise ValueError(f"{flag} '{spec}': expected <protocols>:<key>=<value>")
        if not _TOKEN.match(key):
            raise ValueError(
                f"{flag} '{spec}': the key may hold only letters, digits, '-', '_' and '.'"
            )
        for name in (p.strip() for p in protocols.split(",")):
            if name not in PROTOCOLS:
                raise ValueError(
                    f"{flag} '{spec}': unknown protocol '{name}'; "
                    f"known: {', '.join(PROTOCOLS)}"
                )
            if name in out:
                raise ValueError(f"{flag}: protocol '{name}' is restricted more than once")
            out[name] = Restriction(header_prefix + key, value)
    return out


def by_method(restrictions: Mapping[str, Restriction]) -> dict[str, Restriction]:
    """Full gRPC method path -> its Restriction, for the restricted protocols only."""
    return {m: r for name, r in restrictions.items() for m in PROTOCOLS[name]}


def refusal(restriction: Restriction | None, headers: Iterable[tuple[str, Any]]) -> str | None:
    """None when the call may proceed, else the message to refuse it with."""
    if restriction is None:
        return None
    for key, value in headers:
        if key == restriction.header and value == restriction.value:
            return None
    return restriction.message


def grpc_interceptor(methods: Mapping[str, Restriction]) -> Any:
    """A grpc.aio server interceptor that answers a restricted call without the header
    UNAVAILABLE before its handler runs; only installed when something is restricted."""
    import grpc

    class RestrictedProtocols(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = await continuation(details)
            message = refusal(methods.get(details.method), details.invocation_metadata or ())
            if handler is None or message is None:
                return handler
            return _refusing(handler, message)

    return RestrictedProtocols()


def _refusing(handler: Any, message: str) -> Any:
    """A handler of the same kind as `handler` that answers UNAVAILABLE `message`."""
    import grpc

    async def refuse(_request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}  # fmt: skip
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
