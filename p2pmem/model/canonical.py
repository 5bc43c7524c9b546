"""Deterministic CBOR, as RFC 8949 section 4.2.1 defines it.

Why this module exists: cbor2's ``canonical=True`` sorts map keys the RFC 7049
way (shorter encoded key first, then bytewise), while RFC 8949 core
deterministic encoding sorts keys bytewise by their encoding. The two orders
agree whenever every key of a map has the same major type and is an unsigned
integer or a text string (the encoded length then grows with the value), and
differ otherwise (``-1`` encodes as ``0x20`` but ``1000`` as ``0x1903e8``).

p2pmem's choice (docs/protocol.md): the wire format is RFC 8949 deterministic
encoding, and the record schema only allows maps whose keys are all unsigned
integers or all text strings. For such values, cbor2's fast C encoder gives the
RFC 8949 bytes; :func:`encode` checks that and falls back to the pure-Python
:func:`encode_deterministic` for anything else, so callers always get the
RFC 8949 bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import cbor2

__all__ = ["encode", "encode_deterministic", "keys_order_agree"]


def _head(major: int, value: int) -> bytes:
    """The shortest head for a major type and argument (RFC 8949 4.2.1)."""
    mt = major << 5
    if value < 24:
        return bytes([mt | value])
    if value < 0x100:
        return bytes([mt | 24, value])
    if value < 0x10000:
        return bytes([mt | 25]) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes([mt | 26]) + value.to_bytes(4, "big")
    if value < 0x10000000000000000:
        return bytes([mt | 27]) + value.to_bytes(8, "big")
    raise ValueError("integer argument does not fit in 64 bits")


def _float(value: float) -> bytes:
    """Shortest float encoding that preserves the value; NaN as 0xf97e00."""
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    for fmt, head in (("e", 0xF9), ("f", 0xFA)):
        try:
            packed = struct.pack(">" + fmt, value)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, packed)[0] == value:
            return bytes([head]) + packed
    return b"\xfb" + struct.pack(">d", value)


def encode_deterministic(obj: Any) -> bytes:
    """Encode ``obj`` in RFC 8949 core deterministic encoding.

    Supports the CBOR data model as cbor2 decodes it: int (any size, bignums
    as tags 2/3), bytes, str, list/tuple, dict, bool, None, float,
    ``cbor2.CBORTag``, ``cbor2.undefined`` and ``cbor2.CBORSimpleValue``.
    """
    out: list[bytes] = []
    _encode_into(obj, out)
    return b"".join(out)


def _encode_into(obj: Any, out: list[bytes]) -> None:
    if obj is False:
        out.append(b"\xf4")
    elif obj is True:
        out.append(b"\xf5")
    elif obj is None:
        out.append(b"\xf6")
    elif obj is cbor2.undefined:
        out.append(b"\xf7")
    elif isinstance(obj, int):
        if obj >= 0:
            if obj < 0x10000000000000000:
                out.append(_head(0, obj))
            else:
                _encode_into(cbor2.CBORTag(2, _bignum_bytes(obj)), out)
        else:
            n = -1 - obj
            if n < 0x10000000000000000:
                out.append(_head(1, n))
            else:
                _encode_into(cbor2.CBORTag(3, _bignum_bytes(n)), out)
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        out.append(_head(2, len(data)))
        out.append(data)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
    elif isinstance(obj, list | tuple):
        out.append(_head(4, len(obj)))
        for item in obj:
            _encode_into(item, out)
    elif isinstance(obj, Mapping):  # dict, or cbor2's frozendict inside a tag or key
        pairs = sorted((encode_deterministic(k), v) for k, v in obj.items())
        out.append(_head(5, len(pairs)))
        for key_bytes, value in pairs:
            out.append(key_bytes)
            _encode_into(value, out)
    elif isinstance(obj, cbor2.CBORTag):
        out.append(_head(6, obj.tag))
        _encode_into(obj.value, out)
    elif isinstance(obj, float):
        out.append(_float(obj))
    elif isinstance(obj, cbor2.CBORSimpleValue):
        value = obj.value
        out.append(bytes([0xE0 | value]) if value < 24 else bytes([0xF8, value]))
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as CBOR")


def _bignum_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def keys_order_agree(obj: Any) -> bool:
    """True when cbor2's length-first key order equals RFC 8949's bytewise order
    for every map inside ``obj``: all keys of each map are unsigned integers,
    or all are text strings."""
    kind = type(obj)
    if kind is str or kind is bytes or kind is int or obj is None or kind is bool:
        return True  # the leaves records are made of: decided without the ABC checks below
    if isinstance(obj, Mapping):
        keys = list(obj)
        if keys and not (
            all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in keys)
            or all(isinstance(k, str) for k in keys)
        ):
            return False
        return all(keys_order_agree(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(keys_order_agree(v) for v in obj)
    if isinstance(obj, cbor2.CBORTag):
        return keys_order_agree(obj.value)
    # Floats take the careful path: records never contain them.
    return not isinstance(obj, float)


def encode(obj: Any) -> bytes:
    """RFC 8949 deterministic bytes, through cbor2's C encoder when it agrees."""
    if keys_order_agree(obj):
        return cbor2.dumps(obj, canonical=True)
    return encode_deterministic(obj)
