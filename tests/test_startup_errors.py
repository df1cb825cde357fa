"""Start-up mistakes end the process with a clear message and exit 1, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, ServerProcess


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime", "serve", "--host", "127.0.0.1",
                           "--http-port", "0", *args],
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


def test_http_port_in_use(server: ServerProcess) -> None:
    done = serve("--model-repository", str(server.repo), "--grpc-port", "0",
                 "--metrics-port", "-1", "--http-port", str(server.http_port))  # fmt: skip
    assert done.returncode == 1
    assert f"cannot bind HTTP port 127.0.0.1:{server.http_port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_choice_from_the_environment_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "SPARSE_RUNTIME_GRPC_FRONTEND": "rust"},
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        "--grpc-frontend (or SPARSE_RUNTIME_GRPC_FRONTEND) must be one of auto, python, native"
        in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_out_of_range_flag_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(tmp_path),
         "--grpc-max-message-bytes", str(2**32)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--grpc-max-message-bytes" in done.stderr and "must be in" in done.stderr
    assert "Traceback" not in done.stderr


# A child-process prelude: the native bridge cannot be imported, as where it was never built
HIDE_BRIDGE = (
    "import sys, importlib.abc\n"
    "class Hide(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name.endswith('_grpc_bridge'):\n"
    "            raise ImportError('hidden by the test')\n"
    "sys.meta_path.insert(0, Hide())\n"
    "from runtime.cli import main\n"
)


def test_native_frontend_not_built_is_a_clear_error(tmp_path: Path) -> None:
    """Where the bridge is missing, asking for it says how to get it; no traceback."""
    code = (
        HIDE_BRIDGE
        + f"sys.exit(main(['serve', '--model-repository', {str(tmp_path)!r}, '--host', '127.0.0.1',"
        " '--grpc-port', '0', '--metrics-port', '-1', '--http-port', '-1',"
        " '--grpc-frontend', 'native']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip
    assert done.returncode == 1
    assert "native gRPC frontend is not built here: run `make native`" in done.stderr
    assert "Traceback" not in done.stderr


def test_default_frontend_falls_back_to_grpc_aio_where_the_bridge_is_missing(
    tmp_path: Path,
) -> None:
    """The default (auto) serves with grpc.aio where the bridge is not built, and says why and
    how to build it."""
    port_file = tmp_path / "ports.json"
    code = (
        HIDE_BRIDGE
        + f"sys.exit(main(['serve', '--model-repository', {str(tmp_path)!r}, '--host', '127.0.0.1',"
        f" '--grpc-port', '0', '--metrics-port', '-1', '--port-file', {str(port_file)!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SPARSE_RUNTIME_GRPC_FRONTEND"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert port_file.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "serving gRPC with grpc.aio" in out and "run `make native`" in out
    assert "(python frontend, plaintext)" in out and "Traceback" not in out
