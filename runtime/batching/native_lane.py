"""Engine threads for the native frontend's inference lane (grpc_bridge.cc, class Lane).

Why: on the Python path every request costs the event loop ~100 us (parse, validate,
future, encode, answer), and at concurrency 8 that loop, not the engine, set the pace. For
a model the bridge serves natively, C++ parses, checks and queues each ModelInfer request
and forms the batches; here one thread per model instance takes a batch (numpy arrays over
the bridge's contiguous buffers), runs the engine (onnxruntime releases the GIL) and hands
the outputs back for C++ to split and send. Python work is per batch, not per request.

The statistics and metrics stay those of the Python path: one execution per engine call,
one success (end to end, queue, compute) or failure (by Triton's reason) per request,
recorded before the answers go out, so a client that reads them after its answer sees its
own request counted. A full queue is left to the Python path (the batcher counts the lane's
queue in its limit), so RESOURCE_EXHAUSTED is answered and counted exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from runtime.batching.batcher import ENGINE_THREAD_PREFIX, BatchObserver, BatchTiming
from runtime.dtypes import numpy_to_wire
from runtime.engines.base import Engine
from runtime.errors import InferenceFailed, RuntimeServerError, ServerShuttingDown
from runtime.server.codec import wire_order
from runtime.stats import ModelStats

LOGGER = logging.getLogger(__name__)

RequestObserver = Callable[[int, int], None]
"""Called per successful request with (end-to-end ns, queue ns): the request histograms."""

# outcomes per request, as Batch.outcomes() reports them (grpc_bridge.cc)
OK, FAILED, GONE, TOO_LARGE = 0, 1, 2, 3
FAILURE_REASON = {GONE: "CANCELED", TOO_LARGE: "OTHER"}


class NativeLane:
    """One model version's native lane: its engine threads and its statistics."""

    def __init__(
        self,
        lane: Any,
        engine: Engine,
        stats: ModelStats,
        output_names: Sequence[str],
        slots: threading.Semaphore,
        loop: asyncio.AbstractEventLoop,
        observer: BatchObserver | None = None,
        request_observer: RequestObserver | None = None,
    ) -> None:
        self.lane = lane
        self._engine = engine
        self._stats = stats
        self._output_names = tuple(output_names)
        self._slots = slots  # NOTE: shared with the Python path: `instances` engine calls at once
        self._loop = loop
        self._observer = observer
        self._request_observer = request_observer
        self._threads: list[threading.Thread] = []

    def start(self, instances: int, name: str) -> None:
        for i in range(max(instances, 1)):
            thread = threading.Thread(
                target=self._work, name=f"{ENGINE_THREAD_PREFIX}{name}-native-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def queued(self) -> int:
        """Requests waiting in the lane (they count toward the model's queue limit)."""
        return int(self.lane.queued())

    def record_failure(self, reason: str, ns: int) -> None:
        """Event loop: a request the bridge answered with an error itself."""
        self._stats.record_failure(reason, ns)

    async def drain(self, timeout: float) -> None:
        """Stop taking requests; let queued and running ones finish within `timeout`; what is
        still queued then is answered UNAVAILABLE, as the Python path answers it."""
        self.lane.close()
        deadline = time.monotonic() + timeout
        while self.lane.outstanding() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        arrivals = self.lane.abort_queued(
            grpc.StatusCode.UNAVAILABLE.value[0], "model unloaded before running"
        )
        now = time.perf_counter_ns()
        for arrival in arrivals:
            self._stats.record_failure(ServerShuttingDown.failure_reason, now - arrival)

    def stop(self) -> None:
        """Engine threads end once the lane is empty (a running batch still answers)."""
        self.lane.stop()

    # ---- engine threads -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                batch = self.lane.next_batch()
            except Exception:  # NOTE: a thread that ends here leaves the lane without a consumer
                LOGGER.exception("native lane: taking a batch failed")
                if not self.lane.open():
                    return
                time.sleep(0.01)
                continue
            if batch is None:
                return
            try:
                self._serve(batch)
            except Exception:  # NOTE: a bug here must not end the thread or lose the batch
                LOGGER.exception("native lane: batch failed")
                # answers already encoded (and counted) stay: only the rest become INTERNAL
                batch.fail_unanswered(
                    grpc.StatusCode.INTERNAL.value[0], "internal error; see server log"
                )
                batch.send()

    def _listed(self, outputs: Mapping[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
        """(name, wire datatype, little-endian contiguous array), in the order the Python path
        answers a request that names no outputs: the model's, else whatever came back."""
        names = [n for n in self._output_names if n in outputs] or list(outputs)
        listed = []
        for name in names:
            array = np.asarray(outputs[name])
            datatype = numpy_to_wire(array.dtype)
            if datatype == "BYTES":
                raise InferenceFailed(f"output '{name}' is BYTES; the native lane sends no BYTES")
            listed.append((name, datatype, np.ascontiguousarray(wire_order(array))))
        return listed

    def _run(self, batch: Any, inputs: Mapping[str, np.ndarray], index: int) -> BatchTiming:
        """One engine call; its answers are encoded into `batch` (request `index`, or all)."""
        rows = sum(batch.row_counts) if index < 0 else batch.row_counts[index]
        t1 = time.perf_counter_ns()
        with self._slots:
            outputs = self._engine.infer(dict(inputs), batch.wanted)
        t2 = time.perf_counter_ns()
        try:
            batch.answer(self._listed(outputs), index)
        except ValueError as exc:  # NOTE: the bridge's batch-dim check, as split_outputs says it
            raise InferenceFailed(str(exc)) from None
        return BatchTiming(rows, batch.merge_ns if index < 0 else 0, t2 - t1,
                           time.perf_counter_ns() - t2)  # fmt: skip

    def _serve(self, batch: Any) -> None:
        size = batch.size
        timings: list[BatchTiming | None] = [None] * size
        reasons: list[str] = [""] * size
        try:
            timing = self._run(batch, batch.inputs, -1)
            timings = [timing] * size
        except Exception as exc:
            if size == 1:
                reasons[0] = self._fail(batch, 0, exc)
            else:
                LOGGER.warning(
                    "a batch of %d requests failed (%s); running them one at a time", size, exc
                )
                offset = 0
                for i, rows in enumerate(batch.row_counts):
                    one = {k: v[offset : offset + rows] for k, v in batch.inputs.items()}
                    offset += rows
                    try:
                        timings[i] = self._run(batch, one, i)
                    except Exception as one_exc:
                        reasons[i] = self._fail(batch, i, one_exc)
        outcomes = batch.outcomes()
        end = time.perf_counter_ns()
        # NOTE: counted before the answers go out: a client reads its own request counted
        try:
            self._record(timings, reasons, outcomes, batch.arrivals, batch.dispatch_ns, end)
        except Exception:  # NOTE: statistics must not turn answers into errors
            LOGGER.exception("native lane: recording a batch's statistics failed")
        batch.send()

    @staticmethod
    def _fail(batch: Any, index: int, exc: Exception) -> str:
        err = exc
        if not isinstance(exc, RuntimeServerError):
            LOGGER.error("inference failed", exc_info=exc)
            err = InferenceFailed(f"inference failed: {exc}")
        assert isinstance(err, RuntimeServerError)
        batch.fail(index, err.code.value[0], str(err))
        return err.failure_reason

    def _record(
        self,
        timings: list[BatchTiming | None],
        reasons: list[str],
        outcomes: list[int],
        arrivals: list[int],
        dispatch_ns: int,
        end_ns: int,
    ) -> None:
        """The batch's statistics, as the Python path counts them (ModelStats locks)."""
        stats = self._stats
        calls = {id(t): t for t in timings if t is not None}
        for t in calls.values():
            stats.record_execution(t.rows, t.input_ns, t.infer_ns, t.output_ns)
            if self._observer is not None:
                self._observer(t, ())
        for timing, reason, outcome, arrival in zip(
            timings, reasons, outcomes, arrivals, strict=True
        ):
            elapsed = end_ns - arrival
            if outcome == OK and timing is not None:
                queued = dispatch_ns - arrival
                stats.record_success(
                    elapsed, queued, (timing.input_ns, timing.infer_ns, timing.output_ns)
                )
                if self._request_observer is not None:
                    self._request_observer(elapsed, queued)
            else:
                stats.record_failure(FAILURE_REASON.get(outcome, reason or "BACKEND"), elapsed)
