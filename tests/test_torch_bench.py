"""gpu_sparse_bench helpers on the CPU: the JSON it leaves and the tables it prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sparse_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_sparse_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_recorder_flushes_every_row(bench, tmp_path: Path) -> None:
    rec = bench.Recorder(tmp_path, "gemm", {"device": "x"})
    rec.row({"M": 1, "speedup": 0.5})
    assert json.loads((tmp_path / "gemm.json").read_text())["rows"] == [{"M": 1, "speedup": 0.5}]
    rec.error("somewhere", RuntimeError("boom"))
    data = json.loads((tmp_path / "gemm.json").read_text())
    assert data["errors"][0]["where"] == "somewhere"


def test_table_and_summary(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = bench.table([{"a": 1.23456, "b": None}, {"a": 12345.6}], ["a", "b"], "t")
    assert text.splitlines()[1:] == ["| a | b |", "|---|---|", "| 1.23 | - |", "| 12346 | - |"]
    rec = bench.Recorder(tmp_path, "server", {})
    rec.set("skipped", "tritonclient.grpc not importable")
    assert bench.main(["summary", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(c) server: SKIPPED: tritonclient.grpc not importable" in out
    assert "(a) fp16 GEMM" in out


def test_latency_stats(bench) -> None:
    stats = bench._lat_stats([0.001] * 99 + [0.011], batch=4)
    assert stats["p50_ms"] == pytest.approx(1.0)
    assert stats["p99_ms"] > 1.0
    assert stats["throughput_per_s"] == pytest.approx(4 * 100 / 0.11)


def test_summary_reports_each_engine_file(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def rows(modes: list[str]) -> list[dict[str, object]]:
        return [
            {"mode": m, "batch": b, "p50_ms": 1.0, "speedup_device": s, "speedup_infer": 1.0}
            for m, s in zip(modes, [None, 1.25, 1.31][: len(modes)], strict=True)
            for b in (8, 1024)
        ]

    for name, modes in (
        ("engine", ["off", "auto"]),
        ("engine_fused", ["off", "auto", "auto_fused"]),
    ):
        rec = bench.Recorder(tmp_path, name, {})
        rec.set("rows", rows(modes))
        rec.set("details_auto_fused", {"cslt_bias_fused": "6/6"})
    assert bench.main(["summary", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(b) engine_fused, hidden-8192 MLP" in out
    assert "verdict engine auto speedup_device: worst 1.250x" in out
    assert "verdict engine_fused auto_fused speedup_device: worst 1.310x" in out
    assert '"cslt_bias_fused": "6/6"' in out


def test_engine_modes_are_checked_before_any_work(bench) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["engine", "--modes", "off,fast"])
    assert exc.value.code == 2


def test_summary_computes_ratios_a_killed_part_did_not(
    bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows flushed before a timeout carry times only; summary derives the speed-ups."""
    rec = bench.Recorder(tmp_path, "engine", {})
    for mode, us in (("off", 300.0), ("auto", 200.0)):
        rec.row({"mode": mode, "batch": 1024, "p50_ms": us / 100, "device_us": us})
    rec = bench.Recorder(tmp_path, "server", {})
    for model, ms in (("mlp8192_dense", 9.0), ("mlp8192_sparse24", 6.0)):
        rec.row({"model": model, "batch": 256, "p50_ms": ms, "compute_infer_ms": ms / 3})
    assert bench.main(["summary", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verdict engine auto speedup_device: worst 1.500x at batch 1024" in out
    assert "| mlp8192_sparse24 | 256 | 6 | - | - | 1.5 | 2 | 1.5 |" in out
