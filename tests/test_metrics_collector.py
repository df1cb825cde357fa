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
