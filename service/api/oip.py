"""Open Inference Protocol (KServe v2, REST) tensors: JSON and the binary-data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; `Inference-Header-Content-Length`
gives the header's length, and each binary input names its slice with `parameters.binary_data_size`. BYTES
tensors travel as JSON strings (images: base64) or, in binary, as 4-byte little-endian lengths each followed by
the element's bytes. Responses mirror that: outputs asked for with `binary_data` (or every output, with
`binary_data_output`) are appended after the JSON header.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "FP64": np.float64,
    "UINT8": np.uint8,
    "BYTES": np.object_,
}


class ProtocolError(Exception):
    """A request the protocol refuses: answered as `{"error": message}` with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # BYTES: an object array of `bytes`


def _deserialize_bytes(raw: bytes, name: str) -> list[bytes]:
    items, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(f"input '{name}': truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ProtocolError(f"input '{name}': a BYTES element claims {n} bytes, {len(raw) - pos} remain")
        items.append(raw[pos : pos + n])
        pos += n
    return items


def _serialize_bytes(items: np.ndarray) -> bytes:
    out = bytearray()
    for item in items.ravel():
        b = item if isinstance(item, bytes) else str(item).encode()
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for d in data for x in _flatten(d)]
    return [data]


def _shape(spec: dict[str, Any], name: str) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers")
    return shape


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(the JSON header, its inputs by name) of an infer request body."""
    try:
        n = len(body) if header_length is None else int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit a body of {len(body)} bytes")
    try:
        header = json.loads(body[:n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"the request header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    binary, pos, inputs = body[n:], 0, {}
    for spec in header["inputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("every input needs a 'name'")
        name, datatype = spec["name"], spec.get("datatype")
        if datatype not in DTYPES:
            raise ProtocolError(f"input '{name}': unsupported datatype {datatype!r}")
        shape = _shape(spec, name)
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(binary):
                raise ProtocolError(f"input '{name}': binary_data_size {size} exceeds the binary data sent")
            raw, pos = binary[pos : pos + size], pos + size
            if datatype == "BYTES":
                flat: Any = np.array(_deserialize_bytes(raw, name) or [], dtype=object)
            else:
                if len(raw) % np.dtype(DTYPES[datatype]).itemsize:
                    raise ProtocolError(f"input '{name}': {len(raw)} bytes is not a whole number of {datatype}")
                flat = np.frombuffer(raw, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<"))
        elif "data" in spec:
            values = _flatten(spec["data"])
            if datatype == "BYTES":
                try:
                    flat = np.array([base64.b64decode(v, validate=True) for v in values], dtype=object)
                except (binascii.Error, TypeError, ValueError):
                    raise ProtocolError(f"input '{name}': BYTES elements in JSON must be base64 strings") from None
            else:
                try:
                    flat = np.array(values, dtype=DTYPES[datatype])
                except (TypeError, ValueError):
                    raise ProtocolError(f"input '{name}': data is not {datatype}") from None
        else:
            raise ProtocolError(f"input '{name}': no 'data' and no binary_data_size")
        if flat.size != int(np.prod(shape)):
            raise ProtocolError(f"input '{name}': {flat.size} elements do not fill shape {shape}")
        inputs[name] = Tensor(name, datatype, flat.reshape(shape))
    if pos != len(binary):
        raise ProtocolError(f"{len(binary) - pos} bytes of binary data belong to no input")
    return header, inputs


def encode_response(
    header: dict[str, Any],
    model_name: str,
    model_version: str,
    outputs: list[Tensor],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer response: the outputs the request asked for (all by default), JSON or
    binary as it asked."""
    requested = {o.get("name"): o for o in header.get("outputs") or [] if isinstance(o, dict)}
    unknown = set(requested) - {t.name for t in outputs}
    if unknown:
        raise ProtocolError(f"unknown outputs {sorted(map(str, unknown))}; known: {[t.name for t in outputs]}")
    binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    entries, blobs = [], []
    for t in outputs:
        if requested and t.name not in requested:
            continue
        params = (requested.get(t.name) or {}).get("parameters") or {}
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
        if params.get("binary_data", binary_default):
            blob = (
                _serialize_bytes(t.data)
                if t.datatype == "BYTES"
                else t.data.astype(t.data.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif t.datatype == "BYTES":
            entry["data"] = [x.decode() if isinstance(x, bytes) else str(x) for x in t.data.ravel()]
        else:
            entry["data"] = t.data.ravel().tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if "id" in header:
        response["id"] = header["id"]
    if parameters:
        response["parameters"] = parameters
    head = json.dumps(response).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return head + b"".join(blobs), headers
