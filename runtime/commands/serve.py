"""`sparse-runtime serve`: run the gRPC + metrics server over a model repository."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time

from runtime import settings as settings_mod

LOGGER = logging.getLogger("runtime.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from runtime.server import http_auth, restricted, tls

    try:
        settings = settings_mod.from_args(args)
        restricted.parse(settings.grpc_restricted_protocol)
        restricted.parse(*settings_mod.http_restricted_api(settings), "")
        if settings.trusted_keys is not None:  # NOTE: a typo here must not refuse every model
            from runtime.signing import load_trusted

            load_trusted(settings.trusted_keys)
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
    # NOTE: ImportError: native frontend not built; TlsConfigError names the file at fault
    except (OSError, ImportError, tls.TlsConfigError, http_auth.AuthFileError) as exc:
        LOGGER.error("%s", exc)
        return 1
    _exit_now_if_engines_still_run()
    return 0


def _exit_now_if_engines_still_run() -> None:
    """The grace period is over but an engine call still computes: exit now, not when it
    ends (the interpreter would join its thread first, past the grace period)."""
    from runtime.batching.batcher import ENGINE_THREAD_PREFIX

    def engine_threads() -> list[threading.Thread]:  # NOTE: named by DynamicBatcher
        return [t for t in threading.enumerate() if t.name.startswith(ENGINE_THREAD_PREFIX)]

    deadline = time.monotonic() + 0.5  # NOTE: idle engine threads are just winding down
    for t in engine_threads():
        t.join(max(deadline - time.monotonic(), 0.0))
    lingering = [t.name for t in engine_threads() if t.is_alive()]
    if not lingering:
        return
    LOGGER.warning("exiting with %d engine call(s) still running: %s", len(lingering),
                   ", ".join(lingering))  # fmt: skip
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
