"""grpc.health.v1 for Kubernetes probes, kept in step with model states.

Service names: "" and "inference.GRPCInferenceService" follow server readiness,
"live" is SERVING while the process runs, and each model name follows that
model's readiness (a model named like one of those three is left out: a liveness
probe must never see a model's state).
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from runtime.repository.manager import ModelManager

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVE = "live"
INFERENCE_SERVICE = "inference.GRPCInferenceService"


class HealthState:
    """Pushes current states into the (async) health servicer."""

    def __init__(self, manager: ModelManager) -> None:
        self.servicer = HealthServicer()
        self._manager = manager
        self._models: set[str] = set()

    async def update(self, server_ready: bool) -> None:
        status = SERVING if server_ready else NOT_SERVING
        await self.servicer.set("", status)
        await self.servicer.set(INFERENCE_SERVICE, status)
        await self.servicer.set(LIVE, SERVING)
        # NOTE: index() scans the repository folder: off the event loop
        rows = await asyncio.to_thread(self._manager.index)
        names = {name for name, *_ in rows} - {"", LIVE, INFERENCE_SERVICE}
        for name in names | self._models:
            ready = self._manager.is_ready(name)
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)
        self._models = names

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
