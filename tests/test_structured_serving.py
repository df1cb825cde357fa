"""A structurally pruned model serves like any other: the server's answers equal onnxruntime's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from runtime.sparsity.structured_prune import StructuredConfig, prune_structured
from tests.conftest import start_server, wait_for
from tests.structured_models import bert_inputs, tiny_bert


def test_pruned_encoder_served_equals_onnxruntime(tmp_path: Path) -> None:
    dense = tiny_bert(hidden=16, heads=4, ffn=32, style="concat")
    feeds = bert_inputs(n=32)
    pruned, _ = prune_structured(dense, StructuredConfig(ffn_sparsity=0.5, head_sparsity=0.5,
                                                         refit=True, progress=False),
                                 feeds, feeds)
    repo = tmp_path / "repo"
    for name, model in (("bert_dense", dense), ("bert_structured", pruned)):
        (repo / name / "1").mkdir(parents=True)
        onnx.save(model, str(repo / name / "1" / "model.onnx"))
    path = repo / "bert_structured" / "1" / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = bert_inputs(n=3, seed=7)
    expected = sess.run(None, x)[0]

    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("bert_structured"), timeout=60)
        inputs = []
        for name, dtype in (("x", "FP32"), ("attention_mask", "INT64")):
            inp = grpcclient.InferInput(name, list(x[name].shape), dtype)
            inp.set_data_from_numpy(x[name])
            inputs.append(inp)
        got = client.infer("bert_structured", inputs).as_numpy("y")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        dense_out = client.infer("bert_dense", inputs).as_numpy("y")
        assert got.shape == dense_out.shape
    finally:
        srv.stop()
