"""2:4 sparse vs dense on one GPU: GEMM microbenchmark, engine level, and through the server.

Parts (each one a separate command so a driver can give each its own timeout):
  models  build the hidden-8192 MLP once into --models-dir (shared by the other parts and tests)
  gemm    (a) fp16 GEMM y = x @ W^T, W 2:4: cuSPARSELt vs cuBLAS, CUDA events, median of reps
  engine  (b) TorchSparseEngine in-process on the 8192 MLP: sparsity off (dense twin) / on / auto,
          batch 1..1024: infer latency p50/p99 and throughput (numpy in/out), device-only time
          (CUDA graph replay), GPU memory. `--modes` may add on_fused / auto_fused (the same
          with the cuSPARSELt bias epilogue, `cslt_bias_epilogue`) and `--name` the JSON's name
  profile per-kernel device time of --modes at --profile-batches (torch.profiler over infer)
  server  (c) the same through `python -m runtime serve` over gRPC (tritonclient for control,
          request bytes built once for the timed calls); skips cleanly
          when tritonclient is missing or the server does not come up
  server-encoder  (c') the same for a BERT-shaped encoder (`runtime.samples.encoder_model`: 6
          layers, hidden 768, FFN 3072, seq 128, random weights pruned 2:4), token ids in and
          one 768-vector out per row, so GPU work outweighs the bytes on the wire

The 8192 MLP: the weights of `runtime.samples.mlp_pair((8192, 8192, 8192, 8192))` (same
`mlp_weights` seed; three 8192x8192 layers, ReLU), pruned with the same rule as
`magnitude_prune_2of4` (keep the 2 largest |w| of each 4 along K) but on the GPU, because the
numpy pruning of 200M weights takes minutes on a busy host; a slice is cross-checked against
the numpy function. Each part prints a table and writes JSON to --out as rows complete.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.fileio import write_atomic  # noqa: E402

MLP_LAYERS = (8192, 8192, 8192, 8192)
MS = (1, 16, 64, 256, 1024, 4096)
KNS = ((1024, 1024), (4096, 4096), (8192, 8192), (3072, 10240))
BATCHES = (1, 8, 32, 64, 128, 256, 512, 1024)
MODE_PARAMS: dict[str, dict[str, str]] = {
    "off": {"sparsity": "off"},
    "on": {"sparsity": "on"},
    "auto": {"sparsity": "auto"},
    "on_fused": {"sparsity": "on", "cslt_bias_epilogue": "on"},
    "auto_fused": {"sparsity": "auto", "cslt_bias_epilogue": "auto"},
}
"""Engine-part modes: config parameters of each (precision fp16 throughout)."""
SPARSE_FILE = "mlp8192_sparse24.onnx"
GEMM_COLS = [
    "M", "K", "N", "dense_us", "dense_chained_us", "sparse_us", "sparse_chained_us",
    "sparse_alg0_us", "speedup", "speedup_chained", "alg_id", "alg_id_chained", "timing",
]  # fmt: skip
ENGINE_COLS = [
    "mode", "batch", "p50_ms", "p99_ms", "throughput_per_s", "device_us",
    "speedup_infer", "speedup_device", "gpu_mem_mb", "w_dense_mb", "w_comp_mb",
]  # fmt: skip


class Recorder:
    """Writes `<out>/<part>.json` after every row, so a killed run still leaves its results."""

    def __init__(self, out: Path, part: str, meta: dict[str, Any]) -> None:
        self.path = out / f"{part}.json"
        self.data: dict[str, Any] = {"part": part, "meta": meta, "rows": [], "errors": []}
        out.mkdir(parents=True, exist_ok=True)
        self.flush()

    def row(self, row: dict[str, Any]) -> None:
        self.data["rows"].append(row)
        self.flush()

    def error(self, where: str, exc: BaseException) -> None:
        print(f"ERROR in {where}: {exc!r}", flush=True)
        traceback.print_exc()
        self.data["errors"].append({"where": where, "error": repr(exc)})
        self.flush()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def flush(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, default=str).encode())


ENGINE_RATIOS = {"speedup_infer": "p50_ms", "speedup_device": "device_us"}
SERVER_RATIOS = {"speedup": "p50_ms", "speedup_compute": "compute_infer_ms"}


def add_ratios(rows: list[dict[str, Any]], who: str, base: str, ratios: dict[str, str]) -> None:
    """Speed-up columns in place: the baseline's time over each row's at the same batch
    (> 1: faster than the baseline). Also run by `summary`, so a part cut short by its
    timeout still gets them from the rows it wrote."""
    ref = {r["batch"]: r for r in rows if r.get(who) == base}
    for r in rows:
        b = ref.get(r["batch"])
        if b is None or r.get(who) == base:
            continue
        for out, col in ratios.items():
            if b.get(col) and r.get(col):
                r[out] = b[col] / r[col]


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str], title: str) -> str:
    """Markdown table of `cols` (missing values print as '-')."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = [f"### {title}", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def env_meta() -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        meta["device"] = torch.cuda.get_device_name(0)
        meta["cc"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    try:
        meta["cusparselt"] = torch.backends.cusparselt.version()
    except Exception as exc:  # noqa: BLE001
        meta["cusparselt"] = f"unavailable: {exc}"
    return meta


def prune24_gpu(w_kn: np.ndarray) -> np.ndarray:
    """2:4 along K (axis 0) of an ONNX MatMul weight [K, N]; same rule as the numpy masks."""
    import torch

    t = torch.from_numpy(w_kn).cuda().t().contiguous()  # [N, K]: groups along the last dim
    n, k = t.shape
    groups = t.reshape(n, k // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    pruned = torch.where(mask, groups, torch.zeros_like(groups)).reshape(n, k)
    return pruned.t().contiguous().cpu().numpy()


# ----------------------------------------------------------------------------- models


def make_models(models_dir: Path, layers: Sequence[int] = MLP_LAYERS) -> Path:
    """Write the 2:4-pruned hidden-8192 MLP once; returns its path (reused when present)."""
    from runtime.samples import mlp_model, mlp_weights
    from runtime.sparsity.masks import magnitude_prune_2of4

    path = models_dir / SPARSE_FILE
    stamp = models_dir / "layers.json"
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == list(layers):
        print(f"models: reusing {path}", flush=True)
        return path
    models_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    weights = mlp_weights(layers)
    print(f"models: weights in {time.perf_counter() - t0:.1f}s", flush=True)
    pruned = []
    for i, (w, b) in enumerate(weights):
        p = prune24_gpu(w)
        if i == 0:  # cross-check the GPU rule against the project's numpy rule on a slice
            ref = magnitude_prune_2of4(w[:, :64], k_axis=0)
            if not np.array_equal(ref, p[:, :64]):
                raise RuntimeError("GPU 2:4 pruning disagrees with magnitude_prune_2of4")
        pruned.append((p, b))
    del weights
    print(f"models: pruned in {time.perf_counter() - t0:.1f}s", flush=True)
    model = mlp_model(pruned, "mlp8192_sparse24")
    write_atomic(path, model.SerializeToString())
    stamp.write_text(json.dumps(list(layers)))
    size = path.stat().st_size
    print(f"models: wrote {path} ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
    return path


ENCODER_FILE = "encoder_sparse24.onnx"
ENCODER_SEQ = 128
ENCODER_BATCHES = (1, 8, 32, 64)


def make_encoder(models_dir: Path) -> Path:
    """Write the 2:4-pruned BERT-shaped encoder (`runtime.samples.encoder_model`) once."""
    from runtime.samples import encoder_model

    path = models_dir / ENCODER_FILE
    if path.exists():
        print(f"models: reusing {path}", flush=True)
        return path
    models_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = encoder_model(seq=ENCODER_SEQ, prune_24=True)
    write_atomic(path, model.SerializeToString())
    print(f"models: wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
    return path


# ----------------------------------------------------------------------------- (a) GEMM


def part_gemm(out: Path, reps: int, ms: Sequence[int], kns: Sequence[tuple[int, int]]) -> None:
    import torch

    from runtime.engines.cuda_graphs import time_pair
    from runtime.engines.sparse_linear import (
        ROW_MULTIPLE,
        CsltLinear,
        cusparselt_available,
        round_up,
    )

    rec = Recorder(out, "gemm", env_meta())
    if not cusparselt_available(torch):
        rec.error("gemm", RuntimeError("cuSPARSELt is not available in this torch build"))
        return
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    for k, n in kns:
        try:
            w = torch.randn(n, k, device="cuda", dtype=torch.float16)
            keep = w.reshape(n, k // 4, 4).abs().topk(2, dim=-1).indices
            mask = torch.zeros(n, k // 4, 4, device="cuda", dtype=torch.bool)
            w = (w.reshape(n, k // 4, 4) * mask.scatter_(-1, keep, True)).reshape(n, k)
            kernel = CsltLinear(torch, w, None)
        except Exception as exc:  # noqa: BLE001
            rec.error(f"compress {k}x{n}", exc)
            continue
        for m in ms:
            try:
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                dense = lambda x, w=w: torch.nn.functional.linear(x, w)  # noqa: E731
                alg0 = CsltLinear.__new__(CsltLinear)
                alg0.__dict__.update(kernel.__dict__)
                alg0.alg_ids = {}
                t_search = time.perf_counter()
                alg = kernel.search(m)
                search_s = time.perf_counter() - t_search
                ref = dense(x).float()
                err = float((kernel(x).float() - ref).abs().max() / ref.abs().max())
                # NOTE: "chained" is what a layer after a sparse one gets: x as a transposed
                # view, so x^T is a row-major operand (the engine's copy-free path).
                xr = x.t().contiguous().t()
                err_chained = float((kernel(xr).float() - ref).abs().max() / ref.abs().max())
                info: dict[str, str] = {}
                fns = {
                    "dense": dense,
                    "sparse": kernel,
                    "sparse_chained": lambda _x, xr=xr, kernel=kernel: kernel(xr),
                    "dense_chained": lambda _x, xr=xr, dense=dense: dense(xr),
                    "sparse_alg0": alg0,
                }
                t = time_pair(torch, fns, x, reps=reps, info=info)
                flops = 2.0 * m * k * n

                def ratio(a: float | None, b: float | None) -> float | None:
                    return a / b if a and b else None

                row = {
                    "M": m,
                    "K": k,
                    "N": n,
                    "dense_us": t["dense"],
                    "sparse_us": t["sparse"],
                    "sparse_chained_us": t["sparse_chained"],
                    "dense_chained_us": t["dense_chained"],
                    "sparse_alg0_us": t["sparse_alg0"],
                    "speedup": ratio(t["dense"], t["sparse"]),
                    "speedup_chained": ratio(t["dense"], t["sparse_chained"]),
                    "dense_tflops": flops / t["dense"] / 1e6 if t["dense"] else None,
                    "alg_id": alg,
                    "alg_id_chained": kernel.alg_ids.get((round_up(m, ROW_MULTIPLE), True)),
                    "rel_err_chained": err_chained,
                    "search_s": round(search_s, 3),
                    "rel_err": err,
                    "timing": info.get("mode"),
                }
            except Exception as exc:  # noqa: BLE001
                rec.error(f"gemm M={m} K={k} N={n}", exc)
                continue
            rows.append(row)
            rec.row(row)
            print(f"gemm {json.dumps(row)}", flush=True)
        del kernel, w
        torch.cuda.empty_cache()
    print(table(rows, GEMM_COLS + ["rel_err"], "(a) fp16 GEMM, cuSPARSELt vs cuBLAS"))


# ----------------------------------------------------------------------------- (b) engine


def _lat_stats(lat_s: list[float], batch: int) -> dict[str, float]:
    arr = np.asarray(lat_s) * 1e3
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "throughput_per_s": float(batch * len(arr) / (arr.sum() / 1e3)),
    }


def _iters(batch: int, budget_s: float, one_s: float, lo: int = 10, hi: int = 300) -> int:
    return int(max(lo, min(hi, budget_s / max(one_s, 1e-5))))


def part_engine(
    out: Path,
    models_dir: Path,
    modes: Sequence[str],
    batches: Sequence[int],
    secs: float,
    name: str = "engine",
) -> None:
    """All modes loaded at once, then timed in alternating rounds per batch (side by side).

    Why alternate: host copies dominate `infer` at large batch and this host's speed drifts;
    rounds of a few calls per engine, in turn, put every mode under the same conditions.
    """
    import torch

    from runtime.engines.base import EngineOptions
    from runtime.engines.torch_sparse import TorchSparseEngine
    from runtime.hostmem import keep_large_buffers
    from runtime.settings import Settings

    rec = Recorder(out, name, env_meta())
    # NOTE: as `serve` does; without it each >= 32 MiB host tensor is a fresh mmap
    rec.set("malloc_tuned", keep_large_buffers(Settings().host_buffer_reuse_bytes))
    path = make_models(models_dir)
    source = path.read_bytes()
    engines: dict[str, Any] = {}
    facts: dict[str, dict[str, Any]] = {}
    try:
        for mode in modes:
            try:
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                t0 = time.perf_counter()
                params = {**MODE_PARAMS[mode], "precision": "fp16"}
                engine = TorchSparseEngine(
                    source,
                    EngineOptions(device="cuda", batch_buckets=tuple(batches), parameters=params),
                )
                engine.load()
                load_s = time.perf_counter() - t0
                details = dict(engine.describe().details)
                rec.set(f"details_{mode}", details)
                rec.set(f"decisions_{mode}", engine.layer_decisions())
                print(f"engine {mode}: loaded in {load_s:.1f}s; {details.get('kernel_table')}")
                engines[mode] = engine
                facts[mode] = {
                    "load_s": round(load_s, 2),
                    "gpu_mem_mb": (torch.cuda.memory_allocated() - base) / 2**20,
                    "w_dense_mb": int(details.get("weight_bytes_dense_resident", 0)) / 2**20,
                    "w_comp_mb": int(details.get("weight_bytes_compressed_resident", 0)) / 2**20,
                }
            except Exception as exc:  # noqa: BLE001
                rec.error(f"engine mode={mode} load", exc)
        rows = _engine_rounds(rec, engines, facts, batches, secs)
    finally:
        for engine in engines.values():
            engine.unload()
        engines.clear()
        torch.cuda.empty_cache()
    add_ratios(rows, "mode", "off", ENGINE_RATIOS)
    rows.sort(key=lambda r: (list(modes).index(r["mode"]), r["batch"]))
    rec.set("rows", rows)
    print(table(rows, ENGINE_COLS, "(b) engine level, hidden-8192 MLP (3x 8192x8192), fp16"))


def _engine_rounds(
    rec: Recorder,
    engines: dict[str, Any],
    facts: dict[str, dict[str, Any]],
    batches: Sequence[int],
    secs: float,
    rounds: int = 5,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for batch in batches:
        try:
            x = rng.standard_normal((batch, MLP_LAYERS[0])).astype(np.float32)
            fns = {
                mode: functools.partial(engine.infer, {"x": x}) for mode, engine in engines.items()
            }
            lat, _ = alternate(fns, _iters(batch, secs, warm_up(fns)), rounds)
            device = {mode: engine.replay_us(batch) for mode, engine in engines.items()}
            # NOTE: device times again in reverse order; the mean of both passes stands
            for mode in reversed(list(engines)):
                again = engines[mode].replay_us(batch)
                if device[mode] is not None and again is not None:
                    device[mode] = (device[mode] + again) / 2
            for mode in engines:
                row = {
                    "mode": mode,
                    "batch": batch,
                    **_lat_stats(lat[mode], batch),
                    "device_us": device[mode],
                    "n": len(lat[mode]),
                    **facts[mode],
                }
                rows.append(row)
                rec.row(row)
                print(json.dumps(row), flush=True)
        except Exception as exc:  # noqa: BLE001
            rec.error(f"engine batch={batch}", exc)
    return rows


def part_profile(
    out: Path, models_dir: Path, modes: Sequence[str], batches: Sequence[int], calls: int = 5
) -> None:
    """Where each mode's GPU time goes: torch.profiler over a few `infer` calls per batch.

    Why: the engine's device time trails the GEMM microbenchmark's ratio (on the H200, 1.17x
    at batch 1024 against 1.49x for the bare GEMM); this attributes the gap per kernel (GEMM,
    bias add, ReLU, casts, host<->device copies). Kernels replayed from CUDA graphs are listed
    when CUPTI reports them; the totals per call are printed either way.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from runtime.engines.base import EngineOptions
    from runtime.engines.torch_sparse import TorchSparseEngine

    rec = Recorder(out, "profile", env_meta())
    source = make_models(models_dir).read_bytes()
    rng = np.random.default_rng(0)
    for mode in modes:
        params = {**MODE_PARAMS[mode], "precision": "fp16"}
        engine = TorchSparseEngine(
            source, EngineOptions(device="cuda", batch_buckets=tuple(batches), parameters=params)
        )
        try:
            engine.load()
            for batch in batches:
                x = rng.standard_normal((batch, MLP_LAYERS[0])).astype(np.float32)
                for _ in range(3):
                    engine.infer({"x": x})
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        engine.infer({"x": x})
                    torch.cuda.synchronize()
                kernels = []
                for ev in prof.key_averages():
                    # NOTE: only device events: a CPU op (aten::copy_) also carries the time
                    # of the kernels it launched, which would count them twice
                    if getattr(ev, "device_type", None) != torch.autograd.DeviceType.CUDA:
                        continue
                    dev_us = float(getattr(ev, "self_device_time_total", 0.0) or 0.0)
                    if dev_us > 0:
                        kernels.append({"name": ev.key[:120], "us_per_call": dev_us / calls,
                                        "count_per_call": ev.count / calls})  # fmt: skip
                kernels.sort(key=lambda k: -k["us_per_call"])
                total = sum(k["us_per_call"] for k in kernels)
                row = {"mode": mode, "batch": batch, "device_us_per_call": total,
                       "kernels": kernels[:15]}  # fmt: skip
                rec.row(row)
                print(f"profile {mode} batch {batch}: {total:.1f} us of device time per call")
                for k in kernels[:15]:
                    print(f"  {k['us_per_call']:9.1f} us  x{k['count_per_call']:<4g} {k['name']}")
        except Exception as exc:  # noqa: BLE001
            rec.error(f"profile mode={mode}", exc)
        finally:
            engine.unload()
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- (c) server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
parameters {{ key: "engine" value {{ string_value: "{engine}" }} }}
parameters {{ key: "sparsity" value {{ string_value: "{sparsity}" }} }}
parameters {{ key: "precision" value {{ string_value: "fp16" }} }}
"""


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _wait(
    pred: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[bytes],
    swallow: tuple[type[BaseException], ...] = (Exception,),
    stop: tuple[type[BaseException], ...] = (),
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if pred():
                return True
        except stop:
            raise
        except swallow:  # not up yet
            pass
        time.sleep(0.5)
    return False


def _wait_model(client: Any, name: str, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    """Wait for READY; give up early when the index reports the load failed (with a reason)."""

    def settled() -> bool:
        if client.is_model_ready(name):
            return True
        index = client.get_model_repository_index(as_json=True).get("models", [])
        failed = [m for m in index if m.get("name") == name and m.get("reason")]
        if failed and failed[0].get("state") not in ("LOADING", "READY"):
            raise _LoadFailed(str(failed[0]))
        return False

    try:
        return _wait(settled, timeout, proc, swallow=(Exception,), stop=(_LoadFailed,))
    except _LoadFailed as exc:
        print(f"(c) {name} failed to load: {exc}", flush=True)
        return False


class _LoadFailed(Exception):
    pass


CLIENT_NOTE = (
    "one grpc channel sending each request's bytes, serialized once (as perf_analyzer reuses "
    "its request); python protobuf took ~25 ms to serialize an 8 MB request on the dev VM, "
    "which would be timed as server latency otherwise. Models alternate in rounds per batch."
)


class ModelSet(NamedTuple):
    """A dense/2:4 pair served from one pruned file, and how to build its requests."""

    name: str
    models: dict[str, str]  # model name -> sparsity
    baseline: str
    batches: tuple[int, ...]
    input_name: str
    output_name: str

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        if self.name == "encoder":
            return rng.integers(0, 8192, (batch, ENCODER_SEQ)).astype(np.int64)
        return rng.standard_normal((batch, MLP_LAYERS[0])).astype(np.float32)


def model_sets(mlp_batches: Sequence[int]) -> dict[str, ModelSet]:
    return {
        "mlp": ModelSet("mlp", {"mlp8192_dense": "off", "mlp8192_sparse24": "auto"},
                        "mlp8192_dense", tuple(mlp_batches), "x", "y"),
        "encoder": ModelSet("encoder", {"encoder_dense": "off", "encoder_sparse24": "auto"},
                            "encoder_dense", ENCODER_BATCHES, "input_ids", "pooled"),
    }  # fmt: skip


def request_bytes(model: str, x: np.ndarray, input_name: str = "x", output: str = "y") -> bytes:
    """A ModelInferRequest with one raw input (FP32 or INT64) and one requested output."""
    from tritonclient.grpc import service_pb2 as pb

    datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[x.dtype]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype=datatype, shape=x.shape)
    request.outputs.add(name=output)
    request.raw_input_contents.append(
        np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()
    )
    return request.SerializeToString()


def raw_infer(url: str) -> Callable[[bytes], bytes]:
    """ModelInfer over one channel, request and response as wire bytes (no (de)serializing)."""
    import grpc

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(url, options=options)
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


def output_shape(response: bytes) -> list[int]:
    from tritonclient.grpc import service_pb2 as pb

    return list(pb.ModelInferResponse.FromString(response).outputs[0].shape)


def warm_up(fns: dict[str, Callable[[], Any]], calls: int = 3) -> float:
    """Run each fn `calls` times; the slowest fn's seconds per call (sizes the timed runs)."""
    slowest = 0.0
    for fn in fns.values():
        t1 = time.perf_counter()
        for _ in range(calls):
            fn()
        slowest = max(slowest, (time.perf_counter() - t1) / calls)
    return slowest


def alternate(
    fns: dict[str, Callable[[], Any]], calls: int, rounds: int = 5
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Latencies (s) per fn, the fns taking turns in `rounds` (so host drift hits all alike);
    and each fn's last result."""
    lat: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, Any] = {}
    per_round = max(2, calls // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t1 = time.perf_counter()
                last[name] = fn()
                lat[name].append(time.perf_counter() - t1)
    return lat, last


def _server_rounds(
    rec: Recorder,
    url: str,
    metrics_url: str,
    models: Sequence[str],
    batches: Sequence[int],
    secs: float,
    model_set: ModelSet | None = None,
) -> list[dict[str, Any]]:
    call = raw_infer(url)
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(1)
    kind = model_set or model_sets(batches)["mlp"]
    for batch in batches:
        try:
            x = kind.sample(rng, batch)
            fns = {
                name: functools.partial(
                    call, request_bytes(name, x, kind.input_name, kind.output_name)
                )
                for name in models
            }
            one = warm_up(fns)
            before = {name: _counters(metrics_url, name) for name in models}
            lat, last = alternate(fns, _iters(batch, secs, one, lo=10, hi=200))
            for name in models:
                row = {"model": name, "batch": batch, **_lat_stats(lat[name], batch)}
                row["n"] = len(lat[name])
                row.update(_split(before[name], _counters(metrics_url, name)))
                row["out_shape"] = output_shape(last[name])
                rows.append(row)
                rec.row(row)
                print(json.dumps(row), flush=True)
        except Exception as exc:  # noqa: BLE001
            rec.error(f"infer batch={batch}", exc)
    rows.sort(key=lambda r: (list(models).index(r["model"]), r["batch"]))
    return rows


SERVER_COLS = [
    "model", "batch", "p50_ms", "p99_ms", "throughput_per_s", "speedup", "compute_infer_ms",
    "speedup_compute", "server_other_ms", "n",
]  # fmt: skip


def _counters(url: str, model: str) -> dict[str, float | None]:
    """The model's Triton counters now; {} when the metrics port does not answer."""
    from runtime.compare.scrape import model_counters, scrape

    try:
        return model_counters(scrape(url, timeout_s=5), model)
    except Exception:  # noqa: BLE001 - the latency figures stand without it
        return {}


def _split(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, Any]:
    """Server-side ms per request over one window: engine time, and the rest of the server.

    Why: through gRPC the request and response bytes (8192 fp32 values per row each way) cost
    more than the GPU work, so the engine's share is reported beside the client's latency.
    """
    from runtime.compare.scrape import server_split

    split = server_split(before, after) if before and after else None
    if not split or not split.get("requests"):
        return {}
    infer, request = split.get("compute_infer_ms"), split.get("request_ms")
    return {
        "compute_infer_ms": infer,
        "server_request_ms": request,
        "server_other_ms": request - infer if request is not None and infer is not None else None,
    }


def part_server(
    out: Path,
    models_dir: Path,
    batches: Sequence[int],
    secs: float,
    start_timeout: float,
    load_timeout: float,
    engine: str = "torch_sparse",
    which: str = "mlp",
) -> None:
    kind = model_sets(batches)[which]
    batches = kind.batches
    part = "server" if which == "mlp" else f"server_{which}"
    rec = Recorder(out, part, {"engine": engine, "model_set": which})
    try:
        import tritonclient.grpc as grpcclient
    except Exception as exc:  # noqa: BLE001
        rec.set("skipped", f"tritonclient.grpc not importable: {exc!r}")
        print(f"SKIP (c): tritonclient.grpc not importable: {exc!r}")
        return
    path = make_models(models_dir) if which == "mlp" else make_encoder(models_dir)
    models = kind.models
    repo = Path(tempfile.mkdtemp(prefix="sr_repo_"))
    for name, sparsity in models.items():
        _link(path, repo / name / "1" / "model.onnx")
        cfg = CONFIG.format(name=name, sparsity=sparsity, max_batch=max(batches), engine=engine)
        (repo / name / "config.pbtxt").write_text(cfg)
    grpc_port, metrics_port = _free_port(), _free_port()
    log_path = out / f"{part}_process.log"  # NOTE: gpu_check.sh writes {part}.log itself
    cmd = [
        sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo),
        "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        "--host", "127.0.0.1", "--http-port", "-1",
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT)) if p)
    rec.set("command", " ".join(cmd))
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        if not _wait(client.is_server_live, start_timeout, proc):
            rec.set("skipped", f"server not live within {start_timeout}s (rc={proc.poll()})")
            print(f"SKIP (c): server not live within {start_timeout}s; see {log_path}")
            return
        ready = {name: _wait_model(client, name, load_timeout, proc) for name in models}
        rec.set("ready", ready)
        try:
            rec.set("repository_index", client.get_model_repository_index(as_json=True))
        except Exception as exc:  # noqa: BLE001
            rec.error("repository index", exc)
        live = []
        for name in models:
            if not ready[name]:
                rec.error(
                    name, RuntimeError(f"{name} not ready (load failed or > {load_timeout}s)")
                )
                continue
            live.append(name)
            try:
                cfg = client.get_model_config(name, as_json=True)
                params = cfg.get("config", {}).get("parameters", {})
                rec.set(
                    f"config_{name}",
                    {k: v.get("string_value") for k, v in params.items() if "sparse" in k},
                )
            except Exception as exc:  # noqa: BLE001
                rec.error(f"config {name}", exc)
        rec.set("client", CLIENT_NOTE)
        url = f"127.0.0.1:{grpc_port}"
        rows = _server_rounds(rec, url, metrics_url, live, batches, secs, kind)
        add_ratios(rows, "model", kind.baseline, SERVER_RATIOS)
        rec.set("rows", rows)
        try:
            import urllib.request

            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
                text = resp.read().decode()
            keep = [
                ln for ln in text.splitlines()
                if ln.startswith(("sparse_runtime_layer_kernel", "nv_gpu_memory", "nv_gpu_util"))
            ]  # fmt: skip
            rec.set("metrics_excerpt", keep[:200])
        except Exception as exc:  # noqa: BLE001
            rec.error("metrics", exc)
        print(table(rows, SERVER_COLS, f"(c) through the server ({which}, request bytes prebuilt)"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        shutil.rmtree(repo, ignore_errors=True)


# ----------------------------------------------------------------------------- summary


def part_summary(out: Path) -> None:
    """Print every table again from the JSON files, so one log tail holds all results."""

    def load(name: str) -> dict[str, Any]:
        path = out / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    gemm = load("gemm")
    print("## meta", json.dumps(gemm.get("meta") or load("engine").get("meta") or {}))
    print(table(gemm.get("rows", []), GEMM_COLS, "(a) fp16 GEMM, cuSPARSELt 2:4 vs cuBLAS"))
    for name in ("engine", "engine_fused"):
        engine = load(name)
        rows = engine.get("rows", [])
        if not rows:
            continue
        add_ratios(rows, "mode", "off", ENGINE_RATIOS)
        print(table(rows, ENGINE_COLS, f"(b) {name}, hidden-8192 MLP, fp16"))
        modes = [m for m in MODE_PARAMS if m != "off" and any(r["mode"] == m for r in rows)]
        for mode in modes:
            details = engine.get(f"details_{mode}", {})
            keys = ("kernel_table", "load_seconds", "cuda_graphs", "sparse_backend",
                    "cslt_bias_fused")  # fmt: skip
            print(f"{name} {mode}: " + json.dumps({k: details.get(k) for k in keys}))
            e2e = {k: v for k, v in details.items() if k.startswith("e2e_us")}
            if e2e:
                print(f"{name} {mode} end-to-end guard timings: {json.dumps(e2e)}")
        for mode in modes:
            mode_rows = [r for r in rows if r.get("mode") == mode]
            for key in ("speedup_device", "speedup_infer"):
                vals = [(r[key], r["batch"]) for r in mode_rows if r.get(key)]
                if vals:
                    worst, best = min(vals), max(vals)
                    print(
                        f"verdict {name} {mode} {key}: worst {worst[0]:.3f}x at batch "
                        f"{worst[1]}, best {best[0]:.3f}x at batch {best[1]}; "
                        f"never slower than dense beyond 3%: {worst[0] >= 0.97}; "
                        f">= 1.3x at the largest batch: {vals[-1][0] >= 1.3}"
                    )
    for row in load("profile").get("rows", []):
        top = "; ".join(f"{k['us_per_call']:.1f} {k['name'][:40]}" for k in row["kernels"][:6])
        print(f"profile {row['mode']} b={row['batch']}: {row['device_us_per_call']:.1f} us: {top}")
    for name, title in (("server", "hidden-8192 MLP"), ("server_encoder", "BERT-shaped encoder")):
        result = load(name)
        if result.get("skipped"):
            print(f"(c) {name}: SKIPPED: {result['skipped']}")
        rows = result.get("rows", [])
        base = next((r["model"] for r in rows if "dense" in str(r.get("model"))), None)
        if base:
            add_ratios(rows, "model", base, SERVER_RATIOS)
        print(table(result.get("rows", []), SERVER_COLS, f"(c) through the server, {title}"))
    for name in ("gemm", "engine", "engine_fused", "profile", "server", "server_encoder"):
        for err in load(name).get("errors", []):
            print(f"error [{name}] {err['where']}: {err['error'][:300]}")


# ----------------------------------------------------------------------------- main


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "part",
        choices=(
            "models",
            "gemm",
            "engine",
            "profile",
            "server",
            "server-encoder",
            "summary",
            "all",
        ),
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/sparse_runtime_models"))
    parser.add_argument("--reps", type=int, default=15, help="timed reps per GEMM (median)")
    parser.add_argument("--ms", type=_ints, default=MS)
    parser.add_argument("--batches", type=_ints, default=BATCHES)
    parser.add_argument("--modes", default="off,on,auto", help=f"of {','.join(MODE_PARAMS)}")
    parser.add_argument("--name", default="engine", help="engine part: result file name")
    parser.add_argument("--profile-batches", type=_ints, default=(256, 1024))
    parser.add_argument("--secs", type=float, default=0.4, help="timing budget per batch size")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--load-timeout", type=float, default=150.0)
    parser.add_argument("--engine", default="torch_sparse", help="server part: engine parameter")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODE_PARAMS))
    if unknown:
        parser.error(f"unknown --modes {unknown}; known: {list(MODE_PARAMS)}")
    # NOTE: `timeout` sends SIGTERM; exiting through SystemExit runs the `finally` blocks,
    # so the server subprocess of part (c) is stopped instead of orphaned on the GPU.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.part == "summary":
        part_summary(args.out)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 2
    every = ("models", "gemm", "engine", "server", "server-encoder")
    parts = every if args.part == "all" else (args.part,)
    status = 0
    for part in parts:
        t0 = time.perf_counter()
        try:
            if part == "models":
                make_models(args.models_dir)
                make_encoder(args.models_dir)
            elif part == "gemm":
                part_gemm(args.out, args.reps, args.ms, KNS)
            elif part == "profile":
                part_profile(args.out, args.models_dir, modes, args.profile_batches)
            elif part == "engine":
                part_engine(args.out, args.models_dir, modes, args.batches, args.secs, args.name)
            else:
                part_server(
                    args.out, args.models_dir, args.batches, args.secs,
                    args.start_timeout, args.load_timeout, args.engine,
                    "encoder" if part == "server-encoder" else "mlp",
                )  # fmt: skip
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            status = 1
        print(f"[{part}] done in {time.perf_counter() - t0:.1f}s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
