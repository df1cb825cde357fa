"""Real Triton as a benchmark peer: its venv, its model repository, its server process.

The `nvidia-pytriton` wheel ships a real `tritonserver` (2.51 in 0.7.0) with the python
backend but no onnxruntime backend, so each model runs in a python-backend `model.py`
(benchmarks/triton_peer/onnx_model.py) that calls onnxruntime with default session options,
as Triton's onnxruntime backend does. The Triton config is made from ours: the same
max_batch_size, inputs, outputs, dynamic batching, instance groups and parameters.
How tritonserver starts from the wheel: ../shared/README.md, "Real Triton as a
benchmark peer".
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

HERE = Path(__file__).resolve().parent
MODEL_PY = HERE / "onnx_model.py"
PYTRITON = "nvidia-pytriton==0.7.0"  # ships tritonserver 2.51


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's tritonserver is and what it needs to start."""

    venv: Path
    binary: Path
    backend_dir: Path
    env: dict[str, str]


def _packages() -> list[str]:
    """The wheel, plus the onnxruntime our server runs (same kernels on both sides)."""
    try:
        ort = f"onnxruntime=={metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:
        ort = "onnxruntime"
    return [PYTRITON, ort, "numpy"]


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_facts(venv: Path) -> tuple[Path, str, str]:
    """(site-packages, 'X.Y', Python's LIBDIR) of the venv's interpreter."""
    code = (
        "import site, sys, sysconfig; print(site.getsitepackages()[0]); "
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
        "print(sysconfig.get_config_var('LIBDIR'))"
    )
    out = subprocess.run([str(_venv_python(venv)), "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout.split("\n")  # fmt: skip
    return Path(out[0]), out[1], out[2]


def ensure_installed(venv: Path) -> TritonInstall:
    """Create the venv and install the wheel once (a stamp per package set), then locate it."""
    packages = _packages()
    stamp = venv / (".installed-" + "+".join(p.replace("==", "-") for p in packages))
    if not stamp.exists():
        print(f"installing {' '.join(packages)} into {venv} (first run only)", flush=True)
        if not _venv_python(venv).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        pip = subprocess.run(
            [str(_venv_python(venv)), "-m", "pip", "install", "-q", *packages],
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        if pip.returncode != 0:
            lines = pip.stderr.strip().splitlines()
            tail = "\n".join(([x for x in lines if not x.startswith("WARNING")] or lines)[-15:])
            raise SystemExit(
                f"pip could not install {' '.join(packages)} into {venv} "
                f"(exit {pip.returncode}); the Triton peer needs the nvidia-pytriton wheel "
                f"(it ships tritonserver). pip said:\n{tail}"
            )
    site, pyver, libdir = _venv_facts(venv)
    server = site / "pytriton" / "tritonserver"
    binary = server / "bin" / "tritonserver"
    stubs = server / "python_backend_stubs" / pyver
    if not binary.exists() or not stubs.is_dir():
        raise SystemExit(
            f"{venv}: no tritonserver or no python-backend stub for Python {pyver} "
            f"(looked for {binary} and {stubs}); remove {venv} to reinstall"
        )
    backend_dir = venv / "triton-backends"
    python_backend = backend_dir / "python"
    if not stamp.exists() or not python_backend.is_dir():
        # NOTE: the backend dir is the wheel's python backend with the stub for this Python
        shutil.rmtree(backend_dir, ignore_errors=True)
        python_backend.mkdir(parents=True)
        for source in (server / "backends" / "python", stubs):
            for f in source.iterdir():
                if f.is_file():
                    shutil.copy2(f, python_backend / f.name)
        stamp.touch()
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (libdir, str(site / "nvidia_pytriton.libs"),
                        os.environ.get("LD_LIBRARY_PATH", "")) if p  # fmt: skip
        ),
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join((str(venv / "bin"), os.environ.get("PATH", ""))),
        "PYTHONPATH": str(site),
    }
    return TritonInstall(venv, binary, backend_dir, env)


def triton_config(ours: mc.ModelConfig) -> mc.ModelConfig:
    """Our model's config as a python-backend Triton config with the same batching."""
    config = mc.ModelConfig()
    config.name = ours.name
    config.backend = "python"
    config.max_batch_size = ours.max_batch_size
    config.input.extend(ours.input)
    config.output.extend(ours.output)
    if ours.HasField("dynamic_batching"):
        config.dynamic_batching.CopyFrom(ours.dynamic_batching)
    for group in ours.instance_group:
        config.instance_group.add(count=group.count or 1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for key, value in ours.parameters.items():
        config.parameters[key].string_value = value.string_value
    return config


def write_model(repo: Path, ours: mc.ModelConfig, onnx_file: Path) -> Path:
    """<repo>/<name>/{config.pbtxt, 1/model.py, 1/model.onnx} for the python backend."""
    model_dir = repo / ours.name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(triton_config(ours)))
    shutil.copy2(MODEL_PY, version / "model.py")
    target = version / "model.onnx"
    target.unlink(missing_ok=True)
    target.symlink_to(onnx_file.resolve())
    return model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonServer:
    """A running tritonserver (own process group: its python stubs go with it)."""

    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    log: Path


def start(install: TritonInstall, repo: Path, log: Path) -> TritonServer:
    """Start tritonserver on free loopback ports; `wait_ready` waits for it."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [str(install.binary), "--model-repository", str(repo),
           "--backend-directory", str(install.backend_dir),
           "--grpc-address", "127.0.0.1", "--http-address", "127.0.0.1",
           "--grpc-port", str(grpc_port), "--http-port", str(http_port),
           "--metrics-port", str(metrics_port), "--log-verbose", "0"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=install.env,
                                start_new_session=True)  # fmt: skip
    return TritonServer(proc, grpc_port, http_port, metrics_port, log)


def wait_ready(server: TritonServer, timeout_s: float) -> None:
    """Until ServerReady (every model loaded); the log's tail in the error otherwise."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            if client.is_server_ready():
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.5)
    tail = server.log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"tritonserver not ready in {timeout_s:.0f} s:\n{tail}")


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process's group (a server and what it spawned), SIGKILL what stays."""
    import psutil

    if proc.poll() is not None:
        return
    try:
        parent = psutil.Process(proc.pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # NOTE: started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    for member in family:  # NOTE: psutil checks the start time, so a reused pid is left alone
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        print(f"warning: process {proc.pid} did not exit after SIGKILL", flush=True)
