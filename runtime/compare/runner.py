"""Orchestration: check the server and models, measure agreement, run the load grid.

Agreement runs first: it is quick, fails early on broken models and warms every
model before timing starts. Models are interleaved per (concurrency, batch) cell
so that each sees the same conditions on the node.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from typing import Any

import numpy as np
from tqdm import tqdm
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from runtime import __version__
from runtime.compare import agreement, client, load, report, scrape
from runtime.compare.errors import CompareError
from runtime.compare.options import CompareSettings

LOGGER = logging.getLogger(__name__)

Latencies = dict[tuple[str, int, int], np.ndarray]


async def _infer_all(
    grpc: InferenceServerClient, spec: client.ModelSpec, data: dict[str, np.ndarray],
    chunk: int, timeout_s: float,
) -> dict[str, np.ndarray]:
    """All rows of `data` through `spec`, in sequential chunks; outputs concatenated."""
    names = [t.name for t in spec.outputs]
    if not spec.batched:
        chunks = [data]
    else:
        n = next(iter(data.values())).shape[0]
        chunks = [client.take_rows(data, i, min(chunk, n - i)) for i in range(0, n, chunk)]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for part in chunks:
        try:
            result = await grpc.infer(spec.name, client.infer_inputs(spec, part),
                                      client_timeout=timeout_s)
        except InferenceServerException as err:
            raise CompareError(
                f"inference on model {spec.name!r} failed: {err.status() or ''} "
                f"{err.message() or ''}".strip()
            ) from None
        for name in names:
            arr = result.as_numpy(name)
            if arr is None:
                raise CompareError(f"model {spec.name!r} returned no output {name!r}")
            parts[name].append(arr)
    if not spec.batched:
        return {n: p[0] for n, p in parts.items()}
    return {n: np.concatenate(p, axis=0) for n, p in parts.items()}


async def measure_agreement(
    grpc: InferenceServerClient, specs: list[client.ModelSpec], data: dict[str, np.ndarray],
    settings: CompareSettings,
) -> dict[str, Any]:
    """Every model vs the baseline on the same rows; the baseline vs a second run of itself."""
    base = specs[0]
    limits = [s.max_batch_size for s in specs if s.max_batch_size]
    chunk = min([64, *limits]) if limits else max(settings.batch)
    ref = await _infer_all(grpc, base, data, chunk, settings.timeout_s)
    base_names = [t.name for t in base.outputs]
    models: dict[str, dict[str, Any]] = {}
    for spec in specs:
        got = await _infer_all(grpc, spec, data, chunk, settings.timeout_s)
        pairs = agreement.pair_outputs(base_names, [t.name for t in spec.outputs])
        if not pairs:
            raise CompareError(
                f"model {spec.name!r} outputs {[t.name for t in spec.outputs]} cannot be "
                f"paired with baseline outputs {base_names}"
            )
        models[spec.name] = {
            b: agreement.compare_output(ref[b], got[o], base.batched) for b, o in pairs
        }
    rows = next(iter(data.values())).shape[0] if base.batched else 1
    return {"baseline": base.name, "rows": int(rows), "outputs": base_names, "models": models}


async def collect(settings: CompareSettings) -> tuple[dict[str, Any], Latencies]:
    """Run everything against the server; returns report.json's content and raw latencies."""
    s = settings
    grpc = InferenceServerClient(
        s.url, ssl=s.ssl or bool(s.root_cert or s.client_cert or s.client_key),
        root_certificates=str(s.root_cert) if s.root_cert else None,
        private_key=str(s.client_key) if s.client_key else None,
        certificate_chain=str(s.client_cert) if s.client_cert else None,
    )  # fmt: skip
    try:
        return await _collect(grpc, settings)
    finally:
        await grpc.close()


async def _collect(
    grpc: InferenceServerClient, settings: CompareSettings
) -> tuple[dict[str, Any], Latencies]:
    started = datetime.now(timezone.utc)
    server_meta = await client.check_server(grpc, settings.url)
    specs = [await client.fetch_spec(grpc, m) for m in settings.models]
    base = specs[0]
    for spec in specs[1:]:
        client.check_compatible(base, spec)
    for spec in specs:
        client.check_batches(spec, settings.batch)
    metrics_url = settings.metrics_url
    start_samples = scrape.scrape(metrics_url) if metrics_url else None

    if settings.inputs is not None:
        data = client.load_inputs(settings.inputs, base)
        inputs_desc = str(settings.inputs)
    else:
        rows = max(settings.agreement_rows, max(settings.batch))
        data = client.random_inputs(base, rows, settings.seed)
        inputs_desc = f"random normal/uniform, seed {settings.seed}"
    agree_data = (
        client.take_rows(data, 0, min(settings.agreement_rows, next(iter(data.values())).shape[0]))
        if base.batched else data
    )
    agree = await measure_agreement(grpc, specs, agree_data, settings)

    cells = [(c, b) for c in settings.concurrency for b in settings.batch]
    runs: list[dict[str, Any]] = []
    latencies: Latencies = {}
    total_s = len(cells) * len(specs) * settings.duration_s
    LOGGER.info("%d runs of %.1fs each, about %.0fs", len(cells) * len(specs),
                settings.duration_s, total_s)
    bar = tqdm(total=len(cells) * len(specs), unit="run", file=sys.stderr,
               disable=not settings.progress, dynamic_ncols=True)
    try:
        for c, b in cells:
            for spec in specs:
                bar.set_postfix_str(f"{spec.name} c={c} b={b}")
                part = client.take_rows(data, 0, b) if spec.batched else data
                inputs = client.infer_inputs(spec, part)
                await load.warm_up(grpc, spec.name, inputs, c, settings.timeout_s)
                before = (scrape.model_counters(scrape.scrape(metrics_url), spec.name)
                          if metrics_url else None)
                result = await load.run_load(
                    grpc, spec.name, inputs, b if spec.batched else 1, c,
                    settings.duration_s, settings.max_requests, settings.timeout_s,
                )
                run: dict[str, Any] = {"model": spec.name, "concurrency": c, "batch": b}
                run.update(load.summarize(result))
                run["server"] = None
                if metrics_url and before is not None:
                    after_samples = scrape.scrape(metrics_url)
                    after = scrape.model_counters(after_samples, spec.name)
                    run["server"] = scrape.server_split(before, after)
                    run["rss_after_bytes"] = scrape.memory(after_samples)["rss_bytes"]
                runs.append(run)
                latencies[(spec.name, c, b)] = result.latencies_s
                bar.update(1)
                bar.set_postfix_str(f"{spec.name} c={c} b={b} {run['infer_per_s']:.0f} infer/s")
    finally:
        bar.close()

    end_samples = scrape.scrape(metrics_url) if metrics_url else None
    models_section: dict[str, Any] = {}
    for spec in specs:
        entry = spec.as_dict()
        facts = scrape.model_facts(end_samples, spec.name) if end_samples else {}
        entry.update({"info": facts.get("info"), "weight_bytes": facts.get("weight_bytes"),
                      "sparsity_ratio": facts.get("sparsity_ratio")})
        models_section[spec.name] = entry
    names = [s.name for s in specs]
    result_report: dict[str, Any] = {
        "schema_version": 1,
        "tool": f"sparse-runtime compare {__version__}",
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "server": {"url": settings.url, "metrics_url": metrics_url, **server_meta},
        "settings": {
            "models": names,
            "baseline": names[0],
            "concurrency": list(settings.concurrency),
            "batch": list(settings.batch),
            "duration_s": settings.duration_s,
            "max_requests": settings.max_requests,
            "timeout_s": settings.timeout_s,
            "inputs": inputs_desc,
            "agreement_rows": agree["rows"],
        },
        "models": models_section,
        "agreement": agree,
        "runs": runs,
        "ratios": report.ratios(runs, names),
        "memory": {
            "before": scrape.memory(start_samples) if start_samples else None,
            "after": scrape.memory(end_samples) if end_samples else None,
        },
        "files": {},
    }
    return result_report, latencies
