"""Lifecycle pieces in-process: shutdown bounds, and the health service's own names."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from runtime.repository.manager import READY, ModelManager, ModelSlot, VersionState
from runtime.settings import Settings


class StuckModel:
    """A served model whose unload waits for a call that is still running (as the GPU
    engine's unload waits on its lock)."""

    name = "stuck"
    version = 1
    batcher = None

    def __init__(self) -> None:
        self.release = threading.Event()

    def unload(self) -> None:
        self.release.wait(60)


def test_stop_returns_while_an_unload_still_waits(tmp_path: Path) -> None:
    async def run() -> None:
        manager = ModelManager(Settings(model_repository=tmp_path))
        model = StuckModel()
        manager._slots["stuck"] = ModelSlot(versions={1: VersionState(READY, "", model)})  # type: ignore[arg-type]
        try:
            # grace 0.1 s: the unload gets at least half a second, then stop goes on
            await asyncio.wait_for(manager.stop(0.1), 10)
        finally:
            model.release.set()

    asyncio.run(run())


def test_a_model_named_live_cannot_fail_the_liveness_probe(tmp_path: Path) -> None:
    """Model names share the health service's namespace: `live` (and the server's own
    service names) stay the server's, whatever a model of that name does."""
    from grpc_health.v1 import health_pb2

    from runtime.server.health import INFERENCE_SERVICE, LIVE, HealthState

    (tmp_path / "live" / "1").mkdir(parents=True)  # a model folder named "live", not loaded

    async def run() -> dict[str, int]:
        health = HealthState(ModelManager(Settings(model_repository=tmp_path)))
        await health.update(True)
        statuses = {}
        for service in (LIVE, INFERENCE_SERVICE, ""):
            request = health_pb2.HealthCheckRequest(service=service)
            statuses[service] = (await health.servicer.Check(request, None)).status
        return statuses

    serving = health_pb2.HealthCheckResponse.SERVING
    assert asyncio.run(run()) == {LIVE: serving, INFERENCE_SERVICE: serving, "": serving}
