"""Every RPC of the Triton gRPC API, through the real server and the real tritonclient."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess, zoo_inputs

MODELS = ("mlp_dense", "mlp_sparse24")


def reference(server: ServerProcess, model: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(server.repo / model / "1" / "model.onnx"))
    return sess.run(None, {"x": x})[0]


def infer_mlp(client: grpcclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")


@pytest.fixture()
def client(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.url)


@pytest.fixture()
def stub(server: ServerProcess) -> service_pb2_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(server.url)
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_live_ready_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "sparse-runtime"
    assert "statistics" in meta.extensions and "model_repository" in meta.extensions
    # system shared memory is served (both transports), CUDA shared memory is not
    assert "system_shared_memory" in meta.extensions
    assert "cuda_shared_memory" not in meta.extensions


@pytest.mark.parametrize("model", MODELS)
def test_model_metadata_and_config(client: grpcclient.InferenceServerClient, model: str) -> None:
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, "1")
    meta = client.get_model_metadata(model)
    assert meta.name == model and list(meta.versions) == ["1"]
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("x", "FP32", [-1, 256])]
    assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [("y", "FP32", [-1, 256])]
    config = client.get_model_config(model).config
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    # what tritonserver fills in: the version policy, named instance groups
    assert config.version_policy.latest.num_versions == 1
    assert [(g.name, g.count) for g in config.instance_group] == [(f"{model}_0", 1)]
    params = config.parameters
    # NOTE: with OpenVINO installed, auto may measure it faster on some CPUs
    assert params["sparse_runtime.engine"].string_value in ("onnxruntime", "openvino")
    assert "cpu:" in params["sparse_runtime.dispatch_reason"].string_value


@pytest.mark.parametrize("model", MODELS)
def test_infer_matches_in_process_onnxruntime(
    server: ServerProcess, client: grpcclient.InferenceServerClient, model: str
) -> None:
    rng = np.random.default_rng(7)
    for rows in (1, 5, 64):
        x = rng.standard_normal((rows, 256)).astype(np.float32)
        got = infer_mlp(client, model, x)
        np.testing.assert_allclose(got, reference(server, model, x), atol=1e-5, rtol=0)


def test_sparse_variant_differs_from_dense(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 256), np.float32)
    assert not np.allclose(infer_mlp(client, "mlp_dense", x), infer_mlp(client, "mlp_sparse24", x))


def test_asyncio_client_concurrent_requests_are_batched(server: ServerProcess) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(48)]

    async def run() -> tuple[list[np.ndarray], pb.ModelStatistics, pb.ModelStatistics]:
        async with aioclient.InferenceServerClient(server.url) as c:
            before = (await c.get_inference_statistics("mlp_sparse24")).model_stats[0]

            async def one(x: np.ndarray) -> np.ndarray:
                inp = aioclient.InferInput("x", [1, 256], "FP32")
                inp.set_data_from_numpy(x)
                return (await c.infer("mlp_sparse24", [inp])).as_numpy("y")

            outs = await asyncio.gather(*(one(x) for x in xs))
            after = (await c.get_inference_statistics("mlp_sparse24")).model_stats[0]
            return outs, before, after

    outs, before, after = asyncio.run(run())
    ref = reference(server, "mlp_sparse24", np.concatenate(xs))
    np.testing.assert_allclose(np.concatenate(outs), ref, atol=1e-5, rtol=0)
    requests = after.inference_stats.success.count - before.inference_stats.success.count
    executions = after.execution_count - before.execution_count
    assert requests == 48
    assert executions < requests, "concurrent requests were not batched"
    assert after.inference_count - before.inference_count == 48


ZOO_DTYPES = {"f32": "FP32", "f16": "FP16", "i64": "INT64", "i8": "INT8", "b": "BOOL", "s": "BYTES"}


def zoo_request(data: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, arr in data.items():
        inp = grpcclient.InferInput(name, list(arr.shape), ZOO_DTYPES[name])
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


def test_all_dtypes_and_bytes_roundtrip(client: grpcclient.InferenceServerClient) -> None:
    data = zoo_inputs(3)
    result = client.infer("zoo", zoo_request(data))
    np.testing.assert_array_equal(result.as_numpy("f32_x2"), data["f32"] * 2)
    np.testing.assert_array_equal(result.as_numpy("f16_out"), data["f16"])
    np.testing.assert_array_equal(result.as_numpy("i64_x2"), data["i64"] * 2)
    np.testing.assert_array_equal(result.as_numpy("i8_out"), data["i8"])
    np.testing.assert_array_equal(result.as_numpy("b_not"), ~data["b"])
    assert result.as_numpy("s_out").tolist() == data["s"].tolist()


def test_large_request_with_every_dtype_roundtrips(
    client: grpcclient.InferenceServerClient,
) -> None:
    """Over 64 KiB, raw inputs are parsed as views of the received bytes (codec's fast path)."""
    data = zoo_inputs(2)
    data["s"] = np.array([[b"a" * 30_000, b"b"], [b"", "ß∂".encode() * 9_000]], dtype=object)
    result = client.infer("zoo", zoo_request(data))
    np.testing.assert_array_equal(result.as_numpy("f32_x2"), data["f32"] * 2)
    np.testing.assert_array_equal(result.as_numpy("i64_x2"), data["i64"] * 2)
    np.testing.assert_array_equal(result.as_numpy("b_not"), ~data["b"])
    assert result.as_numpy("s_out").tolist() == data["s"].tolist()


def test_requested_output_filtering(client: grpcclient.InferenceServerClient) -> None:
    outputs = [grpcclient.InferRequestedOutput("i64_x2"), grpcclient.InferRequestedOutput("b_not")]
    response = client.infer("zoo", zoo_request(zoo_inputs(1)), outputs=outputs).get_response()
    assert [o.name for o in response.outputs] == ["i64_x2", "b_not"]


def test_typed_contents_are_accepted(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    request = pb.ModelInferRequest(model_name="mlp_dense", id="typed-1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 256])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed-1" and response.model_version == "1"
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 256)
    np.testing.assert_allclose(got, reference(server, "mlp_dense", x), atol=1e-5, rtol=0)


def test_streaming_infer(server: ServerProcess) -> None:
    import queue

    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    rng = np.random.default_rng(11)
    xs = {}
    try:
        for i in range(10):
            x = rng.standard_normal((2, 256)).astype(np.float32)
            xs[str(i)] = x
            inp = grpcclient.InferInput("x", [2, 256], "FP32")
            inp.set_data_from_numpy(x)
            client.async_stream_infer("mlp_dense", [inp], request_id=str(i))
        bad = grpcclient.InferInput("x", [2, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((2, 3), np.float32))
        client.async_stream_infer("mlp_dense", [bad], request_id="bad")
        got, errors = {}, []
        for _ in range(11):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result.as_numpy("y")
                # as Triton: each response of a non-decoupled model is marked final
                assert result.get_response().parameters["triton_final_response"].bool_param
    finally:
        client.stop_stream()
    assert len(errors) == 1 and "unexpected shape" in str(errors[0])
    for key, x in xs.items():
        np.testing.assert_allclose(got[key], reference(server, "mlp_dense", x), atol=1e-5, rtol=0)


def test_model_statistics_report_real_counters(client: grpcclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("mlp_dense", as_json=True)["model_stats"][0]
    for _ in range(3):
        infer_mlp(client, "mlp_dense", np.zeros((2, 256), np.float32))
    after = client.get_inference_statistics("mlp_dense", as_json=True)["model_stats"][0]

    def count(stats: dict, key: str) -> int:
        return int(stats["inference_stats"][key].get("count", 0))

    assert count(after, "success") - count(before, "success") == 3
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6
    assert count(after, "compute_infer") - count(before, "compute_infer") == 3
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    assert any(int(b["batch_size"]) == 2 for b in after["batch_stats"])
    assert count(after, "queue") - count(before, "queue") == 3  # answered requests only
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} >= {"mlp_dense", "mlp_sparse24", "zoo"}
    # as Triton: INVALID_ARGUMENT, in its wording
    for name, version, message in (
        ("nope", "", "requested model 'nope' is not available"),
        ("mlp_dense", "9", "requested model version is not available for model 'mlp_dense'"),
    ):
        with pytest.raises(InferenceServerException) as err:
            client.get_inference_statistics(name, version)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert message in str(err.value)


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    for name in (*MODELS, "zoo"):
        assert index[name]["state"] == "READY"
        assert index[name]["version"] == "1"


def test_load_unload_refused_outside_explicit_mode(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("mlp_dense")
    assert err.value.status() == "StatusCode.UNAVAILABLE"  # as tritonserver, in its words
    assert "explicit model load / unload is not allowed" in str(err.value)
    assert "--model-control-mode explicit" in str(err.value)
    assert client.is_model_ready("mlp_dense")


@pytest.mark.parametrize(
    "method,request_cls",
    [
        ("CudaSharedMemoryStatus", pb.CudaSharedMemoryStatusRequest),
        ("CudaSharedMemoryRegister", pb.CudaSharedMemoryRegisterRequest),
        ("TraceSetting", pb.TraceSettingRequest),
    ],
)
def test_unsupported_rpcs_are_unimplemented(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, method: str, request_cls: type
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request_cls())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
