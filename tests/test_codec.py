"""The hand-built ModelInferResponse bytes parse to what protobuf itself would have built.

Pure wire checks (no server): the servers' end-to-end behaviour is covered over real gRPC in
test_server_grpc.py and test_native_frontend.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from runtime.protowire import encode_varint, read_varint
from runtime.server import codec


def _by_protobuf(outputs: dict[str, np.ndarray], request_id: str) -> pb.ModelInferResponse:
    """The straightforward (slow for large tensors) way, as the reference."""
    response = pb.ModelInferResponse(model_name="m", model_version="3", id=request_id)
    for name, array in outputs.items():
        if array.dtype == object:
            datatype, raw = "BYTES", codec.serialize_bytes(array)
        else:
            array = array.astype(array.dtype.newbyteorder("<"))
            datatype, raw = codec.numpy_to_wire(array.dtype), array.tobytes()
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(raw)
    return response


CASES = {
    "fp32 matrix": {"y": np.arange(12, dtype=np.float32).reshape(3, 4)},
    "two outputs": {
        "a": np.arange(6, dtype=np.int64).reshape(2, 3),
        "b": np.array([[True, False]]),
    },
    "non-contiguous": {"y": np.arange(20, dtype=np.float16).reshape(4, 5).T},
    "big-endian": {"y": np.arange(4, dtype=">i4")},
    "empty": {"y": np.zeros((0, 8), dtype=np.float32)},
    "scalar": {"y": np.array(2.5, dtype=np.float64)},
    "bytes": {"s": np.array([b"ab", b"", b"xyz"], dtype=object)},
    "large": {"y": np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)},
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("request_id", ["", "req-7"])
def test_encoded_response_parses_like_protobufs_own(case: str, request_id: str) -> None:
    outputs = CASES[case]
    got = codec.encode_response("m", "3", request_id, outputs, list(outputs))
    assert isinstance(got.SerializeToString(), bytes)
    parsed = pb.ModelInferResponse.FromString(got.SerializeToString())
    assert parsed == _by_protobuf(outputs, request_id)


def test_stream_response_wraps_the_serialized_response() -> None:
    outputs = CASES["two outputs"]
    inner = codec.encode_response("m", "3", "s1", outputs, list(outputs))
    parsed = pb.ModelStreamInferResponse.FromString(codec.stream_response(inner).data)
    assert parsed.error_message == ""
    expected = _by_protobuf(outputs, "s1")
    expected.parameters["triton_final_response"].bool_param = True  # as Triton marks them
    assert parsed.infer_response == expected


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21, 2**31 - 1, 2**40])
def test_varint_matches_protobuf(value: int) -> None:
    assert encode_varint(value) == _protobuf_varint(value)
    assert read_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))


def _protobuf_varint(value: int) -> bytes:
    """Protobuf's encoding of `value` as the uint64 field of a message, minus the tag."""
    msg = pb.InferParameter(uint64_param=value)
    data = msg.SerializeToString()
    return data[1:]


def _large_request() -> pb.ModelInferRequest:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    ids = rng.integers(0, 1000, (64, 8)).astype(np.int64)
    words = np.array([b"a" * 5000, b"", b"xyz"], dtype=object)
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r-1")
    request.parameters["sequence_id"].int64_param = 7
    for name, array, datatype in (("x", x, "FP32"), ("ids", ids, "INT64"), ("w", words, "BYTES")):
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        raw = codec.serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(raw)
    request.outputs.add(name="y")
    return request


def test_large_request_keeps_raw_inputs_as_views_of_the_received_bytes() -> None:
    request = _large_request()
    data = request.SerializeToString()
    assert len(data) >= codec.ZERO_COPY_MIN_BYTES
    parsed = codec.parse_infer_request(data)
    assert isinstance(parsed, codec.ParsedInferRequest)
    assert all(view.obj is data for view in parsed.raw_input_contents)  # no copy
    assert [bytes(v) for v in parsed.raw_input_contents] == list(request.raw_input_contents)
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "2", "r-1")
    assert parsed.parameters["sequence_id"].int64_param == 7
    assert [o.name for o in parsed.outputs] == ["y"] and len(parsed.inputs) == 3
    fast, slow = codec.decode_inputs(parsed), codec.decode_inputs(request)
    assert fast.keys() == slow.keys()
    for name, (array, datatype) in slow.items():
        assert fast[name][1] == datatype
        np.testing.assert_array_equal(fast[name][0], array)


def test_small_request_is_parsed_by_protobuf() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.raw_input_contents.append(b"\0" * 16)
    parsed = codec.parse_infer_request(request.SerializeToString())
    assert isinstance(parsed, pb.ModelInferRequest) and parsed == request


def test_unknown_fields_survive_the_fast_path() -> None:
    request = _large_request()
    extra = b"\xf8\x06\x05" + b"\xfa\x06\x03abc"  # field 111 varint 5, field 111 bytes "abc"
    parsed = codec.parse_infer_request(request.SerializeToString() + extra)
    assert isinstance(parsed, codec.ParsedInferRequest)
    assert parsed.model_name == "m" and len(parsed.raw_input_contents) == 3


@pytest.mark.parametrize("cut", [1, 100, 40_000])  # the last one falls under the threshold
def test_truncated_request_is_undecodable_with_protobufs_reason(cut: int) -> None:
    parsed = codec.parse_infer_request(_large_request().SerializeToString()[:-cut])
    assert isinstance(parsed, codec.UndecodableRequest)
    assert "Error parsing message" in parsed.error


def test_a_flood_of_tiny_fields_is_left_to_protobuf() -> None:
    """Millions of small unknown fields would hold the event loop for seconds in the Python
    walk; past MAX_SPLIT_FIELDS the message goes to upb, which parses it in milliseconds."""
    flood = b"\xb8\x06\x01" * (codec.MAX_SPLIT_FIELDS + 1)  # field 103, varint 1
    data = _large_request().SerializeToString() + flood
    parsed = codec.parse_infer_request(data)
    assert isinstance(parsed, pb.ModelInferRequest)
    assert parsed.model_name == "m" and len(parsed.raw_input_contents) == 3


def test_field_walk_stops_at_its_limit() -> None:
    from runtime import protowire

    data = b"\x08\x01" * 5
    assert len(protowire.fields(data, 0, len(data), max_fields=5)) == 5
    with pytest.raises(ValueError, match="more than 4 fields"):
        protowire.fields(data, 0, len(data), max_fields=4)


@pytest.mark.parametrize(("datatype", "dtype"), [("FP32", np.float32), ("FP64", np.float64)])
def test_large_typed_floats_are_read_from_their_packed_bytes(datatype: str, dtype: type) -> None:
    values = np.random.default_rng(0).standard_normal(codec.PACKED_FAST_MIN * 2).astype(dtype)
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, codec.PACKED_FAST_MIN])
    getattr(tensor.contents, codec.TYPED_FIELD[datatype]).extend(values.tolist())
    parsed = codec.parse_infer_request(request.SerializeToString())
    array, wire = codec.decode_inputs(parsed)["x"]
    assert wire == datatype and array.dtype == dtype and array.shape == (2, codec.PACKED_FAST_MIN)
    np.testing.assert_array_equal(array.reshape(-1), values)


def test_typed_values_in_another_datatypes_field_get_tritons_wording() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    tensor.contents.int_contents.extend([7, 8])
    with pytest.raises(
        codec.InvalidArgument,
        match="unexpected explicit tensor data for input "
        "tensor 'x' for model 'm' of type 'INT32', expected datatype 'FP32'",
    ):
        codec.decode_inputs(request)


def test_typed_plus_raw_for_one_input_is_tritons_first_error() -> None:
    """Triton pairs raw contents with the inputs that have no typed contents, so a typed
    plus raw request fails on the typed input, not on a raw count."""
    request = pb.ModelInferRequest(model_name="simple")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 2]).contents.int_contents.extend(
        [1, 2]
    )
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 2])
    request.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(codec.InvalidArgument) as err:
        codec.decode_inputs(request)
    assert str(err.value) == (
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for "
        "model 'simple'"
    )


def test_typed_ints_still_checked_for_range() -> None:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="i", datatype="INT8", shape=[3])
    tensor.contents.int_contents.extend([1, -128, 300])
    with pytest.raises(codec.InvalidArgument, match="do not fit INT8"):
        codec.decode_inputs(request)


@pytest.mark.parametrize("rows", [0, 1, 4, 40, 4000])
def test_stream_overhead_is_exact(rows: int) -> None:
    """The message limit check on streams adds exactly what stream_response adds."""
    inner = codec.encode_response("m", "1", "", {"y": np.ones((rows, 8), np.float32)}, ["y"])
    wrapped = codec.stream_response(inner)
    assert len(wrapped.data) - len(inner.data) == codec.stream_overhead(len(inner.data))
