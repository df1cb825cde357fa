"""Prometheus metrics: Triton's names exactly, plus histograms and sparsity gauges.

prometheus_client would expose a Counter `nv_inference_request_success` as
`..._total`, which breaks Triton dashboards, so the nv_* families come from a
custom collector that reads the per-model `ModelStats` (the same numbers the
ModelStatistics RPC reports). Histograms use prometheus_client directly. All of
it lives on an injected CollectorRegistry: tests get a fresh one each time.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from runtime.batching.batcher import BatchObserver, BatchTiming, InferRequest
from runtime.model import ServedModel
from runtime.server import http_auth

LOGGER = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LABELS = ("model", "version")

# (metric name, help, attribute of ModelStats, field of Duration or None for plain int)
_COUNTERS: tuple[tuple[str, str, str, str | None], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests", "success",
     "count"),
    ("nv_inference_count", "Number of inferences performed (batch rows)", "inference_count",
     None),
    ("nv_inference_exec_count", "Number of model executions (batches)", "execution_count", None),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in us",
     "success", "ns"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in us", "queue",
     "ns"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in us",
     "compute_input", "ns"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in us",
     "compute_infer", "ns"),
    ("nv_inference_compute_output_duration_us", "Cumulative compute output duration in us",
     "compute_output", "ns"),
)  # fmt: skip


# weight-bytes forms that GPU engines report in their details (info keys engine_*)
RESIDENT_FORMS = (
    ("resident_dense", "engine_weight_bytes_dense_resident"),
    ("resident_compressed", "engine_weight_bytes_compressed_resident"),
)
FAILURE_COUNTER = "nv_inference_request_failure"
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
"""Triton's `reason` label values on nv_inference_request_failure."""
TRITON_COUNTERS = (*(c[0] for c in _COUNTERS), FAILURE_COUNTER)


def _counter(name: str, documentation: str) -> Metric:
    return Metric(name, documentation, "counter")


def exposition(registry: CollectorRegistry) -> bytes:
    """Prometheus text format with Triton's counter names kept exactly.

    prometheus_client writes `# TYPE <name>_total counter` for every counter;
    Triton (and its dashboards) use the bare names, so undo that for ours.
    """
    text = generate_latest(registry).decode()
    for name in TRITON_COUNTERS:
        text = text.replace(f"# HELP {name}_total ", f"# HELP {name} ", 1)
        text = text.replace(f"# TYPE {name}_total counter", f"# TYPE {name} counter", 1)
    return text.encode()


class TritonCollector(Collector):
    """nv_* families and per-model gauges, read at scrape time from the served models."""

    def __init__(self, models: Callable[[], Sequence[ServedModel]]) -> None:
        self._models = models
        self._gpu = GpuProbe()

    def collect(self) -> Iterable[Metric]:
        models = list(self._models())
        for name, doc, attr, part in _COUNTERS:
            metric = _counter(name, doc)
            for m in models:
                value = getattr(m.stats, attr)
                if part == "ns":
                    value = value.ns / 1000.0
                elif part == "count":
                    value = value.count
                metric.add_sample(name, {"model": m.name, "version": str(m.version)}, value)
            yield metric
        failure = _counter(FAILURE_COUNTER, "Number of failed inference requests")
        for m in models:
            # NOTE: every reason Triton has, zeros included, so rate() has a series from start
            counts = {reason: 0 for reason in FAILURE_REASONS} | m.stats.fail_by_reason
            for reason, n in counts.items():
                labels = {"model": m.name, "version": str(m.version), "reason": reason}
                failure.add_sample(FAILURE_COUNTER, labels, n)
        yield failure
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count", "Requests waiting in the queue", labels=LABELS
        )
        load = GaugeMetricFamily(
            "nv_model_load_duration_secs", "Model load time in seconds", labels=LABELS
        )
        ratio = GaugeMetricFamily(
            "sparse_runtime_model_sparsity_ratio", "Fraction of zero weights", labels=LABELS
        )
        weights = GaugeMetricFamily(
            "sparse_runtime_model_weight_bytes",
            "Weight bytes: dense size, size as stored, size if 2:4 layers were compressed; "
            "on GPU engines also what is resident dense and compressed",
            labels=(*LABELS, "form"),
        )
        gpu_mem = GaugeMetricFamily(
            "sparse_runtime_model_gpu_memory_bytes",
            "GPU memory the model's engine allocated at load (torch allocator)",
            labels=LABELS,
        )
        info_labels = (
            *LABELS, "engine", "device", "sparsity_pattern", "sparse_layers", "dense_layers",
            "reason",
        )  # fmt: skip
        info = GaugeMetricFamily(
            "sparse_runtime_model_info", "Where each model runs and why (value 1)",
            labels=info_labels,
        )
        kernels = GaugeMetricFamily(
            "sparse_runtime_layer_kernel", "Kernel chosen per layer (value 1)",
            labels=("model", "layer", "kernel"),
        )
        for m in models:
            lv = [m.name, str(m.version)]
            pending.add_metric(lv, m.batcher.pending() if m.batcher else m.stats.pending)
            load.add_metric(lv, m.load_seconds)
            i = m.info
            ratio.add_metric(lv, float(i.get("sparsity_ratio", 0.0)))
            for form in ("dense", "stored", "compressed_24"):
                weights.add_metric([*lv, form], float(i.get(f"weight_bytes_{form}", 0)))
            for form, key in RESIDENT_FORMS:
                if key in i:
                    weights.add_metric([*lv, form], float(i[key]))
            if "engine_gpu_memory_bytes" in i:
                gpu_mem.add_metric(lv, float(i["engine_gpu_memory_bytes"]))
            info.add_metric(
                [*lv, i.get("engine", ""), i.get("device", ""), i.get("sparsity_pattern", ""),
                 i.get("sparse_layers", "0"), i.get("dense_layers", "0"),
                 i.get("dispatch_reason", "")],
                1.0,
            )  # fmt: skip
            decisions = getattr(m.engine, "layer_decisions", None)
            if callable(decisions):
                # NOTE: one row per (layer, batch bucket); a series per (layer, kernel) used
                pairs = {(str(row["layer"]), str(row["kernel"])) for row in decisions()}
                for layer, kernel in sorted(pairs):
                    kernels.add_metric([m.name, layer, kernel], 1.0)
        yield from (pending, load, ratio, weights, gpu_mem, info, kernels)
        vm = psutil.virtual_memory()
        used = GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU memory used, bytes")
        used.add_metric([], float(vm.total - vm.available))
        total = GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU memory total, bytes")
        total.add_metric([], float(vm.total))
        yield from (used, total)
        yield from self._gpu.collect()


class GpuProbe:
    """NVML gauges (nv_gpu_*), only where an NVIDIA driver answers; lazily initialised."""

    def __init__(self) -> None:
        self._nvml = None
        self._tried = False

    def _init(self) -> object | None:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # no driver, no library: a CPU host
                self._nvml = None
        return self._nvml

    def collect(self) -> Iterable[Metric]:
        nvml = self._init()
        if nvml is None:
            return
        used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU memory used", labels=["gpu_uuid"])
        total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU memory", labels=["gpu_uuid"])
        util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization 0..1", labels=["gpu_uuid"])
        power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts",
                                  labels=["gpu_uuid"])  # fmt: skip
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = nvml.nvmlDeviceGetUUID(handle)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                used.add_metric([uuid], float(mem.used))
                total.add_metric([uuid], float(mem.total))
                util.add_metric([uuid], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
                try:  # NOTE: milliwatts; some boards (and MIG slices) do not report it
                    power.add_metric([uuid], nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
                except Exception:
                    LOGGER.debug("NVML power read failed", exc_info=True)
        except Exception:
            LOGGER.debug("NVML read failed", exc_info=True)
        yield from (used, total, util, power)


@dataclass(frozen=True)
class ModelHistograms:
    """Pre-bound histogram children of one model version (labels resolved once)."""

    request: object
    queue: object
    compute: object
    batch: object


class _TlsHTTPServer(ThreadingHTTPServer):
    """HTTPS: each accepted socket is wrapped here but handshakes in its handler thread (on
    its first read), so a slow or plaintext client never blocks accept() for the others."""

    tls: Any  # ssl.SSLContext

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOGGER.debug("metrics: connection from %s failed: %r", client_address, sys.exc_info()[1])


class Metrics:
    """All metric definitions; one instance per server, on an injected registry."""

    def __init__(
        self, registry: CollectorRegistry, models: Callable[[], Sequence[ServedModel]]
    ) -> None:
        self.registry = registry
        self._request = Histogram(
            "sparse_runtime_request_duration_seconds", "End-to-end request latency",
            LABELS, registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self._queue = Histogram(
            "sparse_runtime_queue_duration_seconds", "Time a request waited before its batch ran",
            LABELS, registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self._compute = Histogram(
            "sparse_runtime_compute_duration_seconds", "Engine time per batch (input+infer+output)",
            LABELS, registry=registry, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self._batch = Histogram(
            "sparse_runtime_batch_size", "Rows per engine call", LABELS,
            registry=registry, buckets=BATCH_BUCKETS,
        )  # fmt: skip
        self._children: dict[tuple[str, int], ModelHistograms] = {}
        registry.register(TritonCollector(models))
        ProcessCollector(registry=registry)

    def histograms(self, name: str, version: int, fresh: bool = False) -> ModelHistograms:
        """The model version's histogram series; `fresh` restarts them (a (re)load, when
        its nv_* counters restart from zero too)."""
        key = (name, version)
        if fresh:
            self._forget(key)
        h = self._children.get(key)
        if h is None:
            lv = (name, str(version))
            h = ModelHistograms(
                self._request.labels(*lv), self._queue.labels(*lv),
                self._compute.labels(*lv), self._batch.labels(*lv),
            )  # fmt: skip
            self._children[key] = h
        return h

    def _forget(self, key: tuple[str, int]) -> None:
        if self._children.pop(key, None) is None:
            return
        labels = (key[0], str(key[1]))
        for histogram in (self._request, self._queue, self._compute, self._batch):
            try:
                histogram.remove(*labels)
            except KeyError:
                pass

    def forget_unloaded(self, loaded: Iterable[tuple[str, int]]) -> None:
        """Drop the series of model versions no longer loaded, as their nv_* series go."""
        keep = set(loaded)
        for key in [k for k in self._children if k not in keep]:
            self._forget(key)

    def batch_observer(self, name: str, version: int) -> BatchObserver:
        """Called as a version loads: its series start afresh."""
        self.histograms(name, version, fresh=True)

        def observe(timing: BatchTiming, batch: Sequence[InferRequest]) -> None:
            # NOTE: looked up per batch, not bound once: a version's series may be dropped
            # while it is still loading (another model's load ends first), then come back here
            h = self.histograms(name, version)
            h.compute.observe((timing.input_ns + timing.infer_ns + timing.output_ns) / 1e9)
            h.batch.observe(timing.rows)

        return observe

    def serve(
        self, host: str, port: int, tls: Any = None, users: dict[str, str] | None = None
    ) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port.
        `tls`: an ssl.SSLContext (HTTPS); `users`: basic-auth user -> password."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # NOTE: a client that never finishes its TLS handshake or request

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if users is not None and not http_auth.allowed(
                    self.headers.get("Authorization"), users
                ):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Basic realm="{http_auth.REALM}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = exposition(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                LOGGER.debug("metrics: %s", format % args)

        server = (_TlsHTTPServer if tls is not None else ThreadingHTTPServer)((host, port), Handler)
        server.tls = tls  # type: ignore[attr-defined]
        server.daemon_threads = True
        self._http = server
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return int(server.server_address[1])

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
