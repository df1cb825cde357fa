"""cuSPARSELt with a searched algorithm vs alg 0 vs cuBLAS, fp16, plain call form.

On an H200 (torch 2.11, cuSPARSELt 0.8.0) `_cslt_sparse_mm_search` failed with
bias + transpose_result (and broke the CUDA context) but worked in the plain
form, so this measures the plain form: y^T = W_c @ x^T. Prints a table, writes JSON.

    python benchmarks/gpu_cslt_search_bench.py [OUTDIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SHAPES = ((8192, 8192), (3072, 10240), (4096, 4096))
# timings are CUDA-graph replays, as the engine runs them
ROWS = (64, 256, 1024, 4096)


def timed(fn, reps: int = 30) -> float:  # noqa: ANN001
    """Median µs of one call replayed from a CUDA graph (no per-call host planning)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    fn = graph.replay
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    rows = []
    for k, n in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.float16)
        w = w * torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.float16).repeat(n, k // 4)
        wc = torch._cslt_compress(w)
        for m in ROWS:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            xt = x.t()
            alg = int(torch._cslt_sparse_mm_search(wc, xt))
            ref = (x @ w.t()).float()
            got = torch._cslt_sparse_mm(wc, xt, alg_id=alg).t().float()
            err = float((got - ref).abs().max() / ref.abs().max())
            dense = timed(lambda: torch.nn.functional.linear(x, w))  # noqa: B023
            sp0 = timed(lambda: torch._cslt_sparse_mm(wc, xt))  # noqa: B023
            spa = timed(lambda: torch._cslt_sparse_mm(wc, xt, alg_id=alg))  # noqa: B023
            row = {"M": m, "K": k, "N": n, "dense_us": dense, "sparse_alg0_us": sp0,
                   "sparse_searched_us": spa, "alg_id": alg, "speedup_searched": dense / spa,
                   "speedup_alg0": dense / sp0, "rel_err": err}  # fmt: skip
            rows.append(row)
            print(f"M={m:5d} K={k:5d} N={n:5d} dense {dense:8.1f}us alg0 {sp0:8.1f}us "
                  f"searched(alg {alg}) {spa:8.1f}us  speedup {dense / spa:5.2f}x  err {err:.1e}",
                  flush=True)  # fmt: skip
            (out / "cslt_search.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
