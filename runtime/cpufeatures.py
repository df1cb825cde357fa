"""CPU features that decide which CPU engine and precision can be fast (Linux /proc/cpuinfo).

int8 GEMMs need VNNI (AVX-512 VNNI or AVX-VNNI) to beat fp32 by much, and OpenVINO's
bf16 / sparse-int8 paths need AMX; without them OpenVINO silently runs f32. Operators
see these flags in ModelConfig parameters next to the measured engine choice, so a
surprising choice can be explained from the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# flag in /proc/cpuinfo -> name shown to operators (in this order)
SHOWN_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}


@dataclass(frozen=True)
class CpuFeatures:
    """What the first logical CPU reports (hosts are homogeneous)."""

    model: str
    flags: frozenset[str]

    @property
    def avx512(self) -> bool:
        """AVX-512 foundation."""
        return "avx512f" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
        return bool({"avx512_vnni", "avx_vnni"} & self.flags)

    @property
    def amx(self) -> bool:
        """AMX tiles with int8 and bf16 (Sapphire Rapids and newer)."""
        return {"amx_tile", "amx_int8", "amx_bf16"} <= self.flags

    @property
    def bf16(self) -> bool:
        """Native bf16 math (AVX-512 BF16 or AMX BF16)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    def summary(self) -> str:
        """Compact one-liner, e.g. 'avx2,avx512,avx512_vnni,amx_int8 (no: amx_bf16)'."""
        have = [shown for flag, shown in SHOWN_FLAGS.items() if flag in self.flags]
        missing = [
            name for name, ok in (("avx512", self.avx512), ("vnni", self.vnni), ("amx", self.amx))
            if not ok
        ]
        text = ",".join(have) or "none of " + ",".join(SHOWN_FLAGS.values())
        return f"{text} (no {'/'.join(missing)})" if missing else text


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Features of the first processor block of a /proc/cpuinfo text."""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if model or flags:
                break  # NOTE: end of the first processor block
            continue
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(model=model, flags=flags)


@functools.lru_cache(maxsize=1)
def detect(path: Path = CPUINFO) -> CpuFeatures:
    """This host's features; empty (no flags) where /proc/cpuinfo is unreadable."""
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        return CpuFeatures(model="", flags=frozenset())
