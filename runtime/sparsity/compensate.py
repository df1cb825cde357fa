"""The numpy math of structured pruning: unit scores, bias compensation, damped refit.

A block's output is Y = A W + b, A the [rows, units] input of its output projection
(FFN neuron outputs, or merged attention heads). Removing units R and keeping K:

- score (activation-aware): var(a_j) * ||W_j||^2, the output energy unit j adds
  around its mean; the lowest go;
- bias compensation: b += mean(A_R) W_R, so the output keeps its mean exactly and
  only the centred part of the removed units is lost;
- damped least-squares refit: the kept rows absorb what the removed ones did,
  W_K += (C_KK + lambda I)^-1 C_KR W_R with C the activation covariance and
  lambda = damping * mean(diag C_KK). Damping shrinks the correction toward plain
  bias compensation; it is chosen on held-out calibration rows (weak damping
  overfits a small calibration set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DAMPING_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


class Moments:
    """Streaming count, sum and second moment of activation rows (float64)."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.sum = np.zeros(width)
        self.outer = np.zeros((width, width))

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.float64)
        self.n += rows.shape[0]
        self.sum += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def merged(self, other: Moments) -> Moments:
        out = Moments(self.sum.shape[0])
        out.n, out.sum, out.outer = self.n + other.n, self.sum + other.sum, self.outer + other.outer
        return out

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    @property
    def cov(self) -> np.ndarray:
        mu = self.mean
        return self.outer / max(self.n, 1) - np.outer(mu, mu)


def unit_scores(cov: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Activation-aware score per unit: var(a_j) * ||W_j||^2 (W is [units, out])."""
    return np.clip(np.diag(cov), 0.0, None) * np.sum(w.astype(np.float64) ** 2, axis=1)


def lowest(scores: np.ndarray, n_remove: int) -> np.ndarray:
    """Sorted indices of the units to keep after dropping the `n_remove` lowest scores."""
    order = np.argsort(scores, kind="stable")
    return np.sort(order[n_remove:])


@dataclass(frozen=True)
class Refit:
    """New output projection rows and bias for the kept units."""

    w_kept: np.ndarray
    b: np.ndarray
    damping: float | None
    """The damping used (None: bias compensation only)."""


def compensate(mom: Moments, w: np.ndarray, b: np.ndarray | None, keep: np.ndarray,
               damping: float | None) -> Refit:
    """Bias compensation, plus the damped least-squares refit when `damping` is given."""
    w64 = w.astype(np.float64)
    removed = np.setdiff1d(np.arange(w.shape[0]), keep)
    mu = mom.mean
    bias = (np.zeros(w.shape[1]) if b is None else b.astype(np.float64)) + mu[removed] @ w64[
        removed]
    w_kept = w64[keep]
    if damping is not None and removed.size and keep.size:
        delta = refit_delta(mom.cov, w64, keep, removed, damping)
        w_kept = w_kept + delta
        bias = bias - mu[keep] @ delta
    return Refit(w_kept, bias, damping)


def refit_delta(cov: np.ndarray, w: np.ndarray, keep: np.ndarray, removed: np.ndarray,
                damping: float) -> np.ndarray:
    """(C_KK + lambda I)^-1 C_KR W_R, lambda = damping * mean(diag C_KK)."""
    ckk = cov[np.ix_(keep, keep)]
    lam = damping * max(float(np.mean(np.diag(ckk))), 1e-12)
    rhs = cov[np.ix_(keep, removed)] @ w[removed]
    ckk = ckk + lam * np.eye(len(keep))
    try:
        return np.linalg.solve(ckk, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(ckk, rhs, rcond=None)[0]


def output_error(mom: Moments, w: np.ndarray, b: np.ndarray | None, keep: np.ndarray,
                 refit: Refit) -> float:
    """Relative L2 error of the block output over the rows `mom` summarizes."""
    w64 = w.astype(np.float64)
    b64 = np.zeros(w.shape[1]) if b is None else b.astype(np.float64)
    d = -w64.copy()
    d[keep] += refit.w_kept
    db = refit.b - b64
    err = (np.sum(d * (mom.outer @ d)) + 2.0 * float(mom.sum @ d @ db) + mom.n * float(db @ db))
    ref = (np.sum(w64 * (mom.outer @ w64)) + 2.0 * float(mom.sum @ w64 @ b64)
           + mom.n * float(b64 @ b64))
    return float(np.sqrt(max(err, 0.0) / ref)) if ref > 0 else float(np.sqrt(max(err, 0.0)))


def choose_damping(fit: Moments, held_out: Moments, w: np.ndarray, b: np.ndarray | None,
                   keep: np.ndarray, grid: Sequence[float] = DAMPING_GRID) -> float | None:
    """The damping whose refit (on `fit`) has the lowest output error on `held_out` rows.

    None when plain bias compensation does better than every refit on held-out rows.
    """
    best = compensate(fit, w, b, keep, None)
    best_err = output_error(held_out, w, b, keep, best)
    for damping in grid:
        cand = compensate(fit, w, b, keep, damping)
        err = output_error(held_out, w, b, keep, cand)
        if err < best_err:
            best, best_err = cand, err
    return best.damping
