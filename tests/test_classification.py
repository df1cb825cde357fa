"""Triton's classification extension: top-k as "value:index[:label]" BYTES, server and unit."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb

from runtime.errors import InvalidArgument
from runtime.server.classification import classify
from runtime.server.codec import requested_classes
from tests.conftest import ServerProcess, start_server, wait_for


def test_top_k_per_row_in_tritons_format() -> None:
    scores = np.array([[0.1, 0.7, 0.2, 0.7], [3.0, -1.0, 0.5, 0.0]], np.float32)
    got = classify(scores, 2, batched=True, labels=["cat", "dog", "", "eel"])
    # ties keep the lower index first; an empty label line adds no ":label"
    assert got.tolist() == [[b"0.700000:1:dog", b"0.700000:3:eel"],
                            [b"3.000000:0:cat", b"0.500000:2"]]  # fmt: skip
    ints = classify(np.array([5, 9, 1], np.int64), 5, batched=False)
    assert ints.tolist() == [b"9:1", b"5:0", b"1:2"]  # k above the class count: all of them
    # integers beyond float64's 2^53 keep their exact order; bools and unsigned too
    big = classify(np.array([[2**53, 2**53 + 1, 5]], np.int64), 2, batched=True)
    assert big.tolist() == [[b"9007199254740993:1", b"9007199254740992:0"]]
    top_u64 = classify(np.array([2**64 - 1, 0, 2**63], np.uint64), 1, batched=False)
    assert top_u64.tolist() == [b"18446744073709551615:0"]
    assert classify(np.array([False, True, True]), 2, batched=False).tolist() == [b"1:1", b"1:2"]
    with pytest.raises(InvalidArgument, match="numeric"):
        classify(np.array([b"a"], dtype=object), 1, batched=False, name="s")


def test_class_count_through_the_server(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    assert "classification" in client.get_server_metadata().extensions
    x = np.random.default_rng(3).standard_normal((3, 256)).astype(np.float32)
    inp = grpcclient.InferInput("x", [3, 256], "FP32")
    inp.set_data_from_numpy(x)
    full = client.infer("mlp_dense", [inp]).as_numpy("y")
    top = client.infer("mlp_dense", [inp], outputs=[grpcclient.InferRequestedOutput(
        "y", class_count=4)]).as_numpy("y")  # fmt: skip
    assert top.shape == (3, 4)
    for row, scores in zip(top, full, strict=True):
        indices = [int(s.split(b":")[1]) for s in row]
        assert indices == list(np.argsort(-scores, kind="stable")[:4])
        assert float(row[0].split(b":")[0]) == pytest.approx(scores.max(), abs=1e-5)
    request = pb.ModelInferRequest(model_name="mlp_dense")
    request.outputs.add(name="y").parameters["classification"].int64_param = -2
    with pytest.raises(InvalidArgument, match="class count >= 1"):
        requested_classes(request)


def test_labels_come_from_the_configs_label_filename(sample_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "labelled" / "1").mkdir(parents=True)
    os.link(sample_repo / "mlp_dense" / "1" / "model.onnx", repo / "labelled" / "1" / "model.onnx")
    (repo / "labelled" / "labels.txt").write_text("".join(f"class{i}\n" for i in range(256)))
    (repo / "labelled" / "config.pbtxt").write_text(
        'max_batch_size: 8\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ 256 ] '
        'label_filename: "labels.txt" } ]\n'
    )
    # a label file outside the model's folder is refused: a config must not read other files
    shutil.copytree(repo / "labelled", repo / "escape")
    config = (repo / "escape" / "config.pbtxt").read_text()
    (repo / "escape" / "config.pbtxt").write_text(
        config.replace("labels.txt", "../../../../../../../etc/passwd")
    )
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("labelled"))
        inp = grpcclient.InferInput("x", [1, 256], "FP32")
        inp.set_data_from_numpy(np.ones((1, 256), np.float32))
        top = client.infer("labelled", [inp], outputs=[grpcclient.InferRequestedOutput(
            "y", class_count=2)]).as_numpy("y")  # fmt: skip
        for entry in top[0]:
            _, index, label = entry.decode().split(":")
            assert label == f"class{index}"
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["escape"]["state"] == "UNAVAILABLE"
        assert "is not a file in the model's folder" in index["escape"]["reason"]
    finally:
        assert srv.stop() == 0
