"""The native gRPC frontend (--grpc-frontend native) through a real server subprocess.

Same client, same expectations as the grpc.aio frontend: answers equal in-process
onnxruntime, Triton's status codes, batching, metrics, health (Check and Watch),
streaming inference, clean SIGTERM; and undecodable bytes answer INVALID_ARGUMENT,
callers that are gone (deadlines, dropped channels, cancelled streams) hurt no one.
Skipped with the reason when the bridge is not built (`make native`).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    ServerProcess,
    copy_repo,
    metric,
    native_bridge_missing,
    parse_metrics,
    start_server,
)

NOT_BUILT = native_bridge_missing()

pytestmark = pytest.mark.skipif(bool(NOT_BUILT), reason=NOT_BUILT)
NATIVE = ("--grpc-frontend", "native")


@pytest.fixture(scope="module")
def native(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("native")
    copy_repo(sample_repo, tmp / "repo")
    srv = start_server(tmp / "repo", tmp, NATIVE)
    yield srv
    assert srv.stop() == 0, srv.log_text()


def _input(x: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


@pytest.mark.parametrize("model", ["mlp_dense", "mlp_sparse24"])
def test_outputs_equal_in_process_onnxruntime(native: ServerProcess, model: str) -> None:
    client = grpcclient.InferenceServerClient(native.url)
    x = np.random.default_rng(3).standard_normal((5, 256)).astype(np.float32)
    got = client.infer(model, [_input(x)]).as_numpy("y")
    path = native.repo / model / "1" / "model.onnx"
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want[0], atol=1e-5)
    assert client.get_server_metadata().name == "sparse-runtime"
    assert client.get_model_config(model).config.max_batch_size == 64


def test_concurrent_requests_are_batched_and_counted(native: ServerProcess) -> None:
    before = parse_metrics(native.scrape())

    async def burst() -> None:
        async with aioclient.InferenceServerClient(native.url) as client:
            x = np.ones((1, 256), np.float32)
            inp = aioclient.InferInput("x", [1, 256], "FP32")
            inp.set_data_from_numpy(x)
            await asyncio.gather(*(client.infer("mlp_dense", [inp]) for _ in range(64)))

    asyncio.run(burst())
    after = parse_metrics(native.scrape())

    def moved(name: str) -> float:
        return metric(after, name, model="mlp_dense") - metric(before, name, model="mlp_dense")

    success, execs = moved("nv_inference_request_success"), moved("nv_inference_exec_count")
    assert success == 64
    assert 0 < execs < success


def test_bad_requests_get_tritons_status_codes(native: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(native.url)
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", [_input(np.ones((1, 256), np.float32))])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as shape:
        client.infer("mlp_dense", [_input(np.ones((1, 255), np.float32))])
    assert shape.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'x'" in shape.value.message()
    with grpc.insecure_channel(native.url) as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xff\xff", timeout=10)
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_check_and_watch(native: ServerProcess) -> None:
    with grpc.insecure_channel(native.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService", "mlp_dense"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as missing:
            health.Check(health_pb2.HealthCheckRequest(service="no_such_model"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="mlp_dense"), timeout=30)
        assert next(iter(watch)).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()  # the server must notice and end its side
    assert grpcclient.InferenceServerClient(native.url).is_server_ready()


def test_stream_infer_answers_every_request_in_order_of_ids(native: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(native.url)
    results: list[object] = []
    client.start_stream(callback=lambda result, error: results.append(error or result))
    x = np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)
    for k in range(12):
        client.async_stream_infer("mlp_dense", [_input(x)], request_id=str(k))
    client.async_stream_infer("no_such_model", [_input(x)], request_id="bad")
    client.stop_stream()  # waits for the server to finish the stream
    good = [r for r in results if hasattr(r, "as_numpy")]
    errors = [r for r in results if not hasattr(r, "as_numpy")]
    assert sorted(int(r.get_response().id) for r in good) == list(range(12))
    want = grpcclient.InferenceServerClient(native.url).infer("mlp_dense", [_input(x)])
    for r in good:
        np.testing.assert_array_equal(r.as_numpy("y"), want.as_numpy("y"))
    assert len(errors) == 1 and "no_such_model" in str(errors[0])


def test_sigterm_exits_zero_and_a_taken_port_is_a_clear_error(
    sample_repo: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv_cmd = ("--grpc-port", str(port))
        with pytest.raises(RuntimeError) as early:
            # NOTE: start_server passes --grpc-port 0 first; the later flag wins
            start_server(sample_repo, tmp_path, (*NATIVE, *srv_cmd))
    assert f"cannot bind gRPC port 127.0.0.1:{port}" in str(early.value)
    srv = start_server(sample_repo, tmp_path, NATIVE)
    client = grpcclient.InferenceServerClient(srv.url)
    assert client.is_server_ready()
    assert srv.stop(signal.SIGTERM) == 0
    assert "native frontend" in srv.log_text()


def test_expired_deadlines_and_dropped_channels_leave_it_serving(native: ServerProcess) -> None:
    """Answers to callers who are gone must go nowhere, quietly, without hurting others."""

    async def scenario() -> list[str]:
        async with aioclient.InferenceServerClient(native.url) as client:
            inp = aioclient.InferInput("x", [64, 256], "FP32")
            inp.set_data_from_numpy(np.ones((64, 256), np.float32))

            async def one(timeout: float) -> str:
                try:
                    await client.infer("mlp_dense", [inp], client_timeout=timeout)
                    return "ok"
                except InferenceServerException as exc:
                    return str(exc.status())

            results = await asyncio.gather(*(one(0.0005 if k % 2 else 10) for k in range(40)))
        for _ in range(5):
            channel = grpc.aio.insecure_channel(native.url)
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            calls = [asyncio.ensure_future(live(b"")) for _ in range(10)]
            await asyncio.sleep(0.001)
            await channel.close()
            await asyncio.gather(*calls, return_exceptions=True)
        return results

    results = asyncio.run(scenario())
    assert results.count("ok") >= 20
    assert set(results) <= {"ok", "StatusCode.DEADLINE_EXCEEDED"}
    client = grpcclient.InferenceServerClient(native.url)
    assert client.is_server_ready()
    assert client.infer("mlp_dense", [_input(np.ones((1, 256), np.float32))]).as_numpy("y").shape
    assert "Traceback" not in native.log_text()


def test_cancelled_streams_with_lane_requests_in_flight_leave_it_serving(
    native: ServerProcess,
) -> None:
    """Streams cancelled while their messages are queued or computing in a native lane:
    the answers go nowhere, the stream is freed, and the next stream is served in order."""
    req = pb.ModelInferRequest(model_name="mlp_dense")
    req.inputs.add(name="x", datatype="FP32", shape=[64, 256])
    req.raw_input_contents.append(np.ones((64, 256), "<f4").tobytes())
    body = req.SerializeToString()

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(native.url) as channel:
            rpc = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            for _ in range(5):
                call = rpc()
                for _ in range(30):
                    await call.write(body)
                await call.read()
                call.cancel()

    asyncio.run(scenario())
    client = grpcclient.InferenceServerClient(native.url)
    results: list[object] = []
    client.start_stream(callback=lambda result, error: results.append(error or result))
    for k in range(8):
        client.async_stream_infer("mlp_dense", [_input(np.ones((1, 256), np.float32))],
                                  request_id=str(k))  # fmt: skip
    client.stop_stream()
    assert [r.get_response().id for r in results] == [str(k) for k in range(8)]  # type: ignore[attr-defined]
    assert "Traceback" not in native.log_text()
