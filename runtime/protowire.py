"""Just enough of the protobuf wire format to find and build fields without parsing messages.

Why by hand: protobuf copies every bytes field it parses or serializes, and for the large ones
(ONNX initializers' raw_data when packing a model, KServe raw tensor contents when serving) the
spans themselves are all that is needed.
"""

from __future__ import annotations

LENGTH_DELIMITED = 2


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); ValueError when truncated or longer than 64 bits."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(
    buf: bytes | memoryview, start: int, end: int, max_fields: int | None = None
) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of one message's fields, in order.

    Fields are contiguous: each one's tag starts where the previous value ended. ValueError
    past `max_fields` fields: this walk runs in Python, about 1 us a field, so a caller that
    only wants a few large fields stops early on a message of millions of small ones."""
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        if max_fields is not None and len(out) >= max_fields:
            raise ValueError(f"more than {max_fields} fields")
        tag, pos = read_varint(buf, pos)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            _, nxt = read_varint(buf, pos)
        elif wt == 1:
            nxt = pos + 8
        elif wt == 5:
            nxt = pos + 4
        elif wt == LENGTH_DELIMITED:
            length, pos = read_varint(buf, pos)
            nxt = pos + length
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if nxt > end:
            raise ValueError("field runs past its message")
        out.append((num, wt, pos, nxt))
        pos = nxt
    return out


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited_header(number: int, size: int) -> bytes:
    """Tag and length of a length-delimited field; its `size` bytes follow."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(size)
