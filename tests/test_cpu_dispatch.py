"""Measured CPU engine choice: the pure policy on fake timings, the timing helper on a fake
clock, CPU feature parsing, and the choice as the real server reports it."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from runtime import cpu_dispatch, cpufeatures
from runtime.cpu_dispatch import bucket_order, choose, time_engines
from tests.conftest import ServerProcess, parse_metrics, start_server

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
ROOT = Path(__file__).resolve().parents[1]

# ---- choose: pure policy -------------------------------------------------------


def test_faster_engine_wins_with_reason() -> None:
    timings = {"onnxruntime": {1: 2.0, 64: 40.0}, "openvino": {1: 1.0, 64: 20.0}}
    c = choose(timings)
    assert c.engine == "openvino"
    assert c.relative == pytest.approx({"onnxruntime": 2.0, "openvino": 1.0})
    assert c.reason.startswith("cpu: openvino fastest")
    assert "onnxruntime 2.00x" in c.reason and "batch 1,64" in c.reason
    assert c.table == "onnxruntime b1=2ms b64=40ms; openvino b1=1ms b64=20ms"


def test_default_kept_within_margin() -> None:
    c = choose({"onnxruntime": {1: 1.02, 8: 2.04}, "openvino": {1: 1.0, 8: 2.0}})
    assert c.engine == "onnxruntime"
    assert "kept, within 3%" in c.reason
    # beyond the margin the faster one wins
    c = choose({"onnxruntime": {1: 1.10, 8: 2.2}, "openvino": {1: 1.0, 8: 2.0}})
    assert c.engine == "openvino"


def test_batches_weigh_equally() -> None:
    # onnxruntime 2x faster at batch 1, openvino 1.5x faster at 64: ms at 64 must not dominate
    c = choose({"onnxruntime": {1: 1.0, 64: 30.0}, "openvino": {1: 2.0, 64: 20.0}})
    assert c.engine == "onnxruntime"
    assert c.relative["openvino"] == pytest.approx(np.sqrt(2.0))


def test_never_more_than_5_percent_slower_than_best() -> None:
    """The issue's target, over many random tables: the pick is within 5% of the best score."""
    rng = np.random.default_rng(0)
    engines = ("onnxruntime", "openvino", "third")
    for _ in range(500):
        buckets = sorted(set(rng.choice([1, 2, 4, 8, 16, 32, 64], size=3).tolist()))
        timings = {e: {b: float(rng.uniform(0.5, 2.0)) * b for b in buckets} for e in engines}
        c = choose(timings)
        assert c.relative[c.engine] <= min(c.relative.values()) * 1.05


def test_only_shared_buckets_count_and_failures_are_reported() -> None:
    timings = {"onnxruntime": {1: 1.0, 64: 10.0}, "openvino": {1: 0.5}}
    c = choose(timings, {"third": "RuntimeError: boom"})
    assert c.engine == "openvino" and "batch 1:" in c.reason
    assert "third not timed: RuntimeError: boom" in c.reason


def test_degenerate_inputs() -> None:
    assert choose({}).engine == "onnxruntime"
    assert "nothing measured" in choose({}, {"openvino": "x"}).reason
    only = choose({"openvino": {1: 1.0}, "onnxruntime": {}}, {"onnxruntime": "failed"})
    assert only.engine == "openvino" and "only engine timed" in only.reason
    disjoint = choose({"onnxruntime": {1: 1.0}, "openvino": {2: 1.0}})
    assert disjoint.engine == "onnxruntime" and "no batch size timed on all" in disjoint.reason


def test_bucket_order_ends_then_middle() -> None:
    assert bucket_order([1, 2, 4, 8, 16, 32, 64]) == [1, 64, 8, 4, 16, 2, 32]
    assert bucket_order([4, 1]) == [1, 4]
    assert bucket_order([1]) == [1]


# ---- time_engines: fake clock --------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner(self, ms_per_row: float, fail_at: int | None = None):  # noqa: ANN201
        def run(feeds):  # noqa: ANN001, ANN202
            rows = len(feeds["x"])
            if fail_at is not None and rows >= fail_at:
                raise RuntimeError("engine exploded")
            self.now += ms_per_row * rows / 1e3

        return run


def feeds_for(batch: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros((batch, 2), np.float32)}


def test_time_engines_measures_every_bucket_within_budget() -> None:
    clock = FakeClock()
    runners = {"onnxruntime": clock.runner(1.0), "openvino": clock.runner(0.5)}
    timings, failures = time_engines(runners, feeds_for, [1, 8, 64], budget_s=10.0, clock=clock)
    assert failures == {}
    assert timings["onnxruntime"] == pytest.approx({1: 1.0, 8: 8.0, 64: 64.0})
    assert timings["openvino"] == pytest.approx({1: 0.5, 8: 4.0, 64: 32.0})
    assert clock.now <= 10.0 + 0.2  # one round may overrun by at most its own length
    assert choose(timings).engine == "openvino"


def test_time_engines_stops_at_budget_but_times_first_bucket() -> None:
    clock = FakeClock()
    runners = {"onnxruntime": clock.runner(1000.0), "openvino": clock.runner(900.0)}  # 1 s/row
    timings, _ = time_engines(runners, feeds_for, [1, 2, 4, 64], budget_s=2.0, clock=clock)
    assert set(timings["onnxruntime"]) == {1}  # the first bucket only: budget gone
    assert clock.now < 8.0


def test_time_engines_drops_failing_engine() -> None:
    clock = FakeClock()
    runners = {"onnxruntime": clock.runner(1.0), "openvino": clock.runner(0.1, fail_at=64)}
    timings, failures = time_engines(runners, feeds_for, [1, 64], budget_s=5.0, clock=clock)
    assert set(timings) == {"onnxruntime"}
    assert failures == {"openvino": "RuntimeError: engine exploded"}
    assert choose(timings, failures).engine == "onnxruntime"


def test_time_engines_real_clock_is_bounded() -> None:
    calls = itertools.count()

    def busy(feeds):  # noqa: ANN001, ANN202
        next(calls)
        np.linalg.norm(np.ones((200, 200)) @ np.ones((200, 200)))

    timings, _ = time_engines({"a": busy, "b": busy}, feeds_for, [1, 2, 4, 8], budget_s=0.3)
    assert set(timings["a"]) == set(timings["b"]) and 1 in timings["a"]
    assert next(calls) <= 2 * 4 * (cpu_dispatch.MAX_CALLS + 1) + 1


# ---- CPU features --------------------------------------------------------------

XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: other
flags\t\t: fpu
"""
EPYC_AVX2 = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_parse_cpuinfo() -> None:
    xeon = cpufeatures.parse_cpuinfo(XEON_AMX)
    assert xeon.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert xeon.avx512 and xeon.vnni and xeon.amx and xeon.bf16
    assert xeon.summary() == "avx2,avx512,avx512_vnni,avx512_bf16,amx_tile,amx_int8,amx_bf16"
    epyc = cpufeatures.parse_cpuinfo(EPYC_AVX2)
    assert not (epyc.avx512 or epyc.vnni or epyc.amx)
    assert epyc.summary() == "avx2 (no avx512/vnni/amx)"
    assert cpufeatures.parse_cpuinfo("").summary().startswith("none of avx2")


def test_detect_missing_file(tmp_path: Path) -> None:
    assert cpufeatures.detect(tmp_path / "nope").flags == frozenset()


# ---- through the server ----------------------------------------------------------

CONFIG = """
name: "{name}"
max_batch_size: 64
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 256 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 256 ] }} ]
{params}
"""


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def _repo(tmp: Path, sample_repo: Path, models: dict[str, tuple[str, str]]) -> Path:
    """models: name -> (sample model folder, extra config lines)."""
    repo = tmp / "repo"
    for name, (sample, params) in models.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(
            (sample_repo / sample / "1" / "model.onnx").read_bytes()
        )
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, params=params))
    return repo


@pytest.fixture(scope="module")
def dispatch_server(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("cpu_dispatch")
    repo = _repo(tmp, sample_repo, {
        "auto_int8": ("mlp_int8", ""),
        "forced_ort": ("mlp_int8", _param("engine", "onnxruntime")),
        "one_thread": ("mlp_dense", _param("engine", "onnxruntime")
                       + _param("intra_op_thread_count", "1")),
        "forced_ov": ("mlp_dense", _param("engine", "openvino") if HAS_OPENVINO else ""),
        "bad_budget": ("mlp_dense", _param("cpu_dispatch_budget_s", "soon")),
    })
    srv = start_server(repo, tmp)
    yield srv
    srv.stop()


def _params(client: grpcclient.InferenceServerClient, model: str) -> dict[str, str]:
    cfg = client.get_model_config(model).config
    return {k: v.string_value for k, v in cfg.parameters.items()}


def _wait_ready(client: grpcclient.InferenceServerClient, model: str) -> None:
    import time

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not client.is_model_ready(model):
        time.sleep(0.2)
    assert client.is_model_ready(model), model


def test_auto_choice_shown_in_config_log_and_metrics(dispatch_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(dispatch_server.url)
    _wait_ready(client, "auto_int8")
    p = _params(client, "auto_int8")
    assert p["sparse_runtime.cpu_features"] == cpufeatures.detect().summary()
    reason = p["sparse_runtime.dispatch_reason"]
    if not HAS_OPENVINO:
        assert "cpu: onnxruntime (the only CPU engine installed)" in reason
        assert "sparse_runtime.cpu_engine_timings" not in p
        return
    chosen = p["sparse_runtime.engine"]
    assert f"cpu: {chosen} " in reason
    table = p["sparse_runtime.cpu_engine_timings"]
    assert table.startswith("onnxruntime b1=") and "; openvino b1=" in table and "b64=" in table
    assert table in dispatch_server.log_text()
    samples = parse_metrics(dispatch_server.scrape())
    info = [lv for (n, lv) in samples if n == "sparse_runtime_model_info"
            and ("model", "auto_int8") in lv]
    assert info and ("engine", chosen) in info[0]
    assert ("reason", reason) in info[0]


def test_forced_engines_are_not_measured(dispatch_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(dispatch_server.url)
    _wait_ready(client, "forced_ort")
    p = _params(client, "forced_ort")
    assert p["sparse_runtime.engine"] == "onnxruntime"
    assert "sparse_runtime.cpu_engine_timings" not in p
    # no flag, no parameter: onnxruntime's own thread count, as Triton's onnxruntime backend
    assert p["sparse_runtime.engine_intra_op_threads"] == "0"
    _wait_ready(client, "one_thread")
    assert _params(client, "one_thread")["sparse_runtime.engine_intra_op_threads"] == "1"
    if HAS_OPENVINO:
        _wait_ready(client, "forced_ov")
        p = _params(client, "forced_ov")
        assert p["sparse_runtime.engine"] == "openvino"
        assert "engine forced by config to openvino" in p["sparse_runtime.dispatch_reason"]
        assert "sparse_runtime.cpu_engine_timings" not in p
    x = np.random.default_rng(3).standard_normal((5, 256)).astype(np.float32)
    inp = grpcclient.InferInput("x", [5, 256], "FP32")
    inp.set_data_from_numpy(x)
    y = client.infer("forced_ov", [inp]).as_numpy("y")
    import onnxruntime as ort

    ref = ort.InferenceSession(
        str(ROOT / "model_repo" / "mlp_dense" / "1" / "model.onnx"),
        providers=["CPUExecutionProvider"],
    ).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_bad_budget_fails_that_model_only(dispatch_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(dispatch_server.url)
    _wait_ready(client, "auto_int8")
    assert not client.is_model_ready("bad_budget")
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["bad_budget"]["state"] == "UNAVAILABLE"
    assert "cpu_dispatch_budget_s must be a number of seconds" in index["bad_budget"]["reason"]
