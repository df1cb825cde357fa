"""Metrics scraped over HTTP move by the right amounts; grpc.health.v1 answers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ServerProcess, metric, parse_metrics

TRITON_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def send(server: ServerProcess, model: str, rows: int, times: int) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    for _ in range(times):
        inp = grpcclient.InferInput("x", [rows, 256], "FP32")
        inp.set_data_from_numpy(np.ones((rows, 256), np.float32))
        client.infer(model, [inp])


def test_triton_names_are_exact(server: ServerProcess) -> None:
    text = server.scrape()
    for name in TRITON_COUNTERS:
        assert f"# TYPE {name} counter" in text
        assert f"{name}_total" not in text
    for name in ("nv_inference_pending_request_count", "nv_model_load_duration_secs",
                 "nv_cpu_memory_used_bytes", "sparse_runtime_model_info",
                 "sparse_runtime_model_weight_bytes", "process_resident_memory_bytes"):  # fmt: skip
        assert f"# TYPE {name} gauge" in text


def test_counters_and_histograms_move_by_the_right_amounts(server: ServerProcess) -> None:
    before = parse_metrics(server.scrape())
    send(server, "mlp_dense", rows=3, times=4)
    after = parse_metrics(server.scrape())

    def delta(name: str) -> float:
        return metric(after, name, model="mlp_dense", version="1") - metric(
            before, name, model="mlp_dense", version="1"
        )

    assert delta("nv_inference_request_success") == 4
    assert delta("nv_inference_count") == 12
    assert delta("nv_inference_exec_count") == 4
    assert delta("nv_inference_request_failure") == 0
    for name in ("nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us"):
        assert delta(name) > 0
    assert delta("nv_inference_request_duration_us") >= delta(
        "nv_inference_compute_infer_duration_us"
    )
    assert delta("sparse_runtime_request_duration_seconds_count") == 4
    assert delta("sparse_runtime_queue_duration_seconds_count") == 4
    assert delta("sparse_runtime_compute_duration_seconds_count") == 4
    assert delta("sparse_runtime_batch_size_sum") == 12
    bucket = metric(after, "sparse_runtime_request_duration_seconds_bucket", model="mlp_dense",
                    le="+Inf")  # fmt: skip
    assert bucket == metric(after, "sparse_runtime_request_duration_seconds_count",
                            model="mlp_dense")  # fmt: skip


def test_sparsity_gauges(server: ServerProcess) -> None:
    samples = parse_metrics(server.scrape())
    weights = "sparse_runtime_model_weight_bytes"
    dense = metric(samples, weights, model="mlp_sparse24", form="dense")
    compressed = metric(samples, weights, model="mlp_sparse24", form="compressed_24")
    assert dense == 4 * (256 * 1024 + 1024 * 1024 * 2 + 1024 * 256)  # the GEMM weights
    assert compressed < dense * 0.6
    assert metric(samples, weights, model="mlp_dense", form="compressed_24") == metric(
        samples, weights, model="mlp_dense", form="dense"
    )
    assert metric(samples, "sparse_runtime_model_sparsity_ratio", model="mlp_sparse24") > 0.49
    info = [lv for (n, lv), _ in samples.items() if n == "sparse_runtime_model_info"]
    by_model = {dict(lv)["model"]: dict(lv) for lv in info}
    assert by_model["mlp_sparse24"]["sparsity_pattern"] == "2:4"
    assert by_model["mlp_dense"]["sparsity_pattern"] == "dense"
    assert by_model["mlp_sparse24"]["engine"] in ("onnxruntime", "openvino")
    assert by_model["mlp_sparse24"]["reason"]
    assert metric(samples, "process_resident_memory_bytes") > 10e6


@pytest.mark.parametrize(
    "service,expected",
    [
        ("", health_pb2.HealthCheckResponse.SERVING),
        ("live", health_pb2.HealthCheckResponse.SERVING),
        ("inference.GRPCInferenceService", health_pb2.HealthCheckResponse.SERVING),
        ("mlp_dense", health_pb2.HealthCheckResponse.SERVING),
        ("mlp_sparse24", health_pb2.HealthCheckResponse.SERVING),
    ],
)
def test_health_service(server: ServerProcess, service: str, expected: int) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.url))
    assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == expected


def test_health_unknown_service(server: ServerProcess) -> None:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.url))
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_cli(server: ServerProcess) -> None:
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "runtime", "health", "--url", server.url],
                        capture_output=True, text=True, timeout=30)  # fmt: skip
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "runtime", "health", "--url", "127.0.0.1:1",
                          "--timeout", "1"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 1 and "unhealthy" in bad.stderr
    # without --url, the port follows SPARSE_RUNTIME_GRPC_PORT as `serve` does (the image's
    # HEALTHCHECK relies on it)
    import os

    port = server.url.rsplit(":", 1)[1]
    env = {**os.environ, "SPARSE_RUNTIME_GRPC_PORT": port}
    moved = subprocess.run([sys.executable, "-m", "runtime", "health"], env=env,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert moved.returncode == 0 and "SERVING" in moved.stdout, moved.stderr
