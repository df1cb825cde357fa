"""Large host tensors with glibc's malloc defaults vs `runtime.hostmem.keep_large_buffers`.

What a request of R rows x 8192 fp32 costs the host when every step allocates a fresh
buffer (the engine's output, the response bytes): `y = x * 1.0` then `y.tobytes()`. Each
setting runs in its own child process (mallopt is per process); the parent alternates them
for a few rounds and reports medians, so host drift hits both alike. Prints a table and
writes JSON.

    python benchmarks/host_alloc_bench.py [--rows 512,1023,1024,2048] [--rounds 5]
        [--out benchmarks/results/host_alloc.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 8192


def child(rows: list[int], tuned: bool, reps: int) -> dict[str, float]:
    """ms per (allocate output, serialize) at each row count, in this process."""
    import numpy as np

    if tuned:
        sys.path.insert(0, str(ROOT))
        from runtime.hostmem import keep_large_buffers

        keep_large_buffers(64 * 2**20)
    out = {}
    for r in rows:
        x = np.random.default_rng(r).standard_normal((r, WIDTH)).astype(np.float32)
        for _ in range(3):
            (x * 1.0).tobytes()
        t0 = time.perf_counter()
        for _ in range(reps):
            (x * 1.0).tobytes()
        out[str(r)] = (time.perf_counter() - t0) / reps * 1e3
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="512,1023,1024,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/host_alloc.json")
    parser.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",") if r]
    if args.child:
        print(json.dumps(child(rows, args.child == "tuned", args.reps)))
        return 0
    samples: dict[str, dict[str, list[float]]] = {"default": {}, "tuned": {}}
    for _ in range(args.rounds):
        for setting in samples:
            cmd = [sys.executable, __file__, "--child", setting, "--rows", args.rows,
                   "--reps", str(args.reps)]  # fmt: skip
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            for r, ms in got.items():
                samples[setting].setdefault(r, []).append(ms)
    table = []
    for r in rows:
        d = statistics.median(samples["default"][str(r)])
        t = statistics.median(samples["tuned"][str(r)])
        mb = r * WIDTH * 4 / 2**20
        table.append({"rows": r, "mib": mb, "default_ms": d, "tuned_ms": t, "speedup": d / t})
    print(f"host buffers, {WIDTH} fp32 per row, medians of {args.rounds} alternating rounds")
    print("| rows | MiB | default ms | tuned ms | default/tuned |")
    print("|---|---|---|---|---|")
    for row in table:
        print(f"| {row['rows']} | {row['mib']:.1f} | {row['default_ms']:.2f} | "
              f"{row['tuned_ms']:.2f} | {row['speedup']:.2f}x |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": table, "samples": samples}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
