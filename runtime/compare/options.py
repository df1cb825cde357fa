"""Settings for `compare` and the small parsers behind its flags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime.compare.errors import CompareError

# NOTE: hard upper bounds so a typo cannot turn a site check into a load test
# that runs for hours or opens thousands of streams.
MAX_CONCURRENCY = 1024
MAX_DURATION_S = 3600.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")


def parse_duration(text: str) -> float:
    """'10s', '500ms', '1m' or a bare number of seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise CompareError(f"bad duration {text!r}: use e.g. 10s, 500ms, 1m")
    value = float(match.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(2) or "s"]
    if not 0 < value <= MAX_DURATION_S:
        raise CompareError(f"duration {text!r} must be > 0 and <= {MAX_DURATION_S:.0f}s")
    return value


def parse_int_list(text: str, what: str, upper: int) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16); sorted, unique, each in 1..upper."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise CompareError(f"bad {what} list {text!r}: use comma-separated integers") from None
    if not values or values[0] < 1 or values[-1] > upper:
        raise CompareError(f"{what} values must be between 1 and {upper}, got {text!r}")
    return tuple(values)


def parse_models(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); the first is the baseline, so order is kept."""
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise CompareError("--models needs at least one model name")
    dup = sorted({m for m in models if models.count(m) > 1})
    if dup:
        raise CompareError(
            f"model listed twice: {', '.join(dup)} (the baseline is always also "
            "compared with a second run of itself)"
        )
    return models


def normalize_metrics_url(text: str) -> str:
    """'host:8002' or 'http://host:8002' -> 'http://host:8002/metrics'."""
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CompareError(f"bad --metrics-url {text!r}: use HOST:PORT or http://HOST:PORT/metrics")
    path = parts.path if parts.path not in ("", "/") else "/metrics"
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass(frozen=True)
class CompareSettings:
    """Everything one `compare` run needs; built from argv in `commands/compare.py`."""

    url: str
    """gRPC HOST:PORT of the KServe v2 / Triton server."""
    models: tuple[str, ...]
    """Models to compare; the first is the baseline for ratios and agreement."""
    concurrency: tuple[int, ...] = (1, 4, 16)
    """In-flight requests per load run (closed loop)."""
    batch: tuple[int, ...] = (1, 8)
    """Rows per request."""
    duration_s: float = 10.0
    """Length of each (model, concurrency, batch) load run."""
    metrics_url: str | None = None
    """Prometheus endpoint for queue/compute split and memory; optional."""
    inputs: Path | None = None
    """.npz with one array per input name (rows first); random data when absent."""
    out: Path = Path("report")
    """Directory for report.json, report.html and the PNG plots."""
    max_requests: int = 100_000
    """Upper bound on requests per load run, whatever the duration."""
    timeout_s: float = 30.0
    """Per-request client timeout."""
    agreement_rows: int = 64
    """Rows sent to every model for the output agreement check."""
    seed: int = 0
    """Seed for the random inputs, so runs are repeatable."""
    progress: bool = True
    """Show a tqdm progress bar on stderr."""
    ssl: bool = False
    """Connect over TLS (`--ssl`, or any of the TLS files below)."""
    root_cert: Path | None = None
    """PEM CA to trust; the system's when None."""
    client_cert: Path | None = None
    """PEM client certificate and key, for a server under mutual TLS."""
    client_key: Path | None = None
