"""Model file I/O shared by the server and the CLI.

Writes are atomic, so a reader (the poll-mode scanner, another process) never
sees half a file; reads accept ONNX or a packed .sparse file (by magic bytes).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from runtime.errors import ModelLoadError


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` beside `path`, then rename over it (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_model(path: Path) -> tuple[bytes, onnx.ModelProto, str]:
    """(ONNX bytes, parsed model, stored form "onnx" | "packed") of a model file.

    Raises:
        ModelLoadError: missing, unreadable, corrupt or not an ONNX/.sparse file.
    """
    from runtime.sparsity.pack import is_packed, load_packed  # NOTE: pack imports this module

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    packed = is_packed(path)
    data = load_packed(path) if packed else path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: the graph has no nodes")
    return data, model, "packed" if packed else "onnx"
