"""The collector's per-layer kernel gauge: one series per (layer, kernel), whatever the buckets."""

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
    model = ServedModel("m", 1, config, BucketedEngine(), EngineDescription("x", "cuda", (), ()))
    registry = CollectorRegistry()
    Metrics(registry, lambda: [model])
    lines = [
        line for line in exposition(registry).decode().splitlines()
        if line.startswith("sparse_runtime_layer_kernel{")
    ]  # fmt: skip
    assert len(lines) == len(set(lines)) == 2
    assert any('kernel="sparse"' in line for line in lines)
    assert any('kernel="dense"' in line for line in lines)
