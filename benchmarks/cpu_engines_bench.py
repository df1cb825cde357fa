"""CPU engines benchmark: the four variants (dense, 2:4, int8, 2:4 int8) on each CPU engine.

Models: the 4096-hidden MLP (`runtime.samples.mlp_pair((1024, 4096, 4096, 4096, 1024))`) and,
when an ONNX export exists (benchmarks/minilm_export.py), all-MiniLM-L6-v2. int8 is built
with `runtime.quantize` in both forms: static QDQ (what OpenVINO runs as int8; onnxruntime
too) and dynamic (onnxruntime's MatMulInteger). For MiniLM the FFN output projections stay
fp32 in static mode (their GELU inputs have outliers; cosine 0.94 -> 0.99 measured).

In-process: each engine/precision at batch 1 and 64, 1 thread: ms/call, rows/s, RSS growth
on load, accuracy vs the fp32 dense model on onnxruntime (relative L2, min cosine).
Through the server: one server per configuration (forced onnxruntime, forced openvino,
and `engine: auto`, whose choice and reason are recorded), closed-loop tritonclient
load for a short fixed time: one row per request at concurrency 1 and 8 (infer/s, p50),
and one 64-row request at a time (p50 ms: the issue's batch-64 column, through the
server), server RSS. Then, side by side in one server, each int8 variant (auto) and the
fp32 dense model (onnxruntime) take turns under the same c=8 load for a few rounds, and
the ratio of medians is the int8 speed-up (sequential runs minutes apart swing +-40% on a
shared 2-core host; alternating rounds cancel most of that). Prints tables; writes JSON
to benchmarks/results/.

    python benchmarks/cpu_engines_bench.py [--duration 4] [--threads 1] [--no-server]
        [--no-minilm] [--rounds 3] [--out benchmarks/results/cpu_engines.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_bench import server_rss, start_server  # noqa: E402
from runtime.cpufeatures import detect  # noqa: E402
from runtime.engines.base import EngineOptions, create_engine  # noqa: E402
from runtime.planning import ENGINE_PARAM  # noqa: E402
from runtime.quantize import QuantizeConfig, quantize_model  # noqa: E402
from runtime.samples import mlp_pair  # noqa: E402
from runtime.sparsity.inputs import Feeds, take, tokenize_text  # noqa: E402
from runtime.sparsity.prune import PruneConfig, deviation, float_outputs, prune_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MLP_LAYERS = (1024, 4096, 4096, 4096, 1024)
MINILM = RESULTS / "minilm" / "model.onnx"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server answers inference requests over gRPC.",
    "Sparse tensor cores can skip half of the multiplications.",
    "Edge nodes usually run on CPUs without accelerators.",
    "Quantization maps floating point weights to eight-bit integers.",
    "The weather in Lisbon is mild in the winter.",
    "She bought fresh bread and cheese at the market.",
    "Kubernetes restarts a pod when its liveness probe fails.",
    "Our train was delayed by forty minutes this morning.",
    "He plays the cello in a small orchestra on weekends.",
    "Prices of solar panels fell sharply over the last decade.",
    "The recipe needs two eggs, flour, sugar and a pinch of salt.",
    "Please restart the database before the maintenance window ends.",
    "A heavy storm knocked out power across the valley.",
    "The children built a sandcastle near the water.",
    "Latency matters more than throughput for interactive search.",
]
# variant -> (engine, precision) pairs measured in-process
FP32_RUNS = (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))
QDQ_RUNS = (("onnxruntime", "int8"), ("openvino", "int8"))
DYN_RUNS = (("onnxruntime", "int8"),)


@dataclass(frozen=True)
class Variant:
    """One model file of a family, the runs to measure on it, and how it was made."""

    family: str
    name: str
    path: Path
    runs: tuple[tuple[str, str], ...]
    form: str


# ---- building the variants -----------------------------------------------------------


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)


def _quantized(src: onnx.ModelProto, path: Path, mode: str, calibration: Feeds,
               exclude: tuple[str, ...] = ()) -> None:
    if path.exists():
        return
    print(f"  quantizing {path.name} ({mode}) ...", flush=True)
    config = QuantizeConfig(mode=mode, exclude=exclude, progress=False)
    q, report = quantize_model(src, config, calibration if mode == "static" else None,
                               take(calibration, slice(0, 16)))
    print(f"    cosine vs its fp32 model {report.deviation.cosine:.5f}, "
          f"{report.sparse24_after} int8 2:4 layers", flush=True)
    _save(q, path)


def build_variants(work: Path, minilm: bool, layers: tuple[int, ...] = MLP_LAYERS
                   ) -> tuple[list[Variant], dict[str, Feeds]]:
    """Write (or reuse) every variant; returns them and the evaluation feeds per family."""
    variants: list[Variant] = []
    feeds: dict[str, Feeds] = {}
    family = "mlp4096" if layers == MLP_LAYERS else "mlp" + "x".join(map(str, layers))
    mlp_dir = work / family
    dense_p, sparse_p = mlp_dir / "dense.onnx", mlp_dir / "sparse24.onnx"
    rng = np.random.default_rng(123)
    calib = {"x": rng.standard_normal((64, layers[0])).astype(np.float32)}
    if not (dense_p.exists() and sparse_p.exists()):
        print("  building the 4096-hidden MLP pair ...", flush=True)
        dense, sparse = mlp_pair(layers)
        _save(dense, dense_p)
        _save(sparse, sparse_p)
    for base in ("dense", "sparse24"):
        src = onnx.load(str(mlp_dir / f"{base}.onnx"))
        _quantized(src, mlp_dir / f"{base}_int8.onnx", "static", calib)
        _quantized(src, mlp_dir / f"{base}_int8dyn.onnx", "dynamic", calib)
        del src
    feeds[family] = {"x": np.random.default_rng(7).standard_normal(
        (64, layers[0])).astype(np.float32)}
    if minilm and MINILM.exists():
        mdir = work / "minilm"
        model = onnx.load(str(MINILM))
        text = Path(tempfile.mkdtemp()) / "sentences.txt"
        text.write_text("\n".join(SENTENCES))
        tok = tokenize_text(text, MINILM.parent, model, max_length=128)
        if not (mdir / "sparse24.onnx").exists():
            print("  pruning MiniLM to 2:4 (magnitude) ...", flush=True)
            pruned, _ = prune_model(model, PruneConfig(progress=False), None, tok, None)
            _save(pruned, mdir / "sparse24.onnx")
        if not (mdir / "dense.onnx").exists():
            _save(model, mdir / "dense.onnx")
        ffn_out = ("*layer.*/output/dense/*",)
        for base in ("dense", "sparse24"):
            src = onnx.load(str(mdir / f"{base}.onnx"))
            _quantized(src, mdir / f"{base}_int8.onnx", "static", tok, ffn_out)
            _quantized(src, mdir / f"{base}_int8dyn.onnx", "dynamic", tok)
        # batch 64: the sentences repeated
        reps = -(-64 // len(SENTENCES))
        feeds["minilm"] = {k: np.concatenate([v] * reps)[:64] for k, v in tok.items()}
    for family in feeds:
        d = work / family
        for base in ("dense", "sparse24"):
            variants.append(Variant(family, base, d / f"{base}.onnx", FP32_RUNS, "fp32"))
            variants.append(Variant(family, f"{base}_int8", d / f"{base}_int8.onnx", QDQ_RUNS,
                                    "int8 static QDQ"))
            variants.append(Variant(family, f"{base}_int8dyn", d / f"{base}_int8dyn.onnx",
                                    DYN_RUNS, "int8 dynamic"))
    return variants, feeds


# ---- in-process ------------------------------------------------------------------------


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def time_calls(fn, feeds: Feeds, seconds: float = 1.5, max_calls: int = 60) -> float:  # noqa: ANN001
    """Median ms per call after two warm-up calls; at least 3 calls."""
    fn(feeds)
    fn(feeds)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - start < seconds and len(samples) < max_calls):
        t0 = time.perf_counter()
        fn(feeds)
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(samples))


def in_process(variants: list[Variant], feeds: Mapping[str, Feeds], threads: int) -> list[dict]:
    """Every variant x (engine, precision): ms/call at batch 1 and 64, RSS, accuracy."""
    rows: list[dict] = []
    refs: dict[str, np.ndarray] = {}
    have_ov = importlib.util.find_spec("openvino") is not None
    for v in variants:
        for engine_name, precision in v.runs:
            if engine_name == "openvino" and not have_ov:
                continue
            gc.collect()
            rss0 = _rss()
            params = {"precision": precision}
            engine = create_engine(engine_name, v.path, EngineOptions(
                intra_op_threads=threads, precision=precision, parameters=params))
            engine.load()
            names = [o.name for o in engine.describe().outputs]
            f64 = feeds[v.family]
            out = engine.infer(f64)
            rss = _rss() - rss0
            flat = float_outputs(out, names)
            if v.name == "dense" and engine_name == "onnxruntime":
                refs[v.family] = flat
            dev = deviation(refs[v.family], flat)
            details = engine.describe().details
            row = {
                "family": v.family, "variant": v.name, "form": v.form, "engine": engine_name,
                "precision": precision,
                "effective": details.get("inference_precision", precision),
                "b1_ms": time_calls(engine.infer, take(f64, slice(0, 1))),
                "b64_ms": time_calls(engine.infer, f64),
                "rss_mib": rss / 2**20,
                "rel_l2": dev.rel_l2, "cos_min": dev.min_cosine, "cos_mean": dev.cosine,
            }
            row["b64_rows_s"] = 64e3 / row["b64_ms"]
            rows.append(row)
            print(f"  {v.family:8} {v.name:17} {engine_name:11} {precision:5} "
                  f"b1 {row['b1_ms']:8.2f} ms  b64 {row['b64_ms']:8.2f} ms  "
                  f"cos {dev.min_cosine:.4f}", flush=True)
            engine.unload()
            del engine
    return rows


# ---- through the server ---------------------------------------------------------------

TRITON_DTYPES = {np.dtype(np.float32): ("TYPE_FP32", "FP32"),
                 np.dtype(np.int64): ("TYPE_INT64", "INT64")}


def write_config(model_dir: Path, name: str, feeds: Feeds, out_name: str, out_dim: int,
                 params: Mapping[str, str]) -> None:
    """config.pbtxt for a batched model taking `feeds` (first axis = batch)."""
    inputs = ",\n".join(
        f'  {{ name: "{k}" data_type: {TRITON_DTYPES[v.dtype][0]} '
        f'dims: [ {", ".join(str(d) for d in v.shape[1:])} ] }}'
        for k, v in feeds.items()
    )
    lines = [
        f'name: "{name}"', "max_batch_size: 64", f"input [\n{inputs}\n]",
        f'output [ {{ name: "{out_name}" data_type: TYPE_FP32 dims: [ {out_dim} ] }} ]',
        "dynamic_batching { max_queue_delay_microseconds: 500 }",
        "instance_group [ { count: 1, kind: KIND_CPU } ]",
    ]
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
              for k, v in params.items()]
    (model_dir / "config.pbtxt").write_text("\n".join(lines) + "\n")


async def _load(url: str, model: str, feeds_npz: str, concurrency: int,
                duration: float) -> dict:
    import tritonclient.grpc.aio as aioclient

    with np.load(feeds_npz) as data:
        arrays = {k: data[k] for k in data.files}
    latencies: list[float] = []
    async with aioclient.InferenceServerClient(url) as client:
        inputs = []
        for k, a in arrays.items():
            inp = aioclient.InferInput(k, list(a.shape), TRITON_DTYPES[a.dtype][1])
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        for _ in range(5):
            await client.infer(model, inputs)
        stop = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await client.infer(model, inputs)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"infer_s": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50))}


def run_load(url: str, model: str, request: Feeds, concurrency: int, duration: float) -> dict:
    """Closed-loop tritonclient load in its own process (never shares the server's cores'
    GIL with this script); every request carries `request` (its rows = its batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        payload = str(Path(tmp) / "request.npz")
        np.savez(payload, **request)
        code = (
            f"import json,sys,asyncio; sys.path.insert(0, {str(ROOT)!r}); "
            "import benchmarks.cpu_engines_bench as b; "
            f"print(json.dumps(asyncio.run(b._load({url!r}, {model!r}, sys.argv[1], "
            f"{concurrency}, {duration}))))"
        )
        out = subprocess.run([sys.executable, "-c", code, payload], check=True,
                             capture_output=True, text=True, timeout=duration * 6 + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def through_server(variants: list[Variant], feeds: Mapping[str, Feeds], threads: int,
                   duration: float, work: Path) -> list[dict]:
    """One server per (variant, engine setting); c=1 and c=8; auto's choice recorded."""
    import tritonclient.grpc as grpcclient

    have_ov = importlib.util.find_spec("openvino") is not None
    rows: list[dict] = []
    for v in variants:
        settings: list[tuple[str, dict[str, str]]] = [("onnxruntime", {"engine": "onnxruntime"})]
        if v.form != "int8 dynamic":
            precision = "int8" if v.form.startswith("int8") else "fp32"
            if have_ov:
                settings.append(("openvino", {"engine": "openvino", "precision": precision}))
            settings.append(("auto", {"precision": precision}))
        f = feeds[v.family]
        one = take(f, slice(0, 1))
        out_name, out_dim = output_spec(v.path, f)
        for label, params in settings:
            tmp = Path(tempfile.mkdtemp(prefix="cpu-bench-", dir=work))
            model_dir = tmp / "repo" / "m"
            (model_dir / "1").mkdir(parents=True)
            (model_dir / "1" / "model.onnx").symlink_to(v.path)
            write_config(model_dir, "m", f, out_name, out_dim, params)
            t0 = time.perf_counter()
            proc, grpc_port, metrics_port = start_server(tmp / "repo", tmp, threads)
            url = f"127.0.0.1:{grpc_port}"
            try:
                client = grpcclient.InferenceServerClient(url)
                deadline = time.monotonic() + 300
                while not client.is_model_ready("m"):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"model did not load; see {tmp / 'server.log'}")
                    time.sleep(0.2)
                load_s = time.perf_counter() - t0
                cfg = client.get_model_config("m").config.parameters
                row = {
                    "family": v.family, "variant": v.name, "setting": label,
                    "engine": cfg["sparse_runtime.engine"].string_value,
                    "reason": cfg["sparse_runtime.dispatch_reason"].string_value,
                    "timings": (cfg["sparse_runtime.cpu_engine_timings"].string_value
                                if "sparse_runtime.cpu_engine_timings" in cfg else ""),
                    "cpu_features": cfg["sparse_runtime.cpu_features"].string_value,
                    "load_s": load_s,
                }
                for c in (1, 8):
                    r = run_load(url, "m", one, c, duration)
                    row[f"c{c}_infer_s"], row[f"c{c}_p50_ms"] = r["infer_s"], r["p50_ms"]
                row["b64_ms"] = run_load(url, "m", take(f, slice(0, 64)), 1, duration)["p50_ms"]
                row["rss_mib"] = server_rss(metrics_port) / 2**20
            finally:
                proc.terminate()
                proc.wait(30)
            rows.append(row)
            print(f"  {v.family:8} {v.name:17} {label:11} -> {row['engine']:11} "
                  f"c1 {row['c1_infer_s']:7.1f}/s  c8 {row['c8_infer_s']:7.1f}/s  "
                  f"b64 {row['b64_ms']:7.1f} ms  "
                  f"rss {row['rss_mib']:6.0f} MiB", flush=True)
    return rows


def side_by_side(variants: list[Variant], feeds: Mapping[str, Feeds], threads: int,
                 duration: float, work: Path, rounds: int) -> list[dict]:
    """Per family: fp32 dense (onnxruntime) and every int8 variant (QDQ: auto) in one server,
    c=8 load taking turns for `rounds` rounds; ratio of medians vs the fp32 dense."""
    import tritonclient.grpc as grpcclient

    rows: list[dict] = []
    for family in sorted({v.family for v in variants}):
        members = [v for v in variants if v.family == family
                   and (v.name == "dense" or v.form.startswith("int8"))]
        if not any(v.name == "dense" for v in members) or len(members) < 2:
            continue
        f = feeds[family]
        one = take(f, slice(0, 1))
        tmp = Path(tempfile.mkdtemp(prefix="cpu-side-", dir=work))
        for v in members:
            model_dir = tmp / "repo" / v.name
            (model_dir / "1").mkdir(parents=True)
            (model_dir / "1" / "model.onnx").symlink_to(v.path)
            out_name, out_dim = output_spec(v.path, f)
            # NOTE: dynamic int8 (MatMulInteger) is an onnxruntime-only form
            params = ({"precision": "int8"} if v.form == "int8 static QDQ"
                      else {ENGINE_PARAM: "onnxruntime"})
            write_config(model_dir, v.name, f, out_name, out_dim, params)
        proc, grpc_port, _ = start_server(tmp / "repo", tmp, threads)
        url = f"127.0.0.1:{grpc_port}"
        try:
            client = grpcclient.InferenceServerClient(url)
            deadline = time.monotonic() + 600
            while not all(client.is_model_ready(v.name) for v in members):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"models did not load; see {tmp / 'server.log'}")
                time.sleep(0.5)
            engines = {v.name: client.get_model_config(v.name).config
                       .parameters["sparse_runtime.engine"].string_value for v in members}
            runs: dict[str, list[float]] = {v.name: [] for v in members}
            for _ in range(rounds):
                for v in members:
                    runs[v.name].append(run_load(url, v.name, one, 8, duration)["infer_s"])
        finally:
            proc.terminate()
            proc.wait(30)
        base = float(np.median(runs["dense"]))
        for v in members:
            med = float(np.median(runs[v.name]))
            rows.append({"family": family, "variant": v.name, "form": v.form,
                         "engine": engines[v.name], "c8_infer_s_runs": runs[v.name],
                         "c8_infer_s_median": med, "ratio_vs_fp32_dense": med / base})
            print(f"  {family:8} {v.name:17} {engines[v.name]:11} c8 median {med:7.1f}/s "
                  f"(runs {', '.join(f'{x:.0f}' for x in runs[v.name])})  "
                  f"x{med / base:5.2f} vs fp32 dense", flush=True)
    return rows


def output_spec(path: Path, feeds: Feeds) -> tuple[str, int]:
    """(name, feature dim) of the model's first output, from one onnxruntime call."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[0].name
    return name, int(sess.run([name], take(feeds, slice(0, 1)))[0].shape[-1])


# ---- report -----------------------------------------------------------------------------


def print_tables(inproc: list[dict], server: list[dict], side: list[dict]) -> None:
    print("\nin-process (batch 1 / 64, ms per call; rows/s at 64; accuracy vs fp32 dense)")
    print(f"{'family':8} {'variant':17} {'engine':11} {'prec':5} {'as':5} {'b1 ms':>8} "
          f"{'b64 ms':>8} {'rows/s':>8} {'RSS MiB':>8} {'relL2':>7} {'cos min':>8}")
    for r in inproc:
        print(f"{r['family']:8} {r['variant']:17} {r['engine']:11} {r['precision']:5} "
              f"{r['effective']:5} {r['b1_ms']:8.2f} {r['b64_ms']:8.2f} {r['b64_rows_s']:8.0f} "
              f"{r['rss_mib']:8.0f} {r['rel_l2']:7.4f} {r['cos_min']:8.5f}")
    if not server:
        return
    print("\nthrough the server (1 row per request: infer/s and p50 ms at c=1 and c=8; "
          "b64: p50 ms of one 64-row request at a time)")
    print(f"{'family':8} {'variant':17} {'setting':11} {'engine':11} {'c1/s':>7} {'p50':>6} "
          f"{'c8/s':>7} {'p50':>6} {'b64 ms':>7} {'RSS MiB':>8} {'load s':>6}")
    for r in server:
        print(f"{r['family']:8} {r['variant']:17} {r['setting']:11} {r['engine']:11} "
              f"{r['c1_infer_s']:7.1f} {r['c1_p50_ms']:6.2f} {r['c8_infer_s']:7.1f} "
              f"{r['c8_p50_ms']:6.2f} {r['b64_ms']:7.1f} {r['rss_mib']:8.0f} {r['load_s']:6.1f}")
    if side:
        print("\nside by side in one server, c=8, alternating rounds (median infer/s, ratio "
              "vs fp32 dense onnxruntime)")
        for r in side:
            print(f"  {r['family']:8} {r['variant']:17} {r['engine']:11} "
                  f"{r['c8_infer_s_median']:7.1f}/s  x{r['ratio_vs_fp32_dense']:.2f}")
    print("\nauto choice per variant (vs the in-process timings of this run: chosen engine's "
          "ms / best engine's ms at batch 1 and 64; the target is <= 1.05)")
    for r in server:
        if r["setting"] == "auto":
            check = auto_check(r, inproc)
            print(f"  {r['family']} {r['variant']}: {r['engine']} {check} -- {r['reason']}\n"
                  f"    timings: {r['timings']}")


def auto_check(auto_row: dict, inproc: list[dict]) -> str:
    """How far auto's engine is from the fastest engine in-process for the same variant."""
    same = [r for r in inproc
            if r["family"] == auto_row["family"] and r["variant"] == auto_row["variant"]]
    chosen = [r for r in same if r["engine"] == auto_row["engine"]]
    if not same or not chosen:
        return "(no in-process timing)"
    parts = []
    for key in ("b1_ms", "b64_ms"):
        best = min(r[key] for r in same)
        mine = min(r[key] for r in chosen)
        parts.append(f"{key[:-3]} x{mine / best:.2f}")
    return "(" + ", ".join(parts) + ")"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side c=8 rounds (0: skip)")
    parser.add_argument("--families", default="", help="only these families (comma list)")
    parser.add_argument("--mlp-layers", default=",".join(map(str, MLP_LAYERS)),
                        help="MLP widths (a smaller MLP makes a quick smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpu_engines.json")
    parser.add_argument("--work", type=Path, default=RESULTS / "cpu_engines")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.no_minilm and not MINILM.exists():
        print(f"MiniLM skipped: no ONNX export at {MINILM} (benchmarks/minilm_export.py)")
    print("building variants", flush=True)
    layers = tuple(int(w) for w in args.mlp_layers.split(","))
    variants, feeds = build_variants(args.work, not args.no_minilm, layers)
    if args.families:
        keep = set(args.families.split(","))
        variants = [v for v in variants if v.family in keep]
    print("in-process", flush=True)
    inproc = in_process(variants, feeds, args.threads)
    server = [] if args.no_server else (
        print("through the server", flush=True)
        or through_server(variants, feeds, args.threads, args.duration, args.work)
    )
    side = [] if args.no_server or args.rounds <= 0 else (
        print("side by side", flush=True)
        or side_by_side(variants, feeds, args.threads, args.duration, args.work, args.rounds)
    )
    print_tables(inproc, server, side)
    cpu = detect()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "host": {"cpu": cpu.model, "features": cpu.summary(), "python": platform.python_version(),
                 "cores": __import__("os").cpu_count()},
        "threads": args.threads, "duration_s": args.duration,
        "in_process": inproc, "server": server, "side_by_side": side,
    }, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
