"""Start-up mistakes end the process with a clear message and exit 1, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, ServerProcess


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime", "serve", "--host", "127.0.0.1", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip


def test_missing_repository(tmp_path: Path) -> None:
    done = serve("--model-repository", str(tmp_path / "nope"), "--grpc-port", "0")
    assert done.returncode == 1
    assert "is not a directory" in done.stderr and "Traceback" not in done.stderr


def test_grpc_port_in_use(server: ServerProcess) -> None:
    done = serve("--model-repository", str(server.repo), "--grpc-port", str(server.grpc_port),
                 "--metrics-port", "0")  # fmt: skip
    assert done.returncode == 1
    assert f"cannot bind gRPC port 127.0.0.1:{server.grpc_port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_port_in_use(server: ServerProcess) -> None:
    done = serve("--model-repository", str(server.repo), "--grpc-port", "0",
                 "--metrics-port", str(server.metrics_port))  # fmt: skip
    assert done.returncode == 1
    assert "cannot bind metrics port" in done.stderr and "Traceback" not in done.stderr
