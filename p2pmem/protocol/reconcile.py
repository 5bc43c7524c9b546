"""Range-based set reconciliation over ``(timestamp, id)`` items, sans-IO.

Why this exists: two nodes that each hold a large set of records must find out
which records the other lacks without sending their whole set. Following
Negentropy (Aljoscha Meyer's range-based set reconciliation, as implemented by
hoytech/negentropy), both sides order their items by ``(ts, id)`` and exchange
*fingerprints* of ranges of that order. Ranges whose fingerprints agree are
skipped; ranges that differ are split into ~16 sub-ranges, and small ones are
settled by sending the ids themselves. A sync therefore costs about
``O(d log n)`` bytes for ``d`` differences among ``n`` items, and
``O(log n)`` messages.

This module never touches a socket, a clock or a random generator: a
:class:`Reconciler` takes ``bytes`` in and gives ``bytes`` out (h11/aioquic
style); the node carries them inside its own wire messages and then transfers
the records. Everything a peer sends is checked by a strict decoder, and every
problem with it is reported as :class:`ReconcileError`.

Who learns what
---------------
Unlike Negentropy, where only the initiator learns the differences, *both*
sides learn their own ``have`` (ids we hold that the peer lacks) and ``need``
(ids the peer holds that we lack). Differences are only ever found when one
side sends an ``IdList`` for a range: the receiver compares it with its own
ids in that range, records its ``have``/``need``, and replies with a ``Diff``
range telling the sender exactly the two lists from the sender's point of view.
So whoever learns ``have`` may push those records, and whoever learns ``need``
may request them; the node can use either policy (for example: each side pushes
its ``have``) without another exchange.

Items and bounds
----------------
An item is ``(ts, id)``: ``ts`` an unsigned 64-bit hybrid-logical-clock
timestamp below ``2**64 - 1`` (that value is reserved for the infinity bound,
as in Negentropy) and ``id`` a 32-byte SHA-256 record id. Internally an item is
its 40-byte *key* ``ts.to_bytes(8, "big") + id``, whose bytewise order is the
``(ts, id)`` order, so Python's C bisect does the range searches. A bound is
``(ts, id-prefix)``, with key ``ts.to_bytes(8, "big") + prefix``; an item
lies below a bound iff its key is bytewise smaller. Between two adjacent items
the protocol uses the shortest distinguishing bound (only the timestamp when
the timestamps differ, else the shortest id prefix that separates them).

Fingerprint
-----------
Negentropy's: the SHA-256 of (the sum of the ids of the range, read as
little-endian 256-bit integers, modulo ``2**256``, as 32 little-endian bytes)
followed by ``varint(count)`` (big-endian base-128, high bit on all but the
last byte), truncated to 16 bytes. A sum is order-independent, so a fingerprint
depends only on the content of the range, and prefix sums give any range's
fingerprint in ``O(log n)``.

Message format (CBOR, deterministic encoding)
---------------------------------------------
A message is an array: the protocol version, then ranges that tile the key
space in order. The first range starts at the lowest bound ``(0, h'')``, every
next range starts where the previous one ended, and whatever follows the last
range is skipped. See :data:`CDDL`. Modes:

* ``0 Skip``: nothing to do for this range.
* ``1 Fingerprint``: the sender's fingerprint of the range. The receiver skips
  the range if its own fingerprint agrees, else splits it.
* ``2 IdList``: all of the sender's ids in the range (at most
  :data:`MAX_ID_LIST`). The receiver answers with a ``Diff`` (or ``Skip`` when
  there is no difference; or, when it holds many more items in that range,
  by splitting it into fingerprints).
* ``3 Diff``: the answer to an ``IdList`` the receiver sent in its previous
  message, for a range with the same lower bound (its upper bound may be lower
  when a long answer is cut to fit in a message): ``you-need`` are ids the
  sender holds that the receiver lacks, ``you-have`` are ids of the receiver's
  ``IdList`` that the sender lacks. A ``Diff`` needs no answer.

A message that contains a ``Fingerprint`` or an ``IdList`` must be answered
(possibly with an empty message ``[1]``); a message that contains neither ends
the reconciliation for both sides. Every message stays below ``max_message`` bytes:
when a reply would not fit, the reply stops and covers everything from that
point to infinity with one ``Fingerprint`` range, and the reconciliation continues
there in the next round (Negentropy's ``frameSizeLimit``). Both sides must use
the same ``max_message`` (the default, :data:`p2pmem.limits.MAX_RECONCILE_MESSAGE`,
is part of the protocol).

If an index changes during a reconciliation (records arriving while syncing), the
reconciliation still terminates and never reports an id in ``have`` that we did not
hold when we reported it; a difference it misses is repaired by the next
reconciliation, which is how anti-entropy works anyway.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, repeat
from operator import itemgetter
from typing import NamedTuple

import cbor2

from p2pmem.errors import P2pmemError
from p2pmem.limits import MAX_RECONCILE_MESSAGE

__all__ = [
    "CDDL",
    "DIFF",
    "FINGERPRINT",
    "ID_LIST",
    "INFINITY",
    "MAX_ID_LIST",
    "MAX_TS",
    "MIN_BOUND",
    "MIN_MESSAGE",
    "PROTOCOL_VERSION",
    "SKIP",
    "Bound",
    "ItemIndex",
    "ReconcileError",
    "Reconciler",
    "fingerprint",
    "reconcile_in_memory",
    "run_reconciliation",
]

PROTOCOL_VERSION = 1
ID_SIZE = 32
FINGERPRINT_SIZE = 16
INFINITY_TS = (1 << 64) - 1
MAX_TS = INFINITY_TS - 1  # the largest timestamp an item may carry

SKIP = 0
FINGERPRINT = 1
ID_LIST = 2
DIFF = 3

# Protocol constants: a peer that exceeds them is misbehaving.
MAX_ID_LIST = 128  # ids in one IdList range
MIN_MESSAGE = 16 * 1024  # smallest max_message: a full Diff answer must fit in one message
MAX_RANGES = 65_536  # ranges in one message

# An IdList is answered by a direct Diff when we hold at most this many items in
# its range; beyond that we split instead, so answering costs O(this) per range.
_DIRECT_DIFF_LIMIT = 256

_MASK = (1 << 256) - 1
_MIN_KEY = b"\x00" * 8  # the bound (0, h''): no item lies below it
_INF_KEY = b"\xff" * 8  # the bound (2**64 - 1, h''): every item lies below it
_ID_OF_KEY = itemgetter(slice(8, None))

# Room always kept free in a message under construction: one pending merged
# range (<= 46 bytes), the continuation Fingerprint range (21 bytes) and the
# growth of the outer array head (<= 4 bytes).
_RESERVE = 96
# Worst-case bytes of a Diff range besides its id bytes: array head, ts field,
# prefix, mode, and two byte-string heads.
_DIFF_OVERHEAD = 1 + 9 + 34 + 1 + 5 + 5

CDDL = """
reconcile-message = [version, * range]
version = 1
range = skip-range / fingerprint-range / id-list-range / diff-range
skip-range = [upper-ts, upper-prefix, 0]
fingerprint-range = [upper-ts, upper-prefix, 1, fingerprint]
id-list-range = [upper-ts, upper-prefix, 2, ids: id-concat]
diff-range = [upper-ts, upper-prefix, 3, you-need: id-concat, you-have: id-concat]
; 0 = the infinity bound (prefix must then be empty); otherwise
; 1 + (this bound's ts - the previous bound's ts), the first previous ts being 0.
upper-ts = uint .size 8
upper-prefix = bstr .size (0..32)
fingerprint = bstr .size 16
; 32-byte record ids, concatenated; the length is a multiple of 32
; (at most 128 ids in an id-list-range)
id-concat = bstr
"""


class ReconcileError(P2pmemError):
    """A reconciliation message is malformed or breaks the protocol, or a
    reconciler is used out of order. ``reason`` is a one-line description."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Bound(NamedTuple):
    """A point of the ``(ts, id)`` order: items below it have a smaller key.

    ``Bound(ts, prefix)`` compares with an item ``(t, id)`` as ``(ts, prefix)``
    against ``(t, id)`` with bytewise comparison of ``prefix`` and ``id``
    (a prefix of an id is below that id).
    """

    ts: int
    prefix: bytes = b""

    @property
    def key(self) -> bytes:
        """The bytewise-comparable key of this bound."""
        ts, prefix = self.ts, self.prefix
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= INFINITY_TS:
            raise ValueError(f"bound timestamp out of range: {ts!r}")
        if not isinstance(prefix, bytes) or len(prefix) > ID_SIZE:
            raise ValueError("bound prefix must be at most 32 bytes")
        if ts == INFINITY_TS:
            if prefix:
                raise ValueError("the infinity bound has no prefix")
            return _INF_KEY
        return ts.to_bytes(8, "big") + prefix

    @classmethod
    def from_key(cls, key: bytes) -> Bound:
        """The bound whose key is ``key``."""
        return cls(int.from_bytes(key[:8], "big"), key[8:])


MIN_BOUND = Bound(0, b"")
INFINITY = Bound(INFINITY_TS, b"")


def _varint(n: int) -> bytes:
    """Negentropy's varint: base 128, most significant group first, high bit
    set on every byte but the last."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _fingerprint(total: int, count: int) -> bytes:
    return hashlib.sha256((total & _MASK).to_bytes(32, "little") + _varint(count)).digest()[
        :FINGERPRINT_SIZE
    ]


def fingerprint(ids: Iterable[bytes]) -> bytes:
    """The fingerprint of a set of ids, computed from scratch (a reference for
    :meth:`ItemIndex.fingerprint`, and for other implementations)."""
    total = 0
    count = 0
    for id_ in ids:
        total += int.from_bytes(id_, "little")
        count += 1
    return _fingerprint(total, count)


def _item_key(ts: int, id_: bytes) -> bytes:
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise TypeError("item timestamp must be an int")
    if not 0 <= ts <= MAX_TS:
        raise ValueError(f"item timestamp out of range 0..2**64-2: {ts}")
    if not isinstance(id_, bytes):
        raise TypeError("item id must be bytes")
    if len(id_) != ID_SIZE:
        raise ValueError(f"item id must be {ID_SIZE} bytes, got {len(id_)}")
    return ts.to_bytes(8, "big") + id_


def _between(a: bytes, b: bytes) -> bytes:
    """The key of the shortest bound ``x`` with ``a < x <= b`` (keys of two
    distinct items, ``a < b``): the timestamp of ``b`` alone when the
    timestamps differ, else ``b``'s id cut just after the first byte that
    differs from ``a``'s."""
    if a[:8] != b[:8]:
        return b[:8]
    i = 8
    while a[i] == b[i]:
        i += 1
    return b[: i + 1]


class ItemIndex:
    """An in-memory ordered set of ``(ts, id)`` items with fast range queries.

    Why this shape: the protocol asks, for a range of the order, its count,
    its fingerprint, its ids, and positional split points. A sorted list of
    40-byte keys answers position queries with C bisect, and a prefix array of
    id sums turns any range fingerprint into one subtraction and one hash.
    Insertions go to a small pending set that is merged (one timsort merge of
    two runs) on the next query; the derived arrays are only recomputed from
    the first changed position, so appending recent records is cheap.

    The index is a set of ``(ts, id)`` pairs. The protocol relies on an id
    appearing under one timestamp only, which holds for record ids (the hash
    of a record that contains its timestamp); the index does not spend memory
    on checking it, and a peer whose id list repeats an id is refused.
    """

    __slots__ = ("_keys", "_ids", "_sums", "_valid", "_pending")

    def __init__(self, items: Iterable[tuple[int, bytes]] = ()) -> None:
        self._keys: list[bytes] = sorted({_item_key(ts, id_) for ts, id_ in items})
        self._ids: list[bytes] = []  # ids of _keys, valid for positions < _valid
        self._sums: list[int] = [0]  # _sums[i]: sum of the first i ids (not reduced), i <= _valid
        self._valid = 0
        self._pending: set[bytes] = set()

    @classmethod
    def from_keys(cls, keys: Iterable[bytes]) -> ItemIndex:
        """An index of items given as 40-byte keys (``ts`` big-endian, then
        the id), without re-encoding them: the core keeps its records' keys
        and builds a peer's scope from them with no store scan."""
        index = cls()
        index._keys = sorted(set(keys))
        return index

    # --- content -----------------------------------------------------------

    def add(self, ts: int, id_: bytes) -> bool:
        """Insert an item; return False if it was already present."""
        key = _item_key(ts, id_)
        if key in self._pending:
            return False
        keys = self._keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return False
        self._pending.add(key)
        return True

    def update(self, items: Iterable[tuple[int, bytes]]) -> int:
        """Insert many items; return how many were new."""
        return sum(self.add(ts, id_) for ts, id_ in items)

    def copy(self) -> ItemIndex:
        """An independent copy (cheap: shares immutable keys)."""
        self._flush()
        other = ItemIndex()
        other._keys = list(self._keys)
        other._ids = list(self._ids)
        other._sums = list(self._sums)
        other._valid = self._valid
        return other

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        try:
            key = _item_key(*item)
        except (TypeError, ValueError):
            return False
        if key in self._pending:
            return True
        keys = self._keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """Items in ``(ts, id)`` order."""
        self._flush()
        for key in self._keys:
            yield int.from_bytes(key[:8], "big"), key[8:]

    def __repr__(self) -> str:
        return f"<ItemIndex of {len(self)} items>"

    # --- range queries (bounds are half-open: lower <= item < upper) ----------

    def count(self, lower: Bound = MIN_BOUND, upper: Bound = INFINITY) -> int:
        """How many items lie in ``[lower, upper)``."""
        i, j = self._span(lower, upper)
        return j - i

    def fingerprint(self, lower: Bound = MIN_BOUND, upper: Bound = INFINITY) -> bytes:
        """The 16-byte fingerprint of the items in ``[lower, upper)``."""
        i, j = self._span(lower, upper)
        return self._fp(i, j)

    def ids(self, lower: Bound = MIN_BOUND, upper: Bound = INFINITY) -> list[bytes]:
        """The ids in ``[lower, upper)``, in order."""
        i, j = self._span(lower, upper)
        return self._ids[i:j]

    def split(self, lower: Bound, upper: Bound, k: int) -> list[Bound]:
        """Upper bounds of at most ``k`` sub-ranges of ``[lower, upper)`` holding
        (nearly) equal numbers of items; the last one is ``upper``. Each inner
        bound is the shortest one between its two neighbouring items."""
        if k < 1:
            raise ValueError("k must be at least 1")
        i, j = self._span(lower, upper)
        return [Bound.from_key(key) for key in self._split_keys(i, j, upper.key, k)]

    # --- internals used by the Reconciler ------------------------------------

    def _span(self, lower: Bound, upper: Bound) -> tuple[int, int]:
        lo, hi = lower.key, upper.key
        if hi < lo:
            raise ValueError("upper bound below lower bound")
        self._ensure()
        return bisect_left(self._keys, lo), bisect_left(self._keys, hi)

    def _flush(self) -> None:
        """Merge pending insertions into the sorted keys."""
        if not self._pending:
            return
        new = sorted(self._pending)
        self._pending.clear()
        keys = self._keys
        first = bisect_left(keys, new[0])
        keys.extend(new)
        if first < len(keys) - len(new):
            keys.sort()  # two sorted runs: timsort merges them in linear time
        self._valid = min(self._valid, first)

    def _ensure(self) -> None:
        """Bring the ids and prefix sums up to date (from the first change on)."""
        self._flush()
        v = self._valid
        keys = self._keys
        if v == len(keys):
            return
        ids = self._ids
        del ids[v:]
        ids.extend(map(_ID_OF_KEY, keys[v:]))
        sums = self._sums
        base = sums[v]
        del sums[v:]
        # Sums are kept unreduced (a few bits over 256): differences stay exact.
        sums.extend(accumulate(map(int.from_bytes, ids[v:], repeat("little")), initial=base))
        self._valid = len(keys)

    def _fp(self, i: int, j: int) -> bytes:
        return _fingerprint(self._sums[j] - self._sums[i], j - i)

    def _split_keys(self, i: int, j: int, upper: bytes, k: int) -> list[bytes]:
        n = j - i
        k = max(1, min(k, n))
        per, extra = divmod(n, k)
        keys = self._keys
        out = []
        p = i
        for b in range(k - 1):
            p += per + (b < extra)
            out.append(_between(keys[p - 1], keys[p]))
        out.append(upper)
        return out


# --- wire encoding ---------------------------------------------------------


def _uint_len(v: int) -> int:
    if v < 24:
        return 1
    if v < 0x100:
        return 2
    if v < 0x10000:
        return 3
    if v < 0x100000000:
        return 5
    return 9


_MIN_ARG = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


def _head(data: bytes, pos: int, major: int, what: str) -> tuple[int, int]:
    """Read one CBOR head of the given major type; return (argument, new pos).

    Only definite lengths in their shortest form are accepted, so a message
    has exactly one encoding."""
    if pos >= len(data):
        raise ReconcileError(f"truncated message (reading {what})")
    ib = data[pos]
    if ib >> 5 != major:
        raise ReconcileError(f"{what} has the wrong CBOR type")
    ai = ib & 0x1F
    pos += 1
    if ai < 24:
        return ai, pos
    if ai > 27:
        raise ReconcileError(f"{what}: indefinite length or reserved CBOR value")
    end = pos + (1 << (ai - 24))
    if end > len(data):
        raise ReconcileError(f"truncated message (reading {what})")
    arg = int.from_bytes(data[pos:end], "big")
    if arg < _MIN_ARG[ai]:
        raise ReconcileError(f"{what} is not in shortest CBOR form")
    return arg, end


def _bstr(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    n, pos = _head(data, pos, 2, what)
    end = pos + n
    if end > len(data):
        raise ReconcileError(f"truncated message (reading {what})")
    return data[pos:end], end


_ARITY = {SKIP: 3, FINGERPRINT: 4, ID_LIST: 4, DIFF: 5}


class _Range(NamedTuple):
    lower: bytes
    upper: bytes
    mode: int
    payload: tuple[bytes, ...]


def _split_ids(blob: bytes, what: str) -> list[bytes]:
    if len(blob) % ID_SIZE:
        raise ReconcileError(f"{what}: length is not a multiple of {ID_SIZE}")
    ids = [blob[k : k + ID_SIZE] for k in range(0, len(blob), ID_SIZE)]
    if len(set(ids)) != len(ids):
        raise ReconcileError(f"{what}: duplicate id")
    return ids


def _decode(data: bytes, max_ranges: int) -> list[_Range]:
    """Strictly decode and validate a message (see :data:`CDDL`)."""
    count, pos = _head(data, 0, 4, "message")
    if count < 1:
        raise ReconcileError("message has no version")
    if count - 1 > max_ranges:
        raise ReconcileError(f"too many ranges: {count - 1} > {max_ranges}")
    version, pos = _head(data, pos, 0, "version")
    if version != PROTOCOL_VERSION:
        raise ReconcileError(f"unsupported reconciliation version {version}")
    ranges: list[_Range] = []
    prev_ts = 0
    lower = _MIN_KEY
    for n in range(count - 1):
        what = f"range {n}"
        arity, pos = _head(data, pos, 4, what)
        field, pos = _head(data, pos, 0, f"{what} bound")
        prefix, pos = _bstr(data, pos, f"{what} prefix")
        if len(prefix) > ID_SIZE:
            raise ReconcileError(f"{what}: bound prefix longer than {ID_SIZE} bytes")
        if field == 0:
            if prefix:
                raise ReconcileError(f"{what}: infinity bound with a prefix")
            upper = _INF_KEY
        else:
            ts = prev_ts + field - 1
            if ts > MAX_TS:
                raise ReconcileError(f"{what}: bound timestamp out of range")
            prev_ts = ts
            upper = ts.to_bytes(8, "big") + prefix
        if upper <= lower:
            raise ReconcileError(f"{what}: bounds are not strictly increasing")
        mode, pos = _head(data, pos, 0, f"{what} mode")
        if _ARITY.get(mode) != arity:
            raise ReconcileError(f"{what}: unknown mode {mode} or wrong length {arity}")
        payload: list[bytes] = []
        for k in range(arity - 3):
            blob, pos = _bstr(data, pos, f"{what} payload {k}")
            payload.append(blob)
        if mode == FINGERPRINT and len(payload[0]) != FINGERPRINT_SIZE:
            raise ReconcileError(f"{what}: fingerprint must be {FINGERPRINT_SIZE} bytes")
        if mode == ID_LIST and len(payload[0]) > MAX_ID_LIST * ID_SIZE:
            raise ReconcileError(f"{what}: more than {MAX_ID_LIST} ids in an id list")
        ranges.append(_Range(lower, upper, mode, tuple(payload)))
        lower = upper
    if pos != len(data):
        raise ReconcileError("trailing bytes after the message")
    return ranges


class _Writer:
    """Builds one outgoing message within its byte and range budgets.

    Consecutive Skip ranges, and consecutive empty IdList ranges, are merged
    (kept *pending* until a range of another kind follows). ``emit`` refuses a
    range that would not fit; the caller then calls ``continuation`` which
    always fits, thanks to the reserve."""

    def __init__(self, max_message: int, max_ranges: int) -> None:
        self.limit = max_message - _RESERVE
        self.max_ranges = max_ranges - 3
        self.out: list[list[object]] = []
        self.size = 2  # outer array head (growth is in the reserve) + version
        self.prev_ts = 0
        self.committed = _MIN_KEY  # upper bound of the last range in ``out``
        self.pos = _MIN_KEY  # upper bound of everything emitted (incl. pending)
        self.pending: int | None = None  # SKIP or ID_LIST (empty), covering [committed, pos)
        self.sent_lists: dict[bytes, tuple[bytes, bytes]] = {}  # lower -> (upper, ids)
        self.needs_reply = False

    def _cost(self, prev_ts: int, upper: bytes, payload: tuple[bytes, ...]) -> tuple[int, int]:
        if upper == _INF_KEY:
            field, ts = 0, prev_ts
        else:
            ts = int.from_bytes(upper[:8], "big")
            field = ts - prev_ts + 1
        size = 2 + _uint_len(field) + _uint_len(len(upper) - 8) + len(upper) - 8
        for p in payload:
            size += _uint_len(len(p)) + len(p)
        return size, ts

    def _append(self, upper: bytes, mode: int, payload: tuple[bytes, ...]) -> None:
        size, ts = self._cost(self.prev_ts, upper, payload)
        field = 0 if upper == _INF_KEY else ts - self.prev_ts + 1
        self.out.append([field, upper[8:], mode, *payload])
        self.size += size
        self.prev_ts = ts
        if mode == ID_LIST:
            self.sent_lists[self.committed] = (upper, payload[0])
        if mode in (FINGERPRINT, ID_LIST):
            self.needs_reply = True
        self.committed = upper

    def _pending_payload(self) -> tuple[bytes, ...]:
        return () if self.pending == SKIP else (b"",)

    def _fits(self, extra_ranges: int, *items: tuple[bytes, tuple[bytes, ...]]) -> bool:
        if len(self.out) + extra_ranges > self.max_ranges:
            return False
        size, prev = 0, self.prev_ts
        for upper, payload in items:
            s, prev = self._cost(prev, upper, payload)
            size += s
        return self.size + size <= self.limit

    def _flush_pending(self) -> None:
        if self.pending is not None:
            self._append(self.pos, self.pending, self._pending_payload())
            self.pending = None

    def emit(self, upper: bytes, mode: int, payload: tuple[bytes, ...] = ()) -> bool:
        """Add the range ``[pos, upper)``; False (and no change) if it does not fit."""
        mergeable = mode == SKIP or (mode == ID_LIST and not payload[0])
        if mergeable and self.pending == mode:
            self.pos = upper
            return True
        items = []
        if self.pending is not None:
            items.append((self.pos, self._pending_payload()))
        if not mergeable:
            items.append((upper, payload))
        if items and not self._fits(len(items) + 1, *items):
            return False
        self._flush_pending()
        if mergeable:
            self.pending = mode
        else:
            self._append(upper, mode, payload)
        self.pos = upper
        return True

    def room_for_ids(self) -> int:
        """How many ids a Diff range emitted now could carry."""
        if len(self.out) + 3 > self.max_ranges:
            return 0
        size = self.size + _DIFF_OVERHEAD
        if self.pending is not None:
            size += self._cost(self.prev_ts, self.pos, self._pending_payload())[0]
        return max(0, (self.limit - size) // ID_SIZE)

    def continuation(self, fp: bytes) -> None:
        """Cover ``[pos, infinity)`` with one Fingerprint range (always fits)."""
        self._flush_pending()
        self._append(_INF_KEY, FINGERPRINT, (fp,))
        self.pos = _INF_KEY

    def finish(self) -> bytes:
        if self.pending == ID_LIST:
            self._flush_pending()  # a trailing Skip is implied and dropped
        return cbor2.dumps([PROTOCOL_VERSION, *self.out], canonical=True)


# --- the protocol state machine ---------------------------------------------

_IDLE, _WAITING, _DONE, _FAILED = "idle", "waiting", "done", "failed"


class Reconciler:
    """One side of one reconciliation (sans-IO).

    The initiator calls :meth:`start` and sends the result; from then on each
    side passes every message it gets to :meth:`receive` and sends back the
    reply, until :meth:`receive` returns ``None`` or the side's own last reply
    needed no answer (:attr:`done`). Then :attr:`have` holds the ids we hold
    that the peer lacks, and :attr:`need` the ids the peer holds that we lack,
    on both sides.

    The index must not be mutated *during* a call; it may change between
    calls (see the module docstring). ``branching`` and ``id_list_threshold``
    are local tuning (a peer with different values still interoperates);
    ``max_message`` must be the same on both sides. ``max_reply`` (local) caps the size of
    our own messages. ``max_rounds`` bounds the
    messages this side accepts, so a peer cannot keep a reconciliation alive forever.
    """

    def __init__(
        self,
        index: ItemIndex,
        *,
        max_message: int = MAX_RECONCILE_MESSAGE,
        branching: int = 16,
        id_list_threshold: int = 32,
        max_rounds: int = 4096,
        max_reply: int | None = None,
    ) -> None:
        if not isinstance(index, ItemIndex):
            raise TypeError("index must be an ItemIndex")
        if not MIN_MESSAGE <= max_message <= 1 << 30:
            raise ValueError(f"max_message must be in {MIN_MESSAGE}..2**30")
        if not 2 <= branching <= 64:
            raise ValueError("branching must be in 2..64")
        if not 1 <= id_list_threshold <= MAX_ID_LIST:
            raise ValueError(f"id_list_threshold must be in 1..{MAX_ID_LIST}")
        if max_rounds < 1:
            raise ValueError("max_rounds must be positive")
        if max_reply is not None and max_reply < MIN_MESSAGE:
            raise ValueError(f"max_reply must be at least {MIN_MESSAGE}")
        self.index = index
        self.max_message = max_message
        self.branching = branching
        self.id_list_threshold = id_list_threshold
        self.max_rounds = max_rounds
        self.have: set[bytes] = set()
        self.need: set[bytes] = set()
        self.is_initiator = False
        self.messages_sent = 0
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._state = _IDLE
        self._max_ranges = min(MAX_RANGES, max_message // 4)
        # Our own messages may be smaller than the protocol's max_message
        # (local tuning, like branching): a long answer is cut and continued
        # exactly as when it would not fit, so the CPU one peer message can
        # make us spend is bounded by this, not by max_message.
        self._out_limit = min(max_message, max_reply) if max_reply is not None else max_message
        self._sent_lists: dict[bytes, tuple[bytes, bytes]] = {}

    @property
    def done(self) -> bool:
        """True when this side neither sends nor expects anything more."""
        return self._state == _DONE

    def start(self) -> bytes:
        """Open the reconciliation as the initiator; return the first message."""
        if self._state != _IDLE:
            raise ReconcileError("start() called on a reconciliation already under way")
        self.is_initiator = True
        self.index._ensure()
        w = _Writer(self._out_limit, self._max_ranges)
        ok = self._emit_split(w, _MIN_KEY, _INF_KEY, 0, len(self.index._keys))
        assert ok, "the first message always fits"
        return self._send(w)

    def receive(self, msg: bytes) -> bytes | None:
        """Process a peer message; return the reply, or None when the reconciliation
        is over. Raises :class:`ReconcileError` on any bad input, after which
        the reconciliation is unusable."""
        if self._state == _FAILED:
            raise ReconcileError("reconciliation already failed")
        if self._state == _DONE:
            raise ReconcileError("message received after the reconciliation ended")
        try:
            return self._receive(msg)
        except ReconcileError:
            self._state = _FAILED
            raise

    # --- internals ---

    def _send(self, w: _Writer) -> bytes:
        msg = w.finish()
        if len(msg) > self.max_message:  # pragma: no cover - guarded by the writer
            raise AssertionError("reconcile message over budget")
        self._sent_lists = w.sent_lists
        self._state = _WAITING if w.needs_reply else _DONE
        self.messages_sent += 1
        self.bytes_sent += len(msg)
        return msg

    def _receive(self, msg: bytes) -> bytes | None:
        if not isinstance(msg, bytes | bytearray | memoryview):
            raise ReconcileError("message must be bytes")
        data = bytes(msg)
        if len(data) > self.max_message:
            raise ReconcileError(f"message of {len(data)} bytes exceeds {self.max_message}")
        if self.messages_received >= self.max_rounds:
            raise ReconcileError(f"more than {self.max_rounds} messages in one reconciliation")
        self.messages_received += 1
        self.bytes_received += len(data)
        ranges = _decode(data, self._max_ranges)
        index = self.index
        index._ensure()
        self._apply_diffs(ranges)
        self._sent_lists = {}
        if not any(r.mode in (FINGERPRINT, ID_LIST) for r in ranges):
            self._state = _DONE
            return None

        keys = index._keys
        w = _Writer(self._out_limit, self._max_ranges)
        for r in ranges:
            if r.mode in (SKIP, DIFF):
                ok = w.emit(r.upper, SKIP)
            elif r.mode == FINGERPRINT:
                i, j = bisect_left(keys, r.lower), bisect_left(keys, r.upper)
                if index._fp(i, j) == r.payload[0]:
                    ok = w.emit(r.upper, SKIP)
                else:
                    ok = self._emit_split(w, r.lower, r.upper, i, j)
            else:
                ok = self._answer_id_list(w, r)
            if not ok:
                w.continuation(index._fp(bisect_left(keys, w.pos), len(keys)))
                break
        return self._send(w)

    def _apply_diffs(self, ranges: list[_Range]) -> None:
        """Check every Diff against the IdList we sent, then record them all
        (all-or-nothing, so a bad message leaves have/need untouched)."""
        have: list[bytes] = []
        need: list[bytes] = []
        for r in ranges:
            if r.mode != DIFF:
                continue
            sent = self._sent_lists.get(r.lower)
            if sent is None or r.upper > sent[0]:
                raise ReconcileError("diff for a range we sent no id list for")
            ours = set(_split_ids(sent[1], "our id list"))
            you_need = _split_ids(r.payload[0], "diff you-need")
            you_have = _split_ids(r.payload[1], "diff you-have")
            if not ours.isdisjoint(you_need):
                raise ReconcileError("diff says we lack an id we sent")
            if not ours.issuperset(you_have):
                raise ReconcileError("diff says we have an id we did not send")
            need.extend(you_need)
            have.extend(you_have)
        self.need.update(need)
        self.have.update(have)

    def _emit_split(self, w: _Writer, lower: bytes, upper: bytes, i: int, j: int) -> bool:
        """Describe our items of ``[lower, upper)`` at positions ``[i, j)``: all
        ids when few, else fingerprints of ``branching`` sub-ranges."""
        index = self.index
        if j - i <= self.id_list_threshold:
            return w.emit(upper, ID_LIST, (b"".join(index._ids[i:j]),))
        bounds = index._split_keys(i, j, upper, self.branching)
        n, k = j - i, len(bounds)
        per, extra = divmod(n, k)
        p = i
        for b, bound in enumerate(bounds):
            q = p + per + (b < extra)
            if not w.emit(bound, FINGERPRINT, (index._fp(p, q),)):
                return False
            p = q
        return True

    def _answer_id_list(self, w: _Writer, r: _Range) -> bool:
        index = self.index
        keys = index._keys
        i, j = bisect_left(keys, r.lower), bisect_left(keys, r.upper)
        theirs = _split_ids(r.payload[0], "id list")
        if not theirs:
            if i == j:
                return w.emit(r.upper, SKIP)
            # The peer holds nothing here: stream our ids, cut to fit.
            m = min(j - i, w.room_for_ids())
            if m == j - i:
                upper = r.upper
            elif m == 0:
                return False
            else:
                upper = _between(keys[i + m - 1], keys[i + m])
            ids = index._ids[i : i + m]
            if not w.emit(upper, DIFF, (b"".join(ids), b"")):  # pragma: no cover
                raise AssertionError("room_for_ids overestimated")
            self.have.update(ids)
            return m == j - i
        if j - i > _DIRECT_DIFF_LIMIT:
            # We hold far more here than the peer: narrow the range first.
            return self._emit_split(w, r.lower, r.upper, i, j)
        ours = index._ids[i:j]
        their_set = set(theirs)
        mine = [x for x in ours if x not in their_set]
        lacking = sorted(their_set.difference(ours))
        if not mine and not lacking:
            return w.emit(r.upper, SKIP)
        if not w.emit(r.upper, DIFF, (b"".join(mine), b"".join(lacking))):
            return False
        self.have.update(mine)
        self.need.update(lacking)
        return True


# --- helpers for tests, benchmarks and the simulator -------------------------


def run_reconciliation(initiator: Reconciler, responder: Reconciler) -> tuple[int, int]:
    """Run a whole reconciliation between two local reconcilers; return
    ``(messages, bytes)`` exchanged in both directions."""
    msg = initiator.start()
    messages, total = 1, len(msg)
    sides = (responder, initiator)
    turn = 0
    while True:
        reply = sides[turn].receive(msg)
        if reply is None:
            return messages, total
        messages += 1
        total += len(reply)
        msg = reply
        turn ^= 1


def reconcile_in_memory(
    a: ItemIndex, b: ItemIndex, *, max_message: int = MAX_RECONCILE_MESSAGE
) -> tuple[set[bytes], set[bytes], int, int]:
    """Reconcile ``a`` (initiator) with ``b``; return ``(a_have, a_need, rounds,
    bytes_total)`` where ``rounds`` counts messages in both directions (a
    round trip is two)."""
    ra = Reconciler(a, max_message=max_message)
    rb = Reconciler(b, max_message=max_message)
    rounds, total = run_reconciliation(ra, rb)
    return ra.have, ra.need, rounds, total
