"""CsltLinear's operand handling on the CPU, with cuSPARSELt's three calls faked by matmuls.

What is real: padding, the transposed-space arithmetic, the in-place bias, which operand order
each layer of a chain gets, the per-order algorithm table and the bias-epilogue choice. What is
fake: compression (a copy), the sparse GEMM (W @ x^T, + bias when fused) and, for the epilogue
choice under "auto", the timings. The GPU tests check the real kernels against cuBLAS.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from runtime.engines import sparse_linear  # noqa: E402
from runtime.engines.sparse_linear import CsltLinear  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_search_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse_linear, "_SEARCHED", {})
    monkeypatch.setattr(sparse_linear, "_EPILOGUE", {})


class FakeCslt(types.SimpleNamespace):
    """The torch namespace CsltLinear sees, with the cuSPARSELt entry points faked."""

    def __init__(self) -> None:
        super().__init__(nn=torch.nn, randn=torch.randn, allclose=torch.allclose)
        self.calls: list[tuple[bool, int]] = []  # (operand row-major?, alg id) per GEMM
        self.fused_calls = 0
        self.searches = 0
        self.bias_error: str = ""  # "raise" or "wrong": how a fused bias misbehaves

    @staticmethod
    def _cslt_compress(w: Any) -> Any:
        return w.clone()

    def _cslt_sparse_mm(self, packed: Any, xt: Any, bias: Any = None, alg_id: int = 0) -> Any:
        self.calls.append((bool(xt.is_contiguous()), alg_id))
        if bias is None:
            return packed @ xt
        self.fused_calls += 1
        if self.bias_error == "raise":
            raise RuntimeError("CUSPARSE_STATUS_NOT_SUPPORTED")
        return packed @ xt + (2 * bias if self.bias_error == "wrong" else bias)[:, None]

    def _cslt_sparse_mm_search(self, packed: Any, xt: Any) -> int:
        self.searches += 1
        return 5 if xt.is_contiguous() else 3


def _chain(fake: FakeCslt) -> tuple[list[CsltLinear], list[tuple[Any, Any]]]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (48, 64), (16, 48)]
    params = [(torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)) for n, k in shapes]
    return [CsltLinear(fake, w, b) for w, b in params], params


@pytest.mark.parametrize("m", [1, 8, 13, 64])
def test_chain_matches_dense(m: int) -> None:
    fake = FakeCslt()
    kernels, params = _chain(fake)
    x = torch.randn(m, 32)
    y, ref = x, x
    for kernel, (w, b) in zip(kernels, params, strict=True):
        y = torch.relu(kernel(y))
        ref = torch.relu(torch.nn.functional.linear(ref, w, b))
    assert y.shape == ref.shape == (m, 16)
    assert torch.allclose(y, ref, atol=1e-4)


def test_chained_layers_get_a_row_major_operand_without_a_copy() -> None:
    fake = FakeCslt()
    kernels, _ = _chain(fake)
    x = torch.randn(64, 32)
    h = x
    for kernel in kernels:
        h = torch.relu(kernel(h))  # elementwise ops keep the transposed layout
    # first layer: contiguous x -> column-major x^T; the others: x^T already row-major
    assert [row_major for row_major, _ in fake.calls] == [False, True, True]
    assert h.t().is_contiguous()


def test_search_keeps_one_algorithm_per_operand_order() -> None:
    fake = FakeCslt()
    kernel = _chain(fake)[0][0]
    assert kernel.search(60) == 3  # column-major choice, M padded to 64
    assert kernel.alg_ids == {(64, False): 3, (64, True): 5}
    fake.calls.clear()
    x = torch.randn(64, 32)
    kernel(x)
    kernel(x.t().contiguous().t())
    assert fake.calls == [(False, 3), (True, 5)]


def test_search_falls_back_to_alg_0_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSE_RUNTIME_CSLT_SEARCH", "0")
    kernel = _chain(FakeCslt())[0][0]
    assert kernel.search(8) == 0
    assert kernel.alg_ids == {(8, False): 0, (8, True): 0}


def test_layers_of_one_shape_share_a_search() -> None:
    fake = FakeCslt()
    gen = torch.Generator().manual_seed(1)
    same = [CsltLinear(fake, torch.randn(48, 32, generator=gen), None) for _ in range(4)]
    other = CsltLinear(fake, torch.randn(16, 32, generator=gen), None)
    for kernel in same:
        kernel.search(64)
    assert fake.searches == 2  # one per operand order, not per layer
    assert all(k.alg_ids == same[0].alg_ids for k in same)
    other.search(64)
    assert fake.searches == 4  # a new shape searches again


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_bias_epilogue_fused_where_it_agrees(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[str] = []

    def fake_time_pair(torch_mod: Any, fns: Any, x: Any, **kw: Any) -> dict[str, float]:
        timed.append(mode)
        return {"separate": 10.0, "fused": 9.0}

    monkeypatch.setattr(sparse_linear, "time_pair", fake_time_pair)
    fake = FakeCslt()
    gen = torch.Generator().manual_seed(2)
    w, b = torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen)
    kernels = [CsltLinear(fake, w, b, bias_epilogue=mode) for _ in range(3)]
    for kernel in kernels:
        kernel.search(13)
    assert all(k.fused == {(16, False): True, (16, True): True} for k in kernels)
    assert len(timed) == (2 if mode == "auto" else 0)  # one timing per order, shared by shape
    fake.fused_calls = 0
    x = torch.randn(13, 32)
    y = kernels[0](x)
    assert fake.fused_calls == 1
    assert torch.allclose(y, torch.nn.functional.linear(x, w, b), atol=1e-4)


def test_bias_epilogue_auto_keeps_the_separate_add_when_slower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        sparse_linear, "time_pair", lambda *a, **k: {"separate": 10.0, "fused": 11.0}
    )
    fake = FakeCslt()
    kernel = CsltLinear(fake, torch.randn(48, 32), torch.randn(48), bias_epilogue="auto")
    kernel.search(64)
    assert kernel.fused == {(64, False): False, (64, True): False}


@pytest.mark.parametrize("failure", ["raise", "wrong"])
def test_bias_epilogue_that_fails_or_disagrees_is_not_used(failure: str) -> None:
    fake = FakeCslt()
    fake.bias_error = failure
    w, b = torch.randn(48, 32), torch.randn(48)
    kernel = CsltLinear(fake, w, b, bias_epilogue="on")
    kernel.search(8)
    assert kernel.fused == {(8, False): False, (8, True): False}
    x = torch.randn(8, 32)
    assert torch.allclose(kernel(x), torch.nn.functional.linear(x, w, b), atol=1e-4)


def test_bias_epilogue_is_off_by_default_and_without_bias() -> None:
    fake = FakeCslt()
    default = CsltLinear(fake, torch.randn(48, 32), torch.randn(48))
    no_bias = CsltLinear(fake, torch.randn(48, 32), None, bias_epilogue="on")
    for kernel in (default, no_bias):
        kernel.search(8)
        assert kernel.fused == {}
    assert fake.fused_calls == 0
    with pytest.raises(ValueError, match="bias_epilogue"):
        CsltLinear(fake, torch.randn(48, 32), None, bias_epilogue="yes")


def test_bias_epilogue_on_does_not_inherit_an_auto_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both modes loaded in one process (gpu_check's engine_fused step): "auto" timed the
    epilogue slower and kept the separate add; "on" still uses the epilogue where it agrees."""
    monkeypatch.setattr(
        sparse_linear, "time_pair", lambda *a, **k: {"separate": 10.0, "fused": 11.0}
    )
    fake = FakeCslt()
    w, b = torch.randn(48, 32), torch.randn(48)
    auto = CsltLinear(fake, w, b, bias_epilogue="auto")
    auto.search(64)
    on = CsltLinear(fake, w, b, bias_epilogue="on")
    on.search(64)
    assert auto.fused == {(64, False): False, (64, True): False}
    assert on.fused == {(64, False): True, (64, True): True}
