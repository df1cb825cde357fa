"""`sparse-runtime serve`: run the gRPC + metrics server over a model repository."""

from __future__ import annotations

import argparse
import asyncio
import logging

from runtime import settings as settings_mod


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_mod.from_args(args)
    logging.basicConfig(
        level=logging.DEBUG if settings.log_verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from runtime.server.grpc_server import serve

    try:  # NOTE: uvloop cuts per-request loop overhead noticeably on small hosts
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency on Linux
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
