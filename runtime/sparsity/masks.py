"""2:4 masks along the reduction axis K (pure numpy)."""

from __future__ import annotations

import numpy as np


def magnitude_prune_2of4(weight: np.ndarray, k_axis: int = 0) -> np.ndarray:
    """Keep the 2 largest-magnitude values in each group of 4 along `k_axis`.

    Ties keep the lower index (stable sort), so the result is deterministic.
    """
    if weight.shape[k_axis] % 4:
        raise ValueError(f"K={weight.shape[k_axis]} is not a multiple of 4")
    w = np.moveaxis(weight, k_axis, -1)
    groups = w.reshape(*w.shape[:-1], -1, 4)
    order = np.argsort(-np.abs(groups), axis=-1, kind="stable")
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[..., :2], True, axis=-1)
    pruned = np.where(mask, groups, 0).reshape(w.shape).astype(weight.dtype)
    return np.moveaxis(pruned, -1, k_axis)
