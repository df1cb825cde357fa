"""`sparse-runtime health`: probe a server's grpc.health.v1 service (container HEALTHCHECK)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # NOTE: the default follows SPARSE_RUNTIME_GRPC_PORT, as `serve` does, so the image's
    # HEALTHCHECK probes the port the server was moved to
    port = os.environ.get("SPARSE_RUNTIME_GRPC_PORT", "8001")
    parser.add_argument(
        "--url", default=f"localhost:{port}",
        help="gRPC host:port (default localhost:$SPARSE_RUNTIME_GRPC_PORT, else 8001)",
    )  # fmt: skip
    parser.add_argument("--service", default="", help="service name ('' = server readiness)")
    parser.add_argument("--timeout", type=_seconds, default=3.0, help="seconds (> 0)")
    add_tls_arguments(parser, env_prefix="SPARSE_RUNTIME_HEALTH_")


def add_tls_arguments(parser: argparse.ArgumentParser, env_prefix: str | None = None) -> None:
    """Client-side TLS options (shared with `compare`). With `env_prefix`, each defaults to
    the environment variable <prefix>SSL / ROOT_CERT / CLIENT_CERT / CLIENT_KEY, so the
    image's HEALTHCHECK can probe a TLS server without a new command line."""

    def env(name: str) -> str | None:
        return os.environ.get(env_prefix + name) or None if env_prefix else None

    def path(name: str) -> Path | None:
        value = env(name)
        return Path(value) if value else None

    hint = f" [env {env_prefix}<NAME>]" if env_prefix else ""
    group = parser.add_argument_group("TLS (a server started with --grpc-use-ssl)" + hint)
    group.add_argument("--ssl", action="store_true",
                       default=(env("SSL") or "").lower() in ("1", "true", "yes", "on"),
                       help="connect over TLS")
    group.add_argument("--root-cert", type=Path, default=path("ROOT_CERT"),
                       help="PEM CA certificate(s) to trust (default: the system's)")
    group.add_argument("--client-cert", type=Path, default=path("CLIENT_CERT"),
                       help="PEM client certificate, for mutual TLS")
    group.add_argument("--client-key", type=Path, default=path("CLIENT_KEY"),
                       help="PEM key of --client-cert")  # fmt: skip


def open_channel(args: argparse.Namespace, url: str) -> Any:
    """A grpc channel to `url`, over TLS when --ssl (or a TLS file) was given."""
    import grpc

    if not (args.ssl or args.root_cert or args.client_cert or args.client_key):
        return grpc.insecure_channel(url)
    from runtime.server.tls import grpc_channel_credentials

    creds = grpc_channel_credentials(args.root_cert, args.client_cert, args.client_key)
    return grpc.secure_channel(url, creds)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from runtime.server.tls import TlsConfigError

    try:
        channel = open_channel(args, args.url)
    except TlsConfigError as exc:
        print(f"sparse-runtime health: {exc}", file=sys.stderr)
        return 2
    try:
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as err:
        detail = err.details() or (
            f"no such service {args.service!r}" if err.code() == grpc.StatusCode.NOT_FOUND
            else "no detail from the server"
        )  # fmt: skip
        print(f"unhealthy: {err.code().name}: {detail}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
