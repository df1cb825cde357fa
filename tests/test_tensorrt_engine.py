"""The opt-in TensorRT engine, tested without TensorRT: provider options, the clear
"unavailable" errors (missing provider, silent fallback), dispatch never choosing it,
and a real server where a model forced to TensorRT fails alone."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from runtime import dispatch, planning
from runtime.dispatch import DeviceCaps, GpuInfo, decide, installed_engines
from runtime.engines.base import EngineOptions, create_engine
from runtime.engines.onnx import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TRT_PROVIDER,
    TensorRtEngine,
    require_tensorrt,
    source_digest,
    tensorrt_cache_dir,
    tensorrt_options,
    tensorrt_providers,
)
from runtime.errors import ConfigError, EngineUnavailable, InferenceFailed
from runtime.repository.config import read_config
from runtime.samples import mlp_pair
from runtime.settings import Settings
from runtime.sparsity.analysis import analyze_model
from tests.conftest import start_server, wait_for

HAS_TRT = TRT_PROVIDER in ort.get_available_providers()
no_trt = pytest.mark.skipif(HAS_TRT, reason="this host has TensorRT: the engine would load")
# onnxruntime warns when asked for providers it lacks; that is the situation under test
quiet_ort = pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")


@pytest.fixture(scope="module")
def models() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    return mlp_pair((16, 32, 8))


@pytest.fixture()
def with_trt_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime claims TensorRT, as a GPU build does even when libnvinfer is missing."""
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_PROVIDER, *real()])


def opts(**kw: Any) -> EngineOptions:
    base: dict[str, Any] = {"device": "cuda", "device_id": 0, "precision": "fp16"}
    return EngineOptions(**{**base, **kw})


# ---- provider options: pure ----------------------------------------------------


def test_fp16_sparsity_and_cache_options(tmp_path: Path) -> None:
    trt = tensorrt_options(opts(device_id=1), tmp_path)
    assert trt == {
        "device_id": "1",
        "trt_sparsity_enable": "True",
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path),
    }
    providers = tensorrt_providers(trt)
    assert providers == [(TRT_PROVIDER, trt), (CUDA_PROVIDER, {"device_id": "1"}), CPU_PROVIDER]


def test_fp32_keeps_sparsity_on(tmp_path: Path) -> None:
    trt = tensorrt_options(opts(precision="fp32"), tmp_path)
    assert trt["trt_fp16_enable"] == "False"
    assert trt["trt_sparsity_enable"] == "True"
    assert trt["device_id"] == "0"


def test_unsupported_precision_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 or fp32.*'bf16'"):
        tensorrt_options(opts(precision="bf16"), tmp_path)


def test_workspace_parameter(tmp_path: Path) -> None:
    trt = tensorrt_options(opts(parameters={"trt_max_workspace_size": "1073741824"}), tmp_path)
    assert trt["trt_max_workspace_size"] == "1073741824"
    assert "trt_max_workspace_size" not in tensorrt_options(opts(), tmp_path)
    for bad in ("1GB", "0", "-5", "²"):
        with pytest.raises(ConfigError, match="trt_max_workspace_size"):
            tensorrt_options(opts(parameters={"trt_max_workspace_size": bad}), tmp_path)


def test_cache_dir_default_is_per_model_content(
    models: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path: Path
) -> None:
    dense, sparse = (m.SerializeToString() for m in models)
    default = tensorrt_cache_dir(opts(), dense)
    assert default.parent == Path(tempfile.gettempdir())
    assert default.name == f"sparse-runtime-trt-{source_digest(dense)}"
    assert tensorrt_cache_dir(opts(), sparse) != default
    # a file and the same bytes in memory (a packed model) share one cache
    path = tmp_path / "model.onnx"
    path.write_bytes(dense)
    assert tensorrt_cache_dir(opts(), path) == default


def test_cache_dir_override(tmp_path: Path) -> None:
    chosen = tmp_path / "engines"
    assert tensorrt_cache_dir(opts(parameters={"trt_engine_cache_path": str(chosen)}), b"x") == (
        chosen
    )


# ---- "clearly reported as unavailable" -------------------------------------------


def assert_says_what_is_missing(message: str) -> None:
    for fragment in (TRT_PROVIDER, "onnxruntime-gpu", "libnvinfer", "CUDA GPU", CPU_PROVIDER):
        assert fragment in message, message


@no_trt
def test_missing_provider_is_engine_unavailable(
    models: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path: Path
) -> None:
    with pytest.raises(EngineUnavailable) as err:
        require_tensorrt()
    assert_says_what_is_missing(str(err.value))
    assert "available providers:" in str(err.value)
    cache = tmp_path / "cache"
    engine = create_engine("tensorrt", models[0].SerializeToString(),
                           opts(parameters={"trt_engine_cache_path": str(cache)}))  # fmt: skip
    assert isinstance(engine, TensorRtEngine)
    with pytest.raises(EngineUnavailable) as err:
        engine.load()
    assert_says_what_is_missing(str(err.value))
    assert not cache.exists()  # nothing written for an engine that cannot run


@no_trt
@quiet_ort
@pytest.mark.usefixtures("with_trt_listed")
def test_silent_fallback_is_refused(
    models: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path: Path
) -> None:
    """The real onnxruntime, told TensorRT exists, builds a CPU-only session: refused."""
    engine = TensorRtEngine(models[0].SerializeToString(),
                            opts(parameters={"trt_engine_cache_path": str(tmp_path)}))  # fmt: skip
    with pytest.raises(EngineUnavailable) as err:
        engine.load()
    message = str(err.value)
    assert "fell back to CPUExecutionProvider" in message
    assert_says_what_is_missing(message)
    with pytest.raises(InferenceFailed, match="not loaded"):
        engine.describe()
    with pytest.raises(InferenceFailed, match="not loaded"):
        engine.infer({"x": np.zeros((1, 16), np.float32)})


class _SessionClaimingTrt:
    """A real CPU onnxruntime session that reports TensorRT as its provider, recording the
    providers it was asked for: the shape of a session on a TensorRT host."""

    requested: list[Any] = []

    def __init__(self, model: Any, so: Any = None, providers: Any = None, **kw: Any) -> None:
        type(self).requested = list(providers or [])
        self._inner = _REAL_SESSION(model, so, providers=[CPU_PROVIDER])

    def get_providers(self) -> list[str]:
        return [TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._inner, name)


_REAL_SESSION = ort.InferenceSession


@pytest.mark.usefixtures("with_trt_listed")
def test_loaded_engine_describes_its_tensorrt_options(
    models: tuple[onnx.ModelProto, onnx.ModelProto],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ort, "InferenceSession", _SessionClaimingTrt)
    cache = tmp_path / "engines"
    params = {"trt_engine_cache_path": str(cache), "trt_max_workspace_size": "2147483648"}
    engine = TensorRtEngine(models[1].SerializeToString(), opts(device_id=2, parameters=params))
    engine.load()
    try:
        assert cache.is_dir()
        trt_name, trt = _SessionClaimingTrt.requested[0]
        assert trt_name == TRT_PROVIDER
        assert trt["trt_sparsity_enable"] == "True" and trt["trt_fp16_enable"] == "True"
        assert trt["device_id"] == "2" and trt["trt_engine_cache_enable"] == "True"
        assert [p if isinstance(p, str) else p[0] for p in _SessionClaimingTrt.requested] == [
            TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER,
        ]  # fmt: skip
        d = engine.describe()
        assert (d.engine, d.device) == ("tensorrt", "cuda:2")  # the GPU it was given
        assert d.details["providers"] == f"{TRT_PROVIDER},{CUDA_PROVIDER},{CPU_PROVIDER}"
        assert d.details["trt_sparsity_enable"] == "True"
        assert d.details["trt_fp16_enable"] == "True"
        assert d.details["trt_engine_cache_path"] == str(cache)
        assert d.details["trt_max_workspace_size"] == "2147483648"
        y = engine.infer({"x": np.ones((2, 16), np.float32)})["y"]
        assert y.shape == (2, 8)
    finally:
        engine.unload()


# ---- dispatch and planning -----------------------------------------------------


@pytest.mark.usefixtures("with_trt_listed")
def test_installed_when_onnxruntime_lists_it() -> None:
    assert dispatch.ENGINE_TENSORRT in installed_engines()


@no_trt
def test_not_installed_here() -> None:
    assert dispatch.ENGINE_TENSORRT not in installed_engines()


def test_auto_never_picks_tensorrt(models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    hosts = (
        DeviceCaps(),
        DeviceCaps((GpuInfo(0, "Tesla T4", (7, 5), 16 << 30),)),
        DeviceCaps((GpuInfo(0, "NVIDIA H100", (9, 0), 80 << 30),)),
    )
    every = frozenset({"onnxruntime", "onnxruntime-cuda", "torch_sparse", "tensorrt"})
    no_torch = every - {"torch_sparse"}
    for model in models:
        profile = analyze_model(model)
        for caps in hosts:
            for engines in (every, no_torch):
                for mode in ("auto", "off"):
                    d = decide(profile, caps, engines, mode)
                    assert d.engine != "tensorrt", (caps, engines, mode, d)


def write_model(repo: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (repo / name / "config.pbtxt").write_text(config)


FORCED_TRT = 'max_batch_size: 8\nparameters { key: "engine" value: { string_value: "tensorrt" } }\n'


@pytest.mark.skipif(bool(dispatch.probe_device().gpus), reason="this host has a GPU")
@pytest.mark.usefixtures("with_trt_listed")
def test_forced_without_gpu_is_a_config_error(
    models: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path: Path
) -> None:
    write_model(tmp_path, "m", models[1], FORCED_TRT)
    with pytest.raises(ConfigError, match="engine 'tensorrt' needs a CUDA GPU; none found"):
        planning.build_model("m", tmp_path / "m", 1, read_config(tmp_path / "m"), Settings())


@no_trt
def test_forced_model_fails_alone_through_the_server(
    models: tuple[onnx.ModelProto, onnx.ModelProto], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "trt_forced", models[1], FORCED_TRT)
    write_model(repo, "plain", models[1], "max_batch_size: 8\n")
    srv = start_server(repo, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(srv.url)
        wait_for(lambda: client.is_model_ready("plain"), timeout=60)
        assert client.is_model_ready("plain")
        assert not client.is_model_ready("trt_forced")
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["trt_forced"]["state"] == "UNAVAILABLE"
        assert_says_what_is_missing(index["trt_forced"]["reason"])
        assert index["plain"]["state"] == "READY"
        x = np.ones((3, 16), np.float32)
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("plain", [inp]).as_numpy("y")
        assert y.shape == (3, 8)
    finally:
        assert srv.stop() == 0
