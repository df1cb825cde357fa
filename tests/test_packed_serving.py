"""The server loads packed 2:4 models (.sparse) directly and rejects damaged ones clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from runtime.sparsity.pack import pack_file
from tests.conftest import copy_repo, metric, parse_metrics, start_server, wait_for


def infer(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")


def test_packed_model_serves_identically_and_corrupt_one_fails_alone(
    sample_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    copy_repo(sample_repo, repo)
    packed_dir = repo / "mlp_sparse24_packed"
    (packed_dir / "1").mkdir(parents=True)
    pack_file(repo / "mlp_sparse24" / "1" / "model.onnx", packed_dir / "1" / "model.sparse")
    config = (repo / "mlp_sparse24" / "config.pbtxt").read_text()
    (packed_dir / "config.pbtxt").write_text(config.replace("mlp_sparse24", "mlp_sparse24_packed"))
    # a corrupt copy: one byte flipped in the middle of the payload
    shutil.copytree(packed_dir, repo / "corrupt")
    (repo / "corrupt" / "config.pbtxt").write_text(config.replace("mlp_sparse24", "corrupt"))
    blob = bytearray((repo / "corrupt" / "1" / "model.sparse").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (repo / "corrupt" / "1" / "model.sparse").write_bytes(bytes(blob))
    # a truncated copy
    shutil.copytree(packed_dir, repo / "truncated")
    (repo / "truncated" / "config.pbtxt").write_text(config.replace("mlp_sparse24", "truncated"))
    path = repo / "truncated" / "1" / "model.sparse"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])

    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        wait_for(lambda: client.is_model_ready("mlp_sparse24_packed"), timeout=60)
        x = np.random.default_rng(5).standard_normal((4, 256)).astype(np.float32)
        np.testing.assert_array_equal(
            infer(client, "mlp_sparse24_packed", x), infer(client, "mlp_sparse24", x)
        )
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        for bad in ("corrupt", "truncated"):
            assert index[bad]["state"] == "UNAVAILABLE"
            assert index[bad]["reason"], index[bad]
        params = client.get_model_config("mlp_sparse24_packed").config.parameters
        assert params["sparse_runtime.stored_form"].string_value == "packed"
        samples = parse_metrics(srv.scrape())
        stored = metric(samples, "sparse_runtime_model_weight_bytes",
                        model="mlp_sparse24_packed", form="stored")  # fmt: skip
        dense = metric(samples, "sparse_runtime_model_weight_bytes",
                       model="mlp_sparse24_packed", form="dense")  # fmt: skip
        assert 0 < stored < 0.6 * dense
    finally:
        srv.stop()
