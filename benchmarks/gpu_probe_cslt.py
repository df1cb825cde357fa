"""Probe which cuSPARSELt call forms work on this GPU, each in its own process.

`time_bias_8192` also times the bias epilogue against the engine's separate in-place add
(8192x8192, row-major operand, searched algorithm), the next step the engine could take.

A failing cuSPARSELt call can leave the CUDA context unusable (seen on an H200
with cuSPARSELt 0.8.0: an "internal error" from the algorithm search, then
"illegal instruction" for every later kernel), so every variant runs in a fresh
subprocess and reports ok / error. Prints one line per variant, writes JSON.

    python benchmarks/gpu_probe_cslt.py [OUTDIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CASE = r"""
import sys, torch


def fused_bias_timing():
    # us per call, CUDA-graph replays: searched alg + separate in-place bias add, vs the same
    # alg with cuSPARSELt's bias epilogue; 8192x8192, the engine's row-major operand
    out = []
    n = k = 8192
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    w = w * torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(n, k // 4)
    c = torch._cslt_compress(w)
    b = torch.randn(n, device="cuda", dtype=torch.float16)
    for m in (64, 256, 1024):
        xt = torch.randn(k, m, device="cuda", dtype=torch.float16)
        alg = int(torch._cslt_sparse_mm_search(c, xt))
        ref = (w.float() @ xt.float() + b.float()[:, None])
        fns = {
            "unfused": lambda: torch._cslt_sparse_mm(c, xt, alg_id=alg).add_(b[:, None]),
            "fused": lambda: torch._cslt_sparse_mm(c, xt, bias=b, alg_id=alg),
        }
        row = [f"M={m} alg={alg}"]
        for name, fn in fns.items():
            err = float((fn().float() - ref).abs().max() / ref.abs().max())
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                for _ in range(10):
                    fn()
            times = []
            for _ in range(7):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record(); g.replay(); e1.record(); e1.synchronize()
                times.append(e0.elapsed_time(e1) * 100.0)
            row.append(f"{name} {sorted(times)[3]:.1f}us err {err:.1e}")
        out.append("; ".join(row))
    return " | ".join(out)


variant = sys.argv[1]
torch.manual_seed(0)
n, k, m = 1024, 1024, 64
w = torch.randn(n, k, device="cuda", dtype=torch.float16)
mask = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(n, k // 4)
w = w * mask
b = torch.randn(n, device="cuda", dtype=torch.float16)
x = torch.randn(m, k, device="cuda", dtype=torch.float16)
ref = (x @ w.t()).float()
if variant == "semi_structured":
    ws = torch.sparse.to_sparse_semi_structured(w)
    y = torch.nn.functional.linear(x, ws).float()
else:
    c = torch._cslt_compress(w)
    if variant == "plain":
        y = torch._cslt_sparse_mm(c, x.t()).t().float()
    elif variant == "transpose_result":
        y = torch._cslt_sparse_mm(c, x.t(), transpose_result=True).float()
    elif variant == "bias":
        y = (torch._cslt_sparse_mm(c, x.t(), bias=b).t().float() - b.float())
    elif variant == "bias_transpose":
        y = (torch._cslt_sparse_mm(c, x.t(), bias=b, transpose_result=True).float() - b.float())
    elif variant == "search":
        alg = torch._cslt_sparse_mm_search(c, x.t())
        y = torch._cslt_sparse_mm(c, x.t(), alg_id=int(alg)).t().float()
    elif variant == "search_bias_transpose":
        alg = torch._cslt_sparse_mm_search(c, x.t(), bias=b, transpose_result=True)
        y = torch._cslt_sparse_mm(c, x.t(), bias=b, transpose_result=True, alg_id=int(alg))
        y = y.float() - b.float()
    elif variant == "search_bias":
        alg = torch._cslt_sparse_mm_search(c, x.t(), bias=b)
        y = torch._cslt_sparse_mm(c, x.t(), bias=b, alg_id=int(alg)).t().float() - b.float()
    elif variant == "bias_searched_alg":  # searched without bias, run with it
        alg = torch._cslt_sparse_mm_search(c, x.t())
        y = torch._cslt_sparse_mm(c, x.t(), bias=b, alg_id=int(alg)).t().float() - b.float()
    elif variant == "bias_rowmajor":  # x^T row-major: the engine's chained operand
        y = torch._cslt_sparse_mm(c, x.t().contiguous(), bias=b).t().float() - b.float()
    elif variant == "time_bias_8192":
        print(fused_bias_timing())
        y = ref
torch.cuda.synchronize()
err = float((y - ref).abs().max())
print("ERR", err)
assert err < 0.5, err
"""

# NOTE: the variants the engine's bias epilogue depends on first (not run on a GPU yet); run 1
# (2026-11-27) already answered the others, which come last and may be cut by the budget
VARIANTS = ("bias_searched_alg", "bias_rowmajor", "time_bias_8192", "search_bias", "plain",
            "transpose_result", "bias", "bias_transpose", "search", "search_bias_transpose",
            "semi_structured")  # fmt: skip


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    results = {}
    for variant in VARIANTS:
        try:
            done = subprocess.run([sys.executable, "-c", CASE, variant], capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
            ok = done.returncode == 0
            lines = (done.stdout + done.stderr).strip().splitlines()
            timing = [ln for ln in lines if ln.startswith("M=")]
            detail = timing or lines[-1:] or [""]
        except subprocess.TimeoutExpired:
            ok, detail = False, ["timeout"]
        results[variant] = {"ok": ok, "detail": detail[0][:600]}
        print(f"{variant:24s} {'ok' if ok else 'FAIL'}  {detail[0][:600]}", flush=True)
        # NOTE: after every variant, so a step cut short by its timeout keeps what it found
        (out / "cslt_probe.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
