"""The dynamic batcher on its own, with an engine held by a gate: ordering, not timing.

The server tests drive the batcher through gRPC; these pin down what is hard to make
happen there on purpose: the engine busy for as long as the test needs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from runtime.batching.batcher import DynamicBatcher, InferRequest
from runtime.errors import QueueFull, QueueTimeout
from runtime.stats import ModelStats


class GatedEngine:
    """y = x, but each call first waits for the test to open the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(30), "test never opened the gate"
        return {"y": np.asarray(inputs["x"])}


def request(rows: int = 1, timeout_us: int = 0) -> InferRequest:
    x = np.ones((rows, 4), np.float32)
    return InferRequest({"x": x}, None, rows, (4,), timeout_us=timeout_us)


async def until(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def batcher(engine: GatedEngine, stats: ModelStats, **kwargs: object) -> DynamicBatcher:
    return DynamicBatcher(engine, stats, max_batch_size=8, name="t", **kwargs)  # type: ignore[arg-type]


def test_queue_timeouts_expire_while_the_engine_is_busy() -> None:
    """REJECT fires at the request's deadline, not when an instance frees (Triton wakes its
    scheduler at the closest timeout); expired requests free their queue places."""

    async def run() -> None:
        engine, stats = GatedEngine(), ModelStats()
        b = batcher(engine, stats, max_queue_size=2, queue_timeout_us=20_000)
        busy = asyncio.ensure_future(b.infer(request()))
        await until(engine.entered.is_set)
        late = [asyncio.ensure_future(b.infer(request())) for _ in range(2)]
        await until(lambda: stats.pending == 2)
        with pytest.raises(QueueFull):  # the queue holds 2
            await b.infer(request())
        done, _ = await asyncio.wait(late, timeout=10)
        assert done == set(late) and not busy.done()  # expired while the engine still ran
        for t in late:
            assert isinstance(t.exception(), QueueTimeout)
        assert stats.pending == 0
        after = asyncio.ensure_future(b.infer(request()))  # places freed
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(busy, after), 10)
        assert engine.calls == 2
        b.close()

    asyncio.run(run())


def test_a_request_shortening_its_timeout_expires_while_busy() -> None:
    async def run() -> None:
        engine, stats = GatedEngine(), ModelStats()
        b = batcher(engine, stats, queue_timeout_us=60_000_000, allow_timeout_override=True)
        busy = asyncio.ensure_future(b.infer(request()))
        await until(engine.entered.is_set)
        patient = asyncio.ensure_future(b.infer(request()))
        hasty = asyncio.ensure_future(b.infer(request(timeout_us=10_000)))
        with pytest.raises(QueueTimeout):
            await asyncio.wait_for(hasty, 10)
        assert not patient.done() and not busy.done()
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(busy, patient), 10)
        b.close()

    asyncio.run(run())


def test_stats_count_only_answered_requests_in_queue_and_compute() -> None:
    """As Triton: queue and compute durations are per successful request (the servicer
    records them); the batcher counts engine calls and rows, and hands each request its
    batch's compute time."""

    async def run() -> None:
        engine, stats = GatedEngine(), ModelStats()
        b = batcher(engine, stats)
        engine.gate.set()
        r = request(rows=3)
        await asyncio.wait_for(b.infer(r), 10)
        assert (stats.execution_count, stats.inference_count) == (1, 3)
        assert stats.queue.count == stats.compute_infer.count == 0  # the servicer's to record
        assert r.compute_ns[1] > 0 and r.dispatch_ns >= r.arrival_ns
        b.close()

    asyncio.run(run())


def test_a_request_cancelled_before_dispatch_takes_no_engine_time() -> None:
    """The cancellation lands as the engine's completion forms the next batch, before the
    cancelled handler can take its request out of the queue."""

    async def run() -> None:
        engine, stats = GatedEngine(), ModelStats()
        b = batcher(engine, stats)
        busy = asyncio.ensure_future(b.infer(request()))
        await until(engine.entered.is_set)
        gone_request = request(rows=5)
        gone = asyncio.ensure_future(b.infer(gone_request))
        kept = asyncio.ensure_future(b.infer(request(rows=2)))
        await until(lambda: stats.pending == 2)
        dispatch = b._maybe_dispatch

        def cancel_then_dispatch() -> None:  # as the engine's completion forms the next batch
            assert gone_request.future is not None
            gone_request.future.cancel()
            dispatch()

        b._maybe_dispatch = cancel_then_dispatch  # type: ignore[method-assign]
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(busy, kept), 10)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert stats.inference_count == 1 + 2 and stats.pending == 0
        b.close()

    asyncio.run(run())


class PickyEngine:
    """Fails any call holding a negative row, as an engine rejects a bad index."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        assert self.gate.wait(30)
        if (inputs["x"] < 0).any():
            raise ValueError("index out of range")
        return {"y": np.asarray(inputs["x"])}


def test_a_failed_batch_rerun_one_by_one_counts_each_call() -> None:
    """The batch fails, each request runs alone: every successful single call is an execution
    of its own rows, and each request gets its own call's compute time."""

    async def run() -> None:
        engine, stats = PickyEngine(), ModelStats()
        b = batcher(engine, stats)
        first = asyncio.ensure_future(b.infer(request()))  # holds the engine
        await until(lambda: b._running == 1)
        good = [request(rows=2), request(rows=3)]
        bad = InferRequest({"x": -np.ones((1, 4), np.float32)}, None, 1, (4,))
        rest = [asyncio.ensure_future(b.infer(r)) for r in (good[0], bad, good[1])]
        await until(lambda: stats.pending == 3)
        engine.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 10)
        assert isinstance(results[2], Exception) and not isinstance(results[1], Exception)
        # the first call, then the failed batch of 3 rerun as 3 singles of which 2 answer
        assert stats.execution_count == 1 + 2 and stats.inference_count == 1 + 2 + 3
        assert all(r.compute_ns[1] > 0 for r in good)
        b.close()

    asyncio.run(run())
