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
                        warmup: int = 2, clock: str = "wall") -> dict[str, float]:
    """Seconds per run of each model, timed in alternating windows.

    clock "wall": the lower quartile of wall time per run (on a loaded host most runs
    are slowed by other processes, and not evenly). clock "cpu": the median CPU time
    of the calling thread per run, which other processes barely touch; it is the
    latency only with one onnxruntime thread (onnxruntime then computes on the calling
    thread). The thread's, not the process's: idle BLAS threads spinning after numpy
    work were counted into every run and pulled the ratios toward 1.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {clock!r}")
    tick = time.perf_counter if clock == "wall" else time.thread_time
    sessions = {name: cpu_session(m, threads) for name, m in models.items()}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(runs):
                t0 = tick()
                sess.run(None, feeds)
                times[name].append(tick() - t0)
    if clock == "cpu":
        return {name: statistics.median(t) for name, t in times.items()}
    return {name: statistics.quantiles(t, n=4)[0] for name, t in times.items()}


def speedups(dense: onnx.ModelProto, variants: Mapping[str, onnx.ModelProto | bytes],
             threads: int = 1, batch: int = 1, sequence: int = 128, rounds: int = 5,
             runs: int = 5, clock: str | None = None) -> dict[str, float]:
    """Dense time / variant time, each variant timed beside the dense model.

    `clock` defaults to "cpu" with one thread and "wall" otherwise (see
    `interleaved_latency`); "__dense_ms__" in the result is the dense model's time.
    """
    clock = clock or ("cpu" if threads == 1 else "wall")
    feeds = speed_inputs(dense, batch, sequence)
    lat = interleaved_latency({"__dense__": dense, **variants}, feeds, threads, rounds, runs,
                              clock=clock)
    return {name: lat["__dense__"] / lat[name] for name in variants} | {
        "__dense_ms__": lat["__dense__"] * 1e3}
