"""Output agreement between a model and the baseline on identical inputs (pure numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _rows(arr: np.ndarray, batched: bool) -> np.ndarray:
    if arr.ndim == 0:
        return arr.reshape(1, 1)
    return arr.reshape(arr.shape[0], -1) if batched else arr.reshape(1, -1)


def cosine_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair, in float64; two zero rows count as 1."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dot = np.einsum("ij,ij->i", a64, b64)
    na = np.sqrt(np.einsum("ij,ij->i", a64, a64))
    nb = np.sqrt(np.einsum("ij,ij->i", b64, b64))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dot / (na * nb)
    cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    # NOTE: identical rows must give exactly 1, not 1 - 2 ulp
    cos = np.where(np.all(a64 == b64, axis=1) & (na > 0), 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def compare_output(base: np.ndarray, other: np.ndarray, batched: bool) -> dict[str, Any]:
    """max/mean abs diff, cosine (mean, min over rows), top-1 agreement over the last dim.

    Non-numeric outputs (BYTES) get only the exact-match fraction.
    """
    if base.shape != other.shape:
        return {"error": f"shape {list(other.shape)} vs baseline {list(base.shape)}"}
    if base.dtype == object or other.dtype == object or base.dtype.kind in "SU":
        eq = base == other
        return {"exact": bool(np.all(eq)), "match_fraction": float(np.mean(eq)) if eq.size else 1.0}
    a = _rows(base, batched)
    b = _rows(other, batched)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    cos = cosine_per_row(a, b)
    result: dict[str, Any] = {
        "exact": bool(np.array_equal(base, other)),
        "max_abs_diff": _finite(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": _finite(diff.mean()) if diff.size else 0.0,
        "cosine_mean": _finite(cos.mean()) if cos.size else 1.0,
        "cosine_min": _finite(cos.min()) if cos.size else 1.0,
        "top1_agreement": None,
    }
    if base.ndim >= 1 and base.shape[-1] > 1 and base.dtype.kind in "fiub":
        top_a = np.argmax(base, axis=-1)
        top_b = np.argmax(other, axis=-1)
        result["top1_agreement"] = float(np.mean(top_a == top_b))
    return result


def pair_outputs(base: list[str], other: list[str]) -> list[tuple[str, str]]:
    """Pair outputs by name; by position when the names differ but the counts match."""
    common = [n for n in base if n in other]
    if common:
        return [(n, n) for n in common]
    if len(base) == len(other):
        return list(zip(base, other, strict=True))
    return []
