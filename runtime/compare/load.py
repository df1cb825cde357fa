"""Closed-loop load with asyncio: `concurrency` workers, each one request in flight.

Bounded twice: no request starts after the duration has elapsed and no more than
`max_requests` start in total; each request also has a client timeout. A run
stops early after many consecutive failures, so a dead server cannot spin it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc.aio import InferenceServerClient, InferInput
from tritonclient.utils import InferenceServerException

MAX_CONSECUTIVE_FAILURES = 100


@dataclass
class LoadResult:
    """Client-side view of one run."""

    latencies_s: np.ndarray
    errors: int
    error_sample: str | None
    elapsed_s: float
    rows_per_request: int
    stopped_early: bool = False

    @property
    def requests(self) -> int:
        return int(self.latencies_s.size)


@dataclass
class _State:
    issued: int = 0
    errors: int = 0
    consecutive: int = 0
    error_sample: str | None = None
    latencies: list[float] = field(default_factory=list)


async def run_load(
    client: InferenceServerClient,
    model: str,
    inputs: list[InferInput],
    rows_per_request: int,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    timeout_s: float,
) -> LoadResult:
    """Drive `model` with the same request for `duration_s`; latencies in seconds."""
    state = _State()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while (
            time.perf_counter() < deadline
            and state.issued < max_requests
            and state.consecutive < MAX_CONSECUTIVE_FAILURES
        ):
            state.issued += 1
            t0 = time.perf_counter()
            try:
                await client.infer(model, inputs, client_timeout=timeout_s)
            except InferenceServerException as err:
                state.errors += 1
                state.consecutive += 1
                if state.error_sample is None:
                    state.error_sample = f"{err.status() or ''} {err.message() or ''}".strip()
            else:
                state.latencies.append(time.perf_counter() - t0)
                state.consecutive = 0

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(
        latencies_s=np.asarray(state.latencies, dtype=np.float64),
        errors=state.errors,
        error_sample=state.error_sample,
        elapsed_s=time.perf_counter() - start,
        rows_per_request=rows_per_request,
        stopped_early=state.consecutive >= MAX_CONSECUTIVE_FAILURES,
    )


async def warm_up(
    client: InferenceServerClient, model: str, inputs: list[InferInput], concurrency: int,
    timeout_s: float,
) -> None:
    """One untimed round at the run's concurrency: connections, arenas, caches."""
    await asyncio.gather(
        *(client.infer(model, inputs, client_timeout=timeout_s) for _ in range(concurrency)),
        return_exceptions=True,
    )


def summarize(result: LoadResult) -> dict[str, object]:
    """Throughput and latency percentiles (ms) for report.json."""
    lat_ms = result.latencies_s * 1e3
    n = result.requests
    elapsed = max(result.elapsed_s, 1e-9)
    summary: dict[str, object] = {
        "requests": n,
        "errors": result.errors,
        "error_sample": result.error_sample,
        "stopped_early": result.stopped_early,
        "elapsed_s": result.elapsed_s,
        "infer_per_s": n / elapsed,
        "rows_per_s": n * result.rows_per_request / elapsed,
    }
    if n:
        p = np.percentile(lat_ms, [50, 95, 99])
        summary["latency_ms"] = {
            "mean": float(lat_ms.mean()),
            "min": float(lat_ms.min()),
            "p50": float(p[0]),
            "p95": float(p[1]),
            "p99": float(p[2]),
            "max": float(lat_ms.max()),
        }
        # NOTE: 101 quantiles are enough to redraw the CDF without the raw samples
        summary["latency_cdf_ms"] = [
            round(float(v), 4) for v in np.percentile(lat_ms, np.arange(101))
        ]
    else:
        summary["latency_ms"] = None
        summary["latency_cdf_ms"] = []
    return summary
