"""Probe which cuSPARSELt call forms work on this GPU, each in its own process.

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
torch.cuda.synchronize()
err = float((y - ref).abs().max())
print("ERR", err)
assert err < 0.5, err
"""

VARIANTS = ("plain", "transpose_result", "bias", "bias_transpose", "search",
            "search_bias_transpose", "semi_structured")  # fmt: skip


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    results = {}
    for variant in VARIANTS:
        try:
            done = subprocess.run([sys.executable, "-c", CASE, variant], capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
            ok = done.returncode == 0
            detail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            ok, detail = False, ["timeout"]
        results[variant] = {"ok": ok, "detail": detail[0][:300]}
        print(f"{variant:24s} {'ok' if ok else 'FAIL'}  {detail[0][:200]}", flush=True)
    (out / "cslt_probe.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
