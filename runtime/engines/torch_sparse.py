"""torch engine for 2:4-sparse ONNX models: sparse tensor cores where they measure faster.

The ONNX graph is interpreted by `onnx_to_torch` in fp16/bf16 on one CUDA device. Every linear
layer whose constant weight is 2:4 along K (and whose shape fits the kernel tiles) gets a
compressed twin (`torch._cslt_compress`, consumed only by `torch._cslt_sparse_mm`, so the
metadata layout stays tied to its kernel; `to_sparse_semi_structured` is the sm_8x fallback).
Under `sparsity: auto` each such layer is timed sparse vs dense at every batch bucket after
warm-up, and runs sparse only where it won (see `sparse_policy`); a whole-forward check per
bucket then reverts the bucket to dense if the chosen plan is not faster end to end. Batches are
padded up to the next bucket and each bucket runs as one CUDA graph, which removes the per-call
launch and planning overhead that dominates small shapes.

torch is imported only inside methods, so a CPU-only install never touches it.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto

from runtime.engines.base import (
    EngineDescription,
    EngineOptions,
    ModelSource,
    TensorSpec,
    bool_parameter,
)
from runtime.engines.cuda_graphs import capture_graph, time_pair
from runtime.engines.sparse_linear import (
    BIAS_EPILOGUE_MODES,
    CsltLinear,
    SemiStructuredLinear,
    cusparselt_available,
    disagreement,
    sparse_eligibility,
)
from runtime.engines.sparse_policy import (
    DEFAULT_MIN_GAIN,
    MODES,
    LayerDecision,
    LayerTiming,
    apply_end_to_end_guard,
    decide,
    layer_summary,
    table,
)
from runtime.errors import ConfigError, EngineUnavailable, InferenceFailed, ModelLoadError

LOGGER = logging.getLogger(__name__)
_GPU_LOCK = threading.RLock()

DEFAULT_BUCKETS: tuple[int, ...] = (1, 8, 64, 256)
MAX_LAZY_GRAPHS = 32
"""Cap on CUDA graphs captured on demand for inputs with dynamic non-batch dims."""

_PRECISIONS = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def _require_torch() -> Any:
    """Import torch or explain what is missing (the `gpu` extra)."""
    try:
        import torch
    except ImportError as exc:
        raise EngineUnavailable(
            "engine 'torch_sparse' needs PyTorch with CUDA: install sparse-runtime[gpu] "
            f"on a GPU host ({exc})"
        ) from exc
    return torch


def _require_cuda(torch: Any, device_id: int) -> tuple[int, int]:
    """Check CUDA and compute capability >= 8.0 (sparse tensor cores); returns (major, minor)."""
    if not torch.cuda.is_available():
        raise EngineUnavailable(
            "engine 'torch_sparse' needs a CUDA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    if device_id >= torch.cuda.device_count():
        raise EngineUnavailable(f"CUDA device {device_id} does not exist")
    major, minor = torch.cuda.get_device_capability(device_id)
    if major < 8:
        raise EngineUnavailable(
            f"engine 'torch_sparse' needs compute capability >= 8.0 (Ampere or newer) for "
            f"2:4 sparse tensor cores; device {device_id} is {major}.{minor}"
        )
    return major, minor


@dataclass
class _Captured:
    graph: Any
    static_in: dict[str, Any]
    static_out: dict[str, Any]


class TorchSparseEngine:
    """ONNX -> torch on CUDA, fp16/bf16, 2:4 layers on sparse tensor cores where measured faster."""

    name = "torch_sparse"

    def __init__(self, source: ModelSource, options: EngineOptions) -> None:
        self._source = source
        self._options = options
        params = {k.lower(): str(v) for k, v in dict(options.parameters).items()}
        # NOTE: the config parameter wins; EngineOptions.precision is a generic hint ("fp32"
        # for onnxruntime), used only when it names a precision this engine runs.
        hint = options.precision.lower() if options.precision.lower() in _PRECISIONS else "fp16"
        self._precision = params.get("precision", hint).lower()
        self._mode = params.get("sparsity", "auto").lower()
        self._dense_twin = bool_parameter(params, "dense_twin", False)
        self._use_graphs = bool_parameter(params, "cuda_graphs", True)
        self._min_gain = float(params.get("sparse_min_gain", DEFAULT_MIN_GAIN))
        self._profile_len = int(params.get("profile_seq_len", "128"))
        self._bias_epilogue = params.get("cslt_bias_epilogue", "off").lower()
        if self._precision not in _PRECISIONS:
            raise ConfigError(f"precision must be fp16 or bf16, got {self._precision!r}")
        if self._mode not in MODES:
            raise ConfigError(f"sparsity must be one of {MODES}, got {self._mode!r}")
        if self._bias_epilogue not in BIAS_EPILOGUE_MODES:
            raise ConfigError(
                f"cslt_bias_epilogue must be one of {BIAS_EPILOGUE_MODES}, "
                f"got {self._bias_epilogue!r}"
            )
        self._torch: Any = None
        self._graph: Any = None
        self._device: Any = None
        self._buckets: tuple[int, ...] = ()
        self._batchable = False
        self._captured: dict[tuple[Any, ...], _Captured | None] = {}
        self._pool: Any = None
        self._decisions: list[LayerDecision] = []
        self._eligibility: dict[str, str] = {}
        self._description: EngineDescription | None = None
        # NOTE: one lock for every torch_sparse engine in the process. Measured on an H200:
        # two models loading at once broke CUDA graph capture ("operation not permitted when
        # stream is capturing"), since another thread's CUDA calls are illegal mid-capture.
        self._lock = _GPU_LOCK
        self._details: dict[str, str] = {}

    # ------------------------------------------------------------------ load

    def _platform(self, torch: Any) -> tuple[Any, int, int]:
        """(device, cc major, cc minor); tests override this to run the engine on the CPU."""
        major, minor = _require_cuda(torch, self._options.device_id)
        device = torch.device("cuda", self._options.device_id)
        torch.cuda.set_device(device)
        return device, major, minor

    def _sparse_factory(self, major: int) -> Any | None:
        """The class that builds sparse kernels on this host, or None."""
        torch = self._torch
        if cusparselt_available(torch):
            return CsltLinear
        if major == 8 and hasattr(torch.sparse, "to_sparse_semi_structured"):
            return SemiStructuredLinear  # NOTE: the CUTLASS path is sm_8x only
        return None

    def _is_cuda(self) -> bool:
        return self._device is not None and self._device.type == "cuda"

    def _memory_allocated(self) -> int:
        return int(self._torch.cuda.memory_allocated(self._device)) if self._is_cuda() else 0

    def load(self) -> None:
        torch = _require_torch()
        self._torch = torch
        device, major, minor = self._platform(torch)
        self._device = device
        try:
            with self._lock:
                self._load(major, minor)
        except ModelLoadError:
            self.unload()
            raise
        except Exception as exc:  # OOM, CUDA errors: report as a load failure
            self.unload()
            raise ModelLoadError(f"torch_sparse could not load the model: {exc}") from exc

    def _load(self, major: int, minor: int) -> None:
        from runtime.engines.onnx_to_torch import UnsupportedModel, convert

        torch, device = self._torch, self._device
        if not self._is_cuda():
            self._use_graphs = False
        dtype = getattr(torch, _PRECISIONS[self._precision])
        t0 = time.perf_counter()
        mem0 = self._memory_allocated()
        source = str(self._source) if isinstance(self._source, Path) else self._source
        try:
            graph = convert(source)
        except UnsupportedModel as exc:
            raise ModelLoadError(f"torch_sparse cannot run this model: {exc}") from exc
        except Exception as exc:
            raise ModelLoadError(f"torch_sparse could not read the model: {exc}") from exc
        self._eligibility = {
            name: sparse_eligibility(lin.weight) for name, lin in graph.linears.items()
        }
        graph.to(device, dtype)
        self._graph = graph
        self._batchable = bool(graph.inputs) and all(
            len(s.dims) >= 1 and s.dims[0] == -1 for s in graph.inputs
        )
        buckets = sorted({int(b) for b in self._options.batch_buckets if int(b) > 0})
        self._buckets = tuple(buckets) if buckets else DEFAULT_BUCKETS
        if not self._batchable:
            self._buckets = (0,)  # one fixed shape
        backend = self._build_sparse_kernels(major)
        with torch.inference_mode():
            self._profile_rows()
            timings = self._measure()
            self._decisions = decide(timings, self._mode, self._min_gain)
            self._apply_decisions()
            if self._mode == "auto":
                self._end_to_end_guard()
            self._release_unused()
            self._capture_all()
        if self._is_cuda():
            torch.cuda.synchronize(device)
        mem1 = self._memory_allocated()
        self._details = self._make_details(
            backend, major, minor, mem1 - mem0, time.perf_counter() - t0
        )
        self._description = self._make_description()
        LOGGER.info(
            "torch_sparse loaded: %s sparse / %s dense layers, table %s",
            self._details["layers_sparse"],
            self._details["layers_dense"],
            self._details["kernel_table"],
        )

    def _build_sparse_kernels(self, major: int) -> str:
        """Compress each eligible layer; returns the backend name ('none' when there is none)."""
        torch, graph = self._torch, self._graph
        if self._mode == "off":
            return "none"
        factory = self._sparse_factory(major)
        if factory is None:
            if self._mode == "on" and any(not v for v in self._eligibility.values()):
                raise EngineUnavailable(
                    "sparsity=on needs cuSPARSELt (torch.backends.cusparselt) on this GPU; "
                    "this torch build has none"
                )
            for name in self._eligibility:
                self._eligibility[name] = self._eligibility[name] or "no sparse backend"
            return "none"
        for name, lin in graph.linears.items():
            if self._eligibility[name]:
                continue
            try:
                if factory is CsltLinear:
                    kernel = CsltLinear(torch, lin.weight, lin.bias, self._bias_epilogue)
                else:
                    kernel = factory(torch, lin.weight, lin.bias)
                x = torch.randn(64, lin.in_features, device=self._device, dtype=graph.float_dtype)
                ref = lin.dense(x).float()
                # NOTE: a chained sparse layer gets x as a transposed view; check that order too.
                problem = disagreement(ref, kernel, x) or disagreement(
                    ref, kernel, x.t().contiguous().t()
                )
                if problem:
                    raise RuntimeError(problem)
                lin.kernels["sparse"] = kernel
            except Exception as exc:
                LOGGER.warning("layer %s stays dense: %s", name, exc)
                self._eligibility[name] = f"sparse kernel failed: {exc}"
        return factory.backend

    def _sample_feeds(self, bucket: int) -> dict[str, Any]:
        torch, graph = self._torch, self._graph
        from runtime.engines.onnx_to_torch import INT_ONNX_TO_TORCH

        feeds = {}
        for spec in graph.inputs:
            dims = [d if d > 0 else self._profile_len for d in spec.dims]
            if self._batchable:
                dims[0] = bucket
            if spec.elem_type in INT_ONNX_TO_TORCH:
                t = torch.ones(dims, dtype=INT_ONNX_TO_TORCH[spec.elem_type], device=self._device)
            else:
                t = torch.randn(dims, device=self._device, dtype=graph.float_dtype)
            feeds[spec.name] = t
        return feeds

    def _profile_rows(self) -> None:
        """One eager dense pass per bucket records each layer's GEMM M (batch x tokens)."""
        graph = self._graph
        graph.force_kernel = "dense"
        try:
            for b in self._buckets:
                graph.bucket = b
                graph(self._sample_feeds(b))
        finally:
            graph.force_kernel = None
            graph.bucket = None

    def _measure(self) -> list[LayerTiming]:
        torch, graph = self._torch, self._graph
        timings: list[LayerTiming] = []
        cache: dict[tuple[Any, ...], tuple[float | None, float | None]] = {}
        for name, lin in graph.linears.items():
            note = self._eligibility[name]
            sparse = lin.kernels.get("sparse")
            for b in self._buckets:
                rows = lin.rows_seen.get(b, max(b, 1))
                if self._mode == "off" and not note:
                    timings.append(LayerTiming(name, b, rows, None, None))
                    continue
                if note or sparse is None:
                    timings.append(LayerTiming(name, b, rows, None, None, False, note or "n/a"))
                    continue
                sparse.search(rows)
                if self._mode != "auto":
                    timings.append(LayerTiming(name, b, rows, None, None))
                    continue
                key = (lin.out_features, lin.in_features, rows, lin.bias is not None)
                if key not in cache:
                    x = torch.randn(
                        rows, lin.in_features, device=self._device, dtype=graph.float_dtype
                    )
                    xr = x.t().contiguous().t()  # what a layer after a sparse one gets
                    fns = {
                        "dense": lin.dense,
                        "sparse": sparse,
                        "sparse_chained": lambda _x, xr=xr, k=sparse: k(xr),
                    }
                    r = time_pair(torch, fns, x)
                    # NOTE: which order a layer sees depends on its neighbours' choices; the
                    # faster one stands for the layer, and the whole-forward guard checks the plan.
                    sparse_us = min(
                        (v for v in (r.get("sparse"), r.get("sparse_chained")) if v is not None),
                        default=None,
                    )
                    cache[key] = (r["dense"], sparse_us)
                dense_us, sparse_us = cache[key]
                err = "" if sparse_us is not None else "sparse kernel raised while timing"
                timings.append(LayerTiming(name, b, rows, dense_us, sparse_us, True, err))
        return timings

    def _apply_decisions(self) -> None:
        graph = self._graph
        for lin in graph.linears.values():
            lin.choice = {}
        for d in self._decisions:
            graph.linears[d.layer].choice[d.bucket] = d.kernel
        top = self._buckets[-1]
        for lin in graph.linears.values():
            lin.default_kernel = lin.choice.get(top, "dense")

    def _time_forward(self, bucket: int) -> tuple[float | None, float | None]:
        """(chosen plan, all-dense) microseconds for one forward pass at `bucket`."""
        graph = self._graph

        def run(feeds: Mapping[str, Any], force: str | None) -> Any:
            # NOTE: the choice is read while a CUDA graph is captured, so it is baked in.
            graph.bucket, graph.force_kernel = bucket, force
            try:
                return graph(feeds)
            finally:
                graph.bucket, graph.force_kernel = None, None

        fns = {"plan": lambda f: run(f, None), "dense": lambda f: run(f, "dense")}
        r = time_pair(self._torch, fns, self._sample_feeds(bucket), inner=3, reps=5, warmup=2)
        return r["plan"], r["dense"]

    def _end_to_end_guard(self) -> None:
        """Per bucket: keep the sparse plan only if the whole forward beats all-dense."""
        for b in self._buckets:
            if not any(d.bucket == b and d.kernel == "sparse" for d in self._decisions):
                continue
            plan_us, dense_us = self._time_forward(b)
            LOGGER.info("bucket %s: plan %s us, all-dense %s us", b, plan_us, dense_us)
            if plan_us is None or dense_us is None:
                continue
            self._details[f"e2e_us_b{b}"] = f"plan={plan_us:.1f},dense={dense_us:.1f}"
            self._decisions = apply_end_to_end_guard(self._decisions, b, plan_us, dense_us)
        self._apply_decisions()

    def _release_unused(self) -> None:
        """Free what no bucket uses: dense weights of all-sparse layers (unless dense_twin)."""
        for name, lin in self._graph.linears.items():
            kinds = set(lin.choice.values()) or {"dense"}
            if "sparse" not in kinds:
                lin.kernels.pop("sparse", None)
            elif "dense" not in kinds and not self._dense_twin:
                lin.weight = None
                LOGGER.debug("layer %s: dense weight released", name)
        if self._is_cuda():
            self._torch.cuda.empty_cache()

    # ------------------------------------------------------------------ CUDA graphs

    def _static_tails(self) -> bool:
        return all(all(d > 0 for d in s.dims[1:]) for s in self._graph.inputs)

    def _capture_all(self) -> None:
        if not (self._use_graphs and self._batchable and self._static_tails()):
            return
        for b in self._buckets:
            feeds = self._sample_feeds(b)
            self._capture((b,) + tuple(tuple(t.shape[1:]) for t in feeds.values()), b, feeds)

    def _capture(self, key: tuple[Any, ...], bucket: int, feeds: Mapping[str, Any]) -> None:
        torch, graph = self._torch, self._graph
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        static_in = {n: t.clone() for n, t in feeds.items()}
        graph.bucket = bucket
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                graph(static_in)
                # NOTE: the first pass may copy small shape-derived tensors to the device
                # once (onnx_to_torch._to caches them); the second must copy nothing
                graph.ctx.host_to_device = 0
                graph(static_in)
            torch.cuda.current_stream().wait_stream(side)
            if graph.ctx.host_to_device:
                # NOTE: a pageable host->device copy would invalidate the capture; do not try.
                LOGGER.info("%s: the forward copies host tensors to the GPU; no CUDA graph", key)
                self._captured[key] = None
                return
            cuda_graph, static_out = capture_graph(torch, lambda: graph(static_in), self._pool)
            self._captured[key] = _Captured(cuda_graph, static_in, static_out)
        except Exception as exc:
            LOGGER.warning("CUDA graph capture failed for %s (%s); running eagerly", key, exc)
            torch.cuda.synchronize()
            self._captured[key] = None
        finally:
            graph.bucket = None

    # ------------------------------------------------------------------ infer

    def _bucket_for(self, n: int) -> int:
        for b in self._buckets:
            if b >= n:
                return b
        return self._buckets[-1]

    def _run(self, feeds: Mapping[str, np.ndarray], n: int) -> dict[str, Any]:
        """Run one chunk of n <= max bucket rows; returns device tensors sliced to n rows."""
        torch, graph = self._torch, self._graph
        if not self._batchable:
            graph.bucket = 0
            try:
                return graph({k: graph.prepare_input(k, v) for k, v in feeds.items()})
            finally:
                graph.bucket = None
        b = self._bucket_for(n)
        key = (b,) + tuple(tuple(np.shape(feeds[s.name])[1:]) for s in graph.inputs)
        if self._use_graphs and key not in self._captured and len(self._captured) < MAX_LAZY_GRAPHS:
            sample = {}
            for s in graph.inputs:
                t = graph.prepare_input(s.name, feeds[s.name])
                sample[s.name] = torch.zeros((b, *t.shape[1:]), dtype=t.dtype, device=t.device)
            self._capture(key, b, sample)
        cap = self._captured.get(key)
        if cap is not None:
            for name, buf in cap.static_in.items():
                src = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                buf[:n].copy_(src)
                if n < b:
                    buf[n:].zero_()
            cap.graph.replay()
            return {k: v[:n] for k, v in cap.static_out.items()}
        padded = {}
        for name in feeds:
            t = graph.prepare_input(name, feeds[name])
            if n < b:
                t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, b - n))
            padded[name] = t
        graph.bucket = b
        try:
            out = graph(padded)
        finally:
            graph.bucket = None
        return {k: v[:n] for k, v in out.items()}

    def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if self._graph is None:
            raise InferenceFailed("engine is not loaded")
        torch, graph = self._torch, self._graph
        names = list(outputs) if outputs else [o.name for o in graph.outputs]
        specs = {o.name: o for o in graph.outputs}
        missing = [s.name for s in graph.inputs if s.name not in inputs]
        if missing or any(n not in specs for n in names):
            raise InferenceFailed(f"missing inputs {missing} or unknown outputs in {names}")
        try:
            on_device = torch.cuda.device(self._device) if self._is_cuda() else nullcontext()
            with self._lock, torch.inference_mode(), on_device:
                if not self._batchable:
                    out = self._run(inputs, 0)
                    return {n: self._to_numpy(out[n], specs[n].elem_type) for n in names}
                total = int(np.shape(inputs[graph.inputs[0].name])[0])
                step = self._buckets[-1]
                chunks: list[dict[str, np.ndarray]] = []
                for start in range(0, max(total, 1), step):
                    part = {k: np.asarray(v)[start : start + step] for k, v in inputs.items()}
                    out = self._run(part, min(step, total - start))
                    # NOTE: copy out before the next chunk replays the same CUDA graph.
                    chunks.append({n: self._to_numpy(out[n], specs[n].elem_type) for n in names})
                if len(chunks) == 1:
                    return chunks[0]
                return {n: np.concatenate([c[n] for c in chunks], axis=0) for n in names}
        except InferenceFailed:
            raise
        except Exception as exc:
            raise InferenceFailed(f"torch_sparse inference failed: {exc}") from exc

    def _to_numpy(self, t: Any, elem_type: int) -> np.ndarray:
        """fp32 models answer in fp32 (the compute dtype is an engine detail); fp16 stays fp16.

        Always row-major: a 2:4 layer's output is a transposed view (see CsltLinear), and
        cast-and-copy kernels keep that layout, so it would reach the host column-major and
        the response encoder would transpose it on the CPU (70 ms for 1024x8192 fp32 on the
        dev VM); on the GPU the transpose rides along with the cast.
        """
        torch = self._torch
        if elem_type == TensorProto.FLOAT16:
            dtype = torch.float16
        elif t.is_floating_point():
            dtype = torch.float32
        else:
            dtype = t.dtype
        # NOTE: .to() with a new dtype writes row-major in the same kernel; with the same
        # dtype it returns the view as is, and .contiguous() makes the one copy
        out = t.to(dtype, memory_format=torch.contiguous_format).contiguous().cpu().numpy()
        return out.astype(np.float64, copy=False) if elem_type == TensorProto.DOUBLE else out

    # ------------------------------------------------------------------ lifecycle, reports

    def unload(self) -> None:
        with self._lock:
            self._captured.clear()
            self._graph = None
            self._pool = None
            if self._is_cuda():
                self._torch.cuda.empty_cache()

    def replay_us(self, batch: int, inner: int = 10, reps: int = 10) -> float | None:
        """Device-only microseconds per forward at `batch`'s bucket (CUDA graph replay).

        Why: `infer` includes host copies that can hide the GEMM speed-up; benchmarks report
        both. None when that bucket has no captured graph.
        """
        if self._graph is None or not self._batchable:
            return None
        b = self._bucket_for(batch)
        cap = next((c for k, c in self._captured.items() if k[0] == b and c is not None), None)
        if cap is None:
            return None
        torch = self._torch
        with self._lock, torch.inference_mode():
            times = []
            for _ in range(reps):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    cap.graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1000.0 / inner)
        return statistics.median(times)

    def layer_decisions(self) -> list[dict[str, object]]:
        """One row per (layer, bucket): layer, bucket, kernel, sparse_us, dense_us, reason."""
        return [d.as_dict() for d in self._decisions]

    def _make_details(
        self, backend: str, major: int, minor: int, mem_bytes: int, load_s: float
    ) -> dict[str, str]:
        torch, graph = self._torch, self._graph
        summary = layer_summary(self._decisions)
        itemsize = torch.tensor([], dtype=graph.float_dtype).element_size()
        linears = list(graph.linears.values())
        dense_equiv = sum(lin.out_features * lin.in_features * itemsize for lin in linears)
        dense_res = sum(
            int(lin.weight.numel() * lin.weight.element_size())
            for lin in linears
            if lin.weight is not None
        )
        comp_res = sum(
            int(lin.kernels["sparse"].nbytes) for lin in linears if "sparse" in lin.kernels
        )
        plans = [
            v for lin in linears for v in getattr(lin.kernels.get("sparse"), "fused", {}).values()
        ]
        fused = f"{sum(plans)}/{len(plans)}"
        try:
            cslt = str(torch.backends.cusparselt.version())
        except Exception:
            cslt = "unavailable"
        details = dict(self._details)
        details.update(
            {
                "precision": self._precision,
                "sparsity": self._mode,
                "sparse_backend": backend,
                "device_name": (
                    torch.cuda.get_device_name(self._device) if self._is_cuda() else "cpu"
                ),
                "compute_capability": f"{major}.{minor}",
                "torch": str(torch.__version__),
                "cusparselt": cslt,
                "batch_buckets": ",".join(str(b) for b in self._buckets),
                "cuda_graphs": str(sum(1 for c in self._captured.values() if c is not None)),
                "cslt_bias_epilogue": self._bias_epilogue,
                "cslt_bias_fused": fused,
                "layers_total": str(len(graph.linears)),
                "layers_eligible": str(sum(1 for v in self._eligibility.values() if not v)),
                "layers_sparse": str(sum(1 for k in summary.values() if k == "sparse")),
                "layers_dense": str(sum(1 for k in summary.values() if k == "dense")),
                "layers_mixed": str(sum(1 for k in summary.values() if k == "mixed")),
                "weight_bytes_dense_equivalent": str(dense_equiv),
                "weight_bytes_dense_resident": str(dense_res),
                "weight_bytes_compressed_resident": str(comp_res),
                "gpu_memory_bytes": str(mem_bytes),
                "load_seconds": f"{load_s:.2f}",
                "kernel_table": table(self._decisions),
            }
        )
        return details

    def _make_description(self) -> EngineDescription:
        from onnx import helper

        def spec(s: Any) -> TensorSpec:
            try:
                dtype = np.dtype(helper.tensor_dtype_to_np_dtype(s.elem_type))
            except Exception:
                dtype = np.dtype(np.float32)
            return TensorSpec(s.name, dtype, tuple(s.dims))

        return EngineDescription(
            engine=self.name,
            device=str(self._device),
            inputs=tuple(spec(s) for s in self._graph.inputs),
            outputs=tuple(spec(s) for s in self._graph.outputs),
            details=dict(self._details),
        )

    def describe(self) -> EngineDescription:
        if self._description is None:
            raise InferenceFailed("engine is not loaded")
        # NOTE: graphs for dynamic non-batch dims are captured on demand, so count them now.
        graphs = str(sum(1 for c in self._captured.values() if c is not None))
        if self._description.details.get("cuda_graphs") != graphs:
            details = {**self._description.details, "cuda_graphs": graphs}
            self._description = replace(self._description, details=details)
        return self._description
