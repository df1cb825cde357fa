"""onnxruntime CPU speed of model variants, measured side by side.

Why interleaved: on a shared host the load changes minute to minute; timing each
model in alternating short windows and comparing medians keeps the ratio honest
where absolute times are not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import onnx
import onnxruntime as ort

from runtime.sparsity.inputs import Feeds, generate_inputs


def cpu_session(model: onnx.ModelProto | bytes, threads: int) -> ort.InferenceSession:
    """A plain CPU session with a fixed thread count (what a serving node would run)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def speed_inputs(model: onnx.ModelProto, batch: int, sequence: int) -> Feeds:
    """Token-like inputs [batch, sequence] (masks all ones) for timing."""
    return generate_inputs(model, samples=batch, seq_len=sequence)


def interleaved_latency(models: Mapping[str, onnx.ModelProto | bytes], feeds: Feeds,
                        threads: int = 1, rounds: int = 5, runs: int = 5,
                        warmup: int = 2) -> dict[str, float]:
    """Lower-quartile seconds per run of each model, timed in alternating windows.

    # NOTE: the lower quartile, not the median: on a loaded host most runs are
    # slowed by other processes, and the slowdown is not shared evenly.
    """
    sessions = {name: cpu_session(m, threads) for name, m in models.items()}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.quantiles(t, n=4)[0] for name, t in times.items()}


def speedups(dense: onnx.ModelProto, variants: Mapping[str, onnx.ModelProto | bytes],
             threads: int = 1, batch: int = 1, sequence: int = 128, rounds: int = 5,
             runs: int = 5) -> dict[str, float]:
    """Dense time / variant time (lower quartiles), each variant timed beside the dense model."""
    feeds = speed_inputs(dense, batch, sequence)
    lat = interleaved_latency({"__dense__": dense, **variants}, feeds, threads, rounds, runs)
    return {name: lat["__dense__"] / lat[name] for name in variants} | {
        "__dense_ms__": lat["__dense__"] * 1e3}

