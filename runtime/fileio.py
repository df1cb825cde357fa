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
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # NOTE: no model-sized leftover beside the target
        raise


def output_problem(*paths: Path | None) -> str:
    """Why one of these output files cannot be written, checked before the work starts
    (a directory in the way); "" when none is in the way."""
    for path in paths:
        if path is not None and Path(path).is_dir():
            return f"{path} is a directory; give a file name"
    return ""


def read_model(path: Path) -> tuple[bytes, onnx.ModelProto, str]:
    """(ONNX bytes, parsed model, stored form "onnx" | "packed") of a model file.

    Raises:
        ModelLoadError: missing, unreadable, corrupt or not an ONNX/.sparse file.
    """
    from runtime.sparsity.pack import is_packed, load_packed  # NOTE: pack imports this module

    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory; give the model file")
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
