"""Per-model-version inference statistics, Triton's definitions.

One source of truth for both the ModelStatistics RPC and the Prometheus
collector, so the two can never disagree. Updated only from the event loop
thread, so plain integers suffice.
"""

from __future__ import annotations

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

    success/fail/queue count requests; compute_* count requests too (each request
    of a batch gets the batch's compute time, as Triton does). inference_count is
    the number of batch rows inferred, execution_count the number of engine calls.
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

    def record_failure(self, reason: str, ns: int) -> None:
        self.fail.add(ns)
        self.fail_by_reason[reason] = self.fail_by_reason.get(reason, 0) + 1

    def record_execution(
        self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One engine call that served `requests` requests holding `rows` batch rows."""
        self.execution_count += 1
        self.inference_count += rows
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        batch = self.batches.setdefault(rows, BatchStats())
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(output_ns)
        self.last_inference_ms = int(time.time() * 1000)
