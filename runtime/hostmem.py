"""Keep large host buffers on the malloc heap instead of fresh mmaps (glibc only).

Why: glibc serves every allocation of 32 MiB or more (its largest dynamic mmap threshold) with
a fresh mmap and unmaps it on free (below that, its threshold adapts only after such a free),
so each large tensor pays a page fault per 4 KiB on first touch. `benchmarks/host_alloc_bench.py`
on the dev VM, one output plus its bytes per call: 15.1 -> 2.9 ms at 16 MiB, 29.4 -> 6.6 ms at
32 MiB (1024 rows of 8192 fp32); through the server (`ab_serve.py --batch 1024`), 1.75x the
rows/s at concurrency 1 and 1.54x at 4.
Raising the mmap threshold (and the trim threshold with it, or freed heap goes back to the
kernel and faults in again) makes such buffers reuse heap pages. The cost is resident memory:
up to the trim threshold (twice the setting) of freed heap stays mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOGGER = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 2**31 - 1  # NOTE: glibc rejects an mmap threshold above HEAP_MAX (32-bit)


def thresholds(threshold_bytes: int) -> tuple[int, int]:
    """(mmap threshold, trim threshold) for mallopt, clamped to what glibc accepts."""
    return min(threshold_bytes, MMAP_THRESHOLD_MAX), min(2 * threshold_bytes, MMAP_THRESHOLD_MAX)


def keep_large_buffers(threshold_bytes: int) -> bool:
    """Serve allocations below `threshold_bytes` from the heap and keep twice that of freed
    heap mapped. 0 leaves malloc as it is. Returns whether glibc took both settings."""
    if threshold_bytes <= 0:
        return False
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path) if path else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        LOGGER.info("malloc tuning skipped: no glibc mallopt here")
        return False
    mmap, trim = thresholds(threshold_bytes)
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
    LOGGER.info(
        "malloc: buffers under %d MiB reuse heap pages (up to %d MiB of freed heap kept): %s",
        mmap >> 20,
        trim >> 20,
        "on" if ok else "refused by libc",
    )
    return ok
