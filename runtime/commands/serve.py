"""`sparse-runtime serve`: run the gRPC + metrics server over a model repository."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from runtime import settings as settings_mod

LOGGER = logging.getLogger("runtime.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_args(args)
    except ValueError as exc:
        print(f"sparse-runtime serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if settings.log_verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from runtime.hostmem import keep_large_buffers
    from runtime.server.grpc_server import serve

    keep_large_buffers(settings.host_buffer_reuse_bytes)

    if not settings.model_repository.is_dir():
        LOGGER.error("model repository '%s' is not a directory", settings.model_repository)
        return 1
    try:  # NOTE: uvloop cuts per-request loop overhead noticeably on small hosts
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a core dependency on Linux
        runner = asyncio.run
    try:
        runner(serve(settings))
    except (OSError, ImportError) as exc:  # NOTE: ImportError: native frontend not built
        LOGGER.error("%s", exc)
        return 1
    return 0
