"""2:4 masks along the reduction axis K (pure numpy).

Every function takes the weight plus the axis that holds K, so callers never
have to remember whether a layer stores [K, N] (ONNX MatMul) or [N, K] (Gemm
with transB=1, torch Linear): groups of 4 always run along K.
"""

from __future__ import annotations

import numpy as np


def check_k(weight: np.ndarray, k_axis: int) -> None:
    """Reject weights whose K is not a multiple of 4, with a message naming K.

    Raises:
        ValueError: K is not a multiple of 4 (2:4 groups would straddle rows).
    """
    k = weight.shape[k_axis]
    if k % 4:
        raise ValueError(f"K={k} (axis {k_axis}) is not a multiple of 4: 2:4 needs whole groups")


def groups_k_last(weight: np.ndarray, k_axis: int) -> np.ndarray:
    """View `weight` as [..., K/4, 4] with the groups of 4 along K last."""
    check_k(weight, k_axis)
    w = np.moveaxis(weight, k_axis, -1)
    return w.reshape(*w.shape[:-1], -1, 4)


def compliance_2of4(weight: np.ndarray, k_axis: int = 0) -> float:
    """Fraction of groups of 4 along K with at most 2 non-zeros (1.0 means 2:4)."""
    groups = groups_k_last(weight, k_axis)
    if groups.size == 0:
        return 1.0
    nnz = np.count_nonzero(groups, axis=-1)
    return float(np.mean(nnz <= 2))


def is_2of4(weight: np.ndarray, k_axis: int = 0) -> bool:
    """True when every group of 4 along K has at most 2 non-zeros."""
    return compliance_2of4(weight, k_axis) == 1.0


def mask_2of4_from_scores(scores: np.ndarray, k_axis: int = 0) -> np.ndarray:
    """Boolean keep-mask with the 2 highest scores of each group of 4 along K.

    Ties keep the lower index (stable sort), so masks are deterministic.
    """
    groups = groups_k_last(scores, k_axis)
    order = np.argsort(-groups, axis=-1, kind="stable")
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :2], True, axis=-1)
    shape = np.moveaxis(scores, k_axis, -1).shape
    return np.moveaxis(mask.reshape(shape), -1, k_axis)


def magnitude_prune_2of4(weight: np.ndarray, k_axis: int = 0) -> np.ndarray:
    """Keep the 2 largest-magnitude values in each group of 4 along `k_axis`.

    Ties keep the lower index (stable sort), so the result is deterministic.
    """
    mask = mask_2of4_from_scores(np.abs(weight.astype(np.float64)), k_axis)
    return np.where(mask, weight, np.zeros((), dtype=weight.dtype)).astype(weight.dtype)


def magnitude_prune_unstructured(
    weight: np.ndarray, sparsity: float, threshold: float | None = None
) -> np.ndarray:
    """Zero the `sparsity` fraction of smallest-magnitude entries (or those <= threshold).

    With `threshold` given (global pruning) it overrides `sparsity`. Ties at the
    cut are broken by flat index so the count is exact and deterministic.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = np.abs(weight.astype(np.float64)).ravel()
    if threshold is not None:
        keep = flat > threshold
    else:
        n_zero = int(round(sparsity * flat.size))
        keep = np.ones(flat.size, dtype=bool)
        if n_zero:
            keep[np.argsort(flat, kind="stable")[:n_zero]] = False
    return np.where(keep.reshape(weight.shape), weight, np.zeros((), weight.dtype)).astype(
        weight.dtype
    )
