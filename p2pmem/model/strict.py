"""Reading untrusted CBOR: the one strict decoder and typed-field reader of
every decoder in ``model/`` and ``protocol/`` (records, the Noise identity
proof, queries, wire messages).

Why one: each decoder had its own copy, and they drifted (the wire decoder
skipped the canonical check the others made). A :class:`Fields` is made with
the decoder's error type, so every failure stays one exception of the layer
that read the bytes, with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2

MAX_UINT64 = (1 << 64) - 1

Fail = Callable[[str], Exception]


class Fields:
    """Typed fields of decoded CBOR; every refusal raises ``fail(reason)``."""

    __slots__ = ("fail",)

    def __init__(self, fail: Fail) -> None:
        self.fail = fail

    def loads(self, data: bytes, what: str, *, max_size: int | None = None, canonical: bool = True) -> Any:
        """Decode ``data``. With ``canonical`` (the default) the bytes must be
        the one deterministic encoding of what they decode to: this rejects
        duplicate map keys, trailing bytes, indefinite lengths and
        non-shortest heads in one comparison. A decoder that must check its
        schema first (to report the schema error) passes False and calls
        :meth:`canonical` itself."""
        if max_size is not None and len(data) > max_size:
            raise self.fail(f"{what} is {len(data)} bytes, over the limit of {max_size}")
        try:
            obj = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises many types, and RecursionError; all mean "malformed"
            raise self.fail(f"malformed {what} CBOR: {str(exc)[:80]}") from None
        if canonical:
            self.canonical(obj, data, what)
        return obj

    def canonical(self, obj: Any, data: bytes, what: str) -> None:
        """``data`` must be the deterministic encoding of ``obj``."""
        try:
            same = cbor2.dumps(obj, canonical=True) == data
        except Exception:  # e.g. a value cbor2 decodes but cannot encode back
            same = False
        if not same:
            raise self.fail(f"{what} is not in canonical (deterministic) CBOR encoding")

    def bytes_(self, value: Any, what: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
        if type(value) is not bytes:
            raise self.fail(f"{what} must be a byte string")
        if size is not None and len(value) != size:
            raise self.fail(f"{what} must be {size} bytes, not {len(value)}")
        if max_size is not None and len(value) > max_size:
            raise self.fail(f"{what} is {len(value)} bytes, over the limit of {max_size}")
        return value

    def text(self, value: Any, what: str, *, max_bytes: int | None = None, max_chars: int | None = None,
             allow_empty: bool = True) -> str:
        """A text string of at most ``max_bytes`` UTF-8 bytes and/or
        ``max_chars`` characters."""
        if type(value) is not str:
            raise self.fail(f"{what} must be a text string")
        if max_chars is not None and len(value) > max_chars:
            raise self.fail(f"{what} is {len(value)} characters, over the limit of {max_chars}")
        if max_bytes is not None:
            size = len(value.encode("utf-8"))
            if size > max_bytes:
                raise self.fail(f"{what} is {size} bytes, over the limit of {max_bytes}")
        if not allow_empty and not value:
            raise self.fail(f"{what} must not be empty")
        return value

    def uint(self, value: Any, what: str, *, high: int = MAX_UINT64, low: int = 0) -> int:
        if type(value) is not int:
            raise self.fail(f"{what} must be an unsigned integer")
        if not low <= value <= high:
            if low == 0 and (high + 1) & high == 0:
                raise self.fail(f"{what} must be an unsigned integer of at most {high.bit_length()} bits")
            raise self.fail(f"{what} must be between {low} and {high}, not {value}")
        return value

    def boolean(self, value: Any, what: str) -> bool:
        if type(value) is not bool:
            raise self.fail(f"{what} must be a boolean")
        return value

    def array(self, value: Any, what: str, max_items: int, *, length: int | None = None) -> list[Any]:
        if type(value) is not list:
            raise self.fail(f"{what} must be an array")
        if len(value) > max_items:
            raise self.fail(f"{what} has {len(value)} entries, over the limit of {max_items}")
        if length is not None and len(value) != length:
            raise self.fail(f"{what} must have {length} entries")
        return value

    def text_list(self, value: Any, what: str, max_items: int, max_bytes: int) -> tuple[str, ...]:
        """Non-empty text strings, sorted and without duplicates."""
        items = self.array(value, what, max_items)
        out = tuple(self.text(v, f"each of {what}", max_bytes=max_bytes, allow_empty=False) for v in items)
        if len(set(out)) != len(out) or list(out) != sorted(out):
            raise self.fail(f"{what} must be sorted and without duplicates")
        return out

    def map(self, value: Any, what: str, keys: tuple[Any, ...] | range) -> dict[Any, Any]:
        """A map with exactly ``keys``."""
        if type(value) is not dict:
            raise self.fail(f"{what} must be a map")
        if len(value) != len(keys) or set(value) != set(keys):
            raise self.fail(f"{what} must have exactly the keys {', '.join(map(str, keys))}")
        return value
