"""Dispatch policy over fake capability sets (no hardware touched)."""

from __future__ import annotations

import pytest

from runtime.dispatch import (
    Decision,
    DeviceCaps,
    GpuInfo,
    decide,
    installed_engines,
    probe_device,
)
from runtime.errors import ConfigError, EngineUnavailable
from runtime.samples import mlp_pair
from runtime.sparsity.analysis import ModelProfile, analyze_model

CPU = DeviceCaps()
T4 = DeviceCaps((GpuInfo(0, "Tesla T4", (7, 5), 16 << 30),))
A100 = DeviceCaps((GpuInfo(0, "NVIDIA A100", (8, 0), 80 << 30),))
H100 = DeviceCaps((GpuInfo(0, "NVIDIA H100", (9, 0), 80 << 30),))
MIXED_HOST = DeviceCaps((GpuInfo(0, "Tesla T4", (7, 5), 16 << 30),
                         GpuInfo(1, "NVIDIA H100", (9, 0), 80 << 30)))
ALL = frozenset({"onnxruntime", "onnxruntime-cuda", "torch_sparse"})
ORT_ONLY = frozenset({"onnxruntime"})


@pytest.fixture(scope="module")
def profiles() -> tuple[ModelProfile, ModelProfile]:
    dense, sparse = mlp_pair((64, 128, 128, 32))
    return analyze_model(dense), analyze_model(sparse)


def test_cpu_only_falls_back_dense(profiles: tuple[ModelProfile, ModelProfile]) -> None:
    d = decide(profiles[1], CPU, ORT_ONLY)
    assert (d.engine, d.device) == ("onnxruntime", "cpu")
    assert d.reason == "dense fallback: no GPU with compute capability >= 8.0"
    assert d.sparse_layers == () and len(d.dense_layers) == 3 and d.pattern == "2:4"


def test_sm75_is_not_capable(profiles: tuple[ModelProfile, ModelProfile]) -> None:
    d = decide(profiles[1], T4, ALL)
    assert d.engine == "onnxruntime" and d.device == "cuda:0"
    assert "compute capability >= 8.0" in d.reason and "sm_75" in d.reason


@pytest.mark.parametrize(("caps", "sm"), [(A100, "sm_80"), (H100, "sm_90")])
def test_capable_gpu_goes_sparse(profiles: tuple[ModelProfile, ModelProfile], caps: DeviceCaps,
                                 sm: str) -> None:
    d = decide(profiles[1], caps, ALL)
    assert d == Decision("torch_sparse", "cuda:0", ("fc0.weight", "fc1.weight", "fc2.weight"),
                         (), "2:4", f"sparse: 3/3 GEMM layers 2:4, {sm}")


def test_picks_the_capable_gpu(profiles: tuple[ModelProfile, ModelProfile]) -> None:
    assert decide(profiles[1], MIXED_HOST, ALL).device == "cuda:1"


def test_engine_missing(profiles: tuple[ModelProfile, ModelProfile]) -> None:
    d = decide(profiles[1], H100, frozenset({"onnxruntime", "onnxruntime-cuda"}))
    assert d.engine == "onnxruntime" and "torch_sparse not installed" in d.reason
    with pytest.raises(EngineUnavailable, match="torch_sparse not installed"):
        decide(profiles[1], H100, ORT_ONLY, "on")


def test_dense_model_stays_dense_and_on_refuses(
    profiles: tuple[ModelProfile, ModelProfile],
) -> None:
    d = decide(profiles[0], H100, ALL)
    assert d.engine == "onnxruntime" and "no eligible 2:4" in d.reason
    with pytest.raises(EngineUnavailable, match="no eligible 2:4"):
        decide(profiles[0], H100, ALL, "on")


def test_modes(profiles: tuple[ModelProfile, ModelProfile]) -> None:
    off = decide(profiles[1], H100, ALL, "off")
    assert off.engine == "onnxruntime" and off.reason.startswith("dense: sparsity=off")
    assert decide(profiles[1], H100, ALL, "on").engine == "torch_sparse"
    with pytest.raises(EngineUnavailable, match="compute capability"):
        decide(profiles[1], CPU, ALL, "on")
    with pytest.raises(ConfigError, match="auto, on, off"):
        decide(profiles[1], CPU, ALL, "maybe")


def test_host_probes_do_not_crash() -> None:
    caps = probe_device()
    assert isinstance(caps, DeviceCaps)
    engines = installed_engines()
    assert "onnxruntime" in engines


def test_a_model_torch_sparse_cannot_load_is_served_dense(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a capable GPU host, a 2:4 model the GPU engine cannot load (here: no CUDA at all,
    elsewhere an op its interpreter lacks) is served dense by onnxruntime, with the reason;
    under sparsity=on it is a load error instead."""
    from tritonclient.grpc import model_config_pb2 as mc

    from runtime import dispatch
    from runtime.errors import ModelLoadError
    from runtime.planning import build_model
    from runtime.settings import Settings

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(mlp_pair()[1].SerializeToString())
    monkeypatch.setattr(dispatch, "probe_device", lambda: H100)
    monkeypatch.setattr(dispatch, "installed_engines", lambda: frozenset({"onnxruntime",
                                                                         "torch_sparse"}))
    monkeypatch.setattr("runtime.engines.torch_sparse._require_cuda",
                        lambda torch, device_id: (_ for _ in ()).throw(
                            EngineUnavailable("this host has no CUDA device")))  # fmt: skip
    model = build_model("m", tmp_path / "m", 1, None, Settings())
    try:
        assert model.description.engine == "onnxruntime" and model.description.device == "cpu"
        reason = model.info["dispatch_reason"]
        assert reason.startswith("dense fallback: torch_sparse could not load the model"), reason
    finally:
        model.unload()
    config = mc.ModelConfig()
    config.parameters["sparsity"].string_value = "on"
    with pytest.raises(ModelLoadError):
        build_model("m", tmp_path / "m", 1, config, Settings())
    typo = mc.ModelConfig()  # a config mistake is reported, not served around
    typo.parameters["cslt_bias_epilogue"].string_value = "yes"
    with pytest.raises(ConfigError, match="cslt_bias_epilogue"):
        build_model("m", tmp_path / "m", 1, typo, Settings())
