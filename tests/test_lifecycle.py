"""Repository lifecycle through the real server: control modes, failures, back-pressure, stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    ServerProcess,
    copy_repo,
    metric,
    parse_metrics,
    start_server,
    wait_for,
)


def infer(client: grpcclient.InferenceServerClient, model: str, rows: int = 1) -> np.ndarray:
    inp = grpcclient.InferInput("x", [rows, 256], "FP32")
    inp.set_data_from_numpy(np.ones((rows, 256), np.float32))
    return client.infer(model, [inp]).as_numpy("y")


def slow_model(layers: int = 40, width: int = 1024) -> onnx.ModelProto:
    """[batch,256] -> [batch,256] through `layers` MatMuls sharing one weight: slow, small."""
    rng = np.random.default_rng(0)
    w_in = numpy_helper.from_array(rng.standard_normal((256, width)).astype(np.float32) * 0.01,
                                   "w_in")  # fmt: skip
    w = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")
    w_out = numpy_helper.from_array(rng.standard_normal((width, 256)).astype(np.float32), "w_out")
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["y"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        initializer=[w_in, w, w_out],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def while_computing(
    url: str, model: str, action: Callable[[aioclient.InferenceServerClient], Awaitable[object]],
    wait: float = 0.2,
) -> object:
    """action(client) while a 64-row request to `model` computes: what it returns, or the
    InferenceServerException it raises; the request is awaited either way."""

    async def run() -> object:
        async with aioclient.InferenceServerClient(url) as c:
            inp = aioclient.InferInput("x", [64, 256], "FP32")
            inp.set_data_from_numpy(np.ones((64, 256), np.float32))
            running = asyncio.ensure_future(c.infer(model, [inp]))
            await asyncio.sleep(wait)
            try:
                return await action(c)
            except InferenceServerException as exc:
                return exc
            finally:
                await asyncio.gather(running, return_exceptions=True)

    return asyncio.run(run())


def sigterm_under_load(
    srv: ServerProcess, model: str, rows: int, requests: int, again_after: float | None = None
) -> None:
    """SIGTERM 0.3 s into `requests` concurrent calls (a second one `again_after` s later),
    then wait for every call to end, however it ends."""

    async def run() -> None:
        async with aioclient.InferenceServerClient(srv.url) as c:
            inp = aioclient.InferInput("x", [rows, 256], "FP32")
            inp.set_data_from_numpy(np.ones((rows, 256), np.float32))
            tasks = [asyncio.create_task(c.infer(model, [inp])) for _ in range(requests)]
            await asyncio.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            if again_after is not None:
                await asyncio.sleep(again_after)
                srv.proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str | None = None,
                version: int = 1) -> None:  # fmt: skip
    (repo / name / str(version)).mkdir(parents=True, exist_ok=True)
    (repo / name / str(version) / "model.onnx").write_bytes(model.SerializeToString())
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture()
def repo(sample_repo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    copy_repo(sample_repo, dst)
    return dst


def test_explicit_mode_load_and_unload(repo: Path, tmp_path: Path) -> None:
    srv = start_server(repo, tmp_path, ["--model-control-mode", "explicit",
                                        "--load-model", "mlp_dense"])  # fmt: skip
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(client.is_server_ready)
        assert client.is_model_ready("mlp_dense")
        assert not client.is_model_ready("mlp_sparse24")
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["mlp_sparse24"]["state"] == "UNAVAILABLE"
        assert index["mlp_dense"]["state"] == "READY"
        with pytest.raises(InferenceServerException):
            infer(client, "mlp_sparse24")
        client.load_model("mlp_sparse24")
        assert client.is_model_ready("mlp_sparse24")
        assert infer(client, "mlp_sparse24").shape == (1, 256)
        client.unload_model("mlp_dense")
        assert not client.is_model_ready("mlp_dense")
        with pytest.raises(InferenceServerException) as err:
            infer(client, "mlp_dense")
        # as Triton: an unloaded model is known, just without versions
        assert err.value.status() == "StatusCode.NOT_FOUND"
        assert "'mlp_dense' has no available versions" in str(err.value)
        # its histogram series go with its nv_* series, and restart with them on a reload
        assert 'sparse_runtime_request_duration_seconds_count{model="mlp_dense"' not in (
            srv.scrape())
        assert infer(client, "mlp_sparse24").shape == (1, 256)
        for name in ("does_not_exist", "", ".", "..", "../repo", "/", str(repo)):
            with pytest.raises(InferenceServerException) as err:
                client.load_model(name)  # never a path: no walk of the filesystem
            assert err.value.status() == "StatusCode.NOT_FOUND", (name, err.value)
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {m["name"] for m in index} <= set(os.listdir(repo))  # no rows for the paths
        client.load_model("mlp_dense")
        assert client.is_model_ready("mlp_dense")
        infer(client, "mlp_dense")
        samples = parse_metrics(srv.scrape())
        assert metric(samples, "nv_inference_request_success", model="mlp_dense") == 1
        assert metric(samples, "sparse_runtime_request_duration_seconds_count",
                      model="mlp_dense") == 1  # fmt: skip
        # a failed reload keeps the version that is serving (as Triton does)
        good = infer(client, "mlp_sparse24")
        model_file = repo / "mlp_sparse24" / "1" / "model.onnx"
        model_file.unlink()
        model_file.write_bytes(b"truncated")
        with pytest.raises(InferenceServerException) as err:
            client.load_model("mlp_sparse24")
        assert "not a valid ONNX" in str(err.value)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"  # as Triton
        assert "load failed for model 'mlp_sparse24': version 1 is at UNAVAILABLE" in str(err.value)
        with pytest.raises(InferenceServerException) as err:
            client.load_model("mlp_dense", config="{}", files={"file:1/model.onnx": b"x"})
        assert err.value.status() == "StatusCode.UNIMPLEMENTED"
        assert client.is_model_ready("mlp_sparse24")
        np.testing.assert_array_equal(infer(client, "mlp_sparse24"), good)
        # a JSON config override with a mistake names the mistake
        for bad, fragment in (('{"max_batch_sise": 4}', "max_batch_sise"),
                              ('{"max_batch_size": "four"}', "max_batch_size")):  # fmt: skip
            with pytest.raises(InferenceServerException) as err:
                client.load_model("mlp_dense", config=bad)
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert fragment in str(err.value), str(err.value)
    finally:
        assert srv.stop() == 0


def test_load_model_flag_naming_a_missing_model(repo: Path, tmp_path: Path) -> None:
    flags = ["--model-control-mode", "explicit", "--load-model", "mlp_dense",
             "--load-model", "mlp_dnese"]  # fmt: skip
    srv = start_server(repo, tmp_path, flags)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("mlp_dense"))
        assert not client.is_server_ready()  # as Triton: a model it was told to load is missing
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert "not in" in index["mlp_dnese"]["reason"]
        assert "mlp_dnese" in srv.log_text()
    finally:
        assert srv.stop() == 0


def test_poll_mode_picks_up_new_versions_and_models(repo: Path, tmp_path: Path) -> None:
    srv = start_server(repo, tmp_path, ["--model-control-mode", "poll",
                                        "--repository-poll-secs", "0.3"])  # fmt: skip
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(client.is_server_ready)
        before = infer(client, "mlp_dense")
        # version 2 with different weights: the latest version policy switches to it
        v2 = repo / "mlp_dense" / "2"
        v2.mkdir()  # copied in the usual way: the folder first, its file later
        (repo / "mlp_dense" / "²").mkdir()  # not a version (isdigit() but not ASCII)
        assert wait_for(lambda: "version 2" in srv.log_text())  # tried and failed: no file
        assert client.is_model_ready("mlp_dense")  # version 1 keeps serving meanwhile
        np.testing.assert_array_equal(infer(client, "mlp_dense"), before)
        os.link(repo / "mlp_sparse24" / "1" / "model.onnx", v2 / "model.onnx")
        assert wait_for(lambda: client.get_model_metadata("mlp_dense").versions == ["2"])
        after = infer(client, "mlp_dense")
        np.testing.assert_allclose(after, infer(client, "mlp_sparse24"), atol=1e-5)
        assert not np.allclose(before, after)
        # a new model folder appears, then goes away
        shutil.copytree(repo / "mlp_sparse24", repo / "late_model")
        (repo / "late_model" / "config.pbtxt").write_text(
            (repo / "mlp_sparse24" / "config.pbtxt").read_text().replace("mlp_sparse24",
                                                                        "late_model")
        )  # fmt: skip
        assert wait_for(lambda: client.is_model_ready("late_model"))
        shutil.rmtree(repo / "late_model")
        assert wait_for(lambda: not client.is_model_ready("late_model"))
        with pytest.raises(InferenceServerException) as err:
            client.unload_model("mlp_dense")
        assert "polling" in str(err.value)
    finally:
        assert srv.stop() == 0


def test_broken_models_are_unavailable_and_others_serve(repo: Path, tmp_path: Path) -> None:
    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    (repo / "badconfig" / "1").mkdir(parents=True)
    os.link(repo / "mlp_dense" / "1" / "model.onnx", repo / "badconfig" / "1" / "model.onnx")
    (repo / "badconfig" / "config.pbtxt").write_text("max_batch_size: [ oops")
    (repo / "wrongio" / "1").mkdir(parents=True)
    os.link(repo / "mlp_dense" / "1" / "model.onnx", repo / "wrongio" / "1" / "model.onnx")
    (repo / "wrongio" / "config.pbtxt").write_text(
        'max_batch_size: 8\ninput [ { name: "input0" data_type: TYPE_FP32 dims: [ 256 ] } ]'
    )
    (repo / "noversion").mkdir()
    two = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )  # fmt: skip
    partial = 'max_batch_size: 8\ninput [ { name: "a" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    opset = [helper.make_opsetid("", 17)]
    write_model(repo, "partialio", helper.make_model(two, opset_imports=opset), partial)
    (repo / "badparam" / "1").mkdir(parents=True)
    os.link(repo / "mlp_dense" / "1" / "model.onnx", repo / "badparam" / "1" / "model.onnx")
    (repo / "badparam" / "config.pbtxt").write_text(
        'parameters { key: "intra_op_thread_count" value { string_value: "abc" } }'
    )
    bf16 = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])],
    )  # fmt: skip
    write_model(repo, "bf16io", helper.make_model(bf16, opset_imports=opset))
    (repo / "elsewhere" / "1").mkdir(parents=True)  # a config naming a file outside its folder
    (repo / "elsewhere" / "config.pbtxt").write_text(
        'default_model_filename: "../../mlp_dense/1/model.onnx"'
    )
    shutil.copytree(repo / "badparam" / "1", repo / "nanbudget" / "1")
    (repo / "nanbudget" / "config.pbtxt").write_text(
        'parameters { key: "cpu_dispatch_budget_s" value { string_value: "nan" } }'
    )
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("mlp_dense"))
        assert infer(client, "mlp_dense").shape == (1, 256)
        assert not client.is_server_ready()  # strict readiness, as Triton
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        for name, fragment in (("garbage", "not a valid ONNX"), ("badconfig", "malformed"),
                               ("wrongio", "input0"), ("noversion", "no version"),
                               ("partialio", "inputs ['b'] are not declared"),
                               ("badparam", "'intra_op_thread_count' must be"),
                               ("nanbudget", "finite number of seconds"),
                               ("bf16io", "tensor(bfloat16)"),
                               ("elsewhere", "is not a file in")):  # fmt: skip
            assert index[name]["state"] == "UNAVAILABLE", name
            assert fragment in index[name]["reason"], index[name]
            assert not client.is_model_ready(name)
        with pytest.raises(InferenceServerException) as err:
            infer(client, "garbage")
        assert err.value.status() == "StatusCode.NOT_FOUND"  # as Triton; with the reason added
        assert "'garbage' has no available versions" in str(err.value)
        assert "not a valid ONNX" in str(err.value)
        assert "garbage" in srv.log_text()
    finally:
        assert srv.stop() == 0


def test_strict_readiness_off_is_ready_beside_a_broken_model(repo: Path, tmp_path: Path) -> None:
    """tritonserver's --strict-readiness false: ServerReady and the overall health status say
    the server serves, whatever failed to load; the broken model still reports itself."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    srv = start_server(repo, tmp_path, env={"SPARSE_RUNTIME_STRICT_READINESS": "false"})
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("mlp_dense"))
        assert client.is_server_ready() and not client.is_model_ready("garbage")
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(srv.url))
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert srv.stop() == 0


def test_an_unload_whose_caller_gave_up_still_completes(repo: Path, tmp_path: Path) -> None:
    """RepositoryModelUnload past the client's deadline, while a batch computes: the unload
    goes on (shielded), so the model does not stay UNLOADING with its engine loaded and the
    server unready."""
    write_model(repo, "slow", slow_model(layers=400), SLOW_CONFIG)
    srv = start_server(repo, tmp_path, ["--model-control-mode", "explicit",
                                        "--load-model", "slow"])  # fmt: skip
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(client.is_server_ready)

        result = while_computing(
            srv.url, "slow", lambda c: c.unload_model("slow", client_timeout=0.05)
        )
        assert result is None or "Deadline" in str(result), result

        def unloaded() -> bool:
            rows = client.get_model_repository_index(as_json=True)["models"]
            return all(m.get("state") != "UNLOADING" for m in rows) and not any(
                m["name"] == "slow" and m.get("state") == "READY" for m in rows
            )

        assert wait_for(unloaded)
        assert wait_for(client.is_server_ready)
        assert wait_for(lambda: "unloaded slow version 1" in srv.log_text())
    finally:
        assert srv.stop() == 0


def test_model_without_config_gets_a_derived_one(repo: Path, tmp_path: Path) -> None:
    shutil.copytree(repo / "mlp_dense" / "1", repo / "noconfig" / "1")
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("noconfig"))
        config = client.get_model_config("noconfig").config
        assert config.name == "noconfig" and config.max_batch_size > 0
        assert [i.name for i in config.input] == ["x"] and list(config.input[0].dims) == [256]
        assert config.platform == "onnxruntime_onnx"
        # NOTE: two sessions of one model agree to float32 rounding, not bit for bit (their
        # thread pools may split the work differently): a clean-clone CI run once differed
        # by 3.8e-6 (4e-5 relative) where atol was 1e-6
        np.testing.assert_allclose(infer(client, "noconfig", 3), infer(client, "mlp_dense", 3),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    finally:
        srv.stop()


def test_version_policy_all_and_specific(repo: Path, tmp_path: Path) -> None:
    for v in (2, 3):
        (repo / "mlp_dense" / str(v)).mkdir()
        os.link(repo / "mlp_dense" / "1" / "model.onnx", repo / "mlp_dense" / str(v) / "model.onnx")
    config = (repo / "mlp_dense" / "config.pbtxt").read_text()
    (repo / "mlp_dense" / "config.pbtxt").write_text(config + "\nversion_policy: { all { } }\n")
    shutil.copytree(repo / "mlp_dense", repo / "specific")
    (repo / "specific" / "config.pbtxt").write_text(
        config.replace("mlp_dense", "specific")
        + "\nversion_policy: { specific { versions: [1, 3] } }\n"
    )
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("specific"))
        assert sorted(client.get_model_metadata("mlp_dense").versions) == ["1", "2", "3"]
        assert sorted(client.get_model_metadata("specific").versions) == ["1", "3"]
        assert client.is_model_ready("specific", "3") and not client.is_model_ready("specific", "2")
    finally:
        srv.stop()


SLOW_CONFIG = """
name: "slow"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 256 ] } ]
dynamic_batching { default_queue_policy { max_queue_size: 2 } }
"""


def test_full_queue_answers_resource_exhausted(repo: Path, tmp_path: Path) -> None:
    write_model(repo, "slow", slow_model(), SLOW_CONFIG.replace("64", "1", 1))
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("slow"))

        async def burst() -> list[object]:
            async with aioclient.InferenceServerClient(srv.url) as c:

                async def one() -> object:
                    inp = aioclient.InferInput("x", [1, 256], "FP32")
                    inp.set_data_from_numpy(np.ones((1, 256), np.float32))
                    return await c.infer("slow", [inp])

                return await asyncio.gather(*(one() for _ in range(12)), return_exceptions=True)

        results = asyncio.run(burst())
        rejected = [r for r in results if isinstance(r, InferenceServerException)]
        done = [r for r in results if not isinstance(r, Exception)]
        assert rejected and done
        assert all(r.status() == "StatusCode.RESOURCE_EXHAUSTED" for r in rejected)
        assert client.is_server_live() and infer(client, "mlp_dense").shape == (1, 256)
    finally:
        srv.stop()


def _burst(url: str, model: str, n: int, timeout_us: int | None = None) -> list[object]:
    """n concurrent one-row requests; results or InferenceServerExceptions, in order."""

    async def run() -> list[object]:
        async with aioclient.InferenceServerClient(url) as c:
            inp = aioclient.InferInput("x", [1, 256], "FP32")
            inp.set_data_from_numpy(np.ones((1, 256), np.float32))
            calls = [c.infer(model, [inp], timeout=timeout_us) for _ in range(n)]
            return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(run())


def _expired(results: list[object]) -> list[InferenceServerException]:
    expired = [r for r in results if isinstance(r, InferenceServerException)]
    for r in expired:
        assert r.status() == "StatusCode.UNAVAILABLE" and "Request timeout expired" in str(r)
    return expired


def test_queue_policy_timeouts(repo: Path, tmp_path: Path) -> None:
    """default_queue_policy as Triton: REJECT past default_timeout_microseconds (UNAVAILABLE
    "Request timeout expired", counted REJECTED); with allow_timeout_override a request's
    own `timeout` may shorten the model's, never lengthen it."""

    def config(name: str, timeout_us: int) -> str:
        policy = ("dynamic_batching { default_queue_policy { timeout_action: REJECT "
                  f"default_timeout_microseconds: {timeout_us} allow_timeout_override: true }} }}")
        return SLOW_CONFIG.replace("64", "1", 1).replace('"slow"', f'"{name}"').replace(
            "dynamic_batching { default_queue_policy { max_queue_size: 2 } }", policy
        )  # fmt: skip

    write_model(repo, "slow", slow_model(layers=400), config("slow", 10_000))
    write_model(repo, "patient", slow_model(layers=400), config("patient", 60_000_000))
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("slow") and client.is_model_ready("patient"))
        infer(client, "slow"), infer(client, "patient")  # warm
        # one at a time, each a few ms even on a fast host: the later ones wait past 10 ms
        expired = _expired(_burst(srv.url, "slow", 12))
        assert expired and len(expired) < 12
        samples = parse_metrics(srv.scrape())
        failed = metric(samples, "nv_inference_request_failure", model="slow", reason="REJECTED")
        assert failed == len(expired)
        # a request cannot lengthen the model's 10 ms...
        assert _expired(_burst(srv.url, "slow", 12, timeout_us=60_000_000))
        # ...but may shorten a model's 60 s
        served = _burst(srv.url, "patient", 12)
        assert not [r for r in served if isinstance(r, Exception)], served
        assert _expired(_burst(srv.url, "patient", 12, timeout_us=10_000))
    finally:
        assert srv.stop() == 0


def gather_model(layers: int = 120, width: int = 1024) -> onnx.ModelProto:
    """idx [batch, 1] int64 -> rows of a 16x256 table -> the slow chain: an index out of
    range fails in the engine, for that request's batch."""
    slow = slow_model(layers, width)
    table = numpy_helper.from_array(np.arange(16 * 256, dtype=np.float32).reshape(16, 256),
                                    "table")  # fmt: skip
    shape = numpy_helper.from_array(np.array([-1, 256], np.int64), "shape")
    nodes = [helper.make_node("Gather", ["table", "idx"], ["g"], axis=0),
             helper.make_node("Reshape", ["g", "shape"], ["x"]), *slow.graph.node]  # fmt: skip
    graph = helper.make_graph(
        nodes, "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        list(slow.graph.output),
        initializer=[table, shape, *slow.graph.initializer],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


GATHER_CONFIG = """
name: "gather"
max_batch_size: 16
input [ { name: "idx" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 256 ] } ]
dynamic_batching { }
parameters { key: "engine" value { string_value: "onnxruntime" } }
"""


def test_a_request_the_engine_rejects_fails_alone(repo: Path, tmp_path: Path) -> None:
    """One bad index among requests batched together: only that request fails."""
    write_model(repo, "gather", gather_model(), GATHER_CONFIG)
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("gather"))
        rows = [np.array([[i % 16]], np.int64) for i in range(8)]
        rows[5] = np.array([[99]], np.int64)  # out of the table

        async def blocked_then_burst() -> list[object]:
            # a 16-row request holds the engine, so the next 8 queue and go out as one batch
            async with aioclient.InferenceServerClient(srv.url) as c:
                block = aioclient.InferInput("idx", [16, 1], "INT64")
                block.set_data_from_numpy(np.zeros((16, 1), np.int64))
                blocker = asyncio.ensure_future(c.infer("gather", [block]))
                await asyncio.sleep(0.05)
                inputs = []
                for x in rows:
                    inp = aioclient.InferInput("idx", [1, 1], "INT64")
                    inp.set_data_from_numpy(x)
                    inputs.append(inp)
                burst = [c.infer("gather", [inp]) for inp in inputs]
                results = await asyncio.gather(*burst, return_exceptions=True)
                await blocker
                return list(results)

        results = asyncio.run(blocked_then_burst())
        failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
        assert failed == [5], results
        assert results[5].status() == "StatusCode.INTERNAL"  # type: ignore[union-attr]
        assert "running them one at a time" in srv.log_text()  # they were batched together
        ok = [r for r in results if not isinstance(r, Exception)]
        assert all(r.as_numpy("y").shape == (1, 256) for r in ok)  # type: ignore[union-attr]
    finally:
        assert srv.stop() == 0


def test_sigterm_finishes_in_flight_requests_then_exits_zero(repo: Path, tmp_path: Path) -> None:
    config = SLOW_CONFIG.replace("max_queue_size: 2", "max_queue_size: 100")
    write_model(repo, "slow", slow_model(), config)
    srv = start_server(repo, tmp_path)
    client = grpcclient.InferenceServerClient(srv.url)
    assert wait_for(lambda: client.is_model_ready("slow"))

    async def in_flight() -> list[object]:
        async with aioclient.InferenceServerClient(srv.url) as c:

            async def one() -> np.ndarray:
                inp = aioclient.InferInput("x", [16, 256], "FP32")
                inp.set_data_from_numpy(np.ones((16, 256), np.float32))
                return (await c.infer("slow", [inp])).as_numpy("y")

            tasks = [asyncio.create_task(one()) for _ in range(8)]
            await asyncio.sleep(0.3)  # all sent and queued or running
            srv.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(in_flight())
    assert all(isinstance(r, np.ndarray) and r.shape == (16, 256) for r in results), [
        str(r) for r in results if not isinstance(r, np.ndarray)
    ]
    srv.proc.wait(60)
    assert srv.proc.returncode == 0
    assert "stopped" in srv.log_text()
    assert "still running" not in srv.log_text()  # every call ended: a plain exit
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(grpc.insecure_channel(srv.url)).result(timeout=1)


def test_stream_answers_in_request_order_and_ends_when_the_server_stops(
    repo: Path, tmp_path: Path
) -> None:
    """As Triton for non-decoupled models: a stream answers in request order, though a later
    request to a faster model finishes first. On SIGTERM an idle stream the client keeps open
    ends at once, so the server exits well within its 60 s grace period."""
    import queue

    write_model(repo, "slow", slow_model(layers=400), SLOW_CONFIG)
    srv = start_server(repo, tmp_path, ["--shutdown-grace-secs", "60"])
    client = grpcclient.InferenceServerClient(srv.url)
    assert wait_for(lambda: client.is_model_ready("slow"))
    answers: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        big = grpcclient.InferInput("x", [64, 256], "FP32")
        big.set_data_from_numpy(np.ones((64, 256), np.float32))
        small = grpcclient.InferInput("x", [1, 256], "FP32")
        small.set_data_from_numpy(np.ones((1, 256), np.float32))
        client.async_stream_infer("slow", [big], request_id="0-slow")
        client.async_stream_infer("mlp_dense", [small], request_id="1-fast")
        client.async_stream_infer("no_such_model", [small], request_id="2-error")
        client.async_stream_infer("mlp_dense", [small], request_id="3-fast")
        ids = []
        for _ in range(4):
            got = answers.get(timeout=60)
            ids.append("2-error" if isinstance(got, InferenceServerException)
                       else got.get_response().id)  # fmt: skip
        assert ids == ["0-slow", "1-fast", "2-error", "3-fast"]
        srv.proc.send_signal(signal.SIGTERM)
        # the idle stream ends with an error the client hears (a request sent on it from now
        # on would otherwise go unanswered), and does not hold the exit
        ended = answers.get(timeout=20)
        assert isinstance(ended, InferenceServerException), ended
        assert "shutting down" in str(ended)
        assert srv.proc.wait(20) == 0
    finally:
        client.stop_stream()
        srv.stop()


def test_exit_does_not_wait_for_an_engine_call_past_the_grace_period(
    repo: Path, tmp_path: Path
) -> None:
    """--shutdown-grace-secs 0 while a batch computes: the server exits (status 0) without
    waiting for it, saying so, instead of the interpreter joining the engine thread."""
    # NOTE: a batch of seconds even on a fast host (0.7 s per 400 layers on the 2-core CI
    # VM); engine forced, so no load-time engine timing runs it
    config = SLOW_CONFIG.replace("max_queue_size: 2", "max_queue_size: 100") + (
        'parameters { key: "engine" value { string_value: "onnxruntime" } }\n'
    )
    write_model(repo, "slow", slow_model(layers=4000), config)
    srv = start_server(repo, tmp_path, ["--shutdown-grace-secs", "0"])
    client = grpcclient.InferenceServerClient(srv.url)
    assert wait_for(lambda: client.is_model_ready("slow"))

    sigterm_under_load(srv, "slow", rows=64, requests=6)  # one batch computes, 5 queue
    assert srv.proc.wait(30) == 0
    assert "engine call(s) still running" in srv.log_text()


def test_model_load_is_refused_while_the_server_drains(repo: Path, tmp_path: Path) -> None:
    """A model loaded after SIGTERM would miss the drain (and hold the exit): refused."""
    config = SLOW_CONFIG + 'parameters { key: "engine" value { string_value: "onnxruntime" } }\n'
    write_model(repo, "slow", slow_model(layers=4000), config)
    srv = start_server(repo, tmp_path, ["--model-control-mode", "explicit",
                                        "--load-model", "slow"])  # fmt: skip
    client = grpcclient.InferenceServerClient(srv.url)
    assert wait_for(client.is_server_ready)

    async def stop_then_load(c: aioclient.InferenceServerClient) -> object:
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        return await c.load_model("mlp_dense")

    refused = while_computing(srv.url, "slow", stop_then_load, wait=0.3)  # computing for seconds
    assert isinstance(refused, InferenceServerException), refused
    assert refused.status() == "StatusCode.UNAVAILABLE" and "shutting down" in str(refused)
    assert srv.proc.wait(60) == 0


def test_second_stop_signal_exits_at_once(repo: Path, tmp_path: Path) -> None:
    """SIGTERM drains; a second SIGTERM while draining (Ctrl-C twice) exits without waiting."""
    config = SLOW_CONFIG.replace("64", "1", 1).replace("max_queue_size: 2", "max_queue_size: 100")
    write_model(repo, "slow", slow_model(layers=400), config)
    srv = start_server(repo, tmp_path)
    client = grpcclient.InferenceServerClient(srv.url)
    assert wait_for(lambda: client.is_model_ready("slow"))

    sigterm_under_load(srv, "slow", rows=1, requests=60, again_after=0.05)  # draining 60
    # queued requests takes far longer than 0.05 s
    assert srv.proc.wait(10) == 1
    assert "second stop signal" in srv.log_text()


def wide_model() -> onnx.ModelProto:
    """x [batch, 256] -> y [batch, 1024]: the output 4x the input."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x", "x", "x"], ["y"], axis=1)], "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_stream_answer_at_the_message_limit_is_refused_alone(
    repo: Path, tmp_path: Path
) -> None:
    """A response that fits the limit as a unary answer but not with the stream's wrapper
    (the triton_final_response flag, a tag, a length): that request gets an in-band error,
    and the stream goes on (gRPC used to end the whole stream, losing the answers after)."""
    import queue

    from runtime.server import codec

    write_model(repo, "wide", wide_model())
    rows = 8
    unary = codec.encode_response("wide", "1", "", {"y": np.ones((rows, 1024), np.float32)},
                                  ["y"])  # fmt: skip
    wrapped = len(codec.stream_response(unary).data)
    limit = wrapped - 1  # fits alone, not wrapped; gRPC refuses only what is over the limit
    srv = start_server(repo, tmp_path, ["--grpc-max-message-bytes", str(limit)])
    client = grpcclient.InferenceServerClient(srv.url)
    try:
        assert wait_for(lambda: client.is_model_ready("wide"))
        big = grpcclient.InferInput("x", [rows, 256], "FP32")
        big.set_data_from_numpy(np.ones((rows, 256), np.float32))
        assert client.infer("wide", [big]).as_numpy("y").shape == (rows, 1024)
        small = grpcclient.InferInput("x", [1, 256], "FP32")
        small.set_data_from_numpy(np.ones((1, 256), np.float32))
        answers: queue.Queue[object] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        client.async_stream_infer("wide", [big], request_id="big")
        client.async_stream_infer("wide", [small], request_id="small")
        first, second = answers.get(timeout=30), answers.get(timeout=30)
        assert isinstance(first, InferenceServerException), first
        assert "--grpc-max-message-bytes" in str(first)
        assert second.get_response().id == "small"  # type: ignore[union-attr]
    finally:
        client.stop_stream()
        assert srv.stop() == 0


def test_a_response_over_the_message_limit_is_a_counted_failure(
    repo: Path, tmp_path: Path
) -> None:
    """Output 4x the input: with --grpc-max-message-bytes between the two, the request gets
    RESOURCE_EXHAUSTED naming the limit, and counts as a failure, not a success."""
    write_model(repo, "wide", wide_model())
    srv = start_server(repo, tmp_path, ["--grpc-max-message-bytes", str(128 * 1024)])
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        assert wait_for(lambda: client.is_model_ready("wide"))
        with pytest.raises(InferenceServerException) as err:
            infer_wide = grpcclient.InferInput("x", [64, 256], "FP32")
            infer_wide.set_data_from_numpy(np.ones((64, 256), np.float32))  # 64 KiB in
            client.infer("wide", [infer_wide])  # 256 KiB out
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "--grpc-max-message-bytes" in str(err.value)
        samples = parse_metrics(srv.scrape())
        assert metric(samples, "nv_inference_request_failure", model="wide") == 1
        assert metric(samples, "nv_inference_request_success", model="wide") == 0
    finally:
        assert srv.stop() == 0
