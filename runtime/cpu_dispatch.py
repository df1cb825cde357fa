"""Measured choice among the installed CPU engines (`engine: auto` on CPU hosts).

Which CPU engine is fastest depends on the host (VNNI, AMX), the precision the
model is stored in (fp32, int8 QDQ, dynamic int8) and the batch size; measured
tables disagree between machines by more than any rule of thumb. So at load time
each candidate runs the model at its batch buckets, interleaved call by call (so
a noisy neighbour slows all candidates alike) and bounded by a time budget, and
`choose` picks from the timings. `choose` is a pure function, tested on fake
timings; `time_engines` is the only part that runs anything.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CPU_ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
DEFAULT_ENGINE = "onnxruntime"
# NOTE: keep the default engine unless another is this much faster overall. It damps
# flapping on timing noise and stays inside the "never > 5% slower than the best" target.
KEEP_DEFAULT_WITHIN = 0.03
DEFAULT_BUDGET_S = 3.0
MIN_CALLS = 3
MAX_CALLS = 25

Timings = Mapping[str, Mapping[int, float]]
"""engine -> {batch size: milliseconds per call}"""


@dataclass(frozen=True)
class CpuChoice:
    """The engine picked, why, and the relative cost of each candidate (1.0 = best)."""

    engine: str
    reason: str
    relative: Mapping[str, float]
    table: str


def installed_cpu_engines() -> tuple[str, ...]:
    """CPU engines whose packages are importable here (found without importing them)."""
    found = [DEFAULT_ENGINE]
    if importlib.util.find_spec("openvino") is not None:
        found.append("openvino")
    return tuple(found)


def format_table(timings: Timings) -> str:
    """Compact table for ModelConfig parameters and logs: 'onnxruntime b1=2.5ms b64=70ms; ...'."""
    parts = []
    for engine, per_batch in timings.items():
        cells = " ".join(f"b{b}={_ms(ms)}" for b, ms in sorted(per_batch.items()))
        parts.append(f"{engine} {cells}".strip())
    return "; ".join(parts)


def _ms(ms: float) -> str:
    return f"{ms:.3g}ms" if ms < 100 else f"{ms:.0f}ms"


def choose(
    timings: Timings,
    failures: Mapping[str, str] | None = None,
    default: str = DEFAULT_ENGINE,
    keep_default_within: float = KEEP_DEFAULT_WITHIN,
) -> CpuChoice:
    """Pick the fastest engine over the batch sizes every candidate was timed at.

    Each engine's score is the geometric mean, over the shared batch sizes, of its
    time divided by the best time at that size, so batch 1 and batch 64 weigh the
    same although their milliseconds differ by orders of magnitude.

    Args:
        timings: engine -> {batch: ms per call}; engines with no timings are ignored.
        failures: engine -> why it could not be timed (shown in the reason).
        default: the engine kept on ties and when nothing was measured.
        keep_default_within: keep `default` if its score is within this fraction of the best.

    Returns:
        The choice with a reason an operator can read.
    """
    failures = dict(failures or {})
    timed = {e: dict(t) for e, t in timings.items() if t}
    failed = "".join(f"; {e} not timed: {why}" for e, why in sorted(failures.items()))
    if not timed:
        return CpuChoice(default, f"cpu: {default} (nothing measured{failed})", {}, "")
    shared = sorted(set.intersection(*(set(t) for t in timed.values())))
    if not shared:
        return CpuChoice(default, f"cpu: {default} (no batch size timed on all engines{failed})",
                         {}, format_table(timed))
    best_ms = {b: min(t[b] for t in timed.values()) for b in shared}
    relative = {
        e: math.exp(statistics.fmean(math.log(t[b] / best_ms[b]) for b in shared))
        for e, t in timed.items()
    }
    fastest = min(relative, key=lambda e: (relative[e], e != default, e))
    batches = ",".join(str(b) for b in shared)
    table = format_table(timed)
    if len(timed) == 1:
        return CpuChoice(fastest, f"cpu: {fastest} (only engine timed{failed})", relative, table)
    if (
        fastest != default
        and default in relative
        and relative[default] <= relative[fastest] * (1 + keep_default_within)
    ):
        others = ", ".join(f"{e} {relative[e]:.2f}x" for e in sorted(relative) if e != default)
        reason = (f"cpu: {default} kept, within {keep_default_within:.0%} of the fastest "
                  f"(time vs best, geo-mean over batch {batches}: {default} "
                  f"{relative[default]:.2f}x, {others}{failed})")
        return CpuChoice(default, reason, relative, table)
    others = ", ".join(f"{e} {relative[e]:.2f}x" for e in sorted(relative) if e != fastest)
    reason = (f"cpu: {fastest} fastest (time vs best, geo-mean over batch {batches}: "
              f"{others}{failed})")
    return CpuChoice(fastest, reason, relative, table)


def bucket_order(buckets: Sequence[int]) -> list[int]:
    """Smallest and largest bucket first, then the others nearest the geometric middle."""
    ordered = sorted(set(buckets))
    if len(ordered) <= 2:
        return ordered
    ends = [ordered[0], ordered[-1]]
    centre = math.sqrt(ordered[0] * ordered[-1])
    middle = sorted(ordered[1:-1], key=lambda b: (abs(math.log(b / centre)), b))
    return ends + middle


def time_engines(
    runners: Mapping[str, Callable[[Mapping[str, np.ndarray]], object]],
    feeds_for: Callable[[int], Mapping[str, np.ndarray]],
    buckets: Sequence[int],
    budget_s: float = DEFAULT_BUDGET_S,
    min_calls: int = MIN_CALLS,
    max_calls: int = MAX_CALLS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """Fastest ms per call of each runner at each bucket, within about `budget_s`.

    Buckets run in `bucket_order`; each starts with one warm-up call per runner and
    then calls the runners in turn. A bucket ends after `max_calls` rounds or its
    share of the remaining budget (but not before `min_calls` rounds while budget
    is left); later buckets are skipped once the budget is spent. The first bucket
    always gets at least one timed round. A runner that raises is dropped and its
    error returned in `failures`.

    NOTE: the minimum, not the median: on a shared host noise only ever adds time,
    and with 3 samples of a slow model one neighbour's burst moved the median 6x
    (onnxruntime 956 ms vs 161 ms at batch 64) and flipped the choice.

    Returns:
        (engine -> {batch: median ms}, engine -> failure message)
    """
    start = clock()
    live = dict(runners)
    samples: dict[str, dict[int, list[float]]] = {e: {} for e in runners}
    failures: dict[str, str] = {}

    def call(engine: str, feeds: Mapping[str, np.ndarray]) -> float | None:
        t0 = clock()
        try:
            live[engine](feeds)
        except Exception as exc:  # noqa: BLE001 - any engine error excludes that engine
            failures[engine] = shorten(f"{type(exc).__name__}: {exc}")
            del live[engine]
            return None
        return (clock() - t0) * 1e3

    order = bucket_order(buckets)
    for index, batch in enumerate(order):
        spent = clock() - start
        if index and spent >= budget_s:
            break
        feeds = feeds_for(batch)
        for engine in list(live):
            call(engine, feeds)  # warm-up
        bucket_start = clock()
        share = max(budget_s - (bucket_start - start), 0.0) / (len(order) - index)
        rounds = 0
        while live and rounds < max_calls:
            for engine in list(live):
                ms = call(engine, feeds)
                if ms is not None:
                    samples[engine].setdefault(batch, []).append(ms)
            rounds += 1
            now = clock()
            over_budget = now - start >= budget_s
            if rounds >= min_calls and now - bucket_start >= share:
                break
            if over_budget:
                break
    timings = {
        e: {b: min(v) for b, v in per.items()}
        for e, per in samples.items()
        if e in live and per
    }
    return timings, failures


def shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
