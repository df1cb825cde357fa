"""Triton's classification extension: an output's top-k entries as "value:index[:label]".

A client asks for it per requested output (`InferRequestedOutput(name, class_count=k)`,
the `classification` parameter); the answer replaces that output with a BYTES tensor of
k strings per batch row, highest first, formatted as tritonserver formats them (the value
as C++ std::to_string prints it, then the class index, then the label when the config's
`label_filename` gives one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.errors import InvalidArgument


def _text(value: np.generic) -> str:
    if isinstance(value, np.floating):
        return f"{float(value):f}"  # NOTE: std::to_string(float): six decimals
    return str(int(value))


def classify(
    array: np.ndarray, k: int, batched: bool, labels: Sequence[str] = (), name: str = ""
) -> np.ndarray:
    """Top-k of each batch row (or of the whole tensor when not batched), as BYTES.

    Raises:
        InvalidArgument: the output is not numeric.
    """
    if array.dtype.kind not in "fiub":
        raise InvalidArgument(f"classification needs a numeric output; '{name}' is BYTES")
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    # NOTE: a stable sort of a key that reverses the order exactly, so ties keep the lower
    # class index first: -x for floats, ~x for integers (no overflow, no float rounding)
    if rows.dtype.kind == "f":
        key = -rows
    else:
        key = ~(rows.astype(np.uint8) if rows.dtype.kind == "b" else rows)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for j, idx in enumerate(order[r]):
            label = f":{labels[idx]}" if idx < len(labels) and labels[idx] else ""
            out[r, j] = f"{_text(rows[r, idx])}:{idx}{label}".encode()
    return out if batched else out.reshape(k)
