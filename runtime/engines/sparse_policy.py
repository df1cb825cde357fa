"""Measured sparse-vs-dense dispatch, per layer and batch bucket (pure Python, no torch).

Why measured: 2:4 sparse tensor cores win only on large GEMMs (public H100 fp16 figures are
1.1-1.3x, and small batches can be several times slower because cuSPARSELt pads the input to
its tile), so the engine times each eligible layer both ways at every batch bucket and runs it
sparse only where it was faster by more than the noise margin. Everything here is testable with
fake timings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

MODES = ("auto", "on", "off")
DEFAULT_MIN_GAIN = 0.03
"""Sparse must beat dense by this fraction; inside it the two are within timing noise."""


@dataclass(frozen=True)
class LayerTiming:
    """Median microseconds of one layer at one bucket; `None` where a kernel could not run."""

    layer: str
    bucket: int
    rows: int
    dense_us: float | None
    sparse_us: float | None
    eligible: bool = True
    note: str = ""


@dataclass(frozen=True)
class LayerDecision:
    """Which kernel one layer uses at one bucket, and why."""

    layer: str
    bucket: int
    kernel: str
    sparse_us: float | None
    dense_us: float | None
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _fmt(us: float | None) -> str:
    return "n/a" if us is None else f"{us:.1f}us"


def decide_one(t: LayerTiming, mode: str, min_gain: float = DEFAULT_MIN_GAIN) -> LayerDecision:
    """Decide one (layer, bucket) from its timing under `mode` (auto|on|off)."""
    if mode not in MODES:
        raise ValueError(f"sparsity mode must be one of {MODES}, got {mode!r}")

    def out(kernel: str, reason: str) -> LayerDecision:
        return LayerDecision(t.layer, t.bucket, kernel, t.sparse_us, t.dense_us, reason)

    if not t.eligible:
        return out("dense", f"not eligible: {t.note or 'not 2:4'}")
    if mode == "off":
        return out("dense", "sparsity=off")
    if mode == "on":
        if t.sparse_us is None and t.note:
            return out("dense", f"sparsity=on but sparse kernel failed: {t.note}")
        return out("sparse", "sparsity=on")
    if t.sparse_us is None:
        return out("dense", f"sparse kernel failed: {t.note or 'no timing'}")
    if t.dense_us is None:
        return out("sparse", "dense timing missing; sparse ran")
    speedup = t.dense_us / t.sparse_us if t.sparse_us > 0 else float("inf")
    detail = f"M={t.rows} sparse {_fmt(t.sparse_us)} vs dense {_fmt(t.dense_us)} = {speedup:.2f}x"
    if t.sparse_us < t.dense_us * (1.0 - min_gain):
        return out("sparse", f"faster: {detail}")
    if t.sparse_us <= t.dense_us:
        return out("dense", f"within {min_gain:.0%} noise: {detail}")
    return out("dense", f"slower: {detail}")


def decide(
    timings: Iterable[LayerTiming], mode: str, min_gain: float = DEFAULT_MIN_GAIN
) -> list[LayerDecision]:
    """Decide every (layer, bucket) timing; order follows the input."""
    return [decide_one(t, mode, min_gain) for t in timings]


def layer_summary(decisions: Sequence[LayerDecision]) -> dict[str, str]:
    """layer -> "sparse" (all buckets), "dense" (all buckets) or "mixed"."""
    kinds: dict[str, set[str]] = {}
    for d in decisions:
        kinds.setdefault(d.layer, set()).add(d.kernel)
    return {layer: (next(iter(k)) if len(k) == 1 else "mixed") for layer, k in kinds.items()}


def apply_end_to_end_guard(
    decisions: Sequence[LayerDecision],
    bucket: int,
    plan_us: float,
    dense_us: float,
    min_gain: float = 0.0,
) -> list[LayerDecision]:
    """Turn every layer at `bucket` dense when the whole chosen plan was not faster than dense.

    Why: per-layer timings in isolation miss cache effects and the kernels around a layer; the
    final word is the whole forward pass at that bucket. `min_gain` 0 keeps any plan that is
    at least as fast as all-dense.
    """
    if plan_us <= dense_us * (1.0 - min_gain):
        return list(decisions)
    reason = (
        f"end-to-end guard: plan {_fmt(plan_us)} vs all-dense {_fmt(dense_us)} at bucket {bucket}"
    )
    return [
        LayerDecision(d.layer, d.bucket, "dense", d.sparse_us, d.dense_us, reason)
        if d.bucket == bucket and d.kernel == "sparse"
        else d
        for d in decisions
    ]


def table(decisions: Sequence[LayerDecision]) -> str:
    """Compact one-line table: `layer@bucket=kernel(speedup)` joined by `;`."""
    parts = []
    for d in decisions:
        if d.sparse_us and d.dense_us:
            parts.append(f"{d.layer}@{d.bucket}={d.kernel}({d.dense_us / d.sparse_us:.2f}x)")
        else:
            parts.append(f"{d.layer}@{d.bucket}={d.kernel}")
    return ";".join(parts)
