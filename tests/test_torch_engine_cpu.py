"""TorchSparseEngine on a host without CUDA: clean EngineUnavailable, lazy torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.engines.base import EngineOptions, create_engine
from runtime.errors import ConfigError, EngineUnavailable
from runtime.samples import mlp_pair


def _model_bytes() -> bytes:
    return mlp_pair()[1].SerializeToString()


def test_module_import_does_not_import_torch() -> None:
    code = (
        "import sys, runtime.engines.torch_sparse, runtime.engines.sparse_policy;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "False"


def test_registry_builds_the_engine_without_loading() -> None:
    engine = create_engine("torch_sparse", _model_bytes(), EngineOptions(device="cuda"))
    assert type(engine).__name__ == "TorchSparseEngine"


def test_missing_torch_raises_engine_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.engines.torch_sparse import TorchSparseEngine

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    engine = TorchSparseEngine(_model_bytes(), EngineOptions(device="cuda"))
    with pytest.raises(EngineUnavailable, match=r"sparse-runtime\[gpu\]"):
        engine.load()


def test_no_cuda_raises_engine_unavailable() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    from runtime.engines.torch_sparse import TorchSparseEngine

    engine = TorchSparseEngine(_model_bytes(), EngineOptions(device="cuda"))
    with pytest.raises(EngineUnavailable, match="CUDA"):
        engine.load()


@pytest.mark.parametrize(
    ("key", "value"),
    [("precision", "fp32"), ("sparsity", "sometimes"), ("cslt_bias_epilogue", "yes")],
)
def test_bad_parameters_are_config_errors(key: str, value: str) -> None:
    from runtime.engines.torch_sparse import TorchSparseEngine

    with pytest.raises(ConfigError, match=key):
        TorchSparseEngine(_model_bytes(), EngineOptions(parameters={key: value}))


def test_eligibility_on_cpu_tensors() -> None:
    torch = pytest.importorskip("torch")
    import numpy as np

    from runtime.engines.onnx_to_torch import convert
    from runtime.engines.sparse_linear import is_2to4, sparse_eligibility

    dense, sparse = (convert(m) for m in mlp_pair())
    assert all(sparse_eligibility(lin.weight) == "" for lin in sparse.linears.values())
    assert all("not 2:4" in sparse_eligibility(lin.weight) for lin in dense.linears.values())
    assert "multiple of 16" in sparse_eligibility(torch.zeros(24, 20))
    w = torch.from_numpy(np.array([[1.0, 0.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0]], np.float32))
    assert not is_2to4(w)
    assert is_2to4(w[:1])
