"""inspect / prune / pack / unpack through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime.cli import main
from runtime.samples import mlp_pair
from runtime.sparsity.analysis import analyze_model


@pytest.fixture()
def models(tmp_path: Path) -> tuple[Path, Path]:
    dense, sparse = mlp_pair((64, 128, 128, 32))
    d, s = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    d.write_bytes(dense.SerializeToString())
    s.write_bytes(sparse.SerializeToString())
    return d, s


def test_inspect_table_and_json(models: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
                                ) -> None:
    assert main(["inspect", str(models[1])]) == 0
    out = capsys.readouterr().out
    assert "fc0.weight" in out and "pattern: 2:4" in out and "100.0%" in out
    assert main(["inspect", str(models[1]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["pattern"] == "2:4"
    assert all(layer["compliance_24"] == 1.0 for layer in data["layers"])


def test_inspect_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    assert main(["inspect", str(bad)]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err


def test_prune_24_then_inspect(models: tuple[Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.onnx"
    assert main(["prune", str(models[0]), "-o", str(out), "--pattern", "2:4",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "relative L2" in text and "cosine" in text
    assert analyze_model(onnx.load(str(out))).pattern == "2:4"


def test_prune_exclude_gives_mixed(models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "p.onnx"
    assert main(["prune", str(models[0]), "-o", str(out), "--exclude", "fc1.*",
                 "--no-progress"]) == 0
    prof = analyze_model(onnx.load(str(out)))
    assert prof.pattern == "mixed"
    assert [layer.is_24 for layer in prof.layers] == [True, False, True]


def test_prune_unstructured_per_layer_and_global(models: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "u.onnx"
    assert main(["prune", str(models[0]), "-o", str(out), "--sparsity", "0.5",
                 "--no-progress"]) == 0
    prof = analyze_model(onnx.load(str(out)))
    assert all(abs(layer.sparsity - 0.5) < 1e-3 for layer in prof.layers)
    assert prof.pattern == "unstructured"
    assert main(["prune", str(models[0]), "-o", str(out), "--sparsity", "0.5", "--global",
                 "--no-progress"]) == 0
    prof = analyze_model(onnx.load(str(out)))
    assert abs(prof.sparsity - 0.5) < 1e-3
    assert len({round(layer.sparsity, 3) for layer in prof.layers}) > 1


def test_prune_with_inputs_npz(models: tuple[Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32))
    report = tmp_path / "r.json"
    assert main(["prune", str(models[0]), "-o", str(tmp_path / "p.onnx"), "--inputs", str(npz),
                 "--json", str(report), "--no-progress"]) == 0
    assert 0 < json.loads(report.read_text())["deviation"]["cosine"] < 1
    np.savez(npz, wrong=np.zeros((8, 64), np.float32))
    assert main(["prune", str(models[0]), "-o", str(tmp_path / "q.onnx"), "--inputs",
                 str(npz)]) == 2
    assert "missing ['x']" in capsys.readouterr().err


def test_pack_unpack_bit_exact(models: tuple[Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    packed, restored = tmp_path / "m.sparse", tmp_path / "r.onnx"
    assert main(["pack", str(models[1]), "-o", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "53.12% of dense" in out and "packed+zstd" in out
    assert main(["unpack", str(packed), "-o", str(restored)]) == 0
    assert restored.read_bytes() == models[1].read_bytes()
    assert main(["inspect", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "pattern: 2:4" in out and "packed .sparse file:" in out  # its size on disk too
    assert main(["inspect", str(packed), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["stored_form"] == "packed" and data["file_bytes"] == packed.stat().st_size
    # packing a packed file says so; prune reads one like inspect and quantize do
    assert main(["pack", str(packed), "-o", str(tmp_path / "again.sparse")]) == 2
    assert f"{packed} is already a packed .sparse model" in capsys.readouterr().err
    assert main(["prune", str(packed), "-o", str(tmp_path / "p.onnx"), "--no-progress"]) == 0
    assert analyze_model(onnx.load(str(tmp_path / "p.onnx"))).pattern == "2:4"
    packed.write_bytes(packed.read_bytes()[:-10])
    assert main(["unpack", str(packed), "-o", str(restored)]) == 2
    assert "truncated" in capsys.readouterr().err


def test_output_paths_in_the_way_are_clear_errors(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory where the output file should go, an out-of-range level, a file where the
    repository should be: a message and a non-zero exit, no traceback, no leftover .tmp."""
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main(["prune", str(models[0]), "-o", str(folder), "--no-progress"]) == 2
    assert main(["quantize", str(models[0]), "-o", str(folder), "--no-progress"]) == 2
    packed = tmp_path / "m.sparse"
    assert main(["pack", str(models[1]), "-o", str(packed)]) == 0
    assert main(["unpack", str(packed), "-o", str(folder)]) == 2
    assert capsys.readouterr().err.count("is a directory") == 3
    assert list(tmp_path.glob("*.tmp")) == []
    with pytest.raises(SystemExit) as exc:
        main(["pack", str(models[1]), "--level", "99"])
    assert exc.value.code == 2
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["build-samples", "--model-repository", str(afile)]) == 2


def test_report_json_goes_into_new_folders(models: tuple[Path, Path], tmp_path: Path) -> None:
    report = tmp_path / "reports" / "deep" / "prune.json"
    out = tmp_path / "p.onnx"
    assert main(["prune", str(models[0]), "-o", str(out), "--no-progress",
                 "--json", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["pattern"] == "2:4"


def test_unwritable_output_is_reported_without_a_traceback(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a parent folder should be
    assert main(["pack", str(models[1]), "-o", str(blocker / "m.sparse")]) == 2
    assert main(["prune", str(models[0]), "-o", str(blocker / "p.onnx"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "sparse-runtime prune: error:" in err


def test_calibration_with_nan_or_a_zero_batch_is_refused(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npz = tmp_path / "nan.npz"
    np.savez(npz, x=np.full((8, 64), np.nan, np.float32))
    out = str(tmp_path / "p.onnx")
    assert main(["prune", str(models[0]), "-o", out, "--method", "wanda", "--inputs", str(npz),
                 "--no-progress"]) == 2  # fmt: skip
    assert "NaN or infinite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["prune", str(models[0]), "-o", out, "--batch-size", "0"])
    assert exc.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_prune_bounds_out_of_range_are_errors(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--min-cosine 2 used to prune nothing and exit 0; a cosine lives in [-1, 1]."""
    out = tmp_path / "p.onnx"
    assert main(["prune", str(models[0]), "-o", str(out), "--min-cosine", "2",
                 "--no-progress"]) == 2  # fmt: skip
    assert "--min-cosine must be in [-1, 1]" in capsys.readouterr().err
    assert main(["prune", str(models[0]), "-o", str(out), "--max-deviation", "-1",
                 "--no-progress"]) == 2  # fmt: skip
    assert "--max-deviation must be >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path: Path) -> None:
    """`inspect --json | head`: the closed pipe ends the command quietly (no traceback, no
    'Broken pipe' error line), as command-line tools do."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    layers = 1500  # one weight each: a report far larger than a pipe's buffer
    graph = helper.make_graph(
        [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(layers)],
        "long", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, [1, 8])],
        initializer=[numpy_helper.from_array(np.eye(8, dtype=np.float32), f"w{i}")
                     for i in range(layers)],
    )  # fmt: skip
    path = tmp_path / "long.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "inspect", str(path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(20)
    proc.stdout.close()  # the reader leaves with most of the report unread
    err = proc.stderr.read().decode()
    assert proc.wait(60) != 0 and "Broken pipe" not in err and "Traceback" not in err, err
