"""The policy server's wire format: msgpack maps whose numpy arrays travel as raw bytes with their dtype and shape.

Needs only numpy and msgpack (no torch), so the robot-side client imports it. Every message is one binary websocket
frame holding one msgpack map. An array is the map ``{"__ndarray__": 1, "dtype": "<f4", "shape": [..], "data":
<bytes>}``; nothing else is special. Decoding never runs code: msgpack yields only maps, lists, str, bytes,
numbers, booleans and nil (no ext types are accepted), and an array is rebuilt with ``np.frombuffer`` from a dtype
on a fixed list of plain numeric types, after checking that the byte count fits the shape.

Requests (client -> server), each a map with ``op``:

* ``{"op": "metadata"}`` -> ``{"ok": true, "metadata": {...}}`` (observation keys, shapes and dtypes, action
  dimension, chunk size, control rate, recipe, checkpoint sha256, protocol version);
* ``{"op": "reset", "num_envs": n, "seed": s | nil, "done": bool array | nil}`` -> ``{"ok": true}``: a new episode
  for ``n`` environments (``done``: only those environments), the session's RNG seeded with ``seed`` when given;
* ``{"op": "act", "obs": {key: array}, "batched": bool}`` -> ``{"ok": true, "action": array}``.

Any failure is answered ``{"ok": false, "error": "<one line>"}`` and the session goes on.
"""
from __future__ import annotations

import msgpack
import numpy as np

PROTOCOL = 1
ND = "__ndarray__"
# the dtypes an array may have on the wire (little-endian; bool and plain numbers only: no objects, no strings)
DTYPES = frozenset(np.dtype(t).str for t in ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32",
                                             "uint64", "int64", "float16", "float32", "float64"))
MAX_DIMS = 8


class WireError(ValueError):
    """A message that is not a well-formed request or reply (the text names what is wrong)."""


def _default(obj):
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send a {type(obj).__name__} (numpy arrays, numbers, str, bytes, lists and dicts only)")


def encode_array(a: np.ndarray) -> dict:
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype.str not in DTYPES:
        raise TypeError(f"cannot send an array of dtype {a.dtype} (numeric and bool arrays only)")
    return {ND: 1, "dtype": a.dtype.str, "shape": list(a.shape), "data": np.ascontiguousarray(a).tobytes()}


def pack(message: dict) -> bytes:
    """One message (maps, lists, numbers, str, bytes, numpy arrays) as msgpack bytes."""
    return msgpack.packb(message, default=_default, use_bin_type=True)


def decode_array(d: dict, where: str = "array") -> np.ndarray:
    """An array map back to a numpy array (a copy), checked: dtype on the list, shape of non-negative ints, byte
    count equal to the shape's."""
    dtype, shape, data = d.get("dtype"), d.get("shape"), d.get("data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"{where}: dtype {str(dtype)[:40]!r} is not one of the accepted numeric dtypes "
                        f"({', '.join(sorted(DTYPES))})")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise WireError(f"{where}: shape must be a list of at most {MAX_DIMS} non-negative ints, got "
                        f"{str(shape)[:80]}")
    if not isinstance(data, bytes):
        raise WireError(f"{where}: data must be bytes, got {type(data).__name__}")
    dt = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= s
    if n * dt.itemsize != len(data):
        raise WireError(f"{where}: {len(data)} bytes of data do not fill shape {shape} of {dtype} "
                        f"({n * dt.itemsize} bytes)")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()  # writable: torch.from_numpy wants it


def _arrays(node, where: str):
    if isinstance(node, dict):
        if node.get(ND) == 1:
            return decode_array(node, where)
        return {k: _arrays(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_arrays(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def unpack(data, max_bytes: int | None = None) -> dict:
    """A received frame as a message map, arrays rebuilt; :class:`WireError` for anything else (text frames,
    garbage, truncated msgpack, ext types, non-string map keys, a top level that is not a map)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("messages are binary msgpack frames, got a text frame")
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes is larger than the limit of {max_bytes}")
    try:
        msg = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True,
                              ext_hook=_refuse_ext)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several kinds for bad bytes
        raise WireError(f"not a msgpack message ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    if not isinstance(msg, dict):
        raise WireError(f"a message is a msgpack map, got {type(msg).__name__}")
    return _arrays(msg, "message")


def _refuse_ext(code, data):
    raise WireError(f"msgpack extension type {code} is not accepted")
