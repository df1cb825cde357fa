"""GPU checks for the torch_sparse engine (run by benchmarks/gpu_check.sh; skipped without CUDA).

Tolerances, and why:
- sparse vs dense twin (same fp16 weights, same graph): both kernels multiply the same non-zero
  products and accumulate in fp32; they differ in summation order and in where each layer's
  output is rounded to fp16 (2^-11 relative). Over a few layers that stays well under 1% of
  the output's scale, while a wrong metadata layout, transposition or bias gives O(100%)
  errors. Bound: max|sparse - dense| <= 1e-2 * max|dense|.
- either vs onnxruntime fp32: adds the fp16 rounding of weights and activations
  (2^-11 relative per value, random-walking through K-long sums): bound 3e-2 * max|ref| for
  fp16, 6e-2 for bf16 (2^-8 relative).
Measured errors are written to $GPU_CHECK_OUT/gpu_tests.jsonl so the run shows the margin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from runtime.engines.base import EngineOptions
from runtime.samples import mlp_pair

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from runtime.engines.sparse_linear import CsltLinear, cusparselt_available  # noqa: E402
from runtime.engines.torch_sparse import TorchSparseEngine  # noqa: E402

SAME_WEIGHTS_TOL = 1e-2
VS_FP32_TOL = {"fp16": 3e-2, "bf16": 6e-2}


def record(name: str, **values: Any) -> None:
    """Append measured numbers to $GPU_CHECK_OUT/gpu_tests.jsonl (when set) and print them."""
    line = json.dumps({"test": name, **values}, default=str)
    print(line)
    out = os.environ.get("GPU_CHECK_OUT")
    if out:
        with (Path(out) / "gpu_tests.jsonl").open("a") as fh:
            fh.write(line + "\n")


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def ort_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def load(model_bytes: bytes, buckets: tuple[int, ...], **params: str) -> TorchSparseEngine:
    params.setdefault("precision", "fp16")
    engine = TorchSparseEngine(
        model_bytes, EngineOptions(device="cuda", batch_buckets=buckets, parameters=params)
    )
    engine.load()
    return engine


@pytest.fixture(scope="module")
def mlp1024() -> bytes:
    return mlp_pair()[1].SerializeToString()


@pytest.fixture(scope="module")
def mlp8192() -> bytes:
    """The benchmark's 2:4 hidden-8192 MLP when gpu_check.sh built it, else a 2-layer one."""
    built = Path(os.environ.get("SPARSE_RUNTIME_MODELS", "/tmp/sparse_runtime_models"))
    path = built / "mlp8192_sparse24.onnx"
    if path.exists():
        return path.read_bytes()
    return mlp_pair((8192, 8192, 8192))[1].SerializeToString()


def test_cusparselt_is_available() -> None:
    version = (
        torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    )
    record(
        "cusparselt",
        version=version,
        device=torch.cuda.get_device_name(0),
        cc=torch.cuda.get_device_capability(0),
        torch=torch.__version__,
    )
    assert cusparselt_available(torch)


def _problem(n: int, k: int, m: int) -> tuple[Any, Any, Any]:
    """A 2:4 weight [n, k] (scaled so outputs stay O(1)), a bias and an input [m, k], fp16."""
    gen = torch.Generator(device="cuda").manual_seed(n + k + m)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16, generator=gen)
    keep = w.reshape(n, k // 4, 4).abs().topk(2, dim=-1).indices
    mask = torch.zeros(n, k // 4, 4, device="cuda", dtype=torch.bool).scatter_(-1, keep, True)
    w = (w.reshape(n, k // 4, 4) * mask).reshape(n, k) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=torch.float16, generator=gen)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
    return w, bias, x


@pytest.mark.parametrize("nk", [(1024, 1024), (8192, 8192), (10240, 3072)])
@pytest.mark.parametrize("m", [1, 64, 256])
def test_cslt_linear_matches_dense(nk: tuple[int, int], m: int) -> None:
    n, k = nk
    w, bias, x = _problem(n, k, m)
    kernel = CsltLinear(torch, w, bias)
    alg = kernel.search(m)
    ref = torch.nn.functional.linear(x, w, bias).float()
    got = kernel(x).float()
    err = float((got - ref).abs().max() / ref.abs().max())
    # what a layer after a sparse layer gets: x as a transposed view (row-major x^T)
    got_chained = kernel(x.t().contiguous().t()).float()
    err_chained = float((got_chained - ref).abs().max() / ref.abs().max())
    record("cslt_vs_cublas", n=n, k=k, m=m, alg=alg, rel_err=err, rel_err_chained=err_chained)
    assert got.shape == got_chained.shape == ref.shape
    assert err <= SAME_WEIGHTS_TOL
    assert err_chained <= SAME_WEIGHTS_TOL


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_engine_1024_sparse_matches_dense_and_onnxruntime(mlp1024: bytes, precision: str) -> None:
    on = load(mlp1024, (1, 8, 64), sparsity="on", precision=precision)
    off = load(mlp1024, (1, 8, 64), sparsity="off", precision=precision)
    try:
        assert on.describe().details["layers_sparse"] == "4"
        assert off.describe().details["layers_sparse"] == "0"
        for batch in (1, 7, 64, 100):  # 100 > largest bucket: chunked 64 + 36
            x = np.random.default_rng(batch).standard_normal((batch, 256)).astype(np.float32)
            ref = ort_run(mlp1024, x)
            y_on, y_off = on.infer({"x": x})["y"], off.infer({"x": x})["y"]
            assert y_on.dtype == np.float32 and y_on.shape == (batch, 256)
            e_twin, e_ref = rel_err(y_on, y_off), rel_err(y_on, ref)
            record("engine1024", precision=precision, batch=batch, vs_dense=e_twin, vs_ort=e_ref)
            assert e_twin <= SAME_WEIGHTS_TOL * (1 if precision == "fp16" else 4)
            assert e_ref <= VS_FP32_TOL[precision]
    finally:
        on.unload()
        off.unload()


def test_engine_8192_sparse_matches_dense(mlp8192: bytes) -> None:
    buckets = (16, 256)
    on = load(mlp8192, buckets, sparsity="on")
    try:
        details = on.describe().details
        record("engine8192_on_details", **details)
        assert details["layers_sparse"] == details["layers_total"]
        assert details["cuda_graphs"] == str(len(buckets))
        assert int(details["weight_bytes_dense_resident"]) == 0
        xs = {
            b: np.random.default_rng(b).standard_normal((b, 8192)).astype(np.float32)
            for b in (3, 256)
        }
        y_on = {b: on.infer({"x": x})["y"] for b, x in xs.items()}
    finally:
        on.unload()
    off = load(mlp8192, buckets, sparsity="off")
    try:
        for b, x in xs.items():
            e = rel_err(y_on[b], off.infer({"x": x})["y"])
            record("engine8192", batch=b, vs_dense=e)
            assert e <= SAME_WEIGHTS_TOL
    finally:
        off.unload()


def test_auto_policy_follows_its_measurements(mlp8192: bytes) -> None:
    engine = load(mlp8192, (1, 256), sparsity="auto")
    try:
        rows = engine.layer_decisions()
        details = engine.describe().details
        record("auto_policy", table=details["kernel_table"], rows=rows, e2e={
            k: v for k, v in details.items() if k.startswith("e2e_us")
        })  # fmt: skip
        assert len(rows) == 2 * int(details["layers_total"])
        for r in rows:
            if r["kernel"] == "sparse":
                assert r["sparse_us"] < r["dense_us"] * 0.97, r
            else:
                reason = str(r["reason"])
                slower = r["sparse_us"] is None or r["sparse_us"] >= r["dense_us"] * 0.97
                assert slower or reason.startswith("end-to-end guard"), r
        x = np.random.default_rng(0).standard_normal((5, 8192)).astype(np.float32)
        assert np.isfinite(engine.infer({"x": x})["y"]).all()
    finally:
        engine.unload()


def test_dense_model_stays_dense_under_auto() -> None:
    dense = mlp_pair()[0].SerializeToString()
    engine = load(dense, (1, 8), sparsity="auto")
    try:
        details = engine.describe().details
        assert details["layers_eligible"] == "0" and details["layers_sparse"] == "0"
        assert details["weight_bytes_compressed_resident"] == "0"
        x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
        assert rel_err(engine.infer({"x": x})["y"], ort_run(dense, x)) <= VS_FP32_TOL["fp16"]
    finally:
        engine.unload()


def test_bert_like_graph_on_gpu() -> None:
    """Dynamic seq dims: CUDA graphs are captured lazily per (bucket, seq) with CPU shape math."""
    from test_torch_convert import _bert_feeds, bert_like

    model = bert_like().SerializeToString()
    engine = TorchSparseEngine(
        model, EngineOptions(batch_buckets=(1, 4), parameters={"profile_seq_len": "16"})
    )
    engine.load()
    try:
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        for batch, seq in ((3, 7), (1, 16), (3, 7)):
            feeds = _bert_feeds(batch, seq)
            want = sess.run(None, feeds)
            got = engine.infer(feeds)
            errs = [
                rel_err(got[n], w)
                for n, w in zip(["last_hidden_state", "pooled"], want, strict=True)
            ]
            record("bert_like", batch=batch, seq=seq, rel_errs=errs,
                   graphs=engine.describe().details["cuda_graphs"])  # fmt: skip
            assert max(errs) <= 5e-2
    finally:
        engine.unload()


def test_int8_qdq_sample_runs_sparse_in_fp16() -> None:
    """The 2:4 int8 (QDQ) sample: folded weights keep 2:4, so its linears run sparse in fp16;
    activations are fake-quantized. Loose bound (10% of the output scale): a value that lands
    near a rounding tie can move one quantization step per layer in fp16."""
    from runtime.samples import quantize_sample

    model = quantize_sample(mlp_pair()[1]).SerializeToString()
    engine = load(model, (1, 8), sparsity="on")
    try:
        assert engine.describe().details["layers_sparse"] == "4"
        x = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        err = rel_err(engine.infer({"x": x})["y"], sess.run(None, {"x": x})[0])
        record("int8_qdq_sparse", rel_err=err)
        assert err <= 0.1
    finally:
        engine.unload()


@pytest.mark.parametrize(("n", "k", "m"), [(1024, 1024, 64), (8192, 8192, 256), (8192, 8192, 1024)])
def test_cslt_bias_epilogue_matches_dense(n: int, k: int, m: int) -> None:
    """The opt-in bias epilogue (searched without bias, run with it): wherever the engine's
    check lets it be used, it matches cuBLAS like the separate add does. Last in this file:
    should the epilogue break the CUDA context, the other tests have run already."""
    w, bias, x = _problem(n, k, m)
    kernel = CsltLinear(torch, w, bias, bias_epilogue="auto")
    kernel.search(m)
    ref = torch.nn.functional.linear(x, w, bias).float()
    errs = {}
    for name, xin in (("column_major", x), ("row_major", x.t().contiguous().t())):
        got = kernel(xin).float()
        errs[name] = float((got - ref).abs().max() / ref.abs().max())

    def named(table: dict[tuple[int, bool], Any]) -> dict[str, Any]:
        return {f"M={rows},{'row' if row_major else 'col'}": v
                for (rows, row_major), v in table.items()}  # fmt: skip

    record("cslt_bias_epilogue", n=n, k=k, m=m, fused=named(kernel.fused),
           alg=named(kernel.alg_ids), rel_err=errs)  # fmt: skip
    assert max(errs.values()) <= SAME_WEIGHTS_TOL
