"""CUDA graph capture and like-for-like GPU timing (CUDA events, interleaved repetitions).

torch is passed in, never imported here, so a CPU-only install never touches it.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping
from typing import Any

LOGGER = logging.getLogger(__name__)


def capture_graph(torch: Any, body: Callable[[], Any], pool: Any = None) -> tuple[Any, Any]:
    """Capture body() in a CUDA graph; returns (graph, body's output).

    Tries the default (global) capture mode first, then "relaxed": should a library call an
    API that is unsafe during capture (for instance an allocation inside a plan), relaxed mode
    lets it through instead of failing the capture. Raises when both fail.
    """
    error: Exception | None = None
    for mode in ("global", "relaxed"):
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool, capture_error_mode=mode):
                out = body()
            return graph, out
        except Exception as exc:
            error = exc
            LOGGER.debug("CUDA graph capture (%s mode) failed: %s", mode, exc)
            torch.cuda.synchronize()
    raise RuntimeError(f"CUDA graph capture failed: {error}") from error


def time_pair(
    torch: Any,
    fns: Mapping[str, Callable[[Any], Any]],
    x: Any,
    inner: int = 10,
    reps: int = 7,
    warmup: int = 3,
    use_graph: bool = True,
    info: dict[str, str] | None = None,
) -> dict[str, float | None]:
    """Median microseconds per call of each fn on x, interleaved so drift hits all alike.

    Each rep times `inner` back-to-back calls with CUDA events; inside CUDA graphs (what the
    engine serves with) when every fn can be captured, else all eagerly, so the comparison
    stays like for like. A fn that raises gets `None`. `info["mode"]` says which was used.
    """
    ok: dict[str, Callable[[Any], Any]] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn(x)
            torch.cuda.synchronize()
            ok[name] = fn
        except Exception as exc:
            LOGGER.warning("timing: %s failed: %s", name, exc)

    def eager(fn: Callable[[Any], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(inner):
                fn(x)

        return run

    runners: dict[str, Callable[[], Any]] = {name: eager(fn) for name, fn in ok.items()}
    graphs: list[Any] = []
    mode = "eager"
    if use_graph and ok:
        try:
            replays = {}
            for name, fn in ok.items():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    fn(x)
                torch.cuda.current_stream().wait_stream(side)
                graph, _ = capture_graph(torch, runners[name])
                graphs.append(graph)
                replays[name] = graph.replay
            runners, mode = replays, "graph"
        except Exception as exc:
            LOGGER.info("timing: CUDA graph capture failed (%s); timing all eagerly", exc)
            torch.cuda.synchronize()
    if info is not None:
        info["mode"] = mode
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(reps):
        for name, runner in runners.items():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            runner()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) * 1000.0 / inner)
    del graphs
    return {n: (statistics.median(samples[n]) if samples.get(n) else None) for n in fns}

