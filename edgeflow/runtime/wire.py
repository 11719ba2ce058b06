"""The message format of every MQTT payload the runtime sends (docs/runtime.md, "Messages").

A payload is PREFIX (magic `EFLW`, format version, header length: `<4sBI`, 9 bytes), then the
header, UTF-8 JSON, then the tensors' bytes back to back. The header holds the app, the unit that
sent the message and its replica, the frame id (the sensor's sequence number, which joins key
on), the capture time (seconds since the epoch, at the sensor), the sender's own sequence number,
each tensor's name, dtype, shape, offset and length in the data section, the trace: one entry
per hop `[unit, received, started, published]` (seconds since the epoch), for an adapting
split model's messages `cut`, the id of the cut the head made it with, and `version`, the version
of the last whole model on the frame's path (the first 12 hex digits of its ONNX file's sha256:
a model's worker sets it, later units pass it on).

Tensors are raw little-endian C-order bytes, never pickle: decoding never runs code. `decode`
checks everything (magic, version, lengths, JSON, dtypes, shapes against lengths) and raises
`WireError` for a bad payload, never anything else.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"EFLW"
VERSION = 1
PREFIX = struct.Struct("<4sBI")
MAX_HEADER = 1 << 20

DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
                 "uint32", "int64", "uint64", "bool")
}
"""The element types a message may carry (the language's and what ONNX models commonly output)."""


class WireError(ValueError):
    """A payload that is not a message of this format (counted and dropped by the worker)."""


Hop = tuple[str, float, float, float]
"""One trace entry: unit, received, started, published (seconds since the epoch)."""


@dataclass(frozen=True)
class Message:
    app: str
    unit: str
    replica: int
    frame: int
    captured: float
    seq: int
    tensors: Mapping[str, np.ndarray[Any, Any]]
    trace: tuple[Hop, ...] = field(default=())
    cut: str | None = None  # an adapting split model's: the id of the cut it was made with
    version: str | None = None  # the last whole model's version on the path (sha256, 12 hex)


_NAME_OF = {d: name for name, dtype in DTYPES.items()
            for d in (dtype, dtype.newbyteorder(">"), dtype.newbyteorder("="))}


def _dtype_name(array: np.ndarray[Any, Any]) -> str:
    name = _NAME_OF.get(array.dtype)  # a dict lookup: dtype.name is computed in Python each time
    if name is None:
        raise WireError(f"element type {array.dtype} cannot be sent (one of {', '.join(DTYPES)})")
    return name


def encode(message: Message) -> bytes:
    """The payload of `message` (tensors converted to little-endian C order). The tensors'
    bytes are copied once, into the payload."""
    entries: list[dict[str, Any]] = []
    chunks: list[memoryview] = []
    offset = 0
    for name, array in message.tensors.items():
        dtype = _dtype_name(array)
        flat: Any = np.ascontiguousarray(array, dtype=DTYPES[dtype]).reshape(-1).view(np.uint8)
        data = memoryview(flat)
        entries.append({"name": name, "dtype": dtype, "shape": list(array.shape),
                        "offset": offset, "length": data.nbytes})
        chunks.append(data)
        offset += data.nbytes
    fields: dict[str, Any] = {
        "app": message.app, "unit": message.unit, "replica": message.replica,
        "frame": message.frame, "captured": message.captured, "seq": message.seq,
        "tensors": entries, "trace": [list(h) for h in message.trace],
    }
    if message.cut is not None:
        fields["cut"] = message.cut
    if message.version is not None:
        fields["version"] = message.version
    header = json.dumps(fields, separators=(",", ":")).encode()
    return b"".join([PREFIX.pack(MAGIC, VERSION, len(header)), header, *chunks])


def _field(header: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise WireError(f"header field `{key}` is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WireError(f"{what} is not a finite number")
    return float(value)


def _trace(raw: Any) -> tuple[Hop, ...]:
    if not isinstance(raw, list):
        raise WireError("header field `trace` is not a list")
    hops: list[Hop] = []
    for hop in raw:
        if not isinstance(hop, list) or len(hop) != 4 or not isinstance(hop[0], str):
            raise WireError("a trace entry is not [unit, received, started, published]")
        hops.append((hop[0], *(_number(t, "a trace time") for t in hop[1:])))  # type: ignore[arg-type]
    return tuple(hops)


def decode(payload: bytes) -> Message:
    """The message in `payload`; WireError if it is not one. Arrays are read-only views."""
    if len(payload) < PREFIX.size:
        raise WireError("payload shorter than the message prefix")
    magic, version, header_len = PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise WireError("not an edgeflow message (bad magic)")
    if version != VERSION:
        raise WireError(f"message format version {version}, this worker reads {VERSION}")
    if header_len > MAX_HEADER or PREFIX.size + header_len > len(payload):
        raise WireError("header length beyond the payload")
    try:
        header = json.loads(payload[PREFIX.size:PREFIX.size + header_len])
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("header is not a JSON object")
    data = memoryview(payload)[PREFIX.size + header_len:]
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for entry in _field(header, "tensors", list):
        if not isinstance(entry, dict):
            raise WireError("a tensor entry is not an object")
        name = _field(entry, "name", str)
        dtype = DTYPES.get(_field(entry, "dtype", str))
        shape = _field(entry, "shape", list)
        offset, length = _field(entry, "offset", int), _field(entry, "length", int)
        if dtype is None:
            raise WireError(f"tensor `{name}` has an unknown element type")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                   for d in shape) or len(shape) > 32:
            raise WireError(f"tensor `{name}` has an invalid shape")
        if math.prod(shape) * dtype.itemsize != length or offset < 0 or \
                offset + length > len(data):
            raise WireError(f"tensor `{name}`: its shape and bytes disagree")
        if name in tensors:
            raise WireError(f"tensor `{name}` appears twice")
        array = np.frombuffer(data[offset:offset + length], dtype=dtype).reshape(shape)
        tensors[name] = array
    return Message(
        app=_field(header, "app", str), unit=_field(header, "unit", str),
        replica=_field(header, "replica", int), frame=_field(header, "frame", int),
        captured=_number(header.get("captured"), "`captured`"), seq=_field(header, "seq", int),
        tensors=tensors, trace=_trace(header.get("trace")),
        cut=None if header.get("cut") is None else _field(header, "cut", str),
        version=None if header.get("version") is None else _field(header, "version", str))
