"""KServe v2 HTTP/REST bodies <-> the gRPC messages the servicer takes, and back.

An infer request becomes a `codec.ParsedInferRequest`: its JSON header as a
ModelInferRequest, each input's bytes (Triton's binary tensor extension, or JSON `data`
packed once with numpy) as raw contents, so both transports share one decoding and one
set of checks. A response is JSON, with outputs asked for as binary appended after it
(`Inference-Header-Content-Length` says where the JSON ends).
"""

from __future__ import annotations

import json
from collections.abc import Container, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as pb

from runtime.dtypes import WIRE_TO_NUMPY, numpy_to_wire
from runtime.errors import InvalidArgument, RuntimeServerError
from runtime.server import codec


class JsonError(RuntimeServerError):
    """A body that is not the JSON it should be: tritonserver answers these 500 (INTERNAL)."""

    code = grpc.StatusCode.INTERNAL


HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
_INT64 = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


# ---- JSON views of protobuf answers ------------------------------------------------
def _int64_as_numbers(message: Message, data: dict[str, Any]) -> None:
    """protobuf's JSON writes 64-bit integers as strings; Triton's HTTP API writes numbers."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            if inner.message_type is not None:
                for key, sub in getattr(message, field.name).items():
                    _int64_as_numbers(sub, value[str(key)])
            elif inner.cpp_type in _INT64:
                data[field.name] = {k: int(v) for k, v in value.items()}
        elif field.message_type is not None:
            subs = getattr(message, field.name)
            for sub, d in zip(
                subs if repeated else [subs], value if repeated else [value], strict=True
            ):
                _int64_as_numbers(sub, d)
        elif field.cpp_type in _INT64:
            data[field.name] = [int(v) for v in value] if repeated else int(value)


def message_json(message: Message, defaults: bool = False) -> dict[str, Any]:
    """A protobuf message as Triton's HTTP API shows it: proto field names, enum names,
    64-bit integers as numbers."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults
    )
    _int64_as_numbers(message, data)
    return data


def model_metadata_json(response: pb.ModelMetadataResponse) -> dict[str, Any]:
    def tensors(items: Sequence[Any]) -> list[dict[str, Any]]:
        return [
            {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
            for t in items
        ]

    return {
        "name": response.name,
        "versions": list(response.versions),
        "platform": response.platform,
        "inputs": tensors(response.inputs),
        "outputs": tensors(response.outputs),
    }


_INT64_RANGE = (-(2**63), 2**63 - 1)


def _int64(value: int) -> bool:
    return _INT64_RANGE[0] <= value <= _INT64_RANGE[1]


def _object(value: Any, what: str) -> dict[str, Any]:
    """An optional JSON object (absent or null: empty); anything else is a 400."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return dict(value)


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    """Pop a boolean parameter; a non-boolean one is refused, as tritonserver's JSON reader
    does (bool("false") would be true)."""
    if key not in params:
        return None
    value = params.pop(key)
    if not isinstance(value, bool):
        raise InvalidArgument(
            f"attempt to access JSON non-boolean as boolean: '{key}' of {where} must be true "
            f"or false, got {json.dumps(value)}"
        )
    return value


def parameters_message(values: Mapping[str, Any], target: Any, where: str) -> None:
    """JSON parameters into an InferParameter map (bool, int, string; as Triton takes them)."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if not _int64(value):
                raise InvalidArgument(
                    f"parameter '{key}' does not fit a 64-bit integer: {value} ({where})"
                )
            param.int64_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidArgument(  # NOTE: Triton's wording
                f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or "
                f"'string'. ({where})"
            )


# ---- infer requests -------------------------------------------------------------------
def _json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON `data` (flat or nested) as the input's raw bytes."""
    count = int(np.prod(shape)) if all(d >= 0 for d in shape) else -1
    if count != _json_count(data):
        raise JsonError(  # NOTE: Triton's wording and status
            "Unable to parse 'data': Shape does not match true shape of 'data' field"
        )
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            items = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
            if not all(isinstance(v, bytes) for v in items):
                raise ValueError("BYTES data must be strings")
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return codec.serialize_bytes(array)
        dtype = WIRE_TO_NUMPY.get(datatype)
        if dtype is None:
            raise InvalidArgument(f"input '{name}': unsupported datatype '{datatype}'")
        array = np.asarray(data)
        if array.dtype == object or array.dtype.kind in "USV":
            raise ValueError(f"'data' of input '{name}' is not all numbers")
        if datatype == "BOOL" and array.size and array.dtype != np.bool_:
            raise ValueError("BOOL data must be true or false")
        if array.dtype.kind == "f" and np.dtype(dtype).kind in "iub":
            raise ValueError(f"'data' of input '{name}' holds non-integers for {datatype}")
        cast = array.astype(np.dtype(dtype).newbyteorder("<"))
        if np.dtype(dtype).kind in "iu" and not np.array_equal(cast, array):
            raise ValueError(f"'data' of input '{name}' does not fit {datatype}")
        return cast.tobytes()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(f"unable to parse 'data' of input '{name}': {exc}") from None


def _json_count(data: Any) -> int:
    """Leaf values in nested JSON lists (without recursion: any depth json.loads took)."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            count += 1
    return count


def parse_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str
) -> tuple[codec.ParsedInferRequest, bool, dict[str, bool]]:
    """(request, binary_data_output, per-output binary_data) from an HTTP infer body."""
    view = memoryview(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidArgument(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 <= size <= len(body):
            raise InvalidArgument(  # NOTE: Triton's wording
                f"inference header size should be in range (0, {len(body)}), got: {size}"
            )
    else:
        size = len(body)
    try:
        header = json.loads(bytes(view[:size]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # NOTE: Triton's
        raise JsonError(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(header, dict):
        raise JsonError("failed to parse the request JSON buffer: not a JSON object")
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    if isinstance(header.get("id"), str):
        message.id = header["id"]
    params = _object(header.get("parameters"), "the request's 'parameters'")
    binary_output = bool(_flag(params, "binary_data_output", "the request"))
    parameters_message(params, message.parameters, "request")
    raw: list[bytes | memoryview] = []
    offset = size
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the request JSON has no 'inputs' list")
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("each input needs a 'name'")
        name = item["name"]
        datatype = str(item.get("datatype", ""))
        shape = item.get("shape", [])
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and _int64(d) for d in shape
        ):
            raise InvalidArgument(
                f"input '{name}': 'shape' must be a list of 64-bit integers, got "
                f"{json.dumps(shape)[:200]}"
            )
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        tensor_params = _object(item.get("parameters"), f"'parameters' of input '{name}'")
        binary_size = tensor_params.pop(BINARY_SIZE, None)
        parameters_message(tensor_params, tensor.parameters, f"input '{name}'")
        if any(k in tensor_params for k in codec.SHM_KEYS):
            continue  # NOTE: read by codec from the region
        if binary_size is not None:
            if not isinstance(binary_size, int) or isinstance(binary_size, bool) \
                    or binary_size < 0:  # fmt: skip
                raise InvalidArgument(f"input '{name}': {BINARY_SIZE} must be an integer >= 0")
            if offset + binary_size > len(body):
                raise InvalidArgument(
                    f"unexpected size for input '{name}': {BINARY_SIZE} {binary_size} runs "
                    f"past the end of the body ({len(body) - offset} bytes left)"
                )
            raw.append(view[offset : offset + binary_size])
            offset += binary_size
        elif "data" in item:
            raw.append(_json_data(name, datatype, shape, item["data"]))
        else:
            raise InvalidArgument(  # NOTE: Triton's wording
                "Input must set only one of the following fields: 'data', 'binary_data_size' "
                "in 'parameters', 'shared_memory_region' in 'parameters'. But no field is set"
            )
    if offset != len(body):
        raise InvalidArgument(
            f"unexpected additional input data for model '{model_name}': "
            f"{len(body) - offset} bytes after the last input"
        )
    binary_outputs: dict[str, bool] = {}
    outputs = header.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise InvalidArgument(f"'outputs' must be a list, got {type(outputs).__name__}")
    for item in outputs or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("each requested output needs a 'name'")
        out_where = f"output '{item['name']}'"
        out_params = _object(item.get("parameters"), f"'parameters' of {out_where}")
        binary = _flag(out_params, "binary_data", out_where)
        if binary is not None:
            binary_outputs[item["name"]] = binary
        out = message.outputs.add(name=item["name"])
        parameters_message(out_params, out.parameters, f"output '{item['name']}'")
    return codec.ParsedInferRequest(message, raw), binary_output, binary_outputs  # type: ignore[arg-type]


# ---- infer responses --------------------------------------------------------------------
class HttpBody:
    """An infer response: JSON, then binary outputs; `header_length` is None if all JSON."""

    __slots__ = ("data", "header_length")

    def __init__(self, data: bytes, header_length: int | None) -> None:
        self.data = data
        self.header_length = header_length


def _json_values(array: np.ndarray) -> list[Any]:
    if array.dtype == object:
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in array.reshape(-1)
        ]
    return array.reshape(-1).tolist()


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    binary_default: bool,
    binary_outputs: Mapping[str, bool],
    in_shared_memory: Container[str] = (),
) -> HttpBody:
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        header["id"] = request_id
    entries = []
    blobs: list[bytes | np.ndarray] = []
    for name in names:
        array = codec.wire_order(outputs[name])
        datatype = numpy_to_wire(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in in_shared_memory:
            pass
        elif binary_outputs.get(name, binary_default):
            blob = codec.output_blob(array, datatype)
            entry["parameters"] = {BINARY_SIZE: len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_values(array)
        entries.append(entry)
    header["outputs"] = entries
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return HttpBody(text, None)
    return HttpBody(b"".join([text, *blobs]), len(text))
