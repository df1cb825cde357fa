"""GPU-engine gauges: one kernel series per (layer, kernel); resident weights and GPU memory."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from runtime.engines.base import EngineDescription
from runtime.metrics import Metrics, exposition
from runtime.model import ServedModel
from runtime.repository.config import parse_config_text


class BucketedEngine:
    """Reports a decision per (layer, batch bucket), as the GPU engine does."""

    def layer_decisions(self) -> list[dict[str, object]]:
        return [
            {"layer": "fc0", "bucket": b, "kernel": "sparse" if b < 128 else "dense"}
            for b in (1, 8, 64, 128, 256)
        ]


def test_layer_kernel_series_are_unique() -> None:
    config = parse_config_text('name: "m" max_batch_size: 8')
    info = {
        "engine_weight_bytes_dense_resident": "0",
        "engine_weight_bytes_compressed_resident": "226492416",
        "engine_gpu_memory_bytes": "1338277888",
    }
    model = ServedModel("m", 1, config, BucketedEngine(), EngineDescription("x", "cuda", (), ()),
                        info=info)  # fmt: skip
    registry = CollectorRegistry()
    Metrics(registry, lambda: [model])
    lines = [
        line for line in exposition(registry).decode().splitlines()
        if line.startswith("sparse_runtime_layer_kernel{")
    ]  # fmt: skip
    assert len(lines) == len(set(lines)) == 2
    assert any('kernel="sparse"' in line for line in lines)
    assert any('kernel="dense"' in line for line in lines)
    text = exposition(registry).decode()
    assert 'sparse_runtime_model_gpu_memory_bytes{model="m",version="1"} 1.338277888e+09' in text
    assert 'form="resident_compressed",model="m",version="1"} 2.26492416e+08' in text


def test_nvml_gauges_include_power_and_survive_a_board_without_it(monkeypatch) -> None:  # noqa: ANN001
    """NVML (faked: CI has no driver) feeds Triton's nv_gpu_* gauges, power in watts as
    perf_analyzer --collect-metrics reads it; a board that cannot report power keeps the rest."""
    import sys
    import types

    from runtime.metrics import GpuProbe

    class Mem:
        used, total = 2.0e9, 8.0e10

    def power(handle: int) -> int:
        if handle == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 350_000  # milliwatts

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}".encode(),
        nvmlDeviceGetMemoryInfo=lambda h: Mem(),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40),
        nvmlDeviceGetPowerUsage=power,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    families = {f.name: {s.labels["gpu_uuid"]: s.value for s in f.samples}
                for f in GpuProbe().collect()}  # fmt: skip
    assert families["nv_gpu_power_usage"] == {"GPU-0": 350.0}
    assert families["nv_gpu_utilization"] == {"GPU-0": 0.4, "GPU-1": 0.4}
    assert families["nv_gpu_memory_total_bytes"]["GPU-1"] == 8.0e10
