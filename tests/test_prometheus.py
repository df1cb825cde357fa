"""deploy/prometheus with the real tools: `promtool check config`, `promtool check rules` and the
rules' unit tests (`promtool test rules`), then a real Prometheus server (Debian package
`prometheus`) scraping the real runtime on loopback, queried over its HTTP API for
nv_inference_request_success, every recording rule and every Grafana dashboard query.

Prometheus comes from apt (make/.ci install it as root). Where it is missing and cannot be
installed here (not root, or no apt-get), these tests skip and say so; where apt-get could have
installed it, they fail, so CI never passes without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "sparse-runtime.rules.yml"
RULES_TEST = PROM_DIR / "sparse-runtime.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sparse-runtime.json"
MODELS = ("mlp_dense", "mlp_sparse24")
# Dashboard queries that are empty on a host without an NVIDIA GPU.
GPU_METRICS = ("nv_gpu_", "sparse_runtime_layer_kernel")
POLL_SECONDS = 90


def binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    can_install = shutil.which("apt-get") is not None and os.geteuid() == 0
    message = (
        f"{name} is not installed (Debian package `prometheus`; `make install` installs it "
        "as root with apt-get)"
    )
    if can_install:
        pytest.fail(message)
    pytest.skip(message + "; this host cannot install it (not root or no apt-get)")


def promtool(*args: str, cwd: Path = PROM_DIR) -> str:
    result = subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def test_promtool_check_config() -> None:
    out = promtool("check", "config", CONFIG.name)
    assert "SUCCESS" in out and "1 rule files found" in out, out


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", RULES.name)
    count = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in out, out


def test_promtool_rule_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", RULES_TEST.name)


def test_rules_cover_throughput_latency_and_quantiles() -> None:
    records = {
        r["record"]: r["expr"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
    }
    assert "model:nv_inference_request_success:rate1m" in records
    assert "nv_inference_queue_duration_us" in records["model:nv_inference_queue_duration_us:avg1m"]
    assert (
        "nv_inference_compute_infer_duration_us"
        in records["model:nv_inference_compute_duration_us:avg1m"]
    )
    assert (
        "histogram_quantile(0.95" in records["model:sparse_runtime_request_duration_seconds:p95_1m"]
    )
    for name, expr in records.items():
        assert name.startswith("model:") and "model" in expr, name


# --- a real Prometheus scraping the real runtime ---------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log = log

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def poll(self, what: str, check, timeout: float = POLL_SECONDS):
        """Call check() until it returns something truthy; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()}"
            try:
                last = check()
            except (OSError, AssertionError) as err:  # not up yet
                last = err
            else:
                if last:
                    return last
            time.sleep(0.5)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")


class Load:
    """Background inferences on both sample models, so that rates are non-zero."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.sent = dict.fromkeys(MODELS, 0)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.is_set():
            for model in MODELS:
                try:
                    inp = grpcclient.InferInput("x", [1, 256], "FP32")
                    inp.set_data_from_numpy(rng.standard_normal((1, 256)).astype(np.float32))
                    self.client.infer(model, [inp])
                    self.sent[model] += 1
                except Exception as err:  # noqa: BLE001 - reported by the test
                    self.errors.append(err)
                    return
            time.sleep(0.02)


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus with the shipped config and rules, retargeted at the test server, 1 s steps."""
    exe = binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{server.metrics_port}"]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    with running_prometheus(exe, tmp) as prom:
        yield prom


@contextlib.contextmanager
def running_prometheus(exe: str, tmp: Path) -> Iterator[Prometheus]:
    """A real Prometheus on a free loopback port with `tmp/prometheus.yml`, once it answers;
    stopped on exit."""
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [exe, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = Prometheus(port, proc, log)
    try:
        prom.poll("Prometheus to be ready", lambda: prom.api("status/buildinfo"), timeout=30)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def load(server) -> Iterator[Load]:
    traffic = Load(server.url)
    traffic.thread.start()
    yield traffic
    traffic.stop.set()
    traffic.thread.join(10)
    assert not traffic.errors, traffic.errors


def test_prometheus_scrapes_the_runtime(prometheus: Prometheus, load: Load) -> None:
    targets = prometheus.poll(
        "the runtime target to be up",
        lambda: [t for t in prometheus.api("targets")["activeTargets"] if t["health"] == "up"],
    )
    assert targets[0]["labels"]["job"] == "sparse-runtime"

    def sample() -> list[dict]:
        sent = load.sent["mlp_dense"]
        result = prometheus.query('nv_inference_request_success{model="mlp_dense"}')
        return result if result and float(result[0]["value"][1]) >= min(sent, 5) > 0 else []

    (series,) = prometheus.poll("nv_inference_request_success samples", sample)
    assert series["metric"]["__name__"] == "nv_inference_request_success"  # no _total suffix
    assert series["metric"]["version"] == "1"


def test_recording_rules_evaluate(prometheus: Prometheus, load: Load) -> None:
    records = [r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for record in records:
        series = prometheus.poll(
            f"{record} for mlp_dense",
            lambda r=record: prometheus.query(f'{r}{{model="mlp_dense"}}'),
        )
        values = [float(s["value"][1]) for s in series]
        assert all(v == v for v in values), f"{record}: NaN {series}"
    throughput = prometheus.query('model:nv_inference_request_success:rate1m{model="mlp_dense"}')
    assert float(throughput[0]["value"][1]) > 0
    p95 = prometheus.query(
        'model:sparse_runtime_request_duration_seconds:p95_1m{model="mlp_dense"}'
    )
    assert 0 < float(p95[0]["value"][1]) < 10
    queue = prometheus.query('model:nv_inference_queue_duration_us:avg1m{model="mlp_dense"}')
    request = prometheus.query('model:nv_inference_request_duration_us:avg1m{model="mlp_dense"}')
    assert 0 <= float(queue[0]["value"][1]) <= float(request[0]["value"][1])
    groups = prometheus.api("rules")["groups"]
    evaluated = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(records) <= set(evaluated)
    assert all(r["health"] == "ok" for r in evaluated.values()), evaluated


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"]
                .replace("$__rate_interval", "1m")
                .replace('=~"$model"', '=~".+"')
                .replace("$baseline", "mlp_dense")
                .replace("$variant", "mlp_sparse24")
            )
            out.append((panel["title"], expr))
    return out


def test_dashboard_queries_run_on_prometheus(prometheus: Prometheus, load: Load) -> None:
    """Every dashboard query is valid PromQL and, except the GPU-only ones, returns data."""
    prometheus.poll(
        "rates for both models",
        lambda: len(prometheus.query("model:nv_inference_request_success:rate1m > 0")) >= 2,
    )
    for title, expr in dashboard_queries():
        if any(m in expr for m in GPU_METRICS):
            prometheus.query(expr)  # must still parse and evaluate
            continue
        prometheus.poll(f"data for panel {title!r}: {expr}", lambda e=expr: prometheus.query(e))
