"""Datatype tables: KServe v2 wire names, config.pbtxt TYPE_* names and numpy.

Dict literals plus their inverses (MLServer's style), so every lookup is one
dict access and a new dtype is one line.
"""

from __future__ import annotations

import numpy as np

from runtime.errors import InvalidArgument

# KServe v2 / Triton wire datatype -> numpy. BYTES travel as object arrays of bytes.
WIRE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_WIRE: dict[np.dtype, str] = {v: k for k, v in WIRE_TO_NUMPY.items()}

# config.pbtxt DataType enum names -> wire names ("TYPE_FP32" -> "FP32"; STRING is BYTES).
CONFIG_TO_WIRE: dict[str, str] = {f"TYPE_{k}": k for k in WIRE_TO_NUMPY if k != "BYTES"}
CONFIG_TO_WIRE["TYPE_STRING"] = "BYTES"
WIRE_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_WIRE.items()}

# onnxruntime NodeArg.type strings -> numpy
ORT_TO_NUMPY: dict[str, np.dtype] = {
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(string)": np.dtype(np.object_),
}

# element sizes on the wire (BYTES has none)
WIRE_ITEMSIZE: dict[str, int] = {
    k: v.itemsize for k, v in WIRE_TO_NUMPY.items() if k != "BYTES"
}


def numpy_to_wire(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return "BYTES"
    try:
        return NUMPY_TO_WIRE[dtype]
    except KeyError:
        raise InvalidArgument(f"unsupported numpy dtype '{dtype}'") from None
