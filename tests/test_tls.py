"""TLS and mutual TLS on gRPC (Triton's --grpc-use-ssl* flags), both frontends, real
handshakes with tritonclient; certificates made at test time (tests/tls_certs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import (
    ROOT,
    ServerProcess,
    copy_repo,
    native_bridge_missing,
    start_server,
    wait_for,
)
from tls_certs import Ca, Pair, live_copy, make_pki
from tritonclient.utils import InferenceServerException

FRONTENDS = [
    "python",
    pytest.param("native", marks=pytest.mark.skipif(bool(native_bridge_missing()),
                                                    reason="native bridge not built")),
]  # fmt: skip


def _client(srv: ServerProcess, root: Path | None, pair: Pair | None = None) -> Any:
    return grpcclient.InferenceServerClient(
        srv.url, ssl=True,
        root_certificates=str(root) if root else None,
        private_key=str(pair.key) if pair else None,
        certificate_chain=str(pair.cert) if pair else None,
    )  # fmt: skip


def _infer_ok(client: grpcclient.InferenceServerClient) -> bool:
    x = np.ones((1, 256), np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp_dense", [inp], client_timeout=20).as_numpy("y").shape == (1, 256)


def _refused(client: grpcclient.InferenceServerClient) -> bool:
    try:
        client.is_server_live(client_timeout=5)
    except InferenceServerException:
        return True
    return False


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=FRONTENDS)
def mutual(request: pytest.FixtureRequest, pki: dict[str, Any], sample_repo: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server under mutual TLS whose certificate files the tests may rotate."""
    tmp = tmp_path_factory.mktemp(f"mtls-{request.param}")
    repo = tmp / "repo"
    copy_repo(sample_repo / "mlp_dense", repo / "mlp_dense")
    live = live_copy(pki["server"], tmp)
    srv = start_server(repo, tmp, ["--grpc-frontend", request.param,
                                   "--grpc-use-ssl-mutual", "true",
                                   "--grpc-server-cert", str(live.cert),
                                   "--grpc-server-key", str(live.key),
                                   "--grpc-root-cert", str(pki["ca"].path)])  # fmt: skip
    srv.live = live  # type: ignore[attr-defined]
    srv.frontend = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_mutual_tls_client_with_our_ca_cert_is_served(mutual: ServerProcess, pki: dict) -> None:
    client = _client(mutual, pki["ca"].path, pki["client"])
    assert client.is_server_ready()
    assert _infer_ok(client)
    assert "mutual TLS" in mutual.log_text()


def test_plaintext_client_on_tls_port_fails(mutual: ServerProcess) -> None:
    assert _refused(grpcclient.InferenceServerClient(mutual.url))


def test_mutual_tls_refuses_no_cert_and_other_ca(mutual: ServerProcess, pki: dict) -> None:
    assert _refused(_client(mutual, pki["ca"].path))  # TLS, but no client certificate
    assert _refused(_client(mutual, pki["ca"].path, pki["stranger"]))  # another CA's
    assert not _refused(_client(mutual, pki["ca"].path, pki["client"]))  # still serving


def test_rotated_certificate_applies_without_restart(mutual: ServerProcess, pki: dict) -> None:
    """New files (a server certificate from another CA, the client CA unchanged) are
    picked up for new connections: python frontend on the next handshake, native within
    its file-watch interval."""
    rotated_ca = Ca(pki["tmp"] / f"rotated-{mutual.frontend}", "rotated-ca")  # type: ignore
    fresh = rotated_ca.issue("server2")
    live: Pair = mutual.live  # type: ignore[attr-defined]
    # NOTE: as a Kubernetes Secret update does it: new files, then swapped in by rename
    for src, dst in ((fresh.key, live.key), (fresh.cert, live.cert)):
        shutil.copy(src, dst.with_suffix(".new"))
        os.replace(dst.with_suffix(".new"), dst)
    assert wait_for(lambda: _infer_ok_quiet(_client(mutual, rotated_ca.path, pki["client"])),
                    timeout=20, interval=0.5)  # fmt: skip
    assert _refused(_client(mutual, pki["ca"].path, pki["client"]))  # old trust: old cert gone
    assert "reloaded" in mutual.log_text() or mutual.frontend == "native"  # type: ignore


def _infer_ok_quiet(client: grpcclient.InferenceServerClient) -> bool:
    try:
        return _infer_ok(client)
    except InferenceServerException:
        return False


def _serve_fails(tmp: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runtime", "serve", "--model-repository", str(tmp),
           "--grpc-port", "0", "--metrics-port", "-1", *flags]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bad_cert_files_name_the_file_and_exit_1(pki: dict, tmp_path: Path) -> None:
    server, other = pki["server"], pki["stranger"]
    missing = tmp_path / "nope.crt"
    done = _serve_fails(tmp_path, "--grpc-use-ssl", "true", "--grpc-server-cert", str(missing),
                        "--grpc-server-key", str(server.key))  # fmt: skip
    assert done.returncode == 1 and str(missing) in done.stderr, done.stderr
    done = _serve_fails(tmp_path, "--grpc-use-ssl", "true", "--grpc-server-cert",
                        str(server.cert), "--grpc-server-key", str(other.key))  # fmt: skip
    assert done.returncode == 1 and "does not match" in done.stderr, done.stderr
    assert str(other.key) in done.stderr
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    done = _serve_fails(tmp_path, "--grpc-use-ssl", "true", "--grpc-server-cert",
                        str(server.cert), "--grpc-server-key", str(garbage))  # fmt: skip
    assert done.returncode == 1 and str(garbage) in done.stderr, done.stderr
    done = _serve_fails(tmp_path, "--grpc-use-ssl-mutual", "true", "--grpc-server-cert",
                        str(server.cert), "--grpc-server-key", str(server.key))  # fmt: skip
    assert done.returncode == 1 and "--grpc-root-cert" in done.stderr, done.stderr


def test_health_command_speaks_tls(mutual: ServerProcess, pki: dict) -> None:
    if mutual.frontend != "python":  # type: ignore[attr-defined]
        pytest.skip("one frontend is enough for the client side")
    live: Pair = mutual.live  # type: ignore[attr-defined]
    base = [sys.executable, "-m", "runtime", "health", "--url", mutual.url, "--timeout", "30",
            "--ssl"]  # NOTE: a generous timeout: the test host may be loaded
    # NOTE: trust whichever CA signs the live certificate now (the rotation test may run first)
    roots = pki["tmp"] / "roots.pem"
    roots.write_bytes(b"".join(p.read_bytes() for p in pki["tmp"].rglob("*ca.pem")))
    ok = subprocess.run([*base, "--root-cert", str(roots), "--client-cert",
                         str(pki["client"].cert), "--client-key", str(pki["client"].key)],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    bad = subprocess.run([*base, "--root-cert", str(roots)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "unhealthy" in bad.stderr
    # the image's HEALTHCHECK: no flags, TLS settings from the environment
    env = {**os.environ, "SPARSE_RUNTIME_HEALTH_SSL": "true",
           "SPARSE_RUNTIME_HEALTH_ROOT_CERT": str(roots),
           "SPARSE_RUNTIME_HEALTH_CLIENT_CERT": str(pki["client"].cert),
           "SPARSE_RUNTIME_HEALTH_CLIENT_KEY": str(pki["client"].key)}  # fmt: skip
    by_env = subprocess.run(base[:-1], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=env)  # fmt: skip
    assert by_env.returncode == 0 and "SERVING" in by_env.stdout, by_env.stderr
    assert live.cert.exists()


def test_compare_command_speaks_mutual_tls(mutual: ServerProcess, pki: dict,
                                           tmp_path: Path) -> None:
    if mutual.frontend != "python":  # type: ignore[attr-defined]
        pytest.skip("one frontend is enough for the client side")
    pytest.importorskip("matplotlib")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(b"".join(p.read_bytes() for p in pki["tmp"].rglob("*ca.pem")))
    cmd = [sys.executable, "-m", "runtime", "compare", "--url", mutual.url,
           "--models", "mlp_dense", "--concurrency", "1", "--batch", "1",
           "--duration", "300ms", "--agreement-rows", "2", "--no-progress",
           "--out", str(tmp_path / "report"), "--root-cert", str(roots),
           "--client-cert", str(pki["client"].cert), "--client-key", str(pki["client"].key)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report" / "report.json").exists()
