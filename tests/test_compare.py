"""`sparse-runtime compare` against the real server over loopback.

One short report run (0.5 s per run, concurrency 1,4) is shared by the checks on
report.json, the HTML, the PNGs and the terminal table; agreement figures are
checked against onnxruntime run directly on the same model files.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from runtime.cli import main
from runtime.compare.agreement import compare_output, cosine_per_row, pair_outputs
from runtime.compare.errors import CompareError
from runtime.compare.options import normalize_metrics_url, parse_duration, parse_int_list

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class CompareRun:
    rc: int
    out: Path
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text())


def run_compare(*argv: str) -> tuple[int, str, str]:
    """`sparse-runtime compare ...` in-process (the CLI's real entry point)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["compare", *argv])
    return rc, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def full_run(server: Any, tmp_path_factory: pytest.TempPathFactory) -> CompareRun:
    out = tmp_path_factory.mktemp("compare") / "report"
    rc, stdout, stderr = run_compare(
        "--url", server.url, "--models", "mlp_dense,mlp_sparse24",
        "--concurrency", "1,4", "--batch", "1,8", "--duration", "0.5s",
        "--metrics-url", server.metrics_url.removeprefix("http://"),
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    return CompareRun(rc, out, stdout, stderr)


def test_report_json_fields_and_sanity(full_run: CompareRun) -> None:
    assert full_run.rc == 0, full_run.stderr
    r = full_run.report
    assert r["settings"]["models"] == ["mlp_dense", "mlp_sparse24"]
    assert r["settings"]["baseline"] == "mlp_dense"
    assert r["settings"]["concurrency"] == [1, 4] and r["settings"]["batch"] == [1, 8]
    assert len(r["runs"]) == 2 * 2 * 2
    for run in r["runs"]:
        where = f"{run['model']} c={run['concurrency']} b={run['batch']}"
        assert run["requests"] > 0 and run["errors"] == 0, where
        assert 0.5 <= run["elapsed_s"] < 5, where
        assert run["infer_per_s"] == pytest.approx(run["requests"] / run["elapsed_s"])
        assert run["rows_per_s"] == pytest.approx(run["infer_per_s"] * run["batch"])
        lat = run["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], where
        cdf = run["latency_cdf_ms"]
        assert len(cdf) == 101 and cdf == sorted(cdf)
        # the server saw exactly the timed requests (warm-up happens before the scrape)
        srv = run["server"]
        assert srv["requests"] == run["requests"] and srv["failures"] == 0, where
        assert srv["queue_ms"] >= 0 and srv["compute_ms"] > 0, where
        assert srv["request_ms"] >= srv["compute_ms"], where
        assert srv["avg_server_batch"] >= run["batch"], where
        if run["concurrency"] == 1:
            assert srv["avg_server_batch"] == run["batch"], where
    ratios = r["ratios"]
    assert len(ratios) == 4 and {x["model"] for x in ratios} == {"mlp_sparse24"}
    for x in ratios:
        runs = {
            m["model"]: m for m in r["runs"]
            if (m["concurrency"], m["batch"]) == (x["concurrency"], x["batch"])
        }
        assert x["infer_per_s"] == pytest.approx(
            runs["mlp_sparse24"]["infer_per_s"] / runs["mlp_dense"]["infer_per_s"]
        )
        assert x["p99_ms"] == pytest.approx(
            runs["mlp_sparse24"]["latency_ms"]["p99"] / runs["mlp_dense"]["latency_ms"]["p99"]
        )


def test_report_models_and_memory(full_run: CompareRun) -> None:
    r = full_run.report
    dense, sparse = r["models"]["mlp_dense"], r["models"]["mlp_sparse24"]
    assert dense["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 256]}]
    assert dense["max_batch_size"] == 64 and dense["batched"] is True
    assert dense["info"]["sparsity_pattern"] == "dense"
    assert sparse["info"]["sparsity_pattern"] == "2:4"
    assert sparse["info"]["engine"] and sparse["info"]["reason"]
    assert dense["weight_bytes"]["dense"] == sparse["weight_bytes"]["dense"] > 0
    assert sparse["weight_bytes"]["compressed_24"] < sparse["weight_bytes"]["dense"]
    assert sparse["sparsity_ratio"] == pytest.approx(0.5, abs=0.01)
    for when in ("before", "after"):
        assert r["memory"][when]["rss_bytes"] > 10 * 2**20
        assert r["memory"][when]["cpu_used_bytes"] > 0


def test_agreement_baseline_with_itself_is_exact(full_run: CompareRun) -> None:
    agree = full_run.report["agreement"]
    assert agree["baseline"] == "mlp_dense" and agree["outputs"] == ["y"]
    assert agree["rows"] == 64
    same = agree["models"]["mlp_dense"]["y"]
    assert same["exact"] is True
    assert same["max_abs_diff"] == 0
    assert same["mean_abs_diff"] == 0
    assert same["cosine_mean"] == 1.0 and same["cosine_min"] == 1.0
    assert same["top1_agreement"] == 1.0
    other = agree["models"]["mlp_sparse24"]["y"]
    assert other["exact"] is False and other["max_abs_diff"] > 0
    assert -1 <= other["cosine_min"] <= other["cosine_mean"] < 1
    assert 0 <= other["top1_agreement"] <= 1


def test_html_and_pngs_written(full_run: CompareRun) -> None:
    out = full_run.out
    files = full_run.report["files"]
    expected = {"latency_cdf_mlp_dense.png", "latency_cdf_mlp_sparse24.png",
                "throughput.png", "memory.png"}
    assert set(files["plots"]) == expected
    for name in expected:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # self-contained: every plot inlined, nothing fetched from elsewhere
    assert html.count("src='data:image/png;base64,") == len(expected)
    assert "<script" not in html and "src='http" not in html and "href=" not in html
    for text in ("mlp_sparse24/mlp_dense", "concurrency 4, batch 8", "Output agreement",
                 "2:4", "p99 ms", "server queue ms"):
        assert text in html, text


def test_terminal_table_has_ratio_on_every_row(full_run: CompareRun) -> None:
    lines = full_run.stdout.splitlines()
    assert "== concurrency 1, batch 1" in lines
    blocks = full_run.stdout.split("== ")[1:]
    run_blocks = [b for b in blocks if b.startswith("concurrency")]
    assert len(run_blocks) == 4
    for block in run_blocks:
        rows = block.strip().splitlines()[3:]
        assert [r.split()[0] for r in rows][:2] == ["infer/s", "rows/s"]
        for row in rows:
            last = row.split()[-1]
            assert last.endswith("x") or (row.startswith("errors") and last == "-"), row
    assert "report: " in full_run.stdout


def test_agreement_matches_onnxruntime_with_npz_inputs(
    server: Any, sample_repo: Path, tmp_path: Path
) -> None:
    """--inputs rows give the same figures as the models run directly; no metrics URL."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, 256)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    rc, stdout, stderr = run_compare(
        "--url", server.url, "--models", "mlp_dense,mlp_sparse24", "--inputs",
        str(tmp_path / "in.npz"), "--concurrency", "1", "--batch", "3",
        "--duration", "0.2s", "--out", str(tmp_path / "r"), "--no-progress",
    )  # fmt: skip
    assert rc == 0, stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["agreement"]["rows"] == 20
    assert report["server"]["metrics_url"] is None
    assert all(r["server"] is None for r in report["runs"])
    assert report["memory"] == {"before": None, "after": None}
    assert "memory.png" not in report["files"]["plots"]
    assert not (tmp_path / "r" / "memory.png").exists()

    def direct(model: str) -> np.ndarray:
        sess = ort.InferenceSession(str(sample_repo / model / "1" / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        return sess.run(["y"], {"x": x})[0].astype(np.float64)

    dense, sparse = direct("mlp_dense"), direct("mlp_sparse24")
    cos = (dense * sparse).sum(1) / np.linalg.norm(dense, axis=1) / np.linalg.norm(sparse, axis=1)
    got = report["agreement"]["models"]["mlp_sparse24"]["y"]
    assert got["max_abs_diff"] == pytest.approx(np.abs(dense - sparse).max(), rel=1e-4)
    assert got["mean_abs_diff"] == pytest.approx(np.abs(dense - sparse).mean(), rel=1e-4)
    assert got["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert got["cosine_min"] == pytest.approx(cos.min(), abs=1e-5)
    assert got["top1_agreement"] == pytest.approx(
        np.mean(dense.argmax(1) == sparse.argmax(1))
    )
    assert report["agreement"]["models"]["mlp_dense"]["y"]["exact"] is True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "mlp_dense,no_such_model"],
         "unknown model 'no_such_model' (models on the server: "),
        (["--models", "mlp_dense,zoo"], "has inputs that do not match baseline 'mlp_dense'"),
        (["--models", "mlp_dense", "--batch", "65"], "exceeds max_batch_size 64"),
        (["--models", "mlp_dense,mlp_dense"], "model listed twice: mlp_dense"),
        (["--models", "mlp_dense", "--duration", "10x"], "bad duration '10x'"),
        (["--models", "mlp_dense", "--concurrency", "0,4"], "--concurrency values must be"),
        (["--models", "mlp_dense", "--metrics-url", "CLOSED"], "cannot scrape metrics at"),
        (["--models", "mlp_dense", "--metrics-url", "GRPC"], "cannot scrape metrics at"),
        (["--models", "mlp_dense", "--inputs", "NPZ"], "lacks arrays for inputs ['x']"),
    ],
    ids=["unknown-model", "mismatched-inputs", "batch-too-big", "duplicate", "bad-duration",
         "bad-concurrency", "metrics-unreachable", "metrics-not-http", "npz-missing-input"],
)
def test_errors_exit_nonzero_with_clear_message(
    server: Any, tmp_path: Path, args: list[str], message: str
) -> None:
    np.savez(tmp_path / "bad.npz", not_x=np.zeros((2, 256), np.float32))
    args = [
        f"127.0.0.1:{_closed_port()}" if a == "CLOSED" else str(tmp_path / "bad.npz")
        if a == "NPZ" else server.url if a == "GRPC" else a
        for a in args
    ]
    rc, stdout, stderr = run_compare("--url", server.url, "--duration", "0.1s",
                                     "--out", str(tmp_path / "r"), "--no-progress", *args)
    assert rc == 1
    assert stderr.startswith("sparse-runtime compare: error: ") and message in stderr, stderr
    assert not (tmp_path / "r" / "report.json").exists()


def test_unreachable_server_via_cli_process(tmp_path: Path) -> None:
    """The installed entry point: exit code and one clear line, no traceback."""
    url = f"127.0.0.1:{_closed_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "runtime", "compare", "--url", url, "--models", "mlp_dense",
         "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 1
    assert f"cannot reach a KServe v2 gRPC server at {url}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_agreement_math() -> None:
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    b = np.array([[2.0, 4.0, 6.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    assert cosine_per_row(a, b).tolist() == pytest.approx([1.0, 1.0, 0.0])
    res = compare_output(a, b, batched=True)
    assert res["max_abs_diff"] == 3.0 and res["exact"] is False
    assert res["top1_agreement"] == pytest.approx(2 / 3)  # argmax 2,0,0 vs 2,0,1
    assert compare_output(a, a, batched=True)["cosine_min"] == 1.0
    assert compare_output(a, -a, batched=True)["cosine_min"] == -1.0
    assert "error" in compare_output(a, a[:2], batched=True)
    s = np.array([b"a", b"b"], dtype=object)
    assert compare_output(s, s, batched=True) == {"exact": True, "match_fraction": 1.0}
    assert pair_outputs(["y"], ["y", "z"]) == [("y", "y")]
    assert pair_outputs(["y"], ["logits"]) == [("y", "logits")]
    assert pair_outputs(["y"], ["a", "b"]) == []


def test_option_parsing() -> None:
    assert parse_duration("10s") == 10 and parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60 and parse_duration("0.5") == 0.5
    for bad in ("", "0s", "-1s", "2h", "7200s"):
        with pytest.raises(CompareError):
            parse_duration(bad)
    assert parse_int_list("16,1,4,4", "--concurrency", 1024) == (1, 4, 16)
    assert normalize_metrics_url("host:8002") == "http://host:8002/metrics"
    assert normalize_metrics_url("http://h:1/") == "http://h:1/metrics"
    assert normalize_metrics_url("https://h:1/m") == "https://h:1/m"
