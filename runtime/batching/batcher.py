"""Dynamic batcher: many concurrent requests, one engine call.

Policy (why it looks like this): a batcher that always waits for more requests
halves throughput at concurrency 1, so we never hold a request while the engine
is idle and nobody else is waiting for an answer. Requests queue up naturally
while the engine is busy and go out together as the next batch (up to
max_batch_size rows, same non-batch shapes only). When the engine is idle but
other clients still have requests in flight elsewhere in the server (decoding,
or just answered and likely to come back), the batcher waits up to
max_queue_delay_microseconds for the batch to reach a preferred size.

The engine runs in dedicated threads (one per model instance, config
`instance_group { count: N }`), so the event loop keeps serving health checks and
other models while a batch computes, and N batches can compute at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runtime.engines.base import Engine
from runtime.errors import (
    InferenceFailed,
    QueueFull,
    QueueTimeout,
    RuntimeServerError,
    ServerShuttingDown,
)
from runtime.stats import ModelStats

if TYPE_CHECKING:
    from runtime.batching.native_lane import NativeLane

LOGGER = logging.getLogger(__name__)
ENGINE_THREAD_PREFIX = "engine-"
"""Engine threads are named this, so serve can tell an engine call still running at exit."""


@dataclass(eq=False)
class InferRequest:
    """Decoded, validated inputs of one request, plus what it wants back."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None
    rows: int
    signature: tuple[object, ...]
    arrival_ns: int = field(default_factory=time.perf_counter_ns)
    future: asyncio.Future[dict[str, np.ndarray]] | None = None
    dispatch_ns: int = 0
    timeout_us: int = 0
    """The client's queue timeout (request parameter `timeout`); 0 = the model's default."""
    enqueue_ns: int = 0
    """When the batcher queued it: queue timeouts count from here, not from decoding."""
    compute_ns: tuple[int, int, int] = (0, 0, 0)
    """Input, infer and output time of the engine call that answered it (set on success)."""


@dataclass(frozen=True)
class BatchTiming:
    """What one engine call cost, for stats and histograms."""

    rows: int
    input_ns: int
    infer_ns: int
    output_ns: int


BatchObserver = Callable[[BatchTiming, Sequence[InferRequest]], None]


def merge_inputs(batch: Sequence[InferRequest]) -> dict[str, np.ndarray]:
    """Concatenate each input along the batch dim (no copy for a single request)."""
    if len(batch) == 1:
        return batch[0].inputs
    return {
        name: np.concatenate([r.inputs[name] for r in batch], axis=0) for name in batch[0].inputs
    }


def split_outputs(
    outputs: dict[str, np.ndarray], batch: Sequence[InferRequest], batched: bool
) -> list[dict[str, np.ndarray]]:
    """Slice each output back per request; the batch dim must equal the rows sent."""
    if len(batch) == 1 and not batched:
        return [outputs]
    total = sum(r.rows for r in batch)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise InferenceFailed(
                f"output '{name}' has batch dim {value.shape[:1]}, expected {total} rows"
            )
    results, offset = [], 0
    for r in batch:
        results.append({k: v[offset : offset + r.rows] for k, v in outputs.items()})
        offset += r.rows
    return results


class DynamicBatcher:
    """Queue + scheduler for one model version; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        stats: ModelStats,
        max_batch_size: int,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_delay_us: int = 0,
        max_queue_size: int = 1024,
        batching: bool = True,
        observer: BatchObserver | None = None,
        name: str = "model",
        instances: int = 1,
        queue_timeout_us: int = 0,
        delay_on_timeout: bool = False,
        allow_timeout_override: bool = False,
    ) -> None:
        self._engine = engine
        self._stats = stats
        self._batched = max_batch_size > 0
        self._max_rows = max(max_batch_size, 1) if batching else 1
        preferred = [p for p in preferred_batch_sizes if 0 < p <= self._max_rows]
        self._target_rows = max(preferred) if preferred else self._max_rows
        self._delay_ns = max_queue_delay_us * 1000 if batching else 0
        self._max_queue = max_queue_size or 2**62  # NOTE: 0 = no limit, as in Triton
        self._timeout_ns = queue_timeout_us * 1000
        self._delay_on_timeout = delay_on_timeout
        self._allow_override = allow_timeout_override
        self._observer = observer
        self._queue: collections.deque[InferRequest] = collections.deque()
        self._instances = max(instances, 1)
        self._running = 0  # batches in the engine now, at most `instances`
        self._closed = False
        self._outstanding = 0  # accepted and not yet answered, queued or not
        self._returning = 0  # requests just answered whose clients may come right back
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_ns = 0  # when the armed expiry timer fires (perf_counter_ns)
        self._executor = ThreadPoolExecutor(
            max_workers=self._instances, thread_name_prefix=f"{ENGINE_THREAD_PREFIX}{name}"
        )
        self._name = name
        # NOTE: engine calls at once, this path and the native lane's together
        self.slots = threading.Semaphore(self._instances)
        self.native: NativeLane | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Queue a request and wait for its slice of a batch."""
        if self._closed:
            raise ServerShuttingDown("model is unloading; request not accepted")
        if self._timeout_ns and len(self._queue) >= self._max_queue:
            self._expire()  # NOTE: requests past their timeout must not hold queue places
        queued = len(self._queue) + (self.native.queued() if self.native is not None else 0)
        if queued >= self._max_queue:
            raise QueueFull(f"queue of {self._max_queue} pending requests is full; retry later")
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        request.future = loop.create_future()
        request.enqueue_ns = time.perf_counter_ns()
        self._queue.append(request)
        self._stats.pending += 1
        self._outstanding += 1
        self._idle.clear()
        if self._returning:
            self._returning -= 1
        if self._running < self._instances:
            self._maybe_dispatch()
        if self._timeout_ns and request.dispatch_ns == 0:
            self._arm_expiry(request.enqueue_ns + self._timeout_ns_of(request))
        try:
            return await request.future
        except asyncio.CancelledError:
            # NOTE: the client gave up; a request still queued must not take engine time
            if request.dispatch_ns == 0 and request in self._queue:
                self._queue.remove(request)
                self._stats.pending -= 1
            raise
        finally:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.set()

    def _queued_rows(self) -> int:
        return sum(r.rows for r in self._queue)

    def _maybe_dispatch(self) -> None:
        """Run the next batches now, one per free instance (requests of other shapes may be
        left after a batch), or arm a timer when a fuller batch is on its way."""
        while self._running < self._instances and self._queue:
            if self._delay_ns and self._returning > 0 and (
                self._queued_rows() < self._target_rows
            ):
                oldest = self._queue[0].arrival_ns
                remaining = self._delay_ns - (time.perf_counter_ns() - oldest)
                if remaining > 0:
                    if self._timer is None:
                        assert self._loop is not None
                        self._timer = self._loop.call_later(remaining / 1e9, self._on_timer)
                    return
            running = self._running
            self._dispatch()
            if self._running == running:  # every queued request had expired
                return

    def _on_timer(self) -> None:
        self._timer = None
        self._returning = 0
        self._maybe_dispatch()

    def _timeout_ns_of(self, r: InferRequest) -> int:
        """As Triton: a request may shorten the model's timeout, never lengthen or add one."""
        override = r.timeout_us * 1000
        if self._allow_override and override and override < self._timeout_ns:
            return override
        return self._timeout_ns

    def _expire(self) -> None:
        """Queue policy (default_queue_policy): requests queued past their timeout are
        rejected (REJECT) or moved behind the others (DELAY)."""
        now = time.perf_counter_ns()
        on_time: list[InferRequest] = []
        late: list[InferRequest] = []
        for r in self._queue:
            t = self._timeout_ns_of(r)
            (late if t and now - r.enqueue_ns > t else on_time).append(r)
        if not late:
            return
        if self._delay_on_timeout:
            self._queue = collections.deque(on_time + late)
            return
        self._queue = collections.deque(on_time)
        self._stats.pending -= len(late)
        for r in late:
            if r.future is not None and not r.future.done():
                r.future.set_exception(QueueTimeout("Request timeout expired"))

    def _arm_expiry(self, deadline_ns: int) -> None:
        """Reject a queued request when its timeout passes, even while every engine
        instance is busy (as Triton's scheduler wakes at the closest timeout). DELAY
        needs no timer: a late request only changes place, at the next dispatch."""
        if self._delay_on_timeout or self._loop is None:
            return
        if self._expiry is not None:
            if self._expiry_ns <= deadline_ns:
                return
            self._expiry.cancel()
        self._expiry_ns = deadline_ns
        delay = max(deadline_ns - time.perf_counter_ns(), 0) / 1e9
        self._expiry = self._loop.call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        self._expire()
        if self._queue:
            self._arm_expiry(min(r.enqueue_ns + self._timeout_ns_of(r) for r in self._queue))

    def _take_batch(self) -> list[InferRequest]:
        # NOTE: a request cancelled while queued leaves the queue when its handler resumes;
        # one cancelled in between must not take engine time
        if any(r.future is not None and r.future.done() for r in self._queue):
            live = [r for r in self._queue if r.future is None or not r.future.done()]
            self._stats.pending -= len(self._queue) - len(live)
            self._queue = collections.deque(live)
            if not live:
                return []
        first = self._queue.popleft()
        batch, rows = [first], first.rows
        if self._max_rows > 1 and self._queue:
            kept: collections.deque[InferRequest] = collections.deque()
            while self._queue:
                r = self._queue.popleft()
                if r.signature == first.signature and rows + r.rows <= self._max_rows:
                    batch.append(r)
                    rows += r.rows
                    if rows >= self._max_rows:
                        break
                else:
                    kept.append(r)
            kept.extend(self._queue)
            self._queue = kept
        return batch

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timeout_ns:
            self._expire()
            if not self._queue:
                return
        batch = self._take_batch()
        if not batch:
            return
        self._running += 1
        now = time.perf_counter_ns()
        for r in batch:
            r.dispatch_ns = now
        self._stats.pending -= len(batch)
        assert self._loop is not None
        fut = self._loop.run_in_executor(self._executor, self._run, batch)
        fut.add_done_callback(lambda f: self._complete(batch, f))

    def _run(
        self, batch: list[InferRequest]
    ) -> tuple[list[dict[str, np.ndarray] | Exception], list[BatchTiming | None]]:
        """Engine thread: the batch in one call; should that fail, each request alone, so a
        request the engine rejects (say an index out of range) fails by itself and not the
        requests it was batched with. Per request: its answer (or error) and the timing of
        the engine call that answered it."""
        try:
            parts, timing = self._run_together(batch)
            return list(parts), [timing] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                raise
            LOGGER.warning(
                "a batch of %d requests failed (%s); running them one at a time", len(batch), exc
            )
        results: list[dict[str, np.ndarray] | Exception] = []
        timings: list[BatchTiming | None] = []
        for r in batch:
            try:
                one, timing = self._run_together([r])
                results.append(one[0])
                timings.append(timing)
            except Exception as exc:
                results.append(exc)
                timings.append(None)
        return results, timings

    def _run_together(
        self, batch: list[InferRequest]
    ) -> tuple[list[dict[str, np.ndarray]], BatchTiming]:
        """Merge, infer, split; timings for Triton's compute_* stats."""
        t0 = time.perf_counter_ns()
        merged = merge_inputs(batch)
        wanted = batch[0].outputs
        if wanted is not None and any(r.outputs != wanted for r in batch):
            wanted = None  # mixed requests: compute all, filter per request later
        t1 = time.perf_counter_ns()
        with self.slots:
            outputs = self._engine.infer(merged, wanted)
        t2 = time.perf_counter_ns()
        parts = split_outputs(outputs, batch, self._batched)
        t3 = time.perf_counter_ns()
        rows = sum(r.rows for r in batch)
        return parts, BatchTiming(rows, t1 - t0, t2 - t1, t3 - t2)

    def _complete(self, batch: list[InferRequest], fut: asyncio.Future) -> None:
        self._running -= 1
        timings: list[BatchTiming | None]
        try:
            parts, timings = fut.result()
        except Exception as exc:  # a one-request batch failed
            parts, timings = [exc] * len(batch), [None] * len(batch)
        except asyncio.CancelledError:  # close() cancelled it before an engine thread took it
            gone = ServerShuttingDown("model unloaded before running")
            parts, timings = [gone] * len(batch), [None] * len(batch)
        calls = {id(t): t for t in timings if t is not None}  # NOTE: one batch, or one each
        for timing in calls.values():
            self._stats.record_execution(
                timing.rows, timing.input_ns, timing.infer_ns, timing.output_ns
            )
            if self._observer is not None:
                self._observer(timing, [r for r, t in zip(batch, timings, strict=True)
                                        if t is timing])  # fmt: skip
        for r, part, timing in zip(batch, parts, timings, strict=True):
            if isinstance(part, Exception):
                err = part
                if not isinstance(part, RuntimeServerError):
                    LOGGER.error("inference failed", exc_info=part)
                    err = InferenceFailed(f"inference failed: {part}")
                if r.future is not None and not r.future.done():
                    r.future.set_exception(err)
                continue
            if timing is not None:
                r.compute_ns = (timing.input_ns, timing.infer_ns, timing.output_ns)
            if r.future is not None and not r.future.done():
                r.future.set_result(part)
        # clients just answered tend to send again at once (closed-loop load)
        self._returning = len(batch) if len(batch) > 1 else 0
        self._maybe_dispatch()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def stats(self) -> ModelStats:
        return self._stats

    @property
    def observer(self) -> BatchObserver | None:
        return self._observer

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        """Requests waiting for a batch, in this queue and the native lane's."""
        return self._stats.pending + (self.native.queued() if self.native is not None else 0)

    def policy(self) -> dict[str, int]:
        """What the native lane needs to batch as this batcher does."""
        return {
            "max_rows": self._max_rows,
            "delay_us": self._delay_ns // 1000,
            "target_rows": self._target_rows,
            "max_queue": self._max_queue if self._max_queue < 2**62 else 0,
            "instances": self._instances,
            "timeout_us": self._timeout_ns // 1000,
        }

    def attach_native(self, lane: NativeLane) -> None:
        """Requests the native frontend serves itself go through `lane`, with this batcher's
        engine, instance count and statistics; it drains and closes with this batcher."""
        self.native = lane
        lane.start(self._instances, self._name)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let queued and running requests finish (bounded by timeout)."""
        self._closed = True
        start = time.monotonic()
        if self.native is not None:
            await self.native.drain(timeout)
        timeout = max(timeout - (time.monotonic() - start), 0.0)  # NOTE: one grace period
        if not self._idle.is_set():  # NOTE: wait_for(..., 0) times out even on a set event
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                LOGGER.warning("drain timed out with %d requests pending", self._outstanding)
        for r in self._queue:
            if r.future is not None and not r.future.done():
                r.future.set_exception(ServerShuttingDown("model unloaded before running"))
        self._stats.pending -= len(self._queue)
        self._queue.clear()
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._expiry):
            if timer is not None:
                timer.cancel()
        self._timer = self._expiry = None

    def close(self) -> None:
        self._closed = True
        if self.native is not None:
            self.native.stop()
        self._cancel_timers()
        self._executor.shutdown(wait=False, cancel_futures=True)
