"""The native lane (grpc_bridge.cc, class Lane): ModelInfer requests parsed, checked, queued
and batched in C++, answered with the same bytes, statistics and errors as the Python path.

One server per frontend, the same requests to both: every answer must be the same message, and
the native server must have served the well-formed requests itself (its exit log counts the
ModelInfer calls per path), typed FP32 contents included, while the ones it leaves to Python
(a `timeout` parameter, bad shapes, unknown outputs or versions) get the Python path's answers.
Skipped with the reason when the bridge is not built (`make native`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    ServerProcess,
    native_bridge_missing,
    one_server_per_frontend,
    start_server,
)

NOT_BUILT = native_bridge_missing()

pytestmark = pytest.mark.skipif(bool(NOT_BUILT), reason=NOT_BUILT)
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def servers(
    sample_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("lane")
    args = ("--model-control-mode", "explicit", "--load-model", "mlp_dense")
    with one_server_per_frontend(sample_repo, tmp, args) as started:
        yield started


def _request(x: np.ndarray, **fields: object) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="mlp_dense", **fields)  # type: ignore[arg-type]
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    return req


def _call(srv: ServerProcess, req: pb.ModelInferRequest) -> pb.ModelInferResponse | grpc.RpcError:
    with grpc.insecure_channel(srv.url) as channel:
        rpc = channel.unary_unary(
            INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )  # fmt: skip
        try:
            return rpc(req, timeout=30)
        except grpc.RpcError as err:
            return err


def _same(a: pb.ModelInferResponse | grpc.RpcError, b: pb.ModelInferResponse | grpc.RpcError):  # noqa: ANN202
    if isinstance(a, grpc.RpcError) or isinstance(b, grpc.RpcError):
        assert isinstance(a, grpc.RpcError) and isinstance(b, grpc.RpcError), (a, b)
        assert (a.code(), a.details()) == (b.code(), b.details())
    else:
        assert a.SerializeToString() == b.SerializeToString()


def _typed(x: np.ndarray) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="mlp_dense")
    tensor = req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return req


def _requests() -> list[pb.ModelInferRequest]:
    rng = np.random.default_rng(17)
    x1, x3, x17 = (rng.standard_normal((n, 256)).astype(np.float32) for n in (1, 3, 17))
    with_output = _request(x3, id="with-output")
    with_output.outputs.add(name="y")
    ignored = _request(x1, id="ignored-parameter")
    ignored.parameters["triton_enable_empty_final_response"].bool_param = True
    timeout = _request(x1, id="timeout")
    timeout.parameters["timeout"].int64_param = 5_000_000
    bad_timeout = _request(x1)
    bad_timeout.parameters["timeout"].string_param = "soon"
    unknown_output = _request(x1)
    unknown_output.outputs.add(name="z")
    wrong_version = _request(x1, model_version="7")
    return [
        _request(x1), _request(x3, id="three-rows", model_version="1"), with_output, ignored,
        _typed(x3), _typed(x17), timeout, bad_timeout, unknown_output, wrong_version,
        _request(rng.standard_normal((2, 255)).astype(np.float32)),  # bad shape
        _request(np.zeros((65, 256), np.float32)),  # over max_batch_size
    ]  # fmt: skip


def test_answers_equal_the_python_paths(servers: dict[str, ServerProcess]) -> None:
    for req in _requests():
        _same(_call(servers["native"], req), _call(servers["python"], req))
    x = np.random.default_rng(5).standard_normal((3, 256)).astype(np.float32)
    got = _call(servers["native"], _request(x))
    assert isinstance(got, pb.ModelInferResponse)
    y = np.frombuffer(got.raw_output_contents[0], "<f4").reshape(3, 256)
    path = servers["native"].repo / "mlp_dense" / "1" / "model.onnx"
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, want[0], atol=1e-5)


def test_concurrent_requests_share_batches_and_count_exactly(
    servers: dict[str, ServerProcess],
) -> None:
    url = servers["native"].url
    client = grpcclient.InferenceServerClient(url)
    before = client.get_inference_statistics("mlp_dense").model_stats[0]

    async def burst() -> list[np.ndarray]:
        async with aioclient.InferenceServerClient(url) as aio:

            async def one(rows: int) -> np.ndarray:
                inp = aioclient.InferInput("x", [rows, 256], "FP32")
                inp.set_data_from_numpy(np.full((rows, 256), rows, np.float32))
                return (await aio.infer("mlp_dense", [inp])).as_numpy("y")

            return list(await asyncio.gather(*(one(1 + i % 3) for i in range(96))))

    answers = asyncio.run(burst())
    assert [a.shape[0] for a in answers] == [1 + i % 3 for i in range(96)]
    for a in answers:  # rows of one request are never mixed with another's
        assert np.array_equal(a, np.broadcast_to(a[0], a.shape))
    after = client.get_inference_statistics("mlp_dense").model_stats[0]
    rows = sum(1 + i % 3 for i in range(96))
    assert after.inference_count - before.inference_count == rows
    assert after.inference_stats.success.count - before.inference_stats.success.count == 96
    assert after.inference_stats.queue.count - before.inference_stats.queue.count == 96
    executions = after.execution_count - before.execution_count
    assert 0 < executions < 96
    assert (
        sum(b.compute_infer.count for b in after.batch_stats)
        - sum(b.compute_infer.count for b in before.batch_stats)
        == executions
    )


def _raw_call(srv: ServerProcess, body: bytes) -> pb.ModelInferResponse | grpc.RpcError:
    """Hand-built request bytes, as a hostile client sends them."""
    with grpc.insecure_channel(srv.url) as channel:
        rpc = channel.unary_unary(
            INFER, request_serializer=lambda b: b,
            response_deserializer=pb.ModelInferResponse.FromString,
        )  # fmt: skip
        try:
            return rpc(body, timeout=60)
        except grpc.RpcError as err:
            return err


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _hostile() -> list[bytes]:
    """Requests the lane must leave to the Python path (which refuses each one)."""
    x = np.ones((1, 256), np.float32)
    plain = _request(x).SerializeToString()
    raw = _field(7, x.tobytes())
    assert plain.endswith(raw)
    head = plain[: -len(raw)]
    key = _field(1, b"\xff\xfe")  # a map entry: key (1), value (2)
    return [
        _field(1, b"mlp_dense") + b"\x2a\x00" * 1000,  # 1000 empty inputs
        head + _field((1 << 32) + 7, x.tobytes()),  # field 2^32+7 is no raw_input_contents
        plain + _field(3, b"\xff\xfe"),  # an id that is no UTF-8
        plain + _field(4, key + _field(2, b"\x08\x01")),  # a parameter key likewise
        plain + _field(4, _field(1, b"k") + _field(2, _field(3, b"\xc3"))),  # a string value
        plain + _field(4, _field(1, b"k") + _field(2, b"\x0a")),  # a value cut short
    ]


def test_hostile_requests_get_the_python_paths_answers(
    servers: dict[str, ServerProcess],
) -> None:
    for i, body in enumerate(_hostile()):
        got = _raw_call(servers["native"], body)
        assert isinstance(got, grpc.RpcError), (i, got)
        assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, (i, got.details())
        _same(got, _raw_call(servers["python"], body))
    x = np.ones((2, 256), np.float32)  # and the server still serves
    assert isinstance(_call(servers["native"], _request(x)), pb.ModelInferResponse)


STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def _stream(srv: ServerProcess, reqs: list[pb.ModelInferRequest]) -> list[bytes]:
    """One ModelStreamInfer stream carrying `reqs`: its answers as raw bytes, in order."""
    with grpc.insecure_channel(srv.url) as channel:
        rpc = channel.stream_stream(
            STREAM_INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=lambda b: b,
        )  # fmt: skip
        return list(rpc(iter(reqs), timeout=60))


def _stats(srv: ServerProcess) -> tuple[int, ...]:
    s = grpcclient.InferenceServerClient(srv.url).get_inference_statistics("mlp_dense")
    m = s.model_stats[0]
    return (m.inference_count, m.inference_stats.success.count, m.inference_stats.fail.count,
            m.inference_stats.queue.count)  # fmt: skip


def test_stream_answers_equal_the_python_paths_byte_for_byte(
    servers: dict[str, ServerProcess],
) -> None:
    """Lane-eligible and Python-path messages mixed on one stream: the same bytes, in the
    same order (in-band errors included), and the same statistics, as the grpc.aio server."""
    reqs = _requests() * 3
    before = {name: _stats(srv) for name, srv in servers.items()}
    native, python = _stream(servers["native"], reqs), _stream(servers["python"], reqs)
    assert len(native) == len(reqs)
    assert native == python
    errors = [pb.ModelStreamInferResponse.FromString(b).error_message for b in native]
    assert sum(bool(e) for e in errors) >= 3 * 4, errors  # the bad ones, answered in-band
    after = {name: _stats(srv) for name, srv in servers.items()}
    deltas = {n: [a - b for a, b in zip(after[n], before[n], strict=True)] for n in servers}
    assert deltas["native"] == deltas["python"]


def test_stream_answers_many_lane_requests_in_order(servers: dict[str, ServerProcess]) -> None:
    """tritonclient's stream: requests sharing batches still come back in request order."""
    import queue

    client = grpcclient.InferenceServerClient(servers["native"].url)
    answers: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        for i in range(STREAMED):
            inp = grpcclient.InferInput("x", [1 + i % 3, 256], "FP32")
            inp.set_data_from_numpy(np.full((1 + i % 3, 256), i, np.float32))
            client.async_stream_infer("mlp_dense", [inp], request_id=str(i))
        got = [answers.get(timeout=60) for _ in range(STREAMED)]
    finally:
        client.stop_stream()
    path = servers["native"].repo / "mlp_dense" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for i, result in enumerate(got):
        assert isinstance(result, grpcclient.InferResult), result
        assert result.get_response().id == str(i)
        x = np.full((1 + i % 3, 256), i, np.float32)
        np.testing.assert_allclose(result.as_numpy("y"), session.run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-4)  # fmt: skip


STREAMED = 48


def test_stream_answer_too_large_only_with_its_wrapper_is_the_same_error(
    servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    """A limit the bare response fits and the stream's answer does not: the lane words the
    in-band error as the servicer does, and the next message is still answered."""
    big, small = _request(np.ones((4, 256), np.float32)), _request(np.ones((1, 256), np.float32))
    bare = _call(servers["python"], big)
    assert isinstance(bare, pb.ModelInferResponse)
    limit = str(len(bare.SerializeToString()) + 8)
    answers = {}
    for frontend in ("native", "python"):
        srv = start_server(
            servers["python"].repo, tmp_path, ("--grpc-frontend", frontend, "--model-control-mode",
                                               "explicit", "--load-model", "mlp_dense",
                                               "--grpc-max-message-bytes", limit)
        )  # fmt: skip
        try:
            answers[frontend] = _stream(srv, [big, small])
        finally:
            srv.stop()
        if frontend == "native":  # both took the lane
            assert "ModelInfer calls: 2 served by native lanes, 0 by" in srv.log_text()
    assert answers["native"] == answers["python"]
    first, second = (pb.ModelStreamInferResponse.FromString(b) for b in answers["native"])
    assert "with the stream's wrapper" in first.error_message, first
    assert not second.error_message and second.infer_response.raw_output_contents


def test_well_formed_requests_take_the_native_lane(servers: dict[str, ServerProcess]) -> None:
    """Run last in this module: it stops the native server to read its exit count."""
    import queue

    srv = servers["native"]
    # a stream whose only message took the lane, idle when the server stops: it ends with
    # an error the client hears, as the Python path's streams do
    client = grpcclient.InferenceServerClient(srv.url)
    answers: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        inp = grpcclient.InferInput("x", [1, 256], "FP32")
        inp.set_data_from_numpy(np.ones((1, 256), np.float32))
        client.async_stream_infer("mlp_dense", [inp])
        assert isinstance(answers.get(timeout=60), grpcclient.InferResult)
        assert srv.stop() == 0, srv.log_text()
        ended = answers.get(timeout=20)
        assert isinstance(ended, InferenceServerException), ended
        assert "shutting down" in str(ended)
    finally:
        client.stop_stream()
    counts = re.search(r"ModelInfer calls: (\d+) served by native lanes, (\d+) by the Python",
                       srv.log_text())  # fmt: skip
    assert counts is not None, srv.log_text()
    # 7 well-formed (plain, version "1", outputs, ignored parameter, typed contents twice, and
    # the reference request), 6 left to Python; the burst adds 96 to the lane; the hostile
    # requests go to Python and the request after them to the lane
    native, python = int(counts[1]), int(counts[2])
    # streams: 6 well-formed and 6 left to Python, three times; the ordered stream's all;
    # the idle stream's one
    assert (native, python) == (7 + 96 + 1 + 18 + STREAMED + 1, 6 + len(_hostile()) + 18)
