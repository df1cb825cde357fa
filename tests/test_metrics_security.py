"""The metrics port with TLS and basic auth (--metrics-ssl-cert/-key, --metrics-ssl-root-cert,
--metrics-basic-auth-file): real server, real HTTPS clients, and a real Prometheus scraping it
with deploy/prometheus/prometheus-tls.yml."""

from __future__ import annotations

import base64
import http.client
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, ServerProcess, copy_repo, start_server
from tls_certs import Ca

PROM_TLS = ROOT / "deploy" / "prometheus" / "prometheus-tls.yml"


@pytest.fixture(scope="module")
def secured(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("metrics-tls")
    ca = Ca(tmp / "ca")
    server = ca.issue("metrics")
    users = tmp / "users.txt"
    users.write_text("# scrapers\nprometheus:s3cret-pass\n")
    copy_repo(sample_repo / "mlp_dense", tmp / "repo" / "mlp_dense")
    srv = start_server(tmp / "repo", tmp, ["--metrics-ssl-cert", str(server.cert),
                                           "--metrics-ssl-key", str(server.key),
                                           "--metrics-basic-auth-file", str(users)])  # fmt: skip
    yield {"srv": srv, "ca": ca, "tmp": tmp}
    srv.stop()


def _get(srv: ServerProcess, ca: Ca, auth: str | None) -> int:
    context = ssl.create_default_context(cafile=str(ca.path))
    request = urllib.request.Request(f"https://127.0.0.1:{srv.metrics_port}/metrics")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert b"nv_inference_request_success" in response.read()
            return response.status
    except urllib.error.HTTPError as err:
        assert err.headers["WWW-Authenticate"].startswith("Basic ")
        return err.code


def test_https_and_basic_auth(secured: dict) -> None:
    srv, ca = secured["srv"], secured["ca"]
    assert _get(srv, ca, "prometheus:s3cret-pass") == 200
    assert _get(srv, ca, None) == 401
    assert _get(srv, ca, "prometheus:wrong") == 401
    assert _get(srv, ca, "nobody:s3cret-pass") == 401


def test_plain_http_on_the_tls_port_fails_and_the_port_keeps_serving(secured: dict) -> None:
    srv = secured["srv"]
    conn = http.client.HTTPConnection("127.0.0.1", srv.metrics_port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/metrics")
        conn.getresponse()
    conn.close()
    assert _get(srv, secured["ca"], "prometheus:s3cret-pass") == 200


def test_bad_auth_file_names_it_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "users.txt"
    bad.write_text("no colon here\n")
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--model-repository", str(tmp_path),
         "--grpc-port", "0", "--metrics-port", "0", "--metrics-basic-auth-file", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and f"'{bad}' line 1" in done.stderr, done.stderr


def test_real_prometheus_scrapes_through_tls_and_basic_auth(secured: dict) -> None:
    from test_prometheus import binary, running_prometheus

    exe = binary("prometheus")
    srv, ca, tmp = secured["srv"], secured["ca"], secured["tmp"]
    config = yaml.safe_load(PROM_TLS.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_TLS.parent / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    password = tmp / "metrics-password"
    password.write_text("s3cret-pass\n")
    job["tls_config"].update(ca_file=str(ca.path), server_name="localhost")
    job["basic_auth"]["password_file"] = str(password)
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{srv.metrics_port}"]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run([binary("promtool"), "check", "config", str(tmp / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    with running_prometheus(exe, tmp) as prom:
        targets = prom.poll(
            "the TLS + basic auth target to be up",
            lambda: [t for t in prom.api("targets")["activeTargets"] if t["health"] == "up"],
        )
        assert targets[0]["scrapeUrl"].startswith("https://")
        assert prom.poll("a scraped sample", lambda: prom.query('up{job="sparse-runtime"} == 1'))
