"""Model inputs for pruning: read and validate .npz files, tokenize text, or generate.

Calibration data with the wrong names, shapes or dtypes must fail before any
work starts, with a message naming the input, what the model expects and what
the file holds.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from runtime.errors import ConfigError

_ONNX_TO_NUMPY: dict[int, np.dtype] = {
    onnx.TensorProto.FLOAT: np.dtype(np.float32),
    onnx.TensorProto.FLOAT16: np.dtype(np.float16),
    onnx.TensorProto.DOUBLE: np.dtype(np.float64),
    onnx.TensorProto.INT64: np.dtype(np.int64),
    onnx.TensorProto.INT32: np.dtype(np.int32),
    onnx.TensorProto.INT8: np.dtype(np.int8),
    onnx.TensorProto.UINT8: np.dtype(np.uint8),
    onnx.TensorProto.BOOL: np.dtype(np.bool_),
}

Feeds = dict[str, np.ndarray]


class CalibrationError(ConfigError):
    """Calibration or evaluation inputs do not match the model."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, shape with None for symbolic dims."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def input_specs(model: onnx.ModelProto) -> tuple[InputSpec, ...]:
    """Graph inputs that are not initializers."""
    inits = {init.name for init in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tt.elem_type)
        if dtype is None:
            raise CalibrationError(f"input {vi.name!r}: unsupported element type {tt.elem_type}")
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return tuple(specs)


def validate_feeds(feeds: Mapping[str, np.ndarray], specs: tuple[InputSpec, ...],
                   source: str) -> Feeds:
    """Check names, dtypes, ranks, fixed dims and a shared batch size.

    Raises:
        CalibrationError: with the offending input, the expected and the received value.
    """
    names = {s.name for s in specs}
    missing = sorted(names - set(feeds))
    extra = sorted(set(feeds) - names)
    if missing or extra:
        raise CalibrationError(
            f"{source}: input names do not match the model: missing {missing or 'none'}, "
            f"unexpected {extra or 'none'} (model inputs: {sorted(names)})"
        )
    batch = None
    out: Feeds = {}
    for spec in specs:
        arr = np.asarray(feeds[spec.name])
        if arr.dtype != spec.dtype:
            raise CalibrationError(
                f"{source}: input {spec.name!r} has dtype {arr.dtype}, model expects {spec.dtype}"
            )
        if arr.ndim != len(spec.shape):
            raise CalibrationError(
                f"{source}: input {spec.name!r} has shape {list(arr.shape)}, model expects rank "
                f"{len(spec.shape)} {list(spec.shape)}"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
            if want is not None and got != want:
                raise CalibrationError(
                    f"{source}: input {spec.name!r} dim {axis} is {got}, model expects {want} "
                    f"(shape {list(arr.shape)} vs {list(spec.shape)})"
                )
        if arr.ndim and arr.shape[0] == 0:
            raise CalibrationError(f"{source}: input {spec.name!r} has no samples")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise CalibrationError(
                f"{source}: input {spec.name!r} has {bad} NaN or infinite values; calibration "
                "statistics from them would be meaningless"
            )
        if arr.ndim:
            if batch is not None and arr.shape[0] != batch:
                raise CalibrationError(
                    f"{source}: inputs disagree on the number of samples ({batch} vs "
                    f"{arr.shape[0]} in {spec.name!r})"
                )
            batch = arr.shape[0]
        out[spec.name] = arr
    return out


def load_npz(path: Path, model: onnx.ModelProto) -> Feeds:
    """Load and validate an .npz of model inputs (first axis = samples).

    Raises:
        CalibrationError: unreadable file, or inputs that do not match the model.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"{path}: not a readable .npz file ({exc})") from exc
    return validate_feeds(feeds, input_specs(model), str(path))


def generate_inputs(model: onnx.ModelProto, samples: int = 32, seed: int = 0,
                    seq_len: int = 16) -> Feeds:
    """Random inputs for deviation checks when the user gives none.

    Floats are standard normal; integer inputs named like masks are ones, like
    token types zeros, other integers uniform in [0, 100). Symbolic dims become
    `samples` (first axis) or `seq_len`.
    """
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in input_specs(model):
        shape = tuple(
            (samples if axis == 0 else seq_len) if d is None else d
            for axis, d in enumerate(spec.shape)
        )
        lname = spec.name.lower()
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif "mask" in lname:
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif "type" in lname:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 100, shape).astype(spec.dtype)
    return feeds


def tokenize_text(path: Path, tokenizer_dir: Path, model: onnx.ModelProto,
                  samples: int | None = None, max_length: int = 128) -> Feeds:
    """Tokenize one sentence per line with the `tokenizers` package into model inputs.

    Raises:
        CalibrationError: missing file/tokenizer, empty text, or model inputs the
            tokenizer cannot fill.
    """
    try:
        from tokenizers import Tokenizer  # NOTE: optional dependency, only for text calibration
    except ImportError as exc:
        raise CalibrationError(
            "--calibration-text needs the 'tokenizers' package (pip install tokenizers)"
        ) from exc
    tok_file = tokenizer_dir / "tokenizer.json" if tokenizer_dir.is_dir() else tokenizer_dir
    if not tok_file.is_file():
        raise CalibrationError(f"{tok_file}: tokenizer.json not found")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read calibration text ({exc})") from exc
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if samples:
        lines = lines[:samples]
    if not lines:
        raise CalibrationError(f"{path}: no sentences")
    tokenizer = Tokenizer.from_file(str(tok_file))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    enc = tokenizer.encode_batch(lines)
    fields = {
        "input_ids": np.array([e.ids for e in enc]),
        "attention_mask": np.array([e.attention_mask for e in enc]),
        "token_type_ids": np.array([e.type_ids for e in enc]),
    }
    feeds: Feeds = {}
    for spec in input_specs(model):
        key = next((k for k in fields if k in spec.name), None)
        if key is None:
            raise CalibrationError(
                f"model input {spec.name!r} cannot be filled from a tokenizer "
                f"(known: {sorted(fields)})"
            )
        feeds[spec.name] = fields[key].astype(spec.dtype)
    return validate_feeds(feeds, input_specs(model), str(path))


def num_samples(feeds: Mapping[str, np.ndarray]) -> int:
    """Number of samples (first axis) in a feed dict."""
    return next((int(a.shape[0]) for a in feeds.values() if a.ndim), 1)


def take(feeds: Mapping[str, np.ndarray], index: slice | np.ndarray) -> Feeds:
    """Select samples along the first axis of every input."""
    return {k: (v[index] if v.ndim else v) for k, v in feeds.items()}


def iter_batches(feeds: Mapping[str, np.ndarray], batch_size: int) -> Iterator[Feeds]:
    """Split feeds into batches along the first axis."""
    n = num_samples(feeds)
    for start in range(0, n, batch_size):
        yield take(feeds, slice(start, start + batch_size))


def split_holdout(feeds: Feeds, fraction: float = 0.2) -> tuple[Feeds, Feeds]:
    """(calibration, held-out) split: the last `fraction` of samples, at least one."""
    n = num_samples(feeds)
    if n < 2:
        return feeds, feeds
    hold = max(1, int(round(n * fraction)))
    return take(feeds, slice(0, n - hold)), take(feeds, slice(n - hold, n))
