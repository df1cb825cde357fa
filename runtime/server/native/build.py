"""Build the native gRPC bridge next to its source: `python -m runtime.server.native.build`.

Optional: it needs g++, pkg-config, Debian's libgrpc++-dev and pybind11. `make install`
runs it and carries on without it (the grpc.aio frontend needs none of this), so the
command exits 0 with a reason when something is missing, and 1 only when a compile that
had everything it needs fails.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "grpc_bridge.cc"
HEADERS = tuple(sorted(HERE.glob("*.h")))  # included by SOURCE (and packaged with it)
MODULE = "_grpc_bridge"


def target() -> Path:
    return HERE / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"


def missing() -> str:
    """Why the bridge cannot be built here, or '' when it can."""
    for tool in ("g++", "pkg-config"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    probe = subprocess.run(["pkg-config", "--exists", "grpc++"], capture_output=True)
    if probe.returncode != 0:
        return "grpc++ not found by pkg-config (apt install libgrpc++-dev)"
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "pybind11 not installed (pip install pybind11)"
    return ""


def compile_command(out: Path) -> list[str]:
    import pybind11

    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "grpc++"], check=True, capture_output=True, text=True
    ).stdout.split()
    return [
        "g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
        f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}",
        str(SOURCE), "-o", str(out), *flags,
    ]  # fmt: skip


def build(force: bool = False) -> tuple[Path | None, str]:
    """(module path, '') when built or up to date; (None, reason) otherwise."""
    out = target()
    newest = max(path.stat().st_mtime for path in (SOURCE, *HEADERS))
    if not force and out.exists() and out.stat().st_mtime >= newest:
        return out, ""
    reason = missing()
    if reason:
        return None, reason
    tmp = out.with_suffix(".tmp")
    done = subprocess.run(compile_command(tmp), capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        return None, f"compile failed:\n{done.stderr[-4000:]}"
    tmp.replace(out)
    return out, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    out, reason = build(args.force)
    if out is not None:
        print(f"native gRPC frontend: {out.name}")
        return 0
    print(f"native gRPC frontend not built: {reason}", file=sys.stderr)
    return 1 if reason.startswith("compile failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
