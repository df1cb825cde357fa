"""Which attention heads to remove: greedy ablation on calibration statistics.

Why greedy: heads interact (two heads that write the same direction can stand in
for each other), so the cheapest set of n heads is not the n individually
cheapest ones. Each step removes the head whose ablation, together with those
already removed, adds the least error at the attention block's output over the
calibration rows, with bias compensation and (when refitting) the damped
least-squares refit of the output projection applied before measuring, exactly
as they will be applied. All of it is exact arithmetic on the context covariance,
so no model re-runs are needed.
"""

from __future__ import annotations

import numpy as np

from runtime.sparsity.compensate import Moments, compensate, output_error
from runtime.sparsity.structured import head_columns


def ablation_error(mom: Moments, wo: np.ndarray, bo: np.ndarray | None, heads: int,
                   head_dim: int, removed: set[int], damping: float | None) -> float:
    """Relative output error of the block with `removed` heads gone (compensated)."""
    keep_heads = [h for h in range(heads) if h not in removed]
    keep = head_columns(keep_heads, head_dim)
    return output_error(mom, wo, bo, keep, compensate(mom, wo, bo, keep, damping))


def greedy_heads(mom: Moments, wo: np.ndarray, bo: np.ndarray | None, heads: int,
                 head_dim: int, n_remove: int, damping: float | None) -> list[int]:
    """Heads to remove, in the order greedy ablation picked them (at least one head stays)."""
    n_remove = min(n_remove, heads - 1)
    removed: list[int] = []
    for _ in range(n_remove):
        best, best_err = -1, np.inf
        for h in range(heads):
            if h in removed:
                continue
            err = ablation_error(mom, wo, bo, heads, head_dim, {*removed, h}, damping)
            if err < best_err:
                best, best_err = h, err
        removed.append(best)
    return removed
