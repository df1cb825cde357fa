"""Restricted protocols (--grpc-restricted-protocol, as tritonserver 2.51) on both frontends,
through a real server: restricted calls with the right header, a wrong one and none."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, ServerProcess, copy_repo, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_tls import FRONTENDS
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from runtime.server import restricted

KEY = {"triton-grpc-protocol-infer-key": "s3cret"}
ADMIN = {"triton-grpc-protocol-admin-key": "adm1n"}
EXPECT_INFER = "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'"


@pytest.fixture(scope="module", params=FRONTENDS)
def srv(request: pytest.FixtureRequest, sample_repo: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(f"restricted-{request.param}")
    copy_repo(sample_repo / "mlp_dense", tmp / "repo" / "mlp_dense")
    s = start_server(tmp / "repo", tmp, [
        "--grpc-frontend", request.param,
        "--grpc-restricted-protocol", "inference:infer-key=s3cret",
        "--grpc-restricted-protocol", "model-repository,statistics,health:admin-key=adm1n",
    ])  # fmt: skip
    yield s
    s.stop()


def _infer(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None) -> None:
    x = np.ones((1, 256), np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("mlp_dense", [inp], headers=headers, client_timeout=20)


def test_inference_needs_its_header(srv: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(srv.url)
    _infer(client, KEY)
    for headers in (None, {"triton-grpc-protocol-infer-key": "wrong"}, ADMIN):
        with pytest.raises(InferenceServerException) as err:
            _infer(client, headers)
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        assert err.value.message() == EXPECT_INFER


def test_header_sent_twice_passes_with_any_matching_value(srv: ServerProcess) -> None:
    req = pb.ModelInferRequest(model_name="mlp_dense")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 256])
    req.raw_input_contents.append(np.ones((1, 256), "<f4").tobytes())
    header = "triton-grpc-protocol-infer-key"
    with grpc.insecure_channel(srv.url) as channel:
        rpc = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        for values in (("wrong", "s3cret"), ("s3cret", "wrong")):
            got = rpc(req, metadata=[(header, v) for v in values], timeout=20)
            assert got.outputs[0].name == "y"
        with pytest.raises(grpc.RpcError) as err:
            rpc(req, metadata=[(header, "wrong"), (header, "worse")], timeout=20)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stream_needs_its_header(srv: ServerProcess) -> None:
    results: list[object] = []
    x = np.ones((1, 256), np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for headers, ok in ((KEY, True), (None, False)):
        client = grpcclient.InferenceServerClient(srv.url)
        results.clear()
        client.start_stream(lambda result, error: results.append(error or result),
                            headers=headers)  # fmt: skip
        try:
            client.async_stream_infer("mlp_dense", [inp])
        except InferenceServerException:  # NOTE: refused at once: "stream no longer valid"
            assert not ok
        client.stop_stream()
        assert len(results) == 1
        if ok:
            assert not isinstance(results[0], InferenceServerException)
        else:
            assert isinstance(results[0], InferenceServerException)
            assert EXPECT_INFER in str(results[0])


def test_other_groups_and_unrestricted(srv: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(srv.url)
    assert client.get_server_metadata().name  # metadata: not restricted
    assert client.get_model_config("mlp_dense").config.name == "mlp_dense"
    assert client.get_model_repository_index(headers=ADMIN).models
    assert client.get_inference_statistics(headers=ADMIN).model_stats
    assert client.is_server_live(headers=ADMIN)
    for call in (client.get_model_repository_index, client.get_inference_statistics,
                 client.is_server_live, client.is_model_ready):  # fmt: skip
        with pytest.raises(InferenceServerException) as err:
            call("mlp_dense") if call == client.is_model_ready else call(headers=KEY)
        assert "triton-grpc-protocol-admin-key" in err.value.message()


def test_grpc_health_counts_as_health(srv: ServerProcess) -> None:
    """As tritonserver: grpc.health.v1 Check is in the health protocol."""
    with grpc.insecure_channel(srv.url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10,
                           metadata=tuple(ADMIN.items()))  # fmt: skip
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_flag_parsing() -> None:
    rules = restricted.parse(["health,metadata:k=v", "inference:other=x=y"])
    assert rules["health"] == restricted.Restriction("triton-grpc-protocol-k", "v")
    assert rules["inference"].value == "x=y"
    methods = restricted.by_method(rules)
    assert "/grpc.health.v1.Health/Check" in methods
    assert "/inference.GRPCInferenceService/ModelStatistics" not in methods
    http = restricted.parse(["inference:k=v"], "--http-restricted-api", header_prefix="")
    assert http["inference"].header == "k"
    for bad in ("inference", "inference:k", "nonsense:k=v", ":k=v", "inference:=v",
                "inference:k y=v"):  # fmt: skip
        with pytest.raises(ValueError):
            restricted.parse([bad])
    with pytest.raises(ValueError, match="more than once"):
        restricted.parse(["inference:a=b", "health,inference:c=d"])


def test_bad_flag_exits_2_with_the_value(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(tmp_path),
         "--grpc-restricted-protocol", "inferense:k=v"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown protocol 'inferense'" in done.stderr
