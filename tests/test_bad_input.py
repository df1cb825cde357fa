"""Bad requests get a clear status and message, and never disturb other requests."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, serialize_byte_tensor

from tests.conftest import ServerProcess, metric, parse_metrics, zoo_inputs


@pytest.fixture()
def stub(server: ServerProcess) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.url))


def raw_request(
    model: str, shape: list[int], datatype: str = "FP32", raw: bytes | None = None
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    n = int(np.prod(shape)) if shape else 1
    request.raw_input_contents.append(raw if raw is not None else b"\0" * (4 * n))
    return request


def expect(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest,
           code: grpc.StatusCode, *fragments: str) -> None:  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == code, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details()


def test_unknown_model_uses_tritons_wording(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    expect(stub, raw_request("nope", [1, 256]), grpc.StatusCode.NOT_FOUND,
           "Request for unknown model: 'nope' is not found")  # fmt: skip


def test_unknown_version(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = raw_request("mlp_dense", [1, 256])
    request.model_version = "7"
    expect(stub, request, grpc.StatusCode.NOT_FOUND, "'mlp_dense' version 7 is not found")
    request.model_version = "abc"  # not a version at all: INVALID_ARGUMENT, as Triton
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
           "failed to get model version from specified version string 'abc'")
    with pytest.raises(grpc.RpcError) as err:  # ModelReady too, not a plain "not ready"
        stub.ModelReady(pb.ModelReadyRequest(name="mlp_dense", version="abc"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_metadata_and_config(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as err:
            call("nope")
        assert err.value.status() == "StatusCode.NOT_FOUND"
    assert client.is_model_ready("nope") is False


def test_wrong_shape_names_input_and_expected(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    expect(stub, raw_request("mlp_dense", [1, 255]), grpc.StatusCode.INVALID_ARGUMENT,
           "input 'x' for model 'mlp_dense'. Expected [-1,256], got [1,255]")  # fmt: skip


def test_wrong_rank(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    expect(stub, raw_request("mlp_dense", [256]), grpc.StatusCode.INVALID_ARGUMENT, "'x'")


def test_wrong_dtype(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    expect(stub, raw_request("mlp_dense", [1, 256], "FP64", b"\0" * 8 * 256),
           grpc.StatusCode.INVALID_ARGUMENT,
           "inference input 'x' data-type is 'FP64', but model 'mlp_dense' expects 'FP32'")


def test_unknown_datatype(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    expect(stub, raw_request("mlp_dense", [1, 256], "FP8"), grpc.StatusCode.INVALID_ARGUMENT,
           "FP8")  # fmt: skip


def test_byte_size_mismatch(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    expect(stub, raw_request("mlp_dense", [1, 256], raw=b"\0" * 1000),
           grpc.StatusCode.INVALID_ARGUMENT,
           "input byte size mismatch for input 'x' for model 'mlp_dense'. Expected 1024, "
           "got 1000")  # fmt: skip


def test_typed_element_count_mismatch(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="mlp_dense")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 256])
    tensor.contents.fp32_contents.extend([1.0] * 10)
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "number of elements 10", "256")


def test_typed_value_out_of_range(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="zoo")
    tensor = request.inputs.add(name="i8", datatype="INT8", shape=[1, 4])
    tensor.contents.int_contents.extend([1, 2, 3, 300])
    # NOTE: Triton's order: the missing inputs are named before any value is read (the value
    # range itself: test_codec.py::test_typed_ints_still_checked_for_range)
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "expected 6 inputs but got 1",
           "missing required input(s) ['f32', 'f16', 'i64', 'b', 's']")  # fmt: skip


def test_missing_input(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="mlp_dense")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
           "for model 'mlp_dense'. Got input(s) [], but missing required input(s) ['x']")
    # typed contents with nothing in them, and typed + raw at once: Triton's wording too
    request = pb.ModelInferRequest(model_name="mlp_dense")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 256])
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT,
           "unable to find data for input tensor 'x' for model 'mlp_dense' in request.")
    both = raw_request("mlp_dense", [1, 256])
    both.inputs[0].contents.fp32_contents.extend([0.0] * 256)
    expect(stub, both, grpc.StatusCode.INVALID_ARGUMENT,
           "contents field must not be specified when using raw_input_contents for 'x' "
           "for model 'mlp_dense'")


def test_unexpected_input_name(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = raw_request("mlp_dense", [1, 256])
    request.inputs[0].name = "nope"
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'nope'")


def test_batch_too_large(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    expect(stub, raw_request("mlp_dense", [65, 256]), grpc.StatusCode.INVALID_ARGUMENT,
           "inference request batch-size must be <= 64 for 'mlp_dense'")  # fmt: skip


def test_unknown_requested_output(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = raw_request("mlp_dense", [1, 256])
    request.outputs.add(name="nope")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "output 'nope'")


def test_raw_contents_count_mismatch(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = raw_request("mlp_dense", [1, 256])
    request.raw_input_contents.append(b"")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "raw input contents")


def test_truncated_bytes_element(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = zoo_request(s=b"\x05\x00\x00\x00ab")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "input 's'", "runs past the end")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff" * 100,
        b"\xff" * 100_000,
        raw_request("mlp_dense", [64, 256]).SerializeToString()[:-9],
    ],
    ids=["garbage", "large garbage", "truncated large"],
)
def test_bytes_that_are_no_request_are_invalid_argument(server: ServerProcess, data: bytes) -> None:
    """Both sizes (protobuf's parser below 64 KiB, codec's zero-copy split above) say why."""
    call = grpc.insecure_channel(server.url).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )
    with pytest.raises(grpc.RpcError) as err:
        call(data, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "bad request: Error parsing message" in err.value.details()


def test_failures_are_counted_and_others_unaffected(
    server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    before = parse_metrics(server.scrape())
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(raw_request("mlp_sparse24", [1, 7]))
    ok = stub.ModelInfer(raw_request("mlp_sparse24", [2, 256]))
    assert len(ok.raw_output_contents[0]) == 2 * 256 * 4
    after = parse_metrics(server.scrape())
    name = "nv_inference_request_failure"
    delta = metric(after, name, model="mlp_sparse24") - metric(before, name, model="mlp_sparse24")
    assert delta == 3
    # Triton's reason labels: a bad request is OTHER (not BACKEND); every reason has a series
    other = {"model": "mlp_sparse24", "reason": "OTHER"}
    assert metric(after, name, **other) - metric(before, name, **other) == 3
    reasons = {dict(labels)["reason"] for (n, labels) in after if n == name}
    assert reasons == {"REJECTED", "CANCELED", "BACKEND", "OTHER"}
    success = "nv_inference_request_success"
    assert (
        metric(after, success, model="mlp_sparse24") - metric(before, success, model="mlp_sparse24")
        == 1
    )


def zoo_request(**raw: bytes) -> pb.ModelInferRequest:
    """A one-row zoo request with every input, raw; `raw` replaces an input's bytes."""
    request = pb.ModelInferRequest(model_name="zoo")
    for name, array in zoo_inputs(1).items():
        datatype = np_to_triton_dtype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        data = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(raw.get(name, data))
    return request


def test_bytes_element_that_is_not_utf8(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = zoo_request(s=b"\x02\x00\x00\x00ok\x01\x00\x00\x00\xff")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'s'", "element 1", "UTF-8")


def test_empty_batch(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    expect(stub, raw_request("mlp_dense", [0, 256], raw=b""), grpc.StatusCode.INVALID_ARGUMENT,
           "batch size 0")  # fmt: skip


def test_output_requested_twice(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = raw_request("mlp_dense", [1, 256])
    request.outputs.add(name="y")
    request.outputs.add(name="y")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "output 'y'", "more than once")


def test_several_broken_rules_get_tritons_first_error(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """Triton checks datatype and shape (Normalize) before byte sizes, and requested outputs
    before inputs."""
    expect(stub, raw_request("mlp_dense", [1, 256], "FP64", b"\0" * 10),
           grpc.StatusCode.INVALID_ARGUMENT, "data-type is 'FP64'")  # fmt: skip
    request = raw_request("mlp_dense", [1, 7], raw=b"\0" * 3)
    request.outputs.add(name="nope")
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "unexpected inference output 'nope'")
    request = raw_request("mlp_dense", [1, 7], raw=b"\0" * 3)
    request.inputs[0].contents.fp32_contents.append(1.0)  # typed + raw: found first
    expect(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "contents field must not be")
