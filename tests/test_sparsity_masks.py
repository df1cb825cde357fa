"""2:4 math on small hand-made matrices."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.sparsity.masks import (
    compliance_2of4,
    is_2of4,
    magnitude_prune_2of4,
    magnitude_prune_unstructured,
    mask_2of4_from_scores,
)


def test_keeps_two_largest_per_group_along_k_rows() -> None:
    w = np.array([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3]], dtype=np.float32)
    out = magnitude_prune_2of4(w, k_axis=1)
    np.testing.assert_array_equal(out, np.array([[0, -4, 3, 0, 0.5, 0, 0, 0.3]], np.float32))
    assert out.dtype == np.float32


def test_groups_run_down_columns_for_matmul_layout() -> None:
    w = np.array([[1.0], [2.0], [3.0], [4.0]])  # [K=4, N=1]
    np.testing.assert_array_equal(magnitude_prune_2of4(w, k_axis=0), [[0], [0], [3], [4]])


def test_all_zero_group_stays_zero_and_complies() -> None:
    w = np.zeros((2, 8), dtype=np.float16)
    assert not magnitude_prune_2of4(w, 1).any()
    assert compliance_2of4(w, 1) == 1.0


def test_ties_keep_lower_index() -> None:
    w = np.array([[2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(magnitude_prune_2of4(w, 1), [[2.0, 2.0, 0.0, 0.0]])
    mask = mask_2of4_from_scores(np.ones((1, 4)), 1)
    np.testing.assert_array_equal(mask, [[True, True, False, False]])


def test_non_multiple_of_four_k_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="K=6 .* not a multiple of 4"):
        magnitude_prune_2of4(np.ones((6, 4)), k_axis=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        compliance_2of4(np.ones((2, 6)), k_axis=1)


def test_compliance_fraction() -> None:
    w = np.array([[1, 1, 1, 0, 1, 1, 0, 0]], dtype=np.float32)  # first group has 3 non-zeros
    assert compliance_2of4(w, 1) == 0.5
    assert not is_2of4(w, 1)
    assert is_2of4(magnitude_prune_2of4(w, 1), 1)


def test_unstructured_exact_count() -> None:
    w = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    out = magnitude_prune_unstructured(w, 0.3)
    assert np.count_nonzero(out) == 70
    assert out[0, 0] == 0 and out[-1, -1] == 100
