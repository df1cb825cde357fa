"""2:4 linear layers on sparse tensor cores: cuSPARSELt, with CUTLASS as the sm_8x fallback.

Each class computes y = x @ W^T + b for one constant 2:4 weight and keeps its compressed
form to itself (the metadata layout is tied to the kernel that reads it). They share the
small protocol the engine uses: `__call__(x2)`, `search(rows)` and `nbytes`. Also here: the
pure checks of whether a weight can go sparse, and the agreement check against dense.

torch is passed in, never imported here, so a CPU-only install never touches it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from runtime.engines.cuda_graphs import time_pair

LOGGER = logging.getLogger(__name__)
_SEARCHED: dict[tuple[object, ...], int] = {}
"""cuSPARSELt's searched algorithm per (N, K, padded M, operand order, dtype, device)."""
_EPILOGUE: dict[tuple[object, ...], bool] = {}
"""Whether the bias epilogue is used, per the same shape key: one check and timing per shape."""
BIAS_EPILOGUE_MODES = ("off", "on", "auto")
SPARSE_TILE = 16
"""cuSPARSELt fp16/bf16: the compressed weight's rows and columns must be multiples of 16."""
ROW_MULTIPLE = 8
"""Dense-operand rows are padded to this multiple before the sparse kernel (torch does the same)."""


def cusparselt_available(torch: Any) -> bool:
    """True when this torch build can run cuSPARSELt kernels."""
    backend = getattr(torch.backends, "cusparselt", None)
    try:
        ok = bool(backend is not None and backend.is_available())
    except Exception:  # older builds raise instead of returning False
        ok = False
    return ok and hasattr(torch, "_cslt_compress") and hasattr(torch, "_cslt_sparse_mm")


def is_2to4(weight: Any) -> bool:
    """2:4 along K for a torch-layout weight [N, K]: at most 2 non-zeros per 4 along each row."""
    n, k = weight.shape
    if k % 4:
        return False
    return bool(((weight.reshape(n, k // 4, 4) != 0).sum(-1) <= 2).all())


def sparse_eligibility(weight: Any) -> str:
    """'' when the layer can run on sparse tensor cores, else why not."""
    n, k = int(weight.shape[0]), int(weight.shape[1])
    if n % SPARSE_TILE or k % SPARSE_TILE:
        return f"shape {n}x{k} not a multiple of {SPARSE_TILE}"
    if not is_2to4(weight):
        return "weight is not 2:4 along K"
    return ""


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def disagreement(ref: Any, kernel: Callable[[Any], Any], x: Any) -> str:
    """'' when kernel(x) matches the dense reference within fp16 GEMM rounding, else why not.

    Why 1e-2 of the output scale: both kernels accumulate in fp32 and round the output to
    fp16/bf16 (relative 2^-11 / 2^-8); a layout or metadata mistake gives O(1) errors instead.
    """
    try:
        got = kernel(x).float()
    except Exception as exc:
        return f"raised {exc}"
    if tuple(got.shape) != tuple(ref.shape):
        return f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = float((ref - got).abs().max())
    scale = float(ref.abs().max())
    if not err <= 1e-2 * scale + 1e-3:
        return f"disagrees with dense (max err {err:.3g}, scale {scale:.3g})"
    return ""


class CsltLinear:
    """y = x @ W^T + b on cuSPARSELt; the compressed W (values + metadata) never leaves here.

    Works in the transposed space: W_c [N,K] @ x^T [K,M] -> y^T [N,M], and returns the view
    y = (y^T).t(). Elementwise ops keep that layout, so the next sparse layer's x^T is a
    contiguous (row-major) operand and a chain of sparse layers runs with no transposing copy;
    a contiguous x is taken as a column-major operand, also without a copy. cuSPARSELt plans
    per operand order, so the searched algorithm is kept per (padded M, order).
    """

    backend = "cusparselt"

    def __init__(
        self, torch: Any, weight: Any, bias: Any | None, bias_epilogue: str = "off"
    ) -> None:
        self._torch = torch
        self.packed = torch._cslt_compress(weight.contiguous())
        self.bias = bias
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.alg_ids: dict[tuple[int, bool], int] = {}
        # NOTE: measured on an H200 (torch 2.11, cuSPARSELt 0.8.0, CUDA-graph replays): the
        # plain form W_c @ x^T with a searched algorithm beat cuBLAS up to 1.54x on 8192^2,
        # while the fused bias + transpose_result form only had alg 0 (its search failed
        # and broke the CUDA context) and ran at 0.16-0.55x. So: plain form, bias added after.
        # The bias epilogue on the plain form (searched without bias, run with it) saves one
        # pass over the output; not yet measured on a GPU, so it is opt-in ("on" once checked
        # against the separate add, "auto" only where also timed faster) per (padded M, order).
        if bias_epilogue not in BIAS_EPILOGUE_MODES:
            raise ValueError(f"bias_epilogue must be one of {BIAS_EPILOGUE_MODES}")
        self.bias_epilogue = bias_epilogue if bias is not None else "off"
        self.fused: dict[tuple[int, bool], bool] = {}

    @property
    def nbytes(self) -> int:
        return int(self.packed.numel() * self.packed.element_size())

    @staticmethod
    def operand(x2: Any) -> tuple[Any, bool]:
        """(x^T as cuSPARSELt's dense operand, row-major?) without a copy where possible."""
        xt = x2.t()
        if xt.is_contiguous():
            return xt, True
        if x2.is_contiguous():
            return xt, False
        return x2.contiguous().t(), False

    def __call__(self, x2: Any) -> Any:
        return self.forward(x2)

    def forward(self, x2: Any, fused: bool | None = None) -> Any:
        """y for x2 [M, K]; `fused` overrides the per-(M, order) bias-epilogue choice."""
        m = int(x2.shape[0])
        padded = round_up(max(m, 1), ROW_MULTIPLE)
        if padded != m:
            x2 = self._torch.nn.functional.pad(x2, (0, 0, 0, padded - m))
        xt, row_major = self.operand(x2)
        key = (padded, row_major)
        alg = self.alg_ids.get(key, 0)
        if fused is None:
            fused = self.fused.get(key, False)
        if self.bias is not None and fused:
            yt = self._torch._cslt_sparse_mm(self.packed, xt, bias=self.bias, alg_id=alg)
        else:
            yt = self._torch._cslt_sparse_mm(self.packed, xt, alg_id=alg)
            if self.bias is not None:
                yt.add_(self.bias[:, None])  # NOTE: in place on the fresh [N, M] output
        y = yt.t()
        return y[:m] if padded != m else y

    def search(self, rows: int) -> int:
        """Pick cuSPARSELt's tuned algorithm for this M, for both operand orders, once (and
        whether to fuse the bias, when asked to).

        Returns the column-major (contiguous input) choice; 0 wherever the search fails.
        """
        torch = self._torch
        padded = round_up(max(rows, 1), ROW_MULTIPLE)
        for row_major in (False, True):
            key = (padded, row_major)
            if key in self.alg_ids:
                continue
            x = torch.randn(
                padded, self.in_features, device=self.packed.device, dtype=self.packed.dtype
            )
            if row_major:
                x = x.t().contiguous().t()
            # NOTE: the choice depends on the problem's shape, not its values, so layers of
            # one shape share a search (a 6-layer BERT has 36 linears but 3 shapes)
            shape_key = (self.out_features, self.in_features, *key, str(self.packed.dtype),
                         str(self.packed.device))  # fmt: skip
            alg = self._search_alg(x, key, shape_key)
            self.alg_ids[key] = alg
            if self.bias_epilogue != "off":
                # NOTE: the mode is part of the key: "on" must not inherit an "auto" timing
                self.fused[key] = self._choose_epilogue(x, (*shape_key, alg, self.bias_epilogue))
        return self.alg_ids[(padded, False)]

    def _search_alg(self, x: Any, key: tuple[int, bool], shape_key: tuple[object, ...]) -> int:
        """cuSPARSELt's searched algorithm for x's problem, checked against alg 0; else 0."""
        torch = self._torch
        if not hasattr(torch, "_cslt_sparse_mm_search") or (
            os.environ.get("SPARSE_RUNTIME_CSLT_SEARCH", "1") != "1"
        ):
            return 0
        try:
            if shape_key in _SEARCHED:
                alg = _SEARCHED[shape_key]
            else:
                found = torch._cslt_sparse_mm_search(self.packed, self.operand(x)[0])
                alg = int(found[0] if isinstance(found, (tuple, list)) else found)
                _SEARCHED[shape_key] = alg
            self.alg_ids[key] = 0
            ref = self.forward(x, fused=False)
            self.alg_ids[key] = alg
            got = self.forward(x, fused=False)
            if not torch.allclose(ref.float(), got.float(), rtol=1e-2, atol=1e-2):
                raise RuntimeError("searched algorithm disagrees with alg 0")
            return alg
        except Exception as exc:  # a bad alg id must never break serving
            LOGGER.warning(
                "cuSPARSELt alg search failed for M=%d (%s operand): %s",
                key[0],
                "row-major" if key[1] else "column-major",
                exc,
            )
            return 0

    def _choose_epilogue(self, x: Any, shape_key: tuple[object, ...]) -> bool:
        """Fuse the bias into the GEMM for x's (M, order)? Only if it matches the separate add
        (and, under "auto", times faster in CUDA graphs); any failure keeps the separate add."""
        if shape_key in _EPILOGUE:
            return _EPILOGUE[shape_key]
        torch = self._torch
        try:
            ref = self.forward(x, fused=False)
            got = self.forward(x, fused=True)
            if not torch.allclose(ref.float(), got.float(), rtol=1e-2, atol=1e-2):
                raise RuntimeError("bias epilogue disagrees with the separate add")
            use = True
            if self.bias_epilogue == "auto":
                r = time_pair(
                    torch,
                    {
                        "separate": lambda v: self.forward(v, fused=False),
                        "fused": lambda v: self.forward(v, fused=True),
                    },
                    x,
                )
                fused_us, separate_us = r.get("fused"), r.get("separate")
                use = fused_us is not None and separate_us is not None and fused_us < separate_us
                LOGGER.info(
                    "bias epilogue at M=%d: fused %s us, separate %s us -> %s",
                    int(x.shape[0]), fused_us, separate_us, "fused" if use else "separate",
                )  # fmt: skip
        except Exception as exc:  # an unsupported epilogue must never break serving
            LOGGER.warning("cuSPARSELt bias epilogue unusable at M=%d: %s", int(x.shape[0]), exc)
            use = False
        _EPILOGUE[shape_key] = use
        return use


class SemiStructuredLinear:
    """Fallback via torch.sparse.to_sparse_semi_structured (CUTLASS on sm_8x)."""

    backend = "semi_structured"

    def __init__(self, torch: Any, weight: Any, bias: Any | None) -> None:
        self._torch = torch
        self.weight = torch.sparse.to_sparse_semi_structured(weight.contiguous())
        self.bias = bias

    @property
    def nbytes(self) -> int:
        names, _ = self.weight.__tensor_flatten__()
        total = 0
        for name in names:
            t = getattr(self.weight, name, None)
            if t is not None:
                total += int(t.numel() * t.element_size())
        return total

    def __call__(self, x2: Any) -> Any:
        m = int(x2.shape[0])
        padded = round_up(max(m, 1), 32)
        if padded != m:
            x2 = self._torch.nn.functional.pad(x2, (0, 0, 0, padded - m))
        y = self._torch.nn.functional.linear(x2, self.weight, self.bias)
        return y[:m] if padded != m else y

    def search(self, rows: int) -> int:
        return 0

