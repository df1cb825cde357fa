"""Config `reshape`: clients see the config dims, the model gets the reshape shape, as in
Triton (inputs before the model, outputs after it), batched and `max_batch_size: 0`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess, start_server

# Triton's densenet_onnx example config, shrunk: [3,4,4] for [3,224,224], 3 classes for 1000
DENSENET_LIKE = """
name: "densenet_like"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 4, 4 ]
          reshape { shape: [ 1, 3, 4, 4 ] } } ]
output [ { name: "fc6_1" data_type: TYPE_FP32 dims: [ 3 ]
           reshape { shape: [ 1, 3, 1, 1 ] } } ]
"""

BATCHED_VARIABLE = """
name: "batched_variable"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 1 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 1 ] } } ]
dynamic_batching { }
"""

SIZE_MISMATCH = """
name: "size_mismatch"
max_batch_size: 0
input [ { name: "data_0" data_type: TYPE_FP32 dims: [ 3, 4, 5 ]
          reshape { shape: [ 1, 3, 4, 4 ] } } ]
"""


def _model(nodes: list, inputs: list, outputs: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def densenet_like() -> bytes:
    """[1,3,4,4] -> per-channel mean, [1,3,1,1] (a classifier head's shapes)."""
    return _model(
        [helper.make_node("ReduceMean", ["data_0"], ["fc6_1"], axes=[2, 3], keepdims=1)],
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 3, 1, 1])],
    )


def doubler() -> bytes:
    """[batch, n, 1] -> twice the values, same shape."""
    return _model(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n", 1])],
    )


def write_model(repo: Path, name: str, config: str, model: bytes) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(model)
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def reshape_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("reshape")
    repo = tmp / "repo"
    write_model(repo, "densenet_like", DENSENET_LIKE, densenet_like())
    write_model(repo, "batched_variable", BATCHED_VARIABLE, doubler())
    write_model(repo, "size_mismatch", SIZE_MISMATCH, densenet_like())
    srv = start_server(
        repo, tmp, ["--model-control-mode", "explicit", "--load-model", "densenet_like",
                    "--load-model", "batched_variable"],
    )  # fmt: skip
    yield srv
    srv.stop()


def test_densenet_example_config_loads_and_serves_config_dims(
    reshape_server: ServerProcess,
) -> None:
    client = grpcclient.InferenceServerClient(reshape_server.url)
    assert client.is_server_ready()
    meta = client.get_model_metadata("densenet_like")
    assert [list(map(int, t.shape)) for t in meta.inputs] == [[3, 4, 4]]
    assert [list(map(int, t.shape)) for t in meta.outputs] == [[3]]
    x = np.arange(48, dtype=np.float32).reshape(3, 4, 4)
    inp = grpcclient.InferInput("data_0", [3, 4, 4], "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("densenet_like", [inp]).as_numpy("fc6_1")
    assert out.shape == (3,)
    np.testing.assert_allclose(out, x.mean(axis=(1, 2)), rtol=1e-6)


def test_the_reshape_shape_itself_is_refused_as_triton_does(
    reshape_server: ServerProcess,
) -> None:
    client = grpcclient.InferenceServerClient(reshape_server.url)
    inp = grpcclient.InferInput("data_0", [1, 3, 4, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"Expected \[3,4,4\], got \[1,3,4,4\]"):
        client.infer("densenet_like", [inp])


@pytest.mark.parametrize("rows,n", [(1, 5), (3, 2)])
def test_batched_variable_dims_map_in_order(
    reshape_server: ServerProcess, rows: int, n: int
) -> None:
    client = grpcclient.InferenceServerClient(reshape_server.url)
    assert [list(map(int, t.shape)) for t in client.get_model_metadata("batched_variable").inputs] \
        == [[-1, -1]]  # fmt: skip
    x = np.random.default_rng(n).standard_normal((rows, n)).astype(np.float32)
    inp = grpcclient.InferInput("x", [rows, n], "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("batched_variable", [inp]).as_numpy("y")
    assert out.shape == (rows, n)
    np.testing.assert_allclose(out, 2 * x)


def test_dims_and_reshape_of_different_size_fail_to_load(reshape_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(reshape_server.url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("size_mismatch")
    assert "model input 'data_0' has different size for dims and reshape" in str(err.value)


def test_reshape_over_http_too(reshape_server: ServerProcess) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(reshape_server.http_url)
    x = np.ones((3, 4, 4), np.float32)
    inp = httpclient.InferInput("data_0", [3, 4, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    result = client.infer("densenet_like", [inp])
    assert result.get_response()["outputs"][0]["shape"] == [3]
    np.testing.assert_allclose(result.as_numpy("fc6_1"), np.ones(3))
