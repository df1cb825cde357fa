"""The .sparse format: bit-exact round trips, size targets and clear errors on bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.errors import ModelLoadError
from runtime.samples import mlp_pair
from runtime.sparsity.masks import magnitude_prune_2of4
from runtime.sparsity.pack import (
    HEADER,
    PackedFormatError,
    decode_24,
    encode_24,
    is_packed,
    load_packed,
    pack_bytes,
    pack_file,
    unpack_bytes,
)


def _matmul_model(w: np.ndarray, elem: int) -> bytes:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, [1, k])],
        [helper.make_tensor_value_info("y", elem, [1, n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def sparse_bytes() -> bytes:
    return mlp_pair((64, 128, 128, 32))[1].SerializeToString()


def test_round_trip_is_bit_exact(sparse_bytes: bytes, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(sparse_bytes)
    stats = pack_file(src, tmp_path / "m.sparse")
    assert stats.packed_tensors == 3
    assert is_packed(tmp_path / "m.sparse") and not is_packed(src)
    assert load_packed(tmp_path / "m.sparse") == sparse_bytes
    assert stats.weights_ratio == pytest.approx(0.53125)  # fp32


def test_dense_model_round_trips_unpacked() -> None:
    dense = mlp_pair((64, 128, 32))[0].SerializeToString()
    packed, stats = pack_bytes(dense)
    assert stats.packed_tensors == 0
    assert unpack_bytes(packed) == dense


@pytest.mark.parametrize(("dtype", "elem", "ratio"), [
    (np.float16, TensorProto.FLOAT16, 0.5625),
    (np.float32, TensorProto.FLOAT, 0.53125),
    (np.int8, TensorProto.INT8, 0.625),
])
def test_size_targets(dtype: type, elem: int, ratio: float) -> None:
    rng = np.random.default_rng(0)
    w = magnitude_prune_2of4((rng.standard_normal((256, 64)) * 50).astype(dtype), k_axis=0)
    data = _matmul_model(w, elem)
    packed, stats = pack_bytes(data)
    assert stats.packed_tensors == 1
    assert stats.weights_packed_bytes / stats.weights_dense_bytes == ratio
    assert unpack_bytes(packed) == data


def test_negative_zero_and_sparse_groups_round_trip() -> None:
    w = np.zeros((8, 16), dtype=np.float32)
    w[0, :] = -0.0
    w[1, 3] = 5.0
    w[4, 0], w[5, 0] = 1.0, 2.0
    data = _matmul_model(w, TensorProto.FLOAT)
    packed, stats = pack_bytes(data)
    assert stats.packed_tensors == 1
    assert unpack_bytes(packed) == data


def test_non_24_bits_are_stored_as_is() -> None:
    w = np.ones((8, 16), dtype=np.float32)
    data = _matmul_model(w, TensorProto.FLOAT)
    packed, stats = pack_bytes(data)
    assert stats.packed_tensors == 0 and unpack_bytes(packed) == data


def test_gemm_transb_and_conv_round_trip() -> None:
    rng = np.random.default_rng(3)
    wg = magnitude_prune_2of4(rng.standard_normal((32, 64)).astype(np.float32), k_axis=1)
    wc = magnitude_prune_2of4(
        rng.standard_normal((16, 32, 1, 1)).astype(np.float32), k_axis=1
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "wc"], ["c"]),
         helper.make_node("Flatten", ["c"], ["f"]),
         helper.make_node("Gemm", ["f", "wg"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        initializer=[numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wg, "wg")],
    )
    data = helper.make_model(graph).SerializeToString()
    packed, stats = pack_bytes(data)
    assert stats.packed_tensors == 2
    assert unpack_bytes(packed) == data


def test_layout_nibbles() -> None:
    mat = np.array([[0, 7, 0, 9, 5, 0, 0, 0]], dtype=np.uint16)
    values, meta, negzero = encode_24(mat)  # type: ignore[misc]
    assert negzero == b""  # integers have no -0
    assert np.frombuffer(values, np.uint16).tolist() == [7, 9, 5, 0]
    # group 0 keeps (1, 3): 1 | 3 << 2 = 0xD; group 1 keeps (0, 1): 0 | 1 << 2 = 0x4
    assert meta == bytes([0xD | 0x4 << 4])
    np.testing.assert_array_equal(decode_24(values, meta, 1, 8, np.dtype(np.uint16)), mat)
    assert encode_24(np.array([[1, 1, 1, 0]], dtype=np.uint16)) is None


def _manifest(packed: bytes) -> bytes:
    _, _, mlen = HEADER.unpack_from(packed)
    return packed[HEADER.size:HEADER.size + mlen]


def _rewrite_manifest(packed: bytes, edit: dict[str, object]) -> bytes:
    _, version, mlen = HEADER.unpack_from(packed)
    manifest = json.loads(packed[HEADER.size:HEADER.size + mlen])
    manifest.update(edit)
    mb = json.dumps(manifest).encode()
    return HEADER.pack(packed[:8], version, len(mb)) + mb + packed[HEADER.size + mlen:]


def test_bad_files_give_clear_errors(sparse_bytes: bytes, tmp_path: Path) -> None:
    packed, _ = pack_bytes(sparse_bytes)
    cases = {
        "truncated": (packed[: len(packed) - 100], "truncated"),
        "header": (packed[:10], "truncated"),
        "flipped": (packed[:-50] + bytes([packed[-50] ^ 1]) + packed[-49:], "checksum"),
        "not_packed": (sparse_bytes, "not a .sparse"),
        "version": (packed[:8] + struct.pack("<I", 99) + packed[12:], "version 99 .*newer"),
        "manifest": (packed[:HEADER.size] + b"!" + packed[HEADER.size + 1:], "manifest"),
        "sha": (_rewrite_manifest(packed, {"original_sha256": "0" * 64}), "original model sha256"),
        "trailing": (packed + b"x", "trailing"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.sparse"
        path.write_bytes(data)
        with pytest.raises(PackedFormatError, match=message) as info:
            load_packed(path)
        assert isinstance(info.value, ModelLoadError)
        assert str(path) in str(info.value)
    with pytest.raises(PackedFormatError, match="cannot read"):
        load_packed(tmp_path / "missing.sparse")
    assert not is_packed(tmp_path / "missing.sparse")


def test_not_onnx_is_rejected_by_pack() -> None:
    with pytest.raises(ModelLoadError):
        pack_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelLoadError, match="no nodes"):
        pack_bytes(b"")  # parses as an empty ModelProto


def test_packed_model_still_loads_in_onnx(sparse_bytes: bytes) -> None:
    model = onnx.load_from_string(unpack_bytes(pack_bytes(sparse_bytes)[0]))
    onnx.checker.check_model(model)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pruned_by_multiplication_keeps_negative_zeros_and_packs(dtype: type) -> None:
    """w * mask leaves -0.0 where a negative weight was pruned: inspect counts it as zero, so
    pack must too (and restore every -0.0 bit for bit)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 32)).astype(dtype)
    mask = magnitude_prune_2of4(w, k_axis=0) != 0
    w = w * mask.astype(dtype)  # -0.0 wherever a negative weight was dropped
    assert np.signbit(w[w == 0]).any()
    tensor_type = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    data = _matmul_model(w, tensor_type)
    packed, stats = pack_bytes(data)
    assert stats.packed_tensors == 1
    assert unpack_bytes(packed) == data  # bit-exact, -0.0 included
    clean = _matmul_model(np.where(w == 0, dtype(0), w), tensor_type)
    clean_packed = pack_bytes(clean)[0]
    assert len(clean_packed) < len(packed)  # the sign bits cost a little, only when there
    # the sign-bit block is format version 2; a file without it stays version 1, so a reader
    # from before the block refuses only files it cannot read, and by version, not checksum
    assert HEADER.unpack_from(packed)[1] == 2
    assert json.loads(_manifest(packed))["format_version"] == 2
    assert HEADER.unpack_from(clean_packed)[1] == 1
    assert unpack_bytes(clean_packed) == clean


def test_manifest_damage_is_a_format_error(sparse_bytes: bytes) -> None:
    packed, _ = pack_bytes(sparse_bytes)
    i = packed.find(b'"original_size"')
    flipped = packed[: i + 1] + bytes([packed[i + 1] ^ 1]) + packed[i + 2 :]
    huge = _rewrite_manifest(packed, {"body_size": 1e400})
    for data in (flipped, huge):
        with pytest.raises(PackedFormatError, match="corrupt|checksum"):
            unpack_bytes(data)
