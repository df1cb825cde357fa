"""inspect --parent and quantize on structurally pruned models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from runtime.cli import main
from runtime.sparsity.structured_prune import StructuredConfig, prune_structured
from tests.structured_models import bert_inputs, tiny_bert


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("structured")
    dense = tiny_bert()
    feeds = bert_inputs(n=32)
    pruned, _ = prune_structured(dense, StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5,
                                                         progress=False), feeds, feeds)
    onnx.save(dense, str(tmp / "dense.onnx"))
    onnx.save(pruned, str(tmp / "pruned.onnx"))
    return tmp / "dense.onnx", tmp / "pruned.onnx"


def test_inspect_shows_shapes_against_the_parent(pair: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dense, pruned = pair
    assert main(["inspect", str(pruned), "--parent", str(dense)]) == 0
    text = capsys.readouterr().out
    assert "against the dense parent" in text
    assert "16x32" in text and "16x16" in text  # an FFN W1 before and after
    assert "heads  4       2" in text
    assert main(["inspect", str(pruned), "--parent", str(dense), "--json"]) == 0
    parent = json.loads(capsys.readouterr().out)["parent"]
    assert parent["params"] < parent["parent_params"]
    assert {(b["kind"], b["parent"], b["now"]) for b in parent["blocks"]} == {
        ("ffn", 32, 16), ("heads", 4, 2)}


def test_quantize_stacks_on_structured(pair: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, pruned = pair
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(pruned), "-o", str(out), "--no-progress"]) == 0, \
        capsys.readouterr()
    feeds = bert_inputs(n=4, seed=3)
    a = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.mean() > 0.9
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul")
               for n in onnx.load(str(out)).graph.node)
