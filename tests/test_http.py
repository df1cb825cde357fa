"""KServe v2 HTTP/REST through the real server: tritonclient.http (sync and aio) and plain
HTTP for the status codes and `{"error": ...}` bodies."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.conftest import ServerProcess, copy_repo, start_server, zoo_inputs


def call(
    srv: ServerProcess, path: str, body: bytes | None = None, method: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    """(status, body, headers) of one plain HTTP request."""
    request = urllib.request.Request(
        f"http://{srv.http_url}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def error_of(srv: ServerProcess, path: str, body: bytes | None = None,
             method: str | None = None, **headers: str) -> tuple[int, str]:  # fmt: skip
    status, data, _ = call(srv, path, body, method, headers)
    assert status >= 400, data
    return status, json.loads(data)["error"]


@pytest.fixture()
def client(server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url)


# ---- health and metadata ------------------------------------------------------------------
def test_health_routes(server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp_dense") and client.is_model_ready("mlp_dense", "1")
    assert not client.is_model_ready("nope")
    assert call(server, "/v2/health/ready")[0] == 200
    assert call(server, "/v2/models/nope/ready")[0] == 400  # NOTE: Triton: not ready is 400


def test_server_and_model_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "sparse-runtime"
    for extension in ("binary_tensor_data", "system_shared_memory", "statistics",
                      "model_repository", "classification"):  # fmt: skip
        assert extension in meta["extensions"]
    assert "cuda_shared_memory" not in meta["extensions"]
    model = client.get_model_metadata("mlp_dense", "1")
    assert model["name"] == "mlp_dense" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 256]}]
    config = client.get_model_config("mlp_dense")
    assert config["name"] == "mlp_dense" and config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [256] and config["input"][0]["data_type"] == "TYPE_FP32"


def test_unknown_model_is_404_with_tritons_wording(server: ServerProcess) -> None:
    for path in ("/v2/models/nope", "/v2/models/nope/config", "/v2/models/nope/versions/1"):
        status, message = error_of(server, path)
        assert status == 404 and "Request for unknown model: 'nope'" in message
    status, message = error_of(server, "/v2/models/nope/infer", b'{"inputs": []}')
    assert status == 404 and "'nope' is not found" in message


# ---- infer ------------------------------------------------------------------------------
@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False),
                                                  (False, True)])  # fmt: skip
def test_infer_json_and_binary(
    client: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    inp = httpclient.InferInput("x", [3, 256], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("y", binary_data=binary_out)
    result = client.infer("mlp_dense", [inp], outputs=[out], request_id="r-1")
    y = result.as_numpy("y")
    assert y.shape == (3, 256) and y.dtype == np.float32
    assert result.get_response()["id"] == "r-1"
    # the same model over gRPC semantics: one row alone gives the same answer
    one = httpclient.InferInput("x", [1, 256], "FP32")
    one.set_data_from_numpy(x[:1])
    np.testing.assert_allclose(client.infer("mlp_dense", [one]).as_numpy("y")[0], y[0],
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("binary", [True, False])
def test_every_dtype_of_the_zoo(client: httpclient.InferenceServerClient, binary: bool) -> None:
    data = zoo_inputs(2)
    inputs = []
    for name, array in data.items():
        inp = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("f32_x2", "f16_out", "i64_x2", "i8_out", "b_not", "s_out")]  # fmt: skip
    result = client.infer("zoo", inputs, outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("f32_x2"), 2 * data["f32"], rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("f16_out"), data["f16"])
    np.testing.assert_array_equal(result.as_numpy("i64_x2"), 2 * data["i64"])
    np.testing.assert_array_equal(result.as_numpy("i8_out"), data["i8"])
    np.testing.assert_array_equal(result.as_numpy("b_not"), ~data["b"])
    strings = result.as_numpy("s_out")
    assert [v if isinstance(v, bytes) else v.encode() for v in strings.reshape(-1)] == list(
        data["s"].reshape(-1)
    )


def test_outputs_default_to_all_and_classification(
    client: httpclient.InferenceServerClient,
) -> None:
    x = np.arange(256, dtype=np.float32).reshape(1, 256)
    inp = httpclient.InferInput("x", [1, 256], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp_dense", [inp])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["y"]
    top = client.infer("mlp_dense", [inp],
                       outputs=[httpclient.InferRequestedOutput("y", class_count=3)])  # fmt: skip
    classes = top.as_numpy("y")
    assert classes.shape == (1, 3) and b":" in classes.reshape(-1)[0]


def test_aio_client(server: ServerProcess) -> None:
    async def run() -> tuple[bool, np.ndarray]:
        client = aiohttpclient.InferenceServerClient(server.http_url)
        try:
            ready = await client.is_server_ready()
            inp = aiohttpclient.InferInput("x", [2, 256], "FP32")
            inp.set_data_from_numpy(np.ones((2, 256), np.float32))
            results = await asyncio.gather(*(client.infer("mlp_dense", [inp]) for _ in range(8)))
            return ready, np.stack([r.as_numpy("y") for r in results])
        finally:
            await client.close()

    ready, ys = asyncio.run(run())
    assert ready and ys.shape == (8, 2, 256)
    assert np.all(ys == ys[0])


def test_bad_requests_get_400_and_tritons_wording(server: ServerProcess) -> None:
    path = "/v2/models/mlp_dense/infer"
    for bad in (b"{not json", b"[" * 100_000):  # NOTE: tritonserver answers 500
        status, message = error_of(server, path, bad)
        assert status == 500 and "failed to parse the request JSON buffer" in message
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 255], "data": [0] * 255}]}
    status, message = error_of(server, path, json.dumps(body).encode())
    assert status == 400
    assert "unexpected shape for input 'x' for model 'mlp_dense'. Expected [-1,256], got [1,255]" \
        in message  # fmt: skip
    body["inputs"][0].update(shape=[1, 256], data=[0] * 255)
    status, message = error_of(server, path, json.dumps(body).encode())
    assert (status, message) == (  # NOTE: tritonserver's status and wording
        500,
        "Unable to parse 'data': Shape does not match true shape of 'data' field",
    )
    body["inputs"][0].update(data=["a"] * 256)
    status, message = error_of(server, path, json.dumps(body).encode())
    assert status == 400 and "'data' of input 'x'" in message
    del body["inputs"][0]["data"]
    status, message = error_of(server, path, json.dumps(body).encode())
    assert status == 400 and "Input must set only one of the following fields: 'data'" in message
    status, message = error_of(server, path, b'{"inputs": []}')
    assert status == 400 and "missing required input(s) ['x']" in message


def test_binary_framing_errors(server: ServerProcess) -> None:
    path = "/v2/models/mlp_dense/infer"
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 256],
              "parameters": {"binary_data_size": 1024}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    ok = call(server, path, header + b"\0" * 1024, None,
              {"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert ok[0] == 200
    for extra, length, fragment in (
        (b"\0" * 1000, len(header), "runs past the end"),
        (b"\0" * 1030, len(header), "unexpected additional input data"),
        (b"\0" * 1024, 10**9, "inference header size should be in range"),
        (b"\0" * 1024, "abc", "is not a number"),
    ):
        status, message = error_of(server, path, header + extra,
                                   **{"Inference-Header-Content-Length": str(length)})  # fmt: skip
        assert status == 400 and fragment in message, message


def test_unsupported_and_unknown_routes(server: ServerProcess) -> None:
    status, message = error_of(server, "/v2/cudasharedmemory/status")
    assert status == 501 and "CUDA shared memory" in message
    assert error_of(server, "/v2/nothing/here")[0] == 404
    status, message = error_of(server, "/v2/models/mlp_dense/infer", method="GET")
    assert status == 405 and message == "Method Not Allowed"


def test_statistics(server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 256], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 256), np.float32))
    client.infer("mlp_sparse24", [inp])
    stats = client.get_inference_statistics("mlp_sparse24")["model_stats"]
    assert [s["name"] for s in stats] == ["mlp_sparse24"]
    success = stats[0]["inference_stats"]["success"]
    assert isinstance(success["count"], int) and success["count"] >= 1
    assert isinstance(stats[0]["inference_count"], int)
    every = client.get_inference_statistics()["model_stats"]
    assert {"mlp_dense", "mlp_sparse24"} <= {s["name"] for s in every}
    status, message = error_of(server, "/v2/models/nope/stats")
    assert status == 400 and "requested model 'nope' is not available" in message


def test_repository_refused_outside_explicit_mode(
    server: ServerProcess, client: httpclient.InferenceServerClient
) -> None:
    index = client.get_model_repository_index()
    assert {"name": "mlp_dense", "version": "1", "state": "READY"} in index
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("mlp_dense")
    assert err.value.status() == "503" and "--model-control-mode explicit" in str(err.value)


@pytest.fixture(scope="module")
def explicit_server(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ServerProcess]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("http_explicit")
    copy_repo(sample_repo, tmp / "repo")
    srv = start_server(tmp / "repo", tmp, ["--model-control-mode", "explicit",
                                           "--grpc-frontend", "native"])  # fmt: skip
    yield srv
    srv.stop()


def test_load_unload_over_http_beside_the_native_grpc_frontend(
    explicit_server: ServerProcess,
) -> None:
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    assert not client.is_model_ready("mlp_dense")
    client.load_model("mlp_dense")
    assert client.is_model_ready("mlp_dense")
    inp = httpclient.InferInput("x", [1, 256], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 256), np.float32))
    assert client.infer("mlp_dense", [inp]).as_numpy("y").shape == (1, 256)
    ready = client.get_model_repository_index()
    assert {"name": "mlp_dense", "version": "1", "state": "READY"} in ready
    client.unload_model("mlp_dense")
    assert not client.is_model_ready("mlp_dense")
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nope")
    assert err.value.status() in ("400", "404")
    override = json.dumps({"max_batch_size": 8, "dynamic_batching": {}})
    client.load_model("mlp_dense", config=override)
    assert client.get_model_config("mlp_dense")["max_batch_size"] == 8
    client.unload_model("mlp_dense")


def test_http_off_and_a_clean_stop(sample_repo: Path, tmp_path: Path) -> None:
    """--http-port -1: no HTTP, nor its extension in ServerMetadata; with HTTP on, SIGTERM
    after HTTP traffic ends the server cleanly (exit 0, no traceback)."""
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "repo"
    copy_repo(sample_repo, repo)
    for model in ("mlp_sparse24", "mlp_int8", "mlp_sparse24_int8"):
        shutil.rmtree(repo / model, ignore_errors=True)
    off = start_server(repo, tmp_path, ["--http-port", "-1"])
    try:
        assert off.http_port == -1
        meta = grpcclient.InferenceServerClient(off.url).get_server_metadata()
        assert "binary_tensor_data" not in meta.extensions
        assert "system_shared_memory" in meta.extensions
    finally:
        assert off.stop() == 0
    on = start_server(repo, tmp_path)
    client = httpclient.InferenceServerClient(on.http_url)
    inp = httpclient.InferInput("x", [1, 256], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 256), np.float32))
    assert client.infer("mlp_dense", [inp]).as_numpy("y").shape == (1, 256)
    assert on.stop() == 0
    assert "Traceback" not in on.log_text()


def test_bodies_over_http_max_input_size_get_400_and_tritons_wording(
    sample_repo: Path, tmp_path: Path
) -> None:
    """--http-max-input-size (tritonserver's flag, 64 MiB by default) bounds every HTTP body,
    with or without Content-Length; before it the limit was gRPC's 2 GiB, and a JSON body
    is decoded on the event loop at ~10x its size."""
    import http.client

    repo = tmp_path / "repo"
    copy_repo(sample_repo, repo)
    srv = start_server(repo, tmp_path, ["--http-max-input-size", "8192"])
    try:
        path = "/v2/models/mlp_dense/infer"
        small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256],
                             "data": [0] * 256}]}  # fmt: skip
        assert call(srv, path, json.dumps(small).encode())[0] == 200
        big = json.dumps({**small, "pad": "x" * 10_000}).encode()
        status, message = error_of(srv, path, big)
        assert status == 400, message  # NOTE: tritonserver's status and wording
        assert message == (
            f"Request size of {len(big)} bytes exceeds the maximum allowed value of 8192 "
            "bytes. Use --http-max-input-size to increase the limit."
        )
        status, message = error_of(srv, "/v2/repository/index", big)
        assert status == 400 and "--http-max-input-size" in message
        conn = http.client.HTTPConnection(srv.http_url, timeout=30)  # chunked: no length
        conn.request("POST", path, body=iter([big[:5000], big[5000:]]),
                     encode_chunked=True)  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 400
        assert "exceeds the maximum allowed value" in json.loads(resp.read())["error"]
        conn.close()
        assert call(srv, "/v2/health/live")[0] == 200
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(("tensor", "header", "fragment"), [
    ({}, {"parameters": "x"}, "the request's 'parameters' must be a JSON object"),
    ({"parameters": [1]}, {}, "'parameters' of input 'x' must be a JSON object"),
    ({}, {"outputs": 5}, "'outputs' must be a list"),
    ({}, {"outputs": [{"name": "y", "parameters": 7}]}, "'parameters' of output 'y'"),
    ({"shape": [1, 2**63]}, {}, "'shape' must be a list of 64-bit integers"),
    ({"shape": [1, True]}, {}, "'shape' must be a list of 64-bit integers"),
    ({}, {"parameters": {"priority": 2**64}}, "does not fit a 64-bit integer"),
    ({}, {"parameters": {"binary_data_output": "false"}},
     "attempt to access JSON non-boolean as boolean"),
    ({}, {"outputs": [{"name": "y", "parameters": {"binary_data": "false"}}]},
     "attempt to access JSON non-boolean as boolean"),
    ({"parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 2**70}}, {},
     "does not fit a 64-bit integer"),
])  # fmt: skip
def test_malformed_infer_bodies_get_400_not_a_traceback(
    server: ServerProcess, tensor: dict, header: dict, fragment: str
) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": [0] * 256,
                        **tensor}], **header}  # fmt: skip
    status, message = error_of(server, "/v2/models/mlp_dense/infer", json.dumps(body).encode())
    assert status == 400 and fragment in message, (status, message)


def test_deep_data_and_odd_register_bodies_get_400(server: ServerProcess) -> None:
    """`data` nested 900 deep (json.loads takes it; counting its leaves recursively did
    not), a NUL in a shared-memory key, an offset past uint64: 400, no traceback."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1] * 900}]})
    body = body[:-3] + ', "data": ' + "[" * 900 + "0" + "]" * 900 + "}]}"
    status, message = error_of(server, "/v2/models/mlp_dense/infer", body.encode())
    assert status == 400 and "unable to parse 'data' of input 'x'" in message, (status, message)
    for register, fragment in (
        ({"key": "/sparse_runtime_test_nul\0x", "offset": 0, "byte_size": 64},
         "Unable to open shared memory region"),
        ({"key": "/k", "offset": 2**64, "byte_size": 64}, "shared memory register"),
    ):  # fmt: skip
        status, message = error_of(server, "/v2/systemsharedmemory/region/r/register",
                                   json.dumps(register).encode())  # fmt: skip
        assert status == 400 and fragment in message, (status, message)
    assert "unhandled error" not in server.log_text()
