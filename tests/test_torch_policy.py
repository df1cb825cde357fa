"""sparse_policy with fake timings: sparse only where it measured faster beyond the noise margin."""

from __future__ import annotations

import pytest

from runtime.engines.sparse_policy import (
    LayerTiming,
    apply_end_to_end_guard,
    decide,
    decide_one,
    layer_summary,
    table,
)


def _t(bucket: int, dense: float | None, sparse: float | None, **kw: object) -> LayerTiming:
    return LayerTiming("fc0", bucket, bucket, dense, sparse, **kw)  # type: ignore[arg-type]


def test_auto_picks_sparse_only_when_faster_beyond_margin() -> None:
    timings = [_t(1, 10.0, 30.0), _t(64, 100.0, 99.0), _t(256, 400.0, 300.0)]
    kernels = [d.kernel for d in decide(timings, "auto")]
    assert kernels == ["dense", "dense", "sparse"]


def test_reasons_say_why() -> None:
    slow, noise, fast = decide([_t(1, 10.0, 30.0), _t(64, 100.0, 99.0), _t(256, 4.0, 3.0)], "auto")
    assert slow.reason.startswith("slower") and "0.33x" in slow.reason
    assert noise.reason.startswith("within 3% noise")
    assert fast.reason.startswith("faster") and "1.33x" in fast.reason


def test_margin_is_configurable() -> None:
    assert decide_one(_t(8, 100.0, 99.0), "auto", min_gain=0.0).kernel == "sparse"
    assert decide_one(_t(8, 100.0, 90.0), "auto", min_gain=0.2).kernel == "dense"


def test_on_forces_and_off_disables() -> None:
    t = _t(1, 10.0, 30.0)
    assert decide_one(t, "on").kernel == "sparse"
    assert decide_one(_t(256, 400.0, 300.0), "off").kernel == "dense"
    assert decide_one(_t(256, 400.0, 300.0), "off").reason == "sparsity=off"


def test_ineligible_and_failed_layers_stay_dense() -> None:
    bad = LayerTiming("fc9", 8, 8, None, None, eligible=False, note="weight is not 2:4 along K")
    for mode in ("auto", "on", "off"):
        d = decide_one(bad, mode)
        assert d.kernel == "dense" and "not 2:4" in d.reason
    failed = _t(8, 10.0, None, note="sparse kernel raised while timing")
    assert decide_one(failed, "auto").kernel == "dense"
    assert decide_one(failed, "on").kernel == "dense"


def test_unknown_mode_rejected() -> None:
    with pytest.raises(ValueError, match="sparsity mode"):
        decide_one(_t(1, 1.0, 1.0), "maybe")


def test_summary_and_table() -> None:
    ds = decide([_t(1, 10.0, 30.0), _t(256, 400.0, 300.0)], "auto")
    ds += decide([LayerTiming("fc1", 1, 1, 5.0, 2.0)], "auto")
    assert layer_summary(ds) == {"fc0": "mixed", "fc1": "sparse"}
    assert table(ds) == "fc0@1=dense(0.33x);fc0@256=sparse(1.33x);fc1@1=sparse(2.50x)"


def test_end_to_end_guard_reverts_only_that_bucket() -> None:
    ds = decide([_t(64, 100.0, 80.0), _t(256, 400.0, 300.0)], "auto")
    assert [d.kernel for d in ds] == ["sparse", "sparse"]
    kept = apply_end_to_end_guard(ds, 256, plan_us=900.0, dense_us=1000.0)
    assert [d.kernel for d in kept] == ["sparse", "sparse"]
    reverted = apply_end_to_end_guard(ds, 64, plan_us=510.0, dense_us=500.0)
    assert [d.kernel for d in reverted] == ["dense", "sparse"]
    assert reverted[0].reason.startswith("end-to-end guard")
