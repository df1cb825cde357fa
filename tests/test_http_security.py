"""HTTPS, mutual TLS and --http-restricted-api on the KServe v2 HTTP/REST endpoint, through
the real server: tritonclient.http with ssl_options, and plain `ssl`/urllib clients for the
refusals; certificates made at test time (tests/tls_certs.py)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import ROOT, ServerProcess, copy_repo, start_server, wait_for
from tls_certs import Ca, Pair, live_copy, make_pki

INFER_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32",
                                     "data": [1.0] * 256}]}).encode()  # fmt: skip


def _https(srv: ServerProcess, path: str, ca: Path, pair: Pair | None = None,
           body: bytes | None = None, headers: dict[str, str] | None = None,
           scheme: str = "https") -> tuple[int, bytes]:  # fmt: skip
    """(status, body) of one request; raises OSError when TLS refuses it."""
    context = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        context.load_cert_chain(str(pair.cert), str(pair.key))
    request = urllib.request.Request(f"{scheme}://{srv.http_url}{path}", data=body,
                                     headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _refused(srv: ServerProcess, ca: Path, pair: Pair | None = None, scheme: str = "https") -> bool:
    try:
        _https(srv, "/v2/health/live", ca, pair, scheme=scheme)
    except (OSError, http.client.HTTPException):  # URLError, SSLError, reset, EOF
        return True
    return False


def _client(srv: ServerProcess, ca: Path, pair: Pair | None) -> httpclient.InferenceServerClient:
    options: dict[str, Any] = {"ca_certs": str(ca)}
    if pair is not None:
        options.update(certfile=str(pair.cert), keyfile=str(pair.key))
    return httpclient.InferenceServerClient(srv.http_url, ssl=True, ssl_options=options,
                                            network_timeout=20)  # fmt: skip


def _infer_ok(client: httpclient.InferenceServerClient) -> bool:
    x = np.ones((1, 256), np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("mlp_dense", [inp]).as_numpy("y").shape == (1, 256)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_pki(tmp_path_factory.mktemp("http-pki"))


@pytest.fixture(scope="module")
def mutual(pki: dict[str, Any], sample_repo: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:  # fmt: skip
    """HTTP under mutual TLS (gRPC left plaintext); the tests may rotate its files."""
    tmp = tmp_path_factory.mktemp("https-mutual")
    copy_repo(sample_repo / "mlp_dense", tmp / "repo" / "mlp_dense")
    live = live_copy(pki["server"], tmp)
    srv = start_server(tmp / "repo", tmp, ["--http-use-ssl-mutual", "true",
                                           "--http-server-cert", str(live.cert),
                                           "--http-server-key", str(live.key),
                                           "--http-root-cert", str(pki["ca"].path)])  # fmt: skip
    srv.live = live  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_mutual_tls_tritonclient_http_is_served(mutual: ServerProcess, pki: dict) -> None:
    client = _client(mutual, pki["ca"].path, pki["client"])
    assert client.is_server_ready()
    assert _infer_ok(client)
    assert "(mutual TLS)" in mutual.log_text()


def test_plaintext_client_on_https_port_fails(mutual: ServerProcess, pki: dict) -> None:
    assert _refused(mutual, pki["ca"].path, pki["client"], scheme="http")
    with pytest.raises(Exception):  # noqa: B017 - geventhttpclient's error type varies
        httpclient.InferenceServerClient(mutual.http_url, network_timeout=10).is_server_live()


def test_mutual_tls_refuses_no_cert_and_other_ca(mutual: ServerProcess, pki: dict) -> None:
    assert _refused(mutual, pki["ca"].path)  # TLS, but no client certificate
    assert _refused(mutual, pki["ca"].path, pki["stranger"])  # another CA's certificate
    assert not _refused(mutual, pki["ca"].path, pki["client"])  # still serving


def test_rotated_certificate_applies_without_restart(mutual: ServerProcess, pki: dict) -> None:
    """A server certificate from another CA swapped in by rename (as a Kubernetes Secret
    update does) serves the next handshake; the client CA (--http-root-cert) is unchanged."""
    rotated_ca = Ca(pki["tmp"] / "rotated", "rotated-ca")
    fresh = rotated_ca.issue("server2")
    live: Pair = mutual.live  # type: ignore[attr-defined]
    for src, dst in ((fresh.key, live.key), (fresh.cert, live.cert)):
        shutil.copy(src, dst.with_suffix(".new"))
        os.replace(dst.with_suffix(".new"), dst)
    assert wait_for(lambda: not _refused(mutual, rotated_ca.path, pki["client"]), timeout=20,
                    interval=0.5)  # fmt: skip
    assert _infer_ok(_client(mutual, rotated_ca.path, pki["client"]))
    assert _refused(mutual, pki["ca"].path, pki["client"])  # the old certificate is gone
    assert "reloaded" in mutual.log_text()


def test_http_files_default_to_the_grpc_ones(pki: dict, sample_repo: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    """--http-use-ssl with no --http-server-*: the --grpc-server-* files serve HTTPS too."""
    copy_repo(sample_repo / "mlp_dense", tmp_path / "repo" / "mlp_dense")
    server = pki["server"]
    srv = start_server(tmp_path / "repo", tmp_path, [
        "--grpc-use-ssl", "true", "--http-use-ssl", "true",
        "--grpc-server-cert", str(server.cert), "--grpc-server-key", str(server.key),
    ])  # fmt: skip
    try:
        assert _https(srv, "/v2/health/ready", pki["ca"].path) == (200, b"")
        assert _infer_ok(_client(srv, pki["ca"].path, None))
        assert "HTTP on 127.0.0.1" in srv.log_text() and "(TLS)" in srv.log_text()
    finally:
        srv.stop()


def test_http_follows_grpc_tls_and_restrictions_when_not_told(
    pki: dict, sample_repo: Path, tmp_path: Path
) -> None:
    """No --http-use-ssl* / --http-restricted-api: HTTP takes gRPC's mutual TLS (its files)
    and its restricted protocols (header: the bare key), so the API is not open on 8000."""
    copy_repo(sample_repo / "mlp_dense", tmp_path / "repo" / "mlp_dense")
    server = pki["server"]
    srv = start_server(tmp_path / "repo", tmp_path, [
        "--grpc-use-ssl-mutual", "true", "--grpc-root-cert", str(pki["ca"].path),
        "--grpc-server-cert", str(server.cert), "--grpc-server-key", str(server.key),
        "--grpc-restricted-protocol", "inference:infer-key=s3cret",
    ])  # fmt: skip
    try:
        assert _refused(srv, pki["ca"].path, pki["client"], scheme="http")  # no plaintext
        assert _refused(srv, pki["ca"].path)  # TLS without a client certificate
        assert _refused(srv, pki["ca"].path, pki["stranger"])
        status, body = _https(srv, "/v2/models/mlp_dense/infer", pki["ca"].path, pki["client"],
                              INFER_BODY)  # fmt: skip
        assert (status, json.loads(body)) == (403, {"error": EXPECT_INFER})
        assert _https(srv, "/v2/models/mlp_dense/infer", pki["ca"].path, pki["client"],
                      INFER_BODY, {"infer-key": "s3cret"})[0] == 200  # fmt: skip
        assert "(mutual TLS), metrics" in srv.log_text()
        assert "is plaintext" not in srv.log_text()
    finally:
        srv.stop()


def test_explicit_plaintext_unrestricted_http_beside_secured_grpc_warns(
    pki: dict, sample_repo: Path, tmp_path: Path
) -> None:
    copy_repo(sample_repo / "mlp_dense", tmp_path / "repo" / "mlp_dense")
    server = pki["server"]
    srv = start_server(tmp_path / "repo", tmp_path, [
        "--grpc-use-ssl", "true", "--http-use-ssl", "false",
        "--grpc-server-cert", str(server.cert), "--grpc-server-key", str(server.key),
        "--grpc-restricted-protocol", "inference:infer-key=s3cret",
        "--http-restricted-api", "none",
    ])  # fmt: skip
    try:
        assert _call(srv, "/v2/models/mlp_dense/infer", INFER_BODY)[0] == 200
        log = srv.log_text()
        assert "HTTP on port" in log and "is plaintext" in log
        assert "restricts nothing" in log
    finally:
        srv.stop()


def _serve_fails(tmp: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runtime", "serve", "--model-repository", str(tmp),
           "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1", *flags]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bad_files_name_the_file_and_flag_and_exit_1(pki: dict, tmp_path: Path) -> None:
    server, other = pki["server"], pki["stranger"]
    missing = tmp_path / "nope.crt"
    done = _serve_fails(tmp_path, "--http-use-ssl", "true", "--http-server-cert", str(missing),
                        "--http-server-key", str(server.key))  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert str(missing) in done.stderr and "--http-server-cert" in done.stderr, done.stderr
    done = _serve_fails(tmp_path, "--http-use-ssl", "true", "--http-server-cert",
                        str(server.cert), "--http-server-key", str(other.key))  # fmt: skip
    assert done.returncode == 1 and "does not match" in done.stderr, done.stderr
    assert str(other.key) in done.stderr and "--http-server-key" in done.stderr
    # NOTE: a file taken over from the gRPC flag is named by that flag
    done = _serve_fails(tmp_path, "--http-use-ssl", "true", "--grpc-server-cert", str(missing),
                        "--grpc-server-key", str(server.key))  # fmt: skip
    assert done.returncode == 1 and "--grpc-server-cert" in done.stderr, done.stderr
    done = _serve_fails(tmp_path, "--http-use-ssl", "true")
    assert done.returncode == 1 and "--http-server-cert" in done.stderr, done.stderr
    done = _serve_fails(tmp_path, "--http-use-ssl-mutual", "true", "--http-server-cert",
                        str(server.cert), "--http-server-key", str(server.key))  # fmt: skip
    assert done.returncode == 1 and "--http-root-cert" in done.stderr, done.stderr


# ---- --http-restricted-api -----------------------------------------------------------------
EXPECT_INFER = "This API is restricted, expecting header 'infer-key'"


@pytest.fixture(scope="module")
def restricted_srv(
    sample_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("http-restricted")
    copy_repo(sample_repo / "mlp_dense", tmp / "repo" / "mlp_dense")
    srv = start_server(tmp / "repo", tmp, [
        "--http-restricted-api", "inference:infer-key=s3cret",
        "--http-restricted-api", "model-repository,statistics,health,shared-memory,"
        "trace,logging:admin-key=adm1n",
    ])  # fmt: skip
    yield srv
    srv.stop()


def _call(srv: ServerProcess, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(f"http://{srv.http_url}{path}", data=body,
                                     headers=headers or {})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_restricted_inference_needs_its_header(restricted_srv: ServerProcess) -> None:
    status, body = _call(restricted_srv, "/v2/models/mlp_dense/infer", INFER_BODY)
    assert (status, json.loads(body)) == (403, {"error": EXPECT_INFER})  # as tritonserver
    status, body = _call(restricted_srv, "/v2/models/mlp_dense/infer", INFER_BODY,
                         {"infer-key": "wrong"})  # fmt: skip
    assert (status, json.loads(body)) == (403, {"error": EXPECT_INFER})
    status, _ = _call(restricted_srv, "/v2/models/mlp_dense/versions/1/infer", INFER_BODY,
                      {"Infer-Key": "s3cret"})  # NOTE: HTTP header names are case-insensitive
    assert status == 200
    client = httpclient.InferenceServerClient(restricted_srv.http_url, network_timeout=20)
    x = np.ones((1, 256), np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp_dense", [inp], headers={"infer-key": "s3cret"})
    assert result.as_numpy("y").shape == (1, 256)


def test_each_group_has_its_own_header(restricted_srv: ServerProcess) -> None:
    admin = {"admin-key": "adm1n"}
    expect_admin = {"error": "This API is restricted, expecting header 'admin-key'"}
    for path, body in (("/v2/health/ready", None), ("/v2/health/live", None),
                       ("/v2/models/mlp_dense/ready", None), ("/v2/models/stats", None),
                       ("/v2/models/mlp_dense/stats", None), ("/v2/repository/index", b"{}")):
        status, data = _call(restricted_srv, path, body)
        assert (status, json.loads(data)) == (403, expect_admin), path
        assert _call(restricted_srv, path, body, admin)[0] == 200, path
        # another group's key does not open this one
        assert _call(restricted_srv, path, body, {"infer-key": "s3cret"})[0] == 403, path
    # as tritonserver: the restriction is checked before the method
    status, data = _call(restricted_srv, "/v2/repository/index")  # GET, the route is POST
    assert (status, json.loads(data)) == (403, expect_admin)
    assert _call(restricted_srv, "/v2/repository/index", None, admin)[0] == 405
    # unrestricted groups and unknown routes answer as before
    assert _call(restricted_srv, "/v2")[0] == 200
    assert _call(restricted_srv, "/v2/models/mlp_dense")[0] == 200
    assert _call(restricted_srv, "/v2/models/mlp_dense/config")[0] == 200
    assert _call(restricted_srv, "/v2/nothing/here")[0] == 404


@pytest.mark.parametrize("path", ["/v2/trace/setting", "/v2/logging",
                                  "/v2/cudasharedmemory/status",
                                  "/v2/systemsharedmemory/status"])  # fmt: skip
def test_placeholder_routes_are_restricted_too(restricted_srv: ServerProcess, path: str) -> None:
    """Routes with a regex placeholder ('/v2/trace/{tail:.*}') are restricted as the rest
    (aiohttp names them '/v2/trace/{tail}'; the group lookup used to miss them)."""
    status, data = _call(restricted_srv, path)
    assert (status, json.loads(data)) == (
        403, {"error": "This API is restricted, expecting header 'admin-key'"}
    ), path
    assert _call(restricted_srv, path, None, {"admin-key": "adm1n"})[0] != 403


def test_bad_restricted_api_value_exits_2(tmp_path: Path) -> None:
    done = _serve_fails(tmp_path, "--http-restricted-api", "bogus:k=v")
    assert done.returncode == 2 and "--http-restricted-api" in done.stderr, done.stderr
    assert "unknown protocol 'bogus'" in done.stderr


def _client_context(ca: Path, pair: Pair, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(pair.cert), str(pair.key))
    context.minimum_version = context.maximum_version = version
    return context


def _handshake(port: int, context: ssl.SSLContext,
               session: ssl.SSLSession | None = None) -> ssl.SSLSession | None:  # fmt: skip
    """One HTTPS GET /v2/health/live, resuming `session` if given; the session to resume
    next time, or None when the server refused the connection."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
            tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
            if not reply.startswith(b"HTTP/1.1 200"):
                return None
            return tls.session
    except (OSError, ssl.SSLError):
        return None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_client_cut_off_by_ca_rotation_cannot_resume_its_session(
    pki: dict, sample_repo: Path, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """Rotating --http-root-cert to another CA cuts off the old CA's clients: no session
    ticket (OP_NO_TICKET, num_tickets = 0) or cached TLS 1.2 session made before the rotation
    lets them skip the certificate check."""
    copy_repo(sample_repo / "mlp_dense", tmp_path / "repo" / "mlp_dense")
    root = tmp_path / "root.crt"
    shutil.copy(pki["ca"].path, root)
    server = pki["server"]
    srv = start_server(tmp_path / "repo", tmp_path, [
        "--http-use-ssl-mutual", "true", "--http-root-cert", str(root),
        "--http-server-cert", str(server.cert), "--http-server-key", str(server.key),
    ])  # fmt: skip
    try:
        client = _client_context(pki["ca"].path, pki["client"], version)
        session = _handshake(srv.http_port, client)
        assert session is not None
        assert _handshake(srv.http_port, client, session) is not None  # no rotation: served
        shutil.copy(pki["other"].path, root.with_suffix(".new"))
        os.replace(root.with_suffix(".new"), root)
        resumed = _handshake(srv.http_port, client, session)
        assert resumed is None, "resumed a session past the CA rotation"
        stranger = _client_context(pki["ca"].path, pki["stranger"], version)
        assert _handshake(srv.http_port, stranger) is not None  # the new CA's client
    finally:
        srv.stop()
