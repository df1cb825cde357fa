"""Saliency methods for one layer: magnitude, Wanda and SparseGPT (numpy, float64).

All functions take the weight as [N, K] (output rows, K = input features last,
the torch Linear layout) and return a new [N, K] float64 array. `pattern` is
"2:4" or None (then `sparsity` is the unstructured fraction per row / block).

SparseGPT follows Frantar & Alistarh (2023): H = 2/n X^T X in float64, damping
`damp * mean(diag H)`, the upper Cholesky factor U of H^-1, then blockwise
column sweeps where each pruned weight's error is pushed onto the columns not
yet processed (OBS update). The 2:4 mask is chosen per group of 4 columns when
the sweep reaches it. `mask_selection="obs"` (default) picks, for each row, the
pair to drop that minimizes the exact joint OBS error w_S^T (U_g^T U_g)_SS^-1 w_S
over the 6 possible pairs, instead of the paper's per-weight w^2/U_ii^2 score
("diag"); it is the same cost a full solve of that group would give, so it can
only lower the error of each group given the ones before it.
"""

from __future__ import annotations

import itertools

import numpy as np

from runtime.sparsity.masks import magnitude_prune_2of4, mask_2of4_from_scores

_PAIRS = np.array(list(itertools.combinations(range(4), 2)))  # 6 x 2


class HessianAccumulator:
    """Streams calibration activations into X^T X (float64) without keeping X."""

    def __init__(self, k: int) -> None:
        """Start an empty accumulator for K input features."""
        self.xtx = np.zeros((k, k), dtype=np.float64)
        self.rows = 0

    def add(self, x: np.ndarray) -> None:
        """Add activations [..., K] (rows = tokens/samples)."""
        x2 = np.asarray(x, dtype=np.float64).reshape(-1, self.xtx.shape[0])
        self.xtx += x2.T @ x2
        self.rows += x2.shape[0]

    def hessian(self) -> np.ndarray:
        """H = 2/n X^T X (the layer-wise squared-error Hessian)."""
        return self.xtx * (2.0 / max(self.rows, 1))

    def column_norms(self) -> np.ndarray:
        """||X_j||_2 per input feature (Wanda's activation norm)."""
        return np.sqrt(np.diag(self.xtx))


def _row_unstructured_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    n_drop = int(round(scores.shape[1] * sparsity))
    mask = np.ones(scores.shape, dtype=bool)
    if n_drop:
        order = np.argsort(scores, axis=1, kind="stable")[:, :n_drop]
        np.put_along_axis(mask, order, False, axis=1)
    return mask


def magnitude(w: np.ndarray, pattern: str | None = "2:4", sparsity: float = 0.5) -> np.ndarray:
    """Magnitude pruning of [N, K] (2:4 along K, or unstructured per row)."""
    w = np.asarray(w, dtype=np.float64)
    if pattern == "2:4":
        return magnitude_prune_2of4(w, k_axis=1)
    return np.where(_row_unstructured_mask(np.abs(w), sparsity), w, 0.0)


def wanda(w: np.ndarray, col_norm: np.ndarray, pattern: str | None = "2:4",
          sparsity: float = 0.5) -> np.ndarray:
    """Wanda (Sun et al. 2023): score |W_ij| * ||X_j||, compared within each output row."""
    w = np.asarray(w, dtype=np.float64)
    scores = np.abs(w) * np.asarray(col_norm, dtype=np.float64)[None, :]
    if pattern == "2:4":
        mask = mask_2of4_from_scores(scores, k_axis=1)
    else:
        mask = _row_unstructured_mask(scores, sparsity)
    return np.where(mask, w, 0.0)


def prepare_hessian(hessian: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(dead-column mask, upper U with U^T U = H_damped^-1), shareable by layers with one input.

    Dead inputs (never active in calibration) get H_jj = 1 so H stays invertible;
    their weights are zeroed by `sparsegpt`.
    """
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    return dead, _inverse_cholesky_upper(h, damp)


def _inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper U with U^T U = (H + damp*mean(diag H) I)^-1, retrying with more damping."""
    k = h.shape[0]
    mean_diag = float(np.mean(np.diag(h))) or 1.0
    for factor in (1.0, 10.0, 100.0):
        try:
            hd = h + np.eye(k) * (damp * factor * mean_diag)
            lower = np.linalg.cholesky(hd)
            lower_inv = np.linalg.solve(lower, np.eye(k))  # L^-1
            hinv = lower_inv.T @ lower_inv  # (L L^T)^-1
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite even with 100x damping")


def _obs_pair_mask(w4: np.ndarray, u4: np.ndarray) -> np.ndarray:
    """Keep-mask [N, 4]: drop the pair with the least joint OBS error for each row."""
    m = u4.T @ u4  # inverse Hessian of the 4 columns given the later ones are free
    errors = np.empty((w4.shape[0], len(_PAIRS)))
    for p, (a, b) in enumerate(_PAIRS):
        maa, mbb, mab = m[a, a], m[b, b], m[a, b]
        det = maa * mbb - mab * mab
        wa, wb = w4[:, a], w4[:, b]
        errors[:, p] = (mbb * wa * wa - 2 * mab * wa * wb + maa * wb * wb) / det
    best = np.argmin(errors, axis=1)
    keep = np.ones(w4.shape, dtype=bool)
    rows = np.arange(w4.shape[0])
    keep[rows, _PAIRS[best, 0]] = False
    keep[rows, _PAIRS[best, 1]] = False
    return keep


def sparsegpt(
    w: np.ndarray,
    hessian: np.ndarray,
    pattern: str | None = "2:4",
    sparsity: float = 0.5,
    blocksize: int = 128,
    damp: float = 0.01,
    mask_selection: str = "obs",
    prepared: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """SparseGPT with OBS weight updates; returns the pruned, compensated [N, K] weight.

    `prepared` is `prepare_hessian(hessian, damp)`, passed in when several layers
    (q/k/v) share one input so the factorization runs once.
    """
    w = np.array(w, dtype=np.float64)
    n, k = w.shape
    if pattern == "2:4":
        if k % 4:
            raise ValueError(f"K={k} is not a multiple of 4: 2:4 needs whole groups")
        blocksize = max(4, blocksize - blocksize % 4)
    dead, u = prepared if prepared is not None else prepare_hessian(hessian, damp)
    w[:, dead] = 0.0
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d1 = np.diag(u1)
        keep1 = np.ones(w1.shape, dtype=bool)
        if pattern != "2:4":
            scores = w1**2 / d1[None, :] ** 2
            n_drop = int(round(scores.size * sparsity))
            if n_drop:
                flat = np.argsort(scores, axis=None, kind="stable")[:n_drop]
                keep1.ravel()[flat] = False
        for i in range(i2 - i1):
            if pattern == "2:4" and i % 4 == 0:
                if mask_selection == "obs":
                    keep1[:, i : i + 4] = _obs_pair_mask(w1[:, i : i + 4], u1[i : i + 4, i : i + 4])
                else:
                    score = w1[:, i : i + 4] ** 2 / d1[None, i : i + 4] ** 2
                    keep1[:, i : i + 4] = mask_2of4_from_scores(score, k_axis=1)
            col = w1[:, i]
            q = np.where(keep1[:, i], col, 0.0)
            q1[:, i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w
