"""Per-model-version inference statistics, Triton's definitions.

One source of truth for both the ModelStatistics RPC and the Prometheus
collector, so the two can never disagree. Updated from the event loop and from the
native lane's engine threads (runtime/batching/native_lane.py), so each record_* holds
a lock: a `+=` on an attribute is several bytecodes, and a thread switch between them
would lose a count.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    """A count and a cumulative duration in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """Per batch size compute durations (Triton's InferBatchStatistics)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Counters for one loaded model version.

    As Triton: success, queue and compute_* count successful requests (each request of a
    batch gets its batch's compute time); fail counts failed ones by reason. inference_count
    is the number of batch rows the engine ran, execution_count the number of engine calls,
    and `batches` their compute time per batch size.
    """

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    fail_by_reason: dict[str, int] = field(default_factory=dict)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    pending: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_failure(self, reason: str, ns: int) -> None:
        with self._lock:
            self.fail.add(ns)
            self.fail_by_reason[reason] = self.fail_by_reason.get(reason, 0) + 1

    def record_success(self, ns: int, queue_ns: int, compute_ns: tuple[int, int, int]) -> None:
        """One request answered: end to end `ns`, of which `queue_ns` waiting for its batch."""
        with self._lock:
            self.success.add(ns)
            self.queue.add(queue_ns)
            self.compute_input.add(compute_ns[0])
            self.compute_infer.add(compute_ns[1])
            self.compute_output.add(compute_ns[2])

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One engine call over `rows` batch rows."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += rows
            batch = self.batches.setdefault(rows, BatchStats())
            batch.compute_input.add(input_ns)
            batch.compute_infer.add(infer_ns)
            batch.compute_output.add(output_ns)
            self.last_inference_ms = int(time.time() * 1000)
