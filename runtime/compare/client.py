"""Server side facts through standard KServe v2 RPCs: liveness, model metadata, inputs.

Only `ServerLive`, `ModelMetadata`, `ModelReady` and `ModelInfer` are required;
`ModelConfig` and `RepositoryIndex` (Triton extensions) are used when the server
has them, for max_batch_size and for listing models in error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc.aio import InferenceServerClient, InferInput
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from runtime.compare.errors import CompareError

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the metadata RPC reports it (shape includes any batch dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    """What `compare` needs to know about one model."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int | None
    """From ModelConfig when the server offers it, else None (unknown)."""
    batched: bool
    """True when the first dim of every input is the batch dim."""

    def sample_shape(self, spec: TensorSpec) -> tuple[int, ...]:
        """Shape of one row (without the batch dim when batched)."""
        return spec.shape[1:] if self.batched else spec.shape

    def as_dict(self) -> dict[str, Any]:
        return {
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
            "max_batch_size": self.max_batch_size,
            "batched": self.batched,
        }


def _detail(err: Exception) -> str:
    if isinstance(err, InferenceServerException):
        status = err.status() or ""
        msg = err.message() or ""
        return f"{status} {msg}".strip() or repr(err)
    return str(err) or repr(err)


async def check_server(client: InferenceServerClient, url: str) -> dict[str, Any]:
    """Fail early and clearly when nothing KServe-v2 answers at `url`."""
    try:
        live = await client.is_server_live(client_timeout=CONNECT_TIMEOUT_S)
    except InferenceServerException as err:
        raise CompareError(
            f"cannot reach a KServe v2 gRPC server at {url}: {_detail(err)} "
            "(is the server running, and is this its gRPC port, e.g. 8001?)"
        ) from None
    if not live:
        raise CompareError(f"server at {url} answers but reports it is not live")
    try:
        meta = await client.get_server_metadata(as_json=True, client_timeout=CONNECT_TIMEOUT_S)
    except InferenceServerException:
        meta = {}
    return {k: meta.get(k) for k in ("name", "version", "extensions") if k in meta}


async def _available_models(client: InferenceServerClient) -> list[str] | None:
    try:
        index = await client.get_model_repository_index(
            as_json=True, client_timeout=CONNECT_TIMEOUT_S
        )
    except InferenceServerException:
        return None
    return sorted({m["name"] for m in index.get("models", []) if "name" in m})


async def fetch_spec(client: InferenceServerClient, name: str) -> ModelSpec:
    """Metadata (+ config when available) for `name`; unknown or unready -> CompareError."""
    try:
        meta = await client.get_model_metadata(name, as_json=True, client_timeout=CONNECT_TIMEOUT_S)
    except InferenceServerException as err:
        if "UNAVAILABLE" in str(err.status()):  # on disk but failed to load, or unloading
            raise CompareError(f"model {name!r} is not available: {_detail(err)}") from None
        if "NOT_FOUND" in str(err.status()) or "unknown model" in (err.message() or "").lower():
            known = await _available_models(client)
            hint = f" (models on the server: {', '.join(known)})" if known else ""
            raise CompareError(f"unknown model {name!r}{hint}") from None
        raise CompareError(f"metadata for model {name!r} failed: {_detail(err)}") from None
    try:
        ready = await client.is_model_ready(name, client_timeout=CONNECT_TIMEOUT_S)
    except InferenceServerException as err:
        raise CompareError(f"readiness of model {name!r} failed: {_detail(err)}") from None
    if not ready:
        raise CompareError(f"model {name!r} is known to the server but not ready")

    def tensors(key: str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t.get("shape", [])))
            for t in meta.get(key, [])
        )

    inputs, outputs = tensors("inputs"), tensors("outputs")
    if not inputs:
        raise CompareError(f"model {name!r} reports no inputs in its metadata")
    max_batch: int | None = None
    try:
        config = await client.get_model_config(name, as_json=True, client_timeout=CONNECT_TIMEOUT_S)
        max_batch = int(config.get("config", {}).get("max_batch_size", 0))
    except (InferenceServerException, ValueError, TypeError):
        max_batch = None  # not a Triton-compatible server: rely on the metadata shapes
    if max_batch is not None:
        batched = max_batch > 0
    else:
        batched = all(t.shape and t.shape[0] == -1 for t in inputs)
    return ModelSpec(
        name=name,
        versions=tuple(str(v) for v in meta.get("versions", [])),
        platform=str(meta.get("platform", "")),
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch,
        batched=batched,
    )


def _dims_match(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def check_compatible(base: ModelSpec, other: ModelSpec) -> None:
    """Same input names, datatypes and shapes, or the comparison means nothing."""
    want = {t.name: t for t in base.inputs}
    have = {t.name: t for t in other.inputs}
    problems = []
    if set(want) != set(have):
        problems.append(f"input names {sorted(have)} vs {sorted(want)}")
    for name in sorted(set(want) & set(have)):
        a, b = want[name], have[name]
        if a.datatype != b.datatype:
            problems.append(f"input {name!r} datatype {b.datatype} vs {a.datatype}")
        if not _dims_match(base.sample_shape(a), other.sample_shape(b)):
            problems.append(f"input {name!r} shape {list(b.shape)} vs {list(a.shape)}")
    if base.batched != other.batched:
        problems.append(f"batching {other.batched} vs {base.batched}")
    if problems:
        raise CompareError(
            f"model {other.name!r} has inputs that do not match baseline {base.name!r}: "
            + "; ".join(problems)
        )


def check_batches(spec: ModelSpec, batches: tuple[int, ...]) -> None:
    """Reject batch sizes the model cannot take before any load is sent."""
    if not spec.batched and batches != (1,):
        raise CompareError(
            f"model {spec.name!r} does not batch (max_batch_size 0 or fixed first dim): "
            "use --batch 1"
        )
    if spec.max_batch_size and max(batches) > spec.max_batch_size:
        raise CompareError(
            f"--batch {max(batches)} exceeds max_batch_size {spec.max_batch_size} "
            f"of model {spec.name!r}"
        )


def numpy_dtype(datatype: str) -> Any:
    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise CompareError(f"unsupported datatype {datatype}")
    return dtype


def random_inputs(spec: ModelSpec, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Repeatable random rows for every input (or one sample for a non-batching model)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = spec.sample_shape(t)
        if any(d < 0 for d in shape):
            raise CompareError(
                f"input {t.name!r} of {spec.name!r} has dynamic dims {list(t.shape)}: "
                "pass real data with --inputs file.npz"
            )
        full = (rows, *shape) if spec.batched else shape
        if t.datatype == "BYTES":
            raise CompareError(f"input {t.name!r} is BYTES: pass real data with --inputs file.npz")
        dtype = np.dtype(numpy_dtype(t.datatype))
        if dtype == np.bool_:
            arr = rng.integers(0, 2, full).astype(bool)
        elif np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(full).astype(dtype)
        elif np.issubdtype(dtype, np.unsignedinteger):
            arr = rng.integers(0, 100, full).astype(dtype)
        else:
            arr = rng.integers(-100, 100, full).astype(dtype)
        out[t.name] = arr
    return out


def load_inputs(path: Path, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Arrays from an .npz, one per input name, checked against the baseline's metadata."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise CompareError(f"cannot read --inputs {path}: {err}") from None
    missing = [t.name for t in spec.inputs if t.name not in arrays]
    if missing:
        raise CompareError(
            f"--inputs {path} lacks arrays for inputs {missing} (has {sorted(arrays)})"
        )
    out: dict[str, np.ndarray] = {}
    rows: set[int] = set()
    for t in spec.inputs:
        arr = arrays[t.name]
        sample = arr.shape[1:] if spec.batched else arr.shape
        if not _dims_match(spec.sample_shape(t), tuple(sample)):
            raise CompareError(
                f"--inputs array {t.name!r} has shape {list(arr.shape)}, model wants "
                f"{list(t.shape)}" + (" (rows first)" if spec.batched else "")
            )
        if t.datatype == "BYTES":
            arr = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(),
                               otypes=[object])(arr)
        else:
            arr = arr.astype(numpy_dtype(t.datatype), copy=False)
        if spec.batched:
            rows.add(arr.shape[0])
        out[t.name] = arr
    if len(rows) > 1 or 0 in rows:
        raise CompareError(f"--inputs arrays must have the same, non-zero row count: {rows}")
    return out


def take_rows(data: dict[str, np.ndarray], start: int, count: int) -> dict[str, np.ndarray]:
    """`count` rows from `start`, wrapping around, so any batch size can be served."""
    out = {}
    for name, arr in data.items():
        idx = (np.arange(count) + start) % arr.shape[0]
        out[name] = np.ascontiguousarray(arr[idx])
    return out


def infer_inputs(spec: ModelSpec, data: dict[str, np.ndarray]) -> list[InferInput]:
    """tritonclient InferInputs, built once and reused by every request of a run."""
    result = []
    for t in spec.inputs:
        arr = data[t.name]
        inp = InferInput(t.name, list(arr.shape), t.datatype)
        inp.set_data_from_numpy(arr)
        result.append(inp)
    return result
