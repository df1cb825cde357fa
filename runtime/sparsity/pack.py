"""The `.sparse` packed model format: 2:4 weights as kept values + 2-bit positions, zstd.

Goal: ship a 2:4-pruned ONNX model in its smallest form and get back the exact
original bytes. Nothing is re-serialized: the original file is cut at each packed
initializer's `raw_data` payload, so `unpack` splices the decoded bytes back and
the result is bit-identical whatever protobuf version wrote the file.

File layout (all integers little-endian)::

    offset  size  field
    0       8     magic b"\\x89SPR\\r\\n\\x1a\\n" (PNG-style: catches 7-bit and newline mangling)
    8       4     uint32 format version: 1, or 2 when a tensor carries -0.0 sign bits
    12      4     uint32 manifest length M
    16      M     manifest, UTF-8 JSON (see below)
    16+M    ...   body: one zstd frame holding the payload

The payload is the concatenation of: the skeleton (the original ONNX bytes with
the raw_data contents of every packed tensor removed; their length prefixes stay),
then for each packed tensor its values block and its metadata block. The manifest
records format version, original size and sha256, body and payload size and
sha256, and per tensor: name, dtype, shape, the op and K axis used, where its
raw_data sat in the original file, offsets of its blocks in the payload, and the
sha256 of its original raw bytes.

Encoding of one 2:4 tensor (the logical layout of NVIDIA's sparse MMA operand, as
in the PTX ISA `mma.sp` description and cuSPARSELt's "structured" matrix):

* The weight is viewed as a row-major matrix [N, K] with K (the reduction axis)
  last: MatMul B [K, N] is transposed, Gemm B with transB=1 is taken as is, a Conv
  weight [O, I, kh, kw] is reshaped to [O, I*kh*kw].
* Each row is cut into groups of 4 along K. Every group keeps exactly 2 slots:
  its non-zero elements (bit pattern != 0, so -0.0 counts as non-zero and
  round-trips), padded with its lowest-index zero elements, in ascending index.
* values: [N, K/2] elements of the original dtype, row-major (half the dense size).
* metadata: per group one 4-bit nibble ``idx0 | idx1 << 2`` (idx0 < idx1 in 0..3),
  the PTX 2-bit-index encoding; nibbles in row-major group order, two per byte,
  the earlier group in the low nibble; a final odd nibble is padded with 0.
  That is 2 bits per kept value, K/8 bytes per row.

Sizes before zstd: fp16/bf16 1.125 B/elem = 56.25% of dense, fp32 2.125 B/elem =
53.125% (the issue's "53.2%" rounds this up wrongly; it is 53.1%), int8 62.5%.
The hardware kernels want the metadata interleaved across threads (CUTLASS and
cuSPARSELt differ), so engines re-compress from the dense form at load: this
format is a distribution layout, tied to no kernel.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import zstandard

from runtime.errors import ModelLoadError
from runtime.fileio import write_atomic
from runtime.protowire import fields
from runtime.sparsity.analysis import find_gemm_weights, k_axis_for

MAGIC = b"\x89SPR\r\n\x1a\n"
FORMAT_VERSION = 2  # the newest this reader knows
# Version 2 added the per-tensor "negzero" block (the -0.0 sign bits of pruned slots).
# A file is written as version 1 when no tensor needs that block, so older readers
# still read it; one that does is version 2, which they refuse by version number
# instead of failing a checksum.
SUPPORTED_VERSIONS = (1, 2)
HEADER = struct.Struct("<8sII")
DEFAULT_LEVEL = 10

# ONNX TensorProto.DataType -> (name, unsigned view dtype used for bit-exact work)
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    onnx.TensorProto.FLOAT: ("float32", np.dtype("<u4")),
    onnx.TensorProto.FLOAT16: ("float16", np.dtype("<u2")),
    onnx.TensorProto.BFLOAT16: ("bfloat16", np.dtype("<u2")),
    onnx.TensorProto.DOUBLE: ("float64", np.dtype("<u8")),
    onnx.TensorProto.INT8: ("int8", np.dtype("u1")),
    onnx.TensorProto.UINT8: ("uint8", np.dtype("u1")),
}


class PackedFormatError(ModelLoadError):
    """A .sparse file is truncated, corrupt, of an unknown version, or not one at all."""


@dataclass(frozen=True)
class PackStats:
    """Sizes reported by `pack` (bytes)."""

    original_size: int
    packed_tensors: int
    weights_dense_bytes: int
    weights_packed_bytes: int
    payload_size: int
    file_size: int

    @property
    def weights_ratio(self) -> float:
        """Packed 2:4 weights over their dense size, before zstd."""
        if not self.weights_dense_bytes:
            return 1.0
        return self.weights_packed_bytes / self.weights_dense_bytes


def _sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_data_spans(data: bytes) -> dict[str, tuple[int, int]]:
    """Initializer name -> (start, end) of its raw_data contents in the serialized model.

    Only the main graph is walked (ModelProto.graph=7, GraphProto.initializer=5,
    TensorProto.name=8, raw_data=9). Names seen twice are dropped (not packable).
    """
    buf = memoryview(data)
    graphs = [f for f in fields(buf, 0, len(buf)) if f[0] == 7 and f[1] == 2]
    if len(graphs) != 1:
        return {}
    spans: dict[str, tuple[int, int]] = {}
    dupes: set[str] = set()
    for num, wt, s, e in fields(buf, graphs[0][2], graphs[0][3]):
        if num != 5 or wt != 2:
            continue
        name, raw = None, []
        for fnum, fwt, fs, fe in fields(buf, s, e):
            if fnum == 8 and fwt == 2:
                name = bytes(buf[fs:fe]).decode("utf-8", "replace")
            elif fnum == 9 and fwt == 2:
                raw.append((fs, fe))
        if name is None or len(raw) != 1:
            continue
        if name in spans:
            dupes.add(name)
        spans[name] = raw[0]
    for name in dupes:
        spans.pop(name)
    return spans


# ---- 2:4 encode / decode --------------------------------------------------------


def _k_last(bits: np.ndarray, op: str, k_axis: int) -> np.ndarray:
    if op in ("Conv", "QLinearConv"):
        return bits.reshape(bits.shape[0], -1)
    return np.ascontiguousarray(np.moveaxis(bits, k_axis, -1)).reshape(-1, bits.shape[k_axis])


def _from_k_last(mat: np.ndarray, shape: tuple[int, ...], op: str, k_axis: int) -> np.ndarray:
    if op in ("Conv", "QLinearConv"):
        return mat.reshape(shape)
    moved = np.moveaxis(np.empty(shape, dtype=np.bool_), k_axis, -1).shape
    return np.moveaxis(mat.reshape(moved), -1, k_axis)


def _sign_bit(dtype_name: str, bits_dtype: np.dtype) -> int:
    """The sign bit of a float format (-0.0's bit pattern); 0 for integers."""
    return 1 << (bits_dtype.itemsize * 8 - 1) if dtype_name.startswith(("float", "bfloat")) else 0


def encode_24(mat: np.ndarray, sign_bit: int = 0) -> tuple[bytes, bytes, bytes] | None:
    """Encode a [N, K] unsigned-int bit matrix; None if a group has > 2 non-zeros.

    With a float format's `sign_bit`, -0.0 counts as zero (as `inspect` counts it: masking
    by multiplication leaves -0.0 wherever a negative weight was pruned), and the third part
    records which dropped slots held -0.0 (empty when none did), so decoding stays bit-exact.
    """
    n, k = mat.shape
    if k % 4:
        return None
    groups = mat.reshape(n, k // 4, 4)
    nz = (groups & ~np.array(sign_bit, dtype=mat.dtype)) != 0 if sign_bit else groups != 0
    if (nz.sum(axis=-1) > 2).any():
        return None
    # NOTE: non-zeros first, then zeros, each by index; keep 2 slots, ascending.
    key = (~nz).astype(np.int8) * 4 + np.arange(4, dtype=np.int8)
    idx = np.sort(np.argsort(key, axis=-1, kind="stable")[..., :2], axis=-1)
    values = np.take_along_axis(groups, idx, axis=-1)
    nibbles = (idx[..., 0] | (idx[..., 1] << 2)).astype(np.uint8).ravel()
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    meta = nibbles[0::2] | (nibbles[1::2] << 4)
    negzero = b""
    if sign_bit:
        dropped = groups[_dropped_mask(idx)]  # ±0 only, two per group, ascending
        if (dropped != 0).any():
            negzero = np.packbits(dropped != 0).tobytes()
    return values.tobytes(), meta.tobytes(), negzero


def _dropped_mask(idx: np.ndarray) -> np.ndarray:
    """[N, G, 4] True at the two slots of each group that `idx` ([N, G, 2]) does not keep."""
    mask = np.ones((*idx.shape[:-1], 4), dtype=np.bool_)
    np.put_along_axis(mask, idx, False, axis=-1)
    return mask


def decode_24(
    values: bytes,
    meta: bytes,
    n: int,
    k: int,
    dtype: np.dtype,
    negzero: bytes = b"",
    sign_bit: int = 0,
) -> np.ndarray:
    """Inverse of `encode_24`: the dense [N, K] bit matrix."""
    groups = k // 4
    vals = np.frombuffer(values, dtype=dtype).reshape(n, groups, 2)
    packed = np.frombuffer(meta, dtype=np.uint8)
    nibbles = np.empty(packed.size * 2, dtype=np.uint8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    nibbles = nibbles[: n * groups].reshape(n, groups)
    idx = np.stack([nibbles & 0x3, (nibbles >> 2) & 0x3], axis=-1).astype(np.intp)
    if (idx[..., 0] >= idx[..., 1]).any():
        raise PackedFormatError("corrupt 2:4 metadata (indices not ascending)")
    out = np.zeros((n, groups, 4), dtype=dtype)
    np.put_along_axis(out, idx, vals, axis=-1)
    if negzero:
        bits = np.unpackbits(np.frombuffer(negzero, dtype=np.uint8), count=n * groups * 2)
        out[_dropped_mask(idx)] = bits.astype(dtype) * dtype.type(sign_bit)
    return out.reshape(n, k)


# ---- pack / unpack --------------------------------------------------------------


def pack_bytes(data: bytes, level: int = DEFAULT_LEVEL) -> tuple[bytes, PackStats]:
    """Pack serialized ONNX bytes into the .sparse format.

    Raises:
        ModelLoadError: `data` is not an ONNX model.
    """
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"not a valid ONNX model ({exc})") from exc
    if not model.graph.node:  # NOTE: empty bytes parse as an empty ModelProto
        raise ModelLoadError("not a valid ONNX model (the graph has no nodes)")
    gemm = find_gemm_weights(model.graph)
    spans = raw_data_spans(data)
    entries: list[dict[str, object]] = []
    blocks: dict[str, tuple[bytes, bytes]] = {}
    dense_bytes = packed_bytes = 0
    for init in model.graph.initializer:
        if init.name not in gemm or init.name not in spans or init.data_type not in _DTYPES:
            continue
        dtype_name, bits_dtype = _DTYPES[init.data_type]
        shape = tuple(int(d) for d in init.dims)
        consumer = gemm[init.name]
        k_axis = k_axis_for(consumer.op, shape, consumer.attrs)
        start, end = spans[init.name]
        numel = int(np.prod(shape)) if shape else 1
        if k_axis is None or end - start != numel * bits_dtype.itemsize or numel == 0:
            continue
        raw = data[start:end]
        mat = _k_last(np.frombuffer(raw, dtype=bits_dtype).reshape(shape), consumer.op, k_axis)
        sign_bit = _sign_bit(dtype_name, bits_dtype)
        encoded = encode_24(mat, sign_bit)
        if encoded is None:
            continue
        values, meta, negzero = encoded
        restored = _from_k_last(
            decode_24(values, meta, *mat.shape, bits_dtype, negzero, sign_bit),
            shape, consumer.op, k_axis,
        )  # fmt: skip
        if np.ascontiguousarray(restored).tobytes() != raw:  # pragma: no cover - safety net
            continue
        entries.append({
            "name": init.name,
            "encoding": "2:4",
            "dtype": dtype_name,
            "shape": list(shape),
            "op": consumer.op,
            "k_axis": k_axis,
            "rows": int(mat.shape[0]),
            "k": int(mat.shape[1]),
            "file_offset": start,
            "raw_length": end - start,
            "values_length": len(values),
            "meta_length": len(meta),
            "negzero_length": len(negzero),
            "sha256": _sha(raw),
        })
        blocks[init.name] = (values, meta + negzero)
        dense_bytes += end - start
        packed_bytes += len(values) + len(meta) + len(negzero)
    entries.sort(key=lambda e: int(e["file_offset"]))  # type: ignore[arg-type]
    skeleton_parts, pos = [], 0
    for e in entries:
        skeleton_parts.append(data[pos:int(e["file_offset"])])  # type: ignore[arg-type]
        pos = int(e["file_offset"]) + int(e["raw_length"])  # type: ignore[arg-type]
    skeleton_parts.append(data[pos:])
    skeleton = b"".join(skeleton_parts)
    payload_parts, offset = [skeleton], len(skeleton)
    for e in entries:
        values, meta = blocks[str(e["name"])]
        e["values_offset"], e["meta_offset"] = offset, offset + len(values)
        payload_parts += [values, meta]
        offset += len(values) + len(meta)
    payload = b"".join(payload_parts)
    body = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(payload)
    version = 2 if any(int(e["negzero_length"]) for e in entries) else 1  # type: ignore[call-overload]
    manifest = {
        "format_version": version,
        "original_size": len(data),
        "original_sha256": _sha(data),
        "skeleton_length": len(skeleton),
        "payload_size": len(payload),
        "payload_sha256": _sha(payload),
        "body_size": len(body),
        "body_sha256": _sha(body),
        "tensors": entries,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    out = HEADER.pack(MAGIC, version, len(manifest_bytes)) + manifest_bytes + body
    stats = PackStats(len(data), len(entries), dense_bytes, packed_bytes, len(payload), len(out))
    return out, stats


def read_manifest(data: bytes) -> tuple[dict[str, object], memoryview]:
    """Validate the header and return (manifest, body).

    Raises:
        PackedFormatError: not a packed file, unknown version, truncated or corrupt.
    """
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise PackedFormatError("not a .sparse packed model (bad magic bytes)")
    if len(data) < HEADER.size:
        raise PackedFormatError("packed model is truncated (header incomplete)")
    _, version, mlen = HEADER.unpack_from(data)
    if version not in SUPPORTED_VERSIONS:
        raise PackedFormatError(
            f"packed model format version {version} is not supported (this reader knows "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}; a newer sparse-runtime wrote it)"
        )
    if len(data) < HEADER.size + mlen:
        raise PackedFormatError("packed model is truncated (manifest incomplete)")
    try:
        manifest = json.loads(data[HEADER.size : HEADER.size + mlen])
        body = memoryview(data)[HEADER.size + mlen :]
        body_size = int(manifest["body_size"])
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise PackedFormatError(f"packed model manifest is corrupt ({exc!r})") from exc
    if len(body) < body_size:
        raise PackedFormatError(
            f"packed model is truncated ({len(body)} of {body_size} body bytes)"
        )
    if len(body) > body_size:
        raise PackedFormatError("packed model has trailing bytes after its body")
    return manifest, body


def unpack_bytes(data: bytes) -> bytes:
    """Restore and verify the original ONNX bytes from a packed file's bytes.

    Raises:
        PackedFormatError: truncated, corrupt, checksum mismatch, or not a packed file.
    """
    manifest, body = read_manifest(data)
    try:
        if _sha(body) != manifest["body_sha256"]:
            raise PackedFormatError("packed model checksum mismatch (body sha256): file corrupt")
        try:
            payload = zstandard.ZstdDecompressor().decompress(
                bytes(body), max_output_size=int(manifest["payload_size"])
            )
        except zstandard.ZstdError as exc:
            raise PackedFormatError(f"packed model body does not decompress ({exc})") from exc
        if _sha(payload) != manifest["payload_sha256"]:
            raise PackedFormatError("packed model checksum mismatch (payload sha256)")
        skeleton_len = int(manifest["skeleton_length"])
        parts, skel_pos, orig_pos = [], 0, 0
        for e in manifest["tensors"]:
            file_offset = int(e["file_offset"])
            take = file_offset - orig_pos
            parts.append(payload[skel_pos : skel_pos + take])
            skel_pos += take
            dtype_name, bits_dtype = next(v for v in _DTYPES.values() if v[0] == e["dtype"])
            vo, mo = int(e["values_offset"]), int(e["meta_offset"])
            ml, zl = int(e["meta_length"]), int(e.get("negzero_length", 0))
            mat = decode_24(
                payload[vo : vo + int(e["values_length"])],
                payload[mo : mo + ml],
                int(e["rows"]),
                int(e["k"]),
                bits_dtype,
                payload[mo + ml : mo + ml + zl],
                _sign_bit(dtype_name, bits_dtype),
            )
            shape = tuple(int(d) for d in e["shape"])
            raw = np.ascontiguousarray(
                _from_k_last(mat, shape, str(e["op"]), int(e["k_axis"]))
            ).tobytes()
            if len(raw) != int(e["raw_length"]) or _sha(raw) != e["sha256"]:
                raise PackedFormatError(f"tensor {e['name']!r} checksum mismatch")
            parts.append(raw)
            orig_pos = file_offset + len(raw)
        parts.append(payload[skel_pos:skeleton_len])
        original = b"".join(parts)
        if len(original) != int(manifest["original_size"]) or (
            _sha(original) != manifest["original_sha256"]
        ):
            raise PackedFormatError("packed model checksum mismatch (original model sha256)")
    except (KeyError, TypeError, ValueError, StopIteration, OverflowError) as exc:
        raise PackedFormatError(f"packed model manifest is corrupt ({exc!r})") from exc
    return original


def is_packed(path: Path) -> bool:
    """True when `path` starts with the .sparse magic bytes (the extension is not trusted)."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def load_packed(path: Path) -> bytes:
    """Read a .sparse file and return its verified original ONNX bytes.

    Raises:
        PackedFormatError: unreadable, truncated, corrupt, wrong checksum, or not packed.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PackedFormatError(f"{path}: cannot read packed model ({exc})") from exc
    try:
        return unpack_bytes(data)
    except PackedFormatError as exc:
        raise PackedFormatError(f"{path}: {exc}") from exc


def pack_file(src: Path, dst: Path, level: int = DEFAULT_LEVEL) -> PackStats:
    """Pack the ONNX file `src` into `dst` (written atomically).

    Raises:
        ModelLoadError: `src` is already packed, or not an ONNX model (the message names it).
    """
    if is_packed(Path(src)):
        raise PackedFormatError(f"{src} is already a packed .sparse model")
    try:
        packed, stats = pack_bytes(Path(src).read_bytes(), level)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{src}: {exc}") from exc
    write_atomic(Path(dst), packed)
    return stats
