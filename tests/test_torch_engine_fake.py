"""The engine's load/plan/infer logic on the CPU, with fake timings and a fake sparse kernel.

What is real here: ONNX conversion, per-layer eligibility, the per-bucket plan, the end-to-end
guard, weight release, batch padding to buckets and chunking past the largest bucket, output
dtypes and describe(). What is fake: the device (CPU instead of CUDA, no CUDA graphs), the
timings, and the sparse kernel (a dense matmul on the already 2:4 weight that counts calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from runtime.engines.base import EngineOptions
from runtime.samples import mlp_pair

torch = pytest.importorskip("torch")

from runtime.engines import cuda_graphs, sparse_linear, torch_sparse  # noqa: E402
from runtime.engines.torch_sparse import TorchSparseEngine  # noqa: E402

BUCKETS = (1, 8, 64, 256)
CALLS: list[int] = []


class FakeSparse:
    backend = "fake"

    def __init__(self, torch_mod: Any, weight: Any, bias: Any) -> None:
        self.weight, self.bias = weight.clone(), bias
        self.nbytes = int(weight.numel() * weight.element_size() * 9 // 16)

    def __call__(self, x2: Any) -> Any:
        CALLS.append(int(x2.shape[0]))
        return torch.nn.functional.linear(x2, self.weight, self.bias)

    def search(self, rows: int) -> int:
        return 0


class CpuEngine(TorchSparseEngine):
    def _platform(self, torch_mod: Any) -> tuple[Any, int, int]:
        return torch_mod.device("cpu"), 9, 0

    def _sparse_factory(self, major: int) -> Any:
        return FakeSparse


def fake_time_pair(plan_slower_at: int | None = None):
    """Sparse wins at >= 64 rows, loses below; the whole forward follows `plan_slower_at`."""

    def time_pair(torch_mod: Any, fns: Mapping[str, Any], x: Any, **kw: Any) -> dict:
        for fn in fns.values():
            fn(x)  # run the real code path once
        if "plan" in fns:
            rows = next(iter(x.values())).shape[0]
            slower = plan_slower_at is not None and rows == plan_slower_at
            return {"plan": 12.0 if slower else 8.0, "dense": 10.0}
        rows = x.shape[0]
        return {"dense": float(rows), "sparse": rows * 0.5 if rows >= 64 else rows * 2.0 + 10}

    return time_pair


def _engine(monkeypatch: pytest.MonkeyPatch, which: int = 1, **params: Any) -> CpuEngine:
    monkeypatch.setattr(torch_sparse, "time_pair", fake_time_pair(params.pop("_slower", None)))
    CALLS.clear()
    params.setdefault("precision", "bf16")
    model = mlp_pair()[which].SerializeToString()
    engine = CpuEngine(
        model, EngineOptions(device="cuda", batch_buckets=BUCKETS, parameters=params)
    )
    engine.load()
    return engine


def _reference(which: int, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        mlp_pair()[which].SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"x": x})[0]


def _check(engine: CpuEngine, which: int, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 256)).astype(np.float32)
    y = engine.infer({"x": x})["y"]
    assert y.dtype == np.float32 and y.shape == (batch, 256)
    want = _reference(which, x)
    # bf16 keeps 8 bits of mantissa: ~0.4% per rounding, through 4 layers
    assert np.abs(y - want).max() <= 0.05 * np.abs(want).max()


def test_auto_plan_is_per_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch, sparsity="auto")
    rows = engine.layer_decisions()
    assert len(rows) == 4 * len(BUCKETS)
    by_bucket = {(r["layer"], r["bucket"]): r["kernel"] for r in rows}
    assert all(by_bucket[(layer, 1)] == "dense" for layer, _ in by_bucket)
    assert all(by_bucket[(layer, 256)] == "sparse" for layer, _ in by_bucket)
    assert {"layer", "kernel", "sparse_us", "dense_us", "reason"} <= set(rows[0])
    details = engine.describe().details
    assert details["layers_mixed"] == "4" and details["layers_eligible"] == "4"
    # mixed layers keep both forms resident
    assert int(details["weight_bytes_dense_resident"]) == int(
        details["weight_bytes_dense_equivalent"]
    )
    assert int(details["weight_bytes_compressed_resident"]) > 0
    assert "fc0/MatMul@256=sparse(2.00x)" in details["kernel_table"]

    CALLS.clear()
    _check(engine, 1, 5)  # bucket 8: dense
    assert CALLS == []
    _check(engine, 1, 40)  # bucket 64: sparse, padded to 64 rows
    assert CALLS == [64] * 4
    CALLS.clear()
    _check(engine, 1, 300)  # 256 + 44 (bucket 64)
    assert CALLS == [256] * 4 + [64] * 4
    engine.unload()
    with pytest.raises(Exception, match="not loaded"):
        engine.infer({"x": np.zeros((1, 256), np.float32)})


def test_on_releases_dense_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch, sparsity="on")
    details = engine.describe().details
    assert details["layers_sparse"] == "4"
    assert details["weight_bytes_dense_resident"] == "0"
    _check(engine, 1, 3)
    assert CALLS[-4:] == [8] * 4


def test_dense_twin_keeps_dense_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch, sparsity="on", dense_twin="true")
    details = engine.describe().details
    assert details["weight_bytes_dense_resident"] == details["weight_bytes_dense_equivalent"]


def test_off_and_dense_model_stay_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    off = _engine(monkeypatch, sparsity="off")
    assert off.describe().details["layers_dense"] == "4"
    assert all(r["reason"] == "sparsity=off" for r in off.layer_decisions())
    _check(off, 1, 17)
    dense = _engine(monkeypatch, which=0, sparsity="auto")
    assert all("not 2:4" in r["reason"] for r in dense.layer_decisions())
    assert dense.describe().details["weight_bytes_compressed_resident"] == "0"
    _check(dense, 0, 2)
    assert CALLS == []


def test_end_to_end_guard_reverts_a_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(monkeypatch, sparsity="auto", _slower=256)
    rows = engine.layer_decisions()
    at256 = [r for r in rows if r["bucket"] == 256]
    at64 = [r for r in rows if r["bucket"] == 64]
    assert all(r["kernel"] == "dense" and "end-to-end" in str(r["reason"]) for r in at256)
    assert all(r["kernel"] == "sparse" for r in at64)


def test_bert_like_dynamic_seq(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_torch_convert import _bert_feeds, bert_like

    monkeypatch.setattr(torch_sparse, "time_pair", fake_time_pair())
    model = bert_like()
    engine = CpuEngine(
        model.SerializeToString(),
        EngineOptions(
            batch_buckets=(1, 4), parameters={"precision": "bf16", "profile_seq_len": "8"}
        ),
    )
    engine.load()
    desc = engine.describe()
    assert [s.name for s in desc.inputs] == ["input_ids", "attention_mask"]
    assert desc.inputs[0].shape == (-1, -1)
    feeds = _bert_feeds(3, 7)
    got = engine.infer(feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip(["last_hidden_state", "pooled"], sess.run(None, feeds), strict=True))
    for name in want:
        assert got[name].dtype == np.float32
        assert np.abs(got[name] - want[name]).max() <= 0.1 * np.abs(want[name]).max()
    only = engine.infer(feeds, ["pooled"])
    assert list(only) == ["pooled"]


class _FakeEvent:
    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self) -> None:
        import time

        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: _FakeEvent) -> float:
        return (end.t - self.t) * 1e3


class _FakeGraph:
    def __init__(self, body: Any) -> None:
        self.body = body

    def replay(self) -> None:
        self.body()


@pytest.mark.parametrize("capture_works", [True, False])
def test_time_pair_logic_with_fake_cuda(
    monkeypatch: pytest.MonkeyPatch, capture_works: bool
) -> None:
    """time_pair's bookkeeping (warm-up, graph-or-eager for all, interleaved medians, failures)."""
    import contextlib
    import time

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(
        torch.cuda, "Stream", lambda *a, **k: type("S", (), {"wait_stream": lambda self, o: None})()
    )
    monkeypatch.setattr(
        torch.cuda,
        "current_stream",
        lambda *a, **k: type("S", (), {"wait_stream": lambda self, o: None})(),
    )
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    captured: list[str] = []

    def fake_capture(torch_mod: Any, body: Any, pool: Any = None) -> tuple[Any, Any]:
        if not capture_works:
            raise RuntimeError("capture not supported")
        captured.append("x")
        return _FakeGraph(body), body()

    monkeypatch.setattr(cuda_graphs, "capture_graph", fake_capture)
    calls = {"slow": 0, "fast": 0}

    def slow(x: Any) -> None:
        calls["slow"] += 1
        time.sleep(0.002)

    def fast(x: Any) -> None:
        calls["fast"] += 1

    def broken(x: Any) -> None:
        raise RuntimeError("no kernel")

    info: dict[str, str] = {}
    fns = {"slow": slow, "fast": fast, "broken": broken}
    r = cuda_graphs.time_pair(torch, fns, None, inner=2, reps=3, warmup=1, info=info)
    assert r["broken"] is None
    assert r["slow"] > 1500 > r["fast"]  # microseconds per call
    assert info["mode"] == ("graph" if capture_works else "eager")
    assert len(captured) == (2 if capture_works else 0)


class _ReplayGraph:
    """Stands in for a CUDA graph: replay re-runs the body and writes into the static outputs."""

    def __init__(self, body: Any, out: dict[str, Any]) -> None:
        self.body, self.out = body, out

    def replay(self) -> None:
        for name, value in self.body().items():
            self.out[name].copy_(value)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Enough of torch.cuda, on the CPU, to drive the engine's capture/replay serving path."""
    import contextlib

    stream = type("S", (), {"wait_stream": lambda self, o: None})
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "fake")
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch_sparse, "time_pair", fake_time_pair())
    graphs: list[Any] = []

    def fake_capture(torch_mod: Any, body: Any, pool: Any = None) -> tuple[Any, Any]:
        out = body()
        graphs.append(_ReplayGraph(body, out))
        return graphs[-1], out

    monkeypatch.setattr(torch_sparse, "capture_graph", fake_capture)
    return graphs


class GraphEngine(CpuEngine):
    """CpuEngine that takes the CUDA code paths (graphs, memory, device context)."""

    def _is_cuda(self) -> bool:
        return self._device is not None


def test_served_through_replayed_graphs(fake_cuda: list[Any]) -> None:
    CALLS.clear()
    engine = GraphEngine(
        mlp_pair()[1].SerializeToString(),
        EngineOptions(batch_buckets=(1, 8, 64), parameters={"precision": "bf16", "sparsity": "on"}),
    )
    engine.load()
    assert engine.describe().details["cuda_graphs"] == "3"
    assert len(fake_cuda) == 3
    for batch in (5, 1, 64, 100, 8):  # 100 = 64 + 36 (bucket 64 again)
        _check(engine, 1, batch)
    # padded rows are zeroed before each replay: a smaller batch after a larger one
    x = np.random.default_rng(9).standard_normal((3, 256)).astype(np.float32)
    alone = engine.infer({"x": x})["y"]
    engine.infer({"x": np.full((8, 256), 50.0, np.float32)})
    assert np.array_equal(engine.infer({"x": x})["y"], alone)
    assert engine.replay_us(5) is not None
    assert len(fake_cuda) == 3  # no capture after load


def test_dynamic_seq_graphs_are_captured_lazily(fake_cuda: list[Any]) -> None:
    from test_torch_convert import _bert_feeds, bert_like

    model = bert_like()
    engine = GraphEngine(
        model.SerializeToString(),
        EngineOptions(
            batch_buckets=(1, 4), parameters={"precision": "bf16", "profile_seq_len": "8"}
        ),
    )
    engine.load()
    assert engine.describe().details["cuda_graphs"] == "0"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seq in ((3, 7), (3, 7), (1, 16), (2, 7)):
        feeds = _bert_feeds(batch, seq)
        got = engine.infer(feeds)
        want = sess.run(None, feeds)
        for name, ref in zip(["last_hidden_state", "pooled"], want, strict=True):
            assert np.abs(got[name] - ref).max() <= 0.1 * np.abs(ref).max()
    # (4, 7) serves both batch 3 and 2; (1, 16) is the second graph
    assert engine.describe().details["cuda_graphs"] == "2"


def test_sparse_outputs_reach_the_host_row_major(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real CsltLinear (cuSPARSELt faked by matmuls) each 2:4 layer returns a
    transposed view; infer must still hand back C-order arrays, or the response encoder
    transposes them on the CPU."""
    from tests.test_cslt_linear_cpu import FakeCslt

    fake = FakeCslt()

    class FakeCsltLinear(sparse_linear.CsltLinear):
        def __init__(self, torch_mod: Any, weight: Any, bias: Any) -> None:
            super().__init__(fake, weight, bias)

    class CsltCpuEngine(CpuEngine):
        def _sparse_factory(self, major: int) -> Any:
            return FakeCsltLinear

    monkeypatch.setattr(sparse_linear, "_SEARCHED", {})
    engine = CsltCpuEngine(
        mlp_pair()[1].SerializeToString(),
        EngineOptions(device="cuda", batch_buckets=BUCKETS,
                      parameters={"sparsity": "on", "precision": "bf16"}),
    )  # fmt: skip
    engine.load()
    assert engine.describe().details["layers_sparse"] == "4"
    fake.calls.clear()
    for batch in (3, 64, 300):
        y = engine.infer({"x": np.ones((batch, 256), np.float32)})["y"]
        assert y.flags.c_contiguous and y.shape == (batch, 256)
    assert fake.calls  # the sparse kernels ran
    _check(engine, 1, 40)


@pytest.mark.parametrize("elem_type", [1, 10, 11, 7], ids=["float", "float16", "double", "int64"])
def test_outputs_reach_numpy_row_major_in_every_dtype(elem_type: int) -> None:
    """_to_numpy on a transposed view (what a 2:4 layer returns): C-order in every output
    dtype, including fp16 -> fp16, where .to() alone would hand the view back as it is."""
    engine = TorchSparseEngine(b"", EngineOptions())
    engine._torch = torch
    base = torch.arange(12, dtype=torch.float16 if elem_type != 7 else torch.int64).reshape(3, 4)
    out = engine._to_numpy(base.t(), elem_type)
    assert out.flags.c_contiguous and out.shape == (4, 3)
    np.testing.assert_array_equal(out, base.t().numpy().astype(out.dtype))
