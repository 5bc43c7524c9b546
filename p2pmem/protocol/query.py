"""Flooding query routing, sans-IO: dedup, TTL, reverse path, rate limits.

Why flooding: a question must reach memories that gossip did not replicate
(``ask`` memories are never gossiped, and a node only replicates the authors it
follows), and there is no index of who holds what. Flooding with a TTL reaches
every node within TTL links without any global state, and duplicate
suppression keeps its cost linear in the links it crosses.

Why sans-IO: :class:`QueryRouter` takes bytes and the current time in and puts
``(peer, kind, bytes)`` in an outbox; it never reads a clock, a socket or the
global random generator. The trio node and the simulator are two shells around
the same object, so a simulated run replays exactly from its seed.

Cost model. Each node forwards a query only on first sight of its id, once to
each neighbour except the one it came from (and except the asker), so each
query crosses each link at most once per direction: at most ``2·|E|`` query
messages over the links within reach of the TTL, and usually about ``|E|``.
Hits travel back along the reverse path only, one message (or a few, when they
exceed a wire message) per answering node per link of its path; a relay passes
at most :data:`MAX_RELAYED_RECORDS` records per query, so a responder cannot
amplify through it.

Trust. Nothing here trusts a peer. The answering node signs each hits
message with its identity key over (query id, hops, responder, the ids of the
records), and relays pass it on unchanged; the asker checks that signature
against the claimed responder as the message arrives, so ``via`` (the
responder) is the authenticated identity of the node that answered: a relay
can drop an answer but cannot forge, alter or re-attribute one. ``hops`` is
the responder's own claim. The asker also decodes and verifies every record
and checks the query's filters again on arrival, drops what fails at once, and
holds what passes within a per-query byte budget
(:data:`p2pmem.limits.MAX_QUERY_RESULT_BYTES`), so junk answers cost it CPU
for one check each and no memory.

Wire format (RFC 8949 deterministic CBOR, maps with small unsigned keys; a
decoder rejects any bytes that :func:`encode_query` / :func:`encode_hits` would
not have produced, so each message has exactly one encoding)::

    query = {
      0: bstr .size 16,            ; qid, random
      1: bstr .size 32,            ; asker, Ed25519 agent key
      2: uint,                     ; ttl: links it may still cross, 1..MAX_TTL
      3: uint,                     ; hops: links crossed so far, 1..MAX_TTL,
                                   ;   ttl + hops <= MAX_TTL + 1
      4: tstr,                     ; text, at most MAX_QUERY_TEXT bytes
      ? 5: uint,                   ; since, ms since the epoch, on a record's at
      ? 6: uint,                   ; until, ms since the epoch, since <= until
      7: [* tstr],                 ; topics, sorted, unique, <= MAX_TOPICS,
                                   ;   each 1..MAX_TOPIC bytes (any one matches)
      8: [* bstr .size 32],        ; authors, sorted, unique, <= MAX_QUERY_AUTHORS
      ? 9: bstr .size 32,          ; target: only this agent's records answer
      10: uint,                    ; limit, 1..MAX_QUERY_HITS
      11: uint,                    ; timeout_ms, 1..MAX_QUERY_TIMEOUT_S * 1000
      ? 12: uint,                  ; echo_ms: echo within this budget, 1..timeout_ms
                                   ;   (only to peers with "query-echo-v1")
    }

    query-echo = {                 ; p2pmem.protocol.wave
      0: bstr .size 16,            ; qid
      1: 0..3,                     ; done, partial, covered, refused
      2: uint,                     ; nodes the sender's subtree reached
      3: uint,                     ; hits messages it sent up before this echo
    }

    query-hits = {
      0: bstr .size 16,            ; qid of the query answered
      1: uint,                     ; hops between asker and responder, 1..MAX_TTL
      2: bstr .size 32,            ; responder, agent key of the answering node
      3: [* bstr],                 ; signed records (COSE_Sign1 bytes),
                                   ;   1..MAX_QUERY_HITS, each <= MAX_RECORD
      4: bstr .size 64,            ; responder's Ed25519 signature over
                                   ;   hits-to-sign (see below)
    }

    hits-to-sign = [                ; deterministic CBOR, never sent itself
      "p2pmem/query-hits/1",        ; domain separation
      bstr .size 16,               ; qid
      uint,                        ; hops
      bstr .size 32,               ; responder
      [* bstr .size 32],           ; SHA-256 of each record, in order
    ]

A query carries a relative ``timeout_ms``, never an absolute deadline: clocks
differ between nodes, so each node computes its own deadline as
``now + timeout`` when the query first arrives; likewise ``echo_ms``, the
budget within which the sender waits for this node's echo
(:mod:`p2pmem.protocol.wave`: the asker finishes when its flood is done).
"""

from __future__ import annotations

import heapq
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pmem import limits
from p2pmem.errors import P2pmemError, RecordError
from p2pmem.logevents import LogEvent, log_event
from p2pmem.model.record import Record, decode_record, record_id
from p2pmem.model.strict import Fields
from p2pmem.protocol.budget import Bucket
from p2pmem.protocol.ports import Rng
from p2pmem.protocol.wave import (
    MAX_ECHO_HITS,
    Echo,
    EchoError,
    Status,
    Wave,
    child_budget_ms,
    decode_echo,
    encode_echo,
)

__all__ = [
    "DEFAULT_QUERY_TIMEOUT_S",
    "MAX_QUERY_AUTHORS",
    "MAX_RELAYED_RECORDS",
    "Answered",
    "Hit",
    "Query",
    "QueryError",
    "QueryHits",
    "QueryRouter",
    "QueryStats",
    "VerifiedHit",
    "check_hit",
    "decode_hits",
    "decode_query",
    "encode_hits",
    "encode_query",
    "hit_matches",
    "order_hits_by_overlap",
    "verify_hits",
]

log = logging.getLogger(__name__)

Peer = Hashable
Kind = Literal["query", "hits", "echo"]
Answer = Callable[["Query"], "Sequence[bytes] | Answered"]
Sign = Callable[[bytes], bytes]
# Decodes, verifies and filter-checks one record of a hit; None drops it.
Check = Callable[["Query", bytes], Any]

DEFAULT_QUERY_TIMEOUT_S = 5.0
MAX_QUERY_AUTHORS = limits.MAX_QUERY_AUTHORS
QID_SIZE = 16
KEY_SIZE = 32
SIG_SIZE = 64
HITS_DOMAIN = "p2pmem/query-hits/1"
HITS_CONTEXT_DOMAIN = "p2pmem/query-hits/2"  # an answer with context records (field 5)
# Context records per answer record: its session neighbours (the previous and
# the next memory of its session) and, once per session, the session's three
# best memories for the query, which the asker's merge scores it with.
MAX_CONTEXT_PER_HIT = 5
# Records a relay passes back for one query: enough for every node within reach
# to fill a few answers, small enough that one query cannot make a relay carry
# an unbounded volume (amplification).
MAX_RELAYED_RECORDS = limits.MAX_RELAYED_RECORDS
# Distinct records the asker keeps for one of its own queries, for the same
# reason; their bytes are bounded too, by limits.MAX_QUERY_RESULT_BYTES.
MAX_COLLECTED_RECORDS = limits.MAX_COLLECTED_RECORDS
# How long the results of a finished own query stay readable before
# handle_timer drops them, in case the node never calls finish().
RESULT_LINGER_S = limits.QUERY_RESULT_LINGER_S
# A query message is small (text, topics, authors); anything larger is hostile.
MAX_QUERY_MESSAGE = limits.MAX_QUERY_MESSAGE
# One hits message must fit one wire message; bigger answers are split.
MAX_HITS_MESSAGE = limits.MAX_MESSAGE
_HITS_OVERHEAD = 256  # map head, qid, hops, responder, signature, array head, with margin
_RECORD_HEAD = 5  # the longest byte-string head a record <= 128 KiB needs
_MAX_DROP_REASONS = 64

# Query map keys.
Q_QID, Q_ASKER, Q_TTL, Q_HOPS, Q_TEXT, Q_SINCE, Q_UNTIL = 0, 1, 2, 3, 4, 5, 6
Q_TOPICS, Q_AUTHORS, Q_TARGET, Q_LIMIT, Q_TIMEOUT, Q_ECHO = 7, 8, 9, 10, 11, 12
_Q_REQUIRED = frozenset(
    (Q_QID, Q_ASKER, Q_TTL, Q_HOPS, Q_TEXT, Q_TOPICS, Q_AUTHORS, Q_LIMIT, Q_TIMEOUT)
)
_Q_OPTIONAL = frozenset((Q_SINCE, Q_UNTIL, Q_TARGET, Q_ECHO))
# QueryHits map keys.
H_QID, H_HOPS, H_RESPONDER, H_RECORDS, H_SIGNATURE = 0, 1, 2, 3, 4
H_CONTEXT = 5
_H_KEYS = frozenset((H_QID, H_HOPS, H_RESPONDER, H_RECORDS, H_SIGNATURE))

_MAX_UINT = (1 << 64) - 1
_MAX_TIMEOUT_MS = int(limits.MAX_QUERY_TIMEOUT_S * 1000)


class QueryError(P2pmemError):
    """A query or hits message is malformed or out of bounds, or a query
    cannot be started as asked. Decoders raise only this, for any bytes."""


# --- messages ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answered:
    """A node's answer with context: ``context`` maps an answer record to
    its session neighbours (the asker scores the answer with them)."""

    records: Sequence[bytes]
    context: dict[bytes, Sequence[bytes]] = field(default_factory=dict)
    # the node's collection statistics for the query: memories that may
    # answer, and how many hold each search term (see wave.Echo)
    stats: tuple[int, Sequence[int]] | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """A question flooding through the network.

    ``ttl`` is how many more links it may cross; ``hops`` is how many it has
    crossed to reach the node holding it (the asker's neighbours see 1), so a
    node at ``hops`` from the asker can report its distance without trusting
    anyone's clock or topology.
    """

    qid: bytes
    asker: bytes
    ttl: int
    text: str
    hops: int = 1
    since: int | None = None
    until: int | None = None
    topics: tuple[str, ...] = ()
    authors: tuple[bytes, ...] = ()
    target: bytes | None = None
    limit: int = limits.MAX_QUERY_HITS
    timeout_ms: int = int(DEFAULT_QUERY_TIMEOUT_S * 1000)
    # The sender waits this long for our echo (None: it came through a node
    # that does not echo, so this node does not either; see wave.py).
    echo_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueryHits:
    """An answer travelling back to the asker along the query's reverse path,
    signed by its responder (see :func:`sign_hits`)."""

    qid: bytes
    hops: int
    responder: bytes
    records: tuple[bytes, ...]
    signature: bytes = bytes(SIG_SIZE)
    # Session neighbours of the records, for the asker's ranking only (never
    # answers themselves); sent only when the query carries an echo budget,
    # which tells that every node up to the asker reads field 5.
    context: tuple[bytes, ...] = ()

    def to_sign(self) -> bytes:
        """The bytes the responder signs: every field but the signature, the
        records (and context records) by their SHA-256, under a domain tag
        of their own."""
        hashes = [record_id(raw) for raw in self.records]
        if not self.context:
            return cbor2.dumps([HITS_DOMAIN, self.qid, self.hops, self.responder, hashes], canonical=True)
        return cbor2.dumps(
            [HITS_CONTEXT_DOMAIN, self.qid, self.hops, self.responder, hashes,
             [record_id(raw) for raw in self.context]],
            canonical=True,
        )

    def signed(self, sign: Sign) -> QueryHits:
        return QueryHits(self.qid, self.hops, self.responder, self.records, sign(self.to_sign()), self.context)

    def verify(self) -> bool:
        """Whether the responder's key signed this answer as it stands."""
        try:
            Ed25519PublicKey.from_public_bytes(self.responder).verify(self.signature, self.to_sign())
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Hit:
    """A record and its provenance, not yet verified (input of :func:`verify_hits`)."""

    raw: bytes
    hops: int
    responder: bytes


@dataclass(frozen=True, slots=True)
class VerifiedHit:
    """A hit whose record was decoded, signature-checked and filter-checked;
    ``responder`` signed the answer that carried it (it is the ``via``)."""

    record: Record
    hops: int
    responder: bytes


def _fail(reason: str) -> QueryError:
    return QueryError(reason[:200])


_fields = Fields(_fail)  # the one typed-field reader (p2pmem/model/strict.py)


def _check_bytes(value: Any, what: str, size: int) -> bytes:
    return _fields.bytes_(value, what, size=size)


def _check_uint(value: Any, what: str, low: int = 0, high: int = _MAX_UINT) -> int:
    return _fields.uint(value, what, low=low, high=high)


def _check_opt_uint(value: Any, what: str) -> int | None:
    return None if value is None else _check_uint(value, what)


def _check_sorted_unique(items: tuple[Any, ...], what: str) -> None:
    if list(items) != sorted(set(items)):
        raise _fail(f"{what} must be sorted and without duplicates")


def _check_query(q: Query) -> None:
    """Every rule of the query schema, for encoding and decoding alike, so an
    encoder can never emit what a decoder would refuse."""
    _check_bytes(q.qid, "query id", QID_SIZE)
    _check_bytes(q.asker, "asker", KEY_SIZE)
    _check_uint(q.ttl, "ttl", 1, limits.MAX_TTL)
    _check_uint(q.hops, "hops", 1, limits.MAX_TTL)
    if q.ttl + q.hops > limits.MAX_TTL + 1:
        raise _fail(f"ttl {q.ttl} plus hops {q.hops} exceeds the TTL cap {limits.MAX_TTL}")
    if type(q.text) is not str:
        raise _fail("query text must be a text string")
    size = len(q.text.encode("utf-8", "surrogatepass"))
    if size > limits.MAX_QUERY_TEXT:
        raise _fail(f"query text is {size} bytes, over the limit of {limits.MAX_QUERY_TEXT}")
    since = _check_opt_uint(q.since, "since")
    until = _check_opt_uint(q.until, "until")
    if since is not None and until is not None and since > until:
        raise _fail("since is after until")
    if type(q.topics) is not tuple or len(q.topics) > limits.MAX_TOPICS:
        raise _fail(f"topics must be a list of at most {limits.MAX_TOPICS}")
    for topic in q.topics:
        if type(topic) is not str or not topic:
            raise _fail("each topic must be a non-empty text string")
        if len(topic.encode("utf-8", "surrogatepass")) > limits.MAX_TOPIC:
            raise _fail(f"a topic is over the limit of {limits.MAX_TOPIC} bytes")
    _check_sorted_unique(q.topics, "topics")
    if type(q.authors) is not tuple or len(q.authors) > MAX_QUERY_AUTHORS:
        raise _fail(f"authors must be a list of at most {MAX_QUERY_AUTHORS}")
    for author in q.authors:
        _check_bytes(author, "each author", KEY_SIZE)
    _check_sorted_unique(q.authors, "authors")
    if q.target is not None:
        _check_bytes(q.target, "target", KEY_SIZE)
    _check_uint(q.limit, "limit", 1, limits.MAX_QUERY_HITS)
    _check_uint(q.timeout_ms, "timeout_ms", 1, _MAX_TIMEOUT_MS)
    if q.echo_ms is not None:
        _check_uint(q.echo_ms, "echo_ms", 1, q.timeout_ms)


def _check_hits(h: QueryHits) -> None:
    _check_bytes(h.qid, "query id", QID_SIZE)
    _check_uint(h.hops, "hops", 1, limits.MAX_TTL)
    _check_bytes(h.responder, "responder", KEY_SIZE)
    _check_bytes(h.signature, "signature", SIG_SIZE)
    if type(h.records) is not tuple or not 1 <= len(h.records) <= limits.MAX_QUERY_HITS:
        raise _fail(f"hits must carry 1 to {limits.MAX_QUERY_HITS} records")
    if type(h.context) is not tuple or len(h.context) > MAX_CONTEXT_PER_HIT * len(h.records):
        raise _fail(f"hits carry at most {MAX_CONTEXT_PER_HIT} context records per record")
    for raw in h.records + h.context:
        if type(raw) is not bytes:
            raise _fail("each record must be a byte string")
        if len(raw) > limits.MAX_RECORD:
            raise _fail(f"a record is {len(raw)} bytes, over the limit of {limits.MAX_RECORD}")


def encode_query(q: Query) -> bytes:
    """The one encoding of a query; raises :class:`QueryError` if it is invalid."""
    _check_query(q)
    obj: dict[int, Any] = {
        Q_QID: q.qid,
        Q_ASKER: q.asker,
        Q_TTL: q.ttl,
        Q_HOPS: q.hops,
        Q_TEXT: q.text,
        Q_TOPICS: list(q.topics),
        Q_AUTHORS: list(q.authors),
        Q_LIMIT: q.limit,
        Q_TIMEOUT: q.timeout_ms,
    }
    if q.since is not None:
        obj[Q_SINCE] = q.since
    if q.until is not None:
        obj[Q_UNTIL] = q.until
    if q.target is not None:
        obj[Q_TARGET] = q.target
    if q.echo_ms is not None:
        obj[Q_ECHO] = q.echo_ms
    try:
        return cbor2.dumps(obj, canonical=True)
    except Exception as exc:  # e.g. a lone surrogate in the text
        raise _fail(f"query cannot be encoded: {exc}") from None


def encode_hits(h: QueryHits) -> bytes:
    """The one encoding of a hits message; raises :class:`QueryError` if invalid."""
    _check_hits(h)
    obj: dict[int, Any] = {H_QID: h.qid, H_HOPS: h.hops, H_RESPONDER: h.responder, H_RECORDS: list(h.records),
                           H_SIGNATURE: h.signature}
    if h.context:
        obj[H_CONTEXT] = list(h.context)
    return cbor2.dumps(obj, canonical=True)


def _load_map(data: Any, what: str, max_size: int) -> dict[Any, Any]:
    """Decode a CBOR map, or raise QueryError whatever the bytes are."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"{what} must be bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise _fail(f"{what} is {len(data)} bytes, over the limit of {max_size}")
    obj = _fields.loads(data, what, canonical=False)  # canonical: checked against the re-encoding
    if type(obj) is not dict:
        raise _fail(f"{what} must be a CBOR map")
    if not all(type(k) is int for k in obj):
        raise _fail(f"{what} keys must be unsigned integers")
    return obj


def _require_canonical(data: bytes, encoded: bytes, what: str) -> None:
    # One encoding per message: rejects duplicate keys, trailing bytes,
    # indefinite lengths and non-shortest heads in one comparison.
    if bytes(data) != encoded:
        raise _fail(f"{what} is not in deterministic CBOR encoding")


def decode_query(data: bytes) -> Query:
    """Decode and check a query; raises only :class:`QueryError`, for any bytes."""
    obj = _load_map(data, "query", MAX_QUERY_MESSAGE)
    keys = set(obj)
    if missing := _Q_REQUIRED - keys:
        raise _fail(f"query lacks field(s) {sorted(missing)}")
    if unknown := keys - _Q_REQUIRED - _Q_OPTIONAL:
        raise _fail(f"query has unknown field(s) {sorted(unknown)[:8]}")
    for key in (Q_TOPICS, Q_AUTHORS):
        if type(obj[key]) is not list:
            raise _fail("query topics and authors must be arrays")
    for key in _Q_OPTIONAL & keys:
        if obj[key] is None:
            raise _fail("an absent optional query field is omitted, not null")
    try:
        q = Query(
            qid=obj[Q_QID],
            asker=obj[Q_ASKER],
            ttl=obj[Q_TTL],
            hops=obj[Q_HOPS],
            text=obj[Q_TEXT],
            since=obj.get(Q_SINCE),
            until=obj.get(Q_UNTIL),
            topics=tuple(obj[Q_TOPICS]),
            authors=tuple(obj[Q_AUTHORS]),
            target=obj.get(Q_TARGET),
            limit=obj[Q_LIMIT],
            timeout_ms=obj[Q_TIMEOUT],
            echo_ms=obj.get(Q_ECHO),
        )
        _check_query(q)
        _require_canonical(data, encode_query(q), "query")
    except QueryError:
        raise
    except Exception as exc:  # e.g. unhashable or unorderable array items
        raise _fail(f"malformed query: {exc}") from None
    return q


def decode_hits(data: bytes) -> QueryHits:
    """Decode and check a hits message; raises only :class:`QueryError`."""
    obj = _load_map(data, "hits", MAX_HITS_MESSAGE)
    if set(obj) - {H_CONTEXT} != _H_KEYS:
        raise _fail("hits must have exactly the fields 0, 1, 2, 3, 4 and perhaps 5")
    if type(obj[H_RECORDS]) is not list or type(obj.get(H_CONTEXT, [])) is not list:
        raise _fail("hits records and context must be arrays")
    h = QueryHits(
        qid=obj[H_QID],
        hops=obj[H_HOPS],
        responder=obj[H_RESPONDER],
        records=tuple(obj[H_RECORDS]),
        signature=obj[H_SIGNATURE],
        context=tuple(obj.get(H_CONTEXT, ())),
    )
    _check_hits(h)
    _require_canonical(data, encode_hits(h), "hits")
    return h


def _pack_hits(
    qid: bytes, hops: int, responder: bytes, records: Sequence[tuple[bytes, Sequence[bytes]]], sign: Sign,
) -> list[bytes]:
    """Split an answer, each record with its context records, into signed
    hits messages that each fit one wire message. A context record goes once
    per message and never when it is an answer itself; context that does not
    fit beside its record is left out, never the record."""
    answers = {raw for raw, _ in records}
    out: list[bytes] = []
    chunk: list[bytes] = []
    context: dict[bytes, None] = {}
    size = _HITS_OVERHEAD

    def emit() -> None:
        out.append(encode_hits(QueryHits(qid, hops, responder, tuple(chunk), context=tuple(context)).signed(sign)))

    for raw, around in records:
        cost = len(raw) + _RECORD_HEAD
        if chunk and (size + cost > MAX_HITS_MESSAGE or len(chunk) >= limits.MAX_QUERY_HITS):
            emit()
            chunk, context, size = [], {}, _HITS_OVERHEAD
        chunk.append(raw)
        size += cost
        for extra in list(around)[:MAX_CONTEXT_PER_HIT]:
            if extra in answers or extra in context or size + len(extra) + _RECORD_HEAD > MAX_HITS_MESSAGE:
                continue
            context[extra] = None
            size += len(extra) + _RECORD_HEAD
    if chunk:
        emit()
    return out


# --- the router ---------------------------------------------------------------


@dataclass(slots=True)
class QueryStats:
    """Counters for status output, simulations and tests."""

    started: int = 0
    received: int = 0  # query messages received, valid or not
    duplicates: int = 0
    loops: int = 0  # our own queries coming back
    rate_limited: int = 0
    malformed: int = 0  # query and hits messages that failed to decode
    answered: int = 0  # queries this node had records for
    forwarded: int = 0  # query messages queued to neighbours, own ones included
    hits_received: int = 0
    hits_delivered: int = 0  # hits messages merged into an own query
    hits_relayed: int = 0
    hits_dropped: int = 0  # unknown, expired, late, over budget, or bogus hops
    hits_forged: int = 0  # own-query answers whose responder signature failed
    records_invalid: int = 0  # records of own-query answers that failed to verify or match
    records_over_budget: int = 0  # valid records dropped: the query's byte, count or per-responder budget was full
    echoes_sent: int = 0
    echoes_received: int = 0
    echoes_dropped: int = 0  # malformed, unexpected or late echoes
    finished_early: int = 0  # own queries done by their echoes, before the deadline
    finished_at_deadline: int = 0
    # what left the router (payload bytes, before framing and encryption)
    sent_query: int = 0
    sent_hits: int = 0
    sent_echo: int = 0
    bytes_query: int = 0
    bytes_hits: int = 0
    bytes_echo: int = 0


@dataclass(slots=True)
class _Seen:
    from_peer: Peer | None  # None for our own queries
    expiry: float
    seq: int
    relayed: int = 0
    relayed_context: int = 0
    wave: Wave | None = None  # the parent waits for our echo (wave.py)
    sent: int = 0  # hits messages sent to from_peer, for the echo's count


@dataclass(slots=True)
class _Own:
    query: Query
    deadline: float
    wave: Wave
    started: float
    finished_at: float | None = None
    # verified context records of the answers (record hash -> record), for ranking
    context: dict[bytes, Any] = field(default_factory=dict)
    context_bytes: int = 0
    hits: dict[bytes, VerifiedHit] = field(default_factory=dict)  # record hash -> best hit
    held_bytes: int = 0  # encoded size of the records in hits
    # The records each responder added (hashes, in order) and their bytes: the
    # budget is shared fairly among responders (see QueryRouter._collect).
    added: dict[bytes, list[bytes]] = field(default_factory=dict)
    added_bytes: dict[bytes, int] = field(default_factory=dict)


class QueryRouter:
    """Routes queries and hits for one node; a pure state machine.

    Feed it with :meth:`start_query`, :meth:`receive_query`,
    :meth:`receive_hits` and :meth:`handle_timer`; send what
    :meth:`take_outbox` returns; wake it at :meth:`next_deadline`.
    """

    def __init__(
        self,
        local_id: bytes,
        rng: Rng,
        *,
        seen_capacity: int = limits.SEEN_QUERY_CACHE,
        rate: float = limits.QUERY_RATE_PER_PEER,
        burst: float = limits.QUERY_BURST_PER_PEER,
        sign: Sign | None = None,
        check: Check | None = None,
        result_bytes: int = limits.MAX_QUERY_RESULT_BYTES,
        check_context: Check | None = None,
    ) -> None:
        """``sign`` signs this node's answers with the key of ``local_id``;
        a router without it relays and asks but never answers. ``check``
        turns a raw record of an answer into a verified record, or None to
        drop it (default :func:`check_hit`: decode, verify, match the
        filters). ``result_bytes`` is the byte budget of one own query."""
        _check_bytes(local_id, "local id", KEY_SIZE)
        if seen_capacity < 1 or rate < 0 or burst < 1:
            raise ValueError("seen_capacity and burst must be >= 1 and rate >= 0")
        self.local_id = local_id
        self._sign = sign
        self._check: Check = check or check_hit
        self._check_context: Check = check_context or check_context_record
        self._result_bytes = result_bytes
        self._rng = rng
        self._seen_capacity = seen_capacity
        self._rate = float(rate)
        self._burst = float(burst)
        # Insertion-ordered: when full, the oldest entry goes first.
        self._seen: OrderedDict[bytes, _Seen] = OrderedDict()
        # (expiry, seq, qid) with lazy deletion; an entry is live while the
        # seen entry of qid still carries the same seq.
        self._expiries: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._own: dict[bytes, _Own] = {}
        self._buckets: dict[Peer, Bucket] = {}
        self._outbox: list[tuple[Peer, Kind, bytes]] = []
        self._finished: list[bytes] = []  # own queries done since take_finished
        self._waves: list[tuple[float, bytes]] = []  # (give-up time, qid) of open waves, lazily pruned
        self.stats = QueryStats()
        self.dropped: deque[str] = deque(maxlen=_MAX_DROP_REASONS)

    # -- asking ----------------------------------------------------------------

    def start_query(
        self,
        text: str,
        *,
        now: float,
        neighbours: Iterable[Peer],
        echo_peers: Container[Peer] = (),
        ttl: int = limits.DEFAULT_TTL,
        timeout: float = DEFAULT_QUERY_TIMEOUT_S,
        since: int | None = None,
        until: int | None = None,
        topics: Iterable[str] = (),
        authors: Iterable[bytes] = (),
        target: bytes | None = None,
        limit: int = limits.MAX_QUERY_HITS,
    ) -> bytes:
        """Ask the network; returns the new query id. ``echo_peers`` are the
        neighbours that echo (:data:`p2pmem.protocol.wave.ECHO_FEATURE`);
        the others get the query without an echo budget.

        A TTL above the cap is clamped (asking widely is a wish, not an
        error); a TTL below 1 would reach nobody and is refused. The timeout
        is clamped to the cap likewise, and the limit to MAX_QUERY_HITS.
        """
        if type(ttl) is not int or ttl < 1:
            raise _fail(f"ttl must be at least 1, not {ttl!r}")
        if not timeout > 0:  # also refuses NaN
            raise _fail(f"timeout must be positive, not {timeout!r}")
        if type(limit) is not int or limit < 1:
            raise _fail(f"limit must be at least 1, not {limit!r}")
        timeout = min(float(timeout), limits.MAX_QUERY_TIMEOUT_S)
        query = Query(
            qid=self._rng.randbytes(QID_SIZE),
            asker=self.local_id,
            ttl=min(ttl, limits.MAX_TTL),
            hops=1,
            text=text,
            since=since,
            until=until,
            topics=tuple(sorted(set(topics))),
            authors=tuple(sorted(set(authors))),
            target=target,
            limit=min(limit, limits.MAX_QUERY_HITS),
            timeout_ms=max(1, min(_MAX_TIMEOUT_MS, round(timeout * 1000))),
        )
        encode_query(query)  # validates every field
        deadline = now + query.timeout_ms / 1000
        children = self._send_copies(query, neighbours, echo_peers, (), child_budget_ms(deadline - now))
        own = self._own[query.qid] = _Own(query, deadline, Wave.start(deadline, children), now)
        self._remember(query.qid, None, deadline)
        self.stats.started += 1
        self._settle_own(query.qid, own, now)  # no neighbour: done at once
        return query.qid

    def results(self, qid: bytes) -> list[VerifiedHit]:
        """The distinct verified records collected so far for an own query,
        in arrival order, each with the lowest hops it was reported at."""
        own = self._own.get(qid)
        if own is None:
            raise _fail("unknown or finished query")
        return list(own.hits.values())

    def collection(self, qid: bytes) -> tuple[int, tuple[int, ...]]:
        """The collection statistics the echoes of an own query summed: the
        memories that may answer in the nodes that echoed, and how many of
        them hold each search term of the query."""
        own = self._own.get(qid)
        if own is None:
            raise _fail("unknown or finished query")
        return own.wave.stats()

    def context(self, qid: bytes) -> list[Any]:
        """The verified context records of an own query's answers (session
        neighbours of the hits), for ranking them; never answers themselves."""
        own = self._own.get(qid)
        if own is None:
            raise _fail("unknown or finished query")
        return list(own.context.values())

    def query(self, qid: bytes) -> Query:
        """The own query with this id (for :func:`verify_hits`)."""
        own = self._own.get(qid)
        if own is None:
            raise _fail("unknown or finished query")
        return own.query

    def in_flight(self, now: float) -> list[dict[str, Any]]:
        """The own queries still collecting answers, for status."""
        return [
            {"qid": qid.hex(), "text": own.query.text[:80], "records": len(own.hits),
             "bytes": own.held_bytes, "remaining_s": round(own.deadline - now, 1)}
            for qid, own in self._own.items() if not own.wave.closed
        ]

    def is_done(self, qid: bytes, now: float) -> bool:
        """True once the query finished (its flood echoed back, or its
        deadline passed) or is gone: no more hits will be accepted for it."""
        own = self._own.get(qid)
        return own is None or own.wave.closed or now >= own.deadline

    def take_finished(self) -> list[bytes]:
        """Own queries that finished since the last call, each exactly once:
        their flood echoed back, or their deadline passed (handle_timer)."""
        out, self._finished = self._finished, []
        return out

    def summary(self, qid: bytes) -> dict[str, Any]:
        """How an own query went: nodes reached (as its echoes counted
        them), whether every branch echoed in time, how long it took."""
        own = self._own.get(qid)
        if own is None:
            raise _fail("unknown or finished query")
        end = own.finished_at
        return {"reached": own.wave.reached - 1, "complete": own.wave.closed and not own.wave.partial,
                "elapsed_s": None if end is None else round(end - own.started, 4)}

    def finish(self, qid: bytes) -> None:
        """Drop the state of an own query; its id stays in the seen cache until
        it expires, so late copies are still recognised."""
        self._own.pop(qid, None)

    # -- receiving ---------------------------------------------------------------

    def receive_query(
        self,
        peer: Peer,
        data: bytes,
        now: float,
        neighbours: Iterable[Peer],
        answer: Answer,
        echo_peers: Container[Peer] = (),
    ) -> None:
        """Handle a query from a neighbour: drop, or answer and forward once,
        then echo when the subtree is done (if the sender asked for echoes).

        ``answer`` is the node's local lookup; it must apply the query's
        filters and visibility (public and ``ask`` memories only) itself.
        ``echo_peers``: the neighbours that echo. Never raises for any bytes.
        """
        self.stats.received += 1
        try:
            query = decode_query(data)
        except QueryError as exc:
            self._drop("malformed", f"query from {peer!r:.40}: {exc}")
            return
        if query.asker == self.local_id:
            self._drop("loops", "our own query came back")
            self._echo_at_once(peer, query, Status.COVERED)
            return
        if self._is_seen(query.qid, now):
            self.stats.duplicates += 1
            self._echo_at_once(peer, query, Status.COVERED)
            return
        # Charged only on first sight: a duplicate costs one small echo, and an
        # honest neighbour forwards each query to us at most once anyway.
        if not self._take_token(peer, now):
            self._drop("rate_limited", f"query from {peer!r:.40}: over the rate limit")
            self._echo_at_once(peer, query, Status.REFUSED)
            return
        self._remember(query.qid, peer, now + query.timeout_ms / 1000)
        entry = self._seen[query.qid]
        records, stats = self._answer_records(query, answer) if self._sign is not None else ([], None)
        if records:
            assert self._sign is not None
            self.stats.answered += 1
            for msg in _pack_hits(query.qid, query.hops, self.local_id, records, self._sign):
                self._outbox.append((peer, "hits", msg))
                entry.sent += 1
        children: dict[Peer, bool] = {}
        if query.ttl - 1 >= 1:
            budget = None if query.echo_ms is None else child_budget_ms(query.echo_ms / 1000)
            # The asker has seen it already; the sender gave it to us.
            children = self._send_copies(_forwarded(query), neighbours, echo_peers, (peer, query.asker), budget)
        if query.echo_ms is not None:
            entry.wave = Wave.start(now + query.echo_ms / 1000, children)
            if stats is not None:
                entry.wave.add_stats(*stats)
            if children:
                heapq.heappush(self._waves, (entry.wave.give_up, query.qid))
            self._settle_relay(query.qid, entry, now)

    def receive_hits(self, peer: Peer, data: bytes, now: float) -> None:
        """Handle hits from a neighbour: collect them for an own query, relay
        them one link back along the reverse path, or drop them. Never raises."""
        self.stats.hits_received += 1
        try:
            hits = decode_hits(data)
        except QueryError as exc:
            self._drop("malformed", f"hits from {peer!r:.40}: {exc}")
            return
        own = self._own.get(hits.qid)
        if own is not None:
            if own.wave.closed or now >= own.deadline:
                self._drop("hits_dropped", "hits after the query finished")
                return
            if hits.hops > own.query.ttl:
                self._drop("hits_dropped", "hits claim more hops than the query's ttl")
            elif not hits.verify():
                self._drop("hits_forged", f"hits via {peer!r:.40}: the responder's signature fails")
            else:
                self._collect(own, hits)
                self._collect_context(own, hits)
                self.stats.hits_delivered += 1
            own.wave.on_hits(peer)
            self._settle_own(hits.qid, own, now)
            return
        seen = self._seen.get(hits.qid)
        if seen is None or seen.from_peer is None or now >= seen.expiry:
            self._drop("hits_dropped", "hits for an unknown or expired query")
            return
        if peer == seen.from_peer:
            self._drop("hits_dropped", "hits from the peer the query came from")
            return
        if seen.wave is not None:
            seen.wave.on_hits(peer)
        if (seen.relayed + len(hits.records) > MAX_RELAYED_RECORDS
                or seen.relayed_context + len(hits.context) > MAX_CONTEXT_PER_HIT * MAX_RELAYED_RECORDS):
            self._drop("hits_dropped", "relay budget of the query exhausted")
        else:
            seen.relayed += len(hits.records)
            seen.relayed_context += len(hits.context)
            self._outbox.append((seen.from_peer, "hits", data))
            seen.sent += 1
            self.stats.hits_relayed += 1
        self._settle_relay(hits.qid, seen, now)

    def receive_echo(self, peer: Peer, data: bytes, now: float) -> None:
        """Handle a child's echo: it may complete an own query or let this
        node echo its own subtree up. Never raises."""
        self.stats.echoes_received += 1
        try:
            echo = decode_echo(data)
        except EchoError as exc:
            self._drop("echoes_dropped", f"echo from {peer!r:.40}: {exc}")
            return
        own = self._own.get(echo.qid)
        if own is not None:
            if own.wave.closed or not own.wave.on_echo(peer, echo):
                self._drop("echoes_dropped", "an echo not awaited (late, repeated or from a non-child)")
                return
            self._settle_own(echo.qid, own, now)
            return
        seen = self._seen.get(echo.qid)
        wave = None if seen is None or now >= seen.expiry else seen.wave
        if seen is None or wave is None or wave.closed or not wave.on_echo(peer, echo):
            self._drop("echoes_dropped", "an echo not awaited (late, repeated or from a non-child)")
            return
        self._settle_relay(echo.qid, seen, now)

    # -- the wave (p2pmem.protocol.wave) -------------------------------------------

    def _send_copies(
        self, query: Query, neighbours: Iterable[Peer], echo_peers: Container[Peer],
        exclude: tuple[Peer, ...], budget_ms: int | None,
    ) -> dict[Peer, bool]:
        """Send ``query`` to each neighbour not excluded: with an echo budget
        to those that echo (when there is a budget), without to the others.
        Returns the children, each with whether it will echo."""
        copies: dict[bool, bytes] = {}
        children: dict[Peer, bool] = {}
        for neighbour in neighbours:
            if neighbour in exclude or neighbour in children:
                continue
            echoes = budget_ms is not None and neighbour in echo_peers
            if echoes not in copies:
                echo_ms = min(budget_ms, query.timeout_ms) if echoes and budget_ms is not None else None
                copies[echoes] = encode_query(replace(query, echo_ms=echo_ms))
            self._outbox.append((neighbour, "query", copies[echoes]))
            self.stats.forwarded += 1
            children[neighbour] = echoes
        return children

    def _echo_at_once(self, peer: Peer, query: Query, status: Status) -> None:
        """Tell a sender that waits for our echo that we are not its child."""
        if query.echo_ms is not None:
            self._outbox.append((peer, "echo", encode_echo(Echo(query.qid, status, 0, 0))))
            self.stats.echoes_sent += 1

    def _settle_relay(self, qid: bytes, entry: _Seen, now: float) -> None:
        """Echo to the parent once every child settled or the give-up time came."""
        wave = entry.wave
        if wave is None or wave.closed or not wave.settled(now) or entry.from_peer is None:
            return
        wave.closed = True
        echo = Echo(qid, wave.status(), wave.reached, min(entry.sent, MAX_ECHO_HITS), *wave.stats())
        self._outbox.append((entry.from_peer, "echo", encode_echo(echo)))
        self.stats.echoes_sent += 1

    def _settle_own(self, qid: bytes, own: _Own, now: float) -> None:
        """Finish an own query, exactly once: when its wave settled (every
        child echoed, or gave up on) or at its deadline."""
        if own.wave.closed or not (own.wave.settled(now) or now >= own.deadline):
            return
        own.wave.closed = True
        own.finished_at = now
        self._finished.append(qid)
        if now < own.deadline:
            self.stats.finished_early += 1
        else:
            self.stats.finished_at_deadline += 1

    # -- outputs and time ----------------------------------------------------------

    def take_outbox(self) -> list[tuple[Peer, Kind, bytes]]:
        """The messages to send, in order, as ``(peer, "query"|"hits"|"echo", bytes)``."""
        out, self._outbox = self._outbox, []
        stats = self.stats
        for _peer, kind, data in out:
            setattr(stats, f"sent_{kind}", getattr(stats, f"sent_{kind}") + 1)
            setattr(stats, f"bytes_{kind}", getattr(stats, f"bytes_{kind}") + len(data))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has something to do, or None."""
        times: list[float] = []
        self._prune_heap_top()
        if self._expiries:
            times.append(self._expiries[0][0])
        self._prune_waves()
        if self._waves:
            times.append(self._waves[0][0])
        for own in self._own.values():
            if own.wave.closed and own.finished_at is not None:
                times.append(own.finished_at + RESULT_LINGER_S)
            else:
                times.append(own.deadline)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[bytes]:
        """Expire seen entries, idle rate buckets and stale own queries; echo
        for waves whose give-up time came.

        Returns the ids of own queries whose deadline passed since the last
        call (they are also in :meth:`take_finished`), so the node can hand
        their results to whoever asked. Their results stay readable until
        :meth:`finish`, or for RESULT_LINGER_S.
        """
        # waves first: a wave gives up before its seen entry expires
        while self._waves and self._waves[0][0] <= now:
            _, qid = heapq.heappop(self._waves)
            wave_entry = self._seen.get(qid)
            if wave_entry is not None:
                self._settle_relay(qid, wave_entry, now)
        while self._expiries and self._expiries[0][0] <= now:
            _, seq, qid = heapq.heappop(self._expiries)
            entry = self._seen.get(qid)
            if entry is not None and entry.seq == seq:
                del self._seen[qid]
        done: list[bytes] = []
        for qid, own in list(self._own.items()):
            if not own.wave.closed:
                self._settle_own(qid, own, now)
                if own.wave.closed:
                    done.append(qid)
            elif own.finished_at is not None and now >= own.finished_at + RESULT_LINGER_S:
                del self._own[qid]
        for peer, bucket in list(self._buckets.items()):
            if bucket.level(now) >= self._burst:
                del self._buckets[peer]  # a full bucket is the same as none
        return done

    # -- introspection (status, tests) ---------------------------------------------

    @property
    def seen_size(self) -> int:
        """Entries in the seen cache; never more than its capacity."""
        return len(self._seen)

    def has_seen(self, qid: bytes, now: float) -> bool:
        """Whether a copy of ``qid`` arriving now would be dropped as a duplicate."""
        entry = self._seen.get(qid)
        return entry is not None and now < entry.expiry

    # -- internals -------------------------------------------------------------------

    def _drop(self, counter: str, reason: str) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.dropped.append(reason)
        log_event(log, logging.DEBUG, LogEvent.QUERY_DROPPED, f"query router dropped: {reason}", reason=reason)

    def _is_seen(self, qid: bytes, now: float) -> bool:
        entry = self._seen.get(qid)
        if entry is None:
            return False
        if now >= entry.expiry:  # expired but not yet purged: forget it now
            del self._seen[qid]
            return False
        return True

    def _remember(self, qid: bytes, from_peer: Peer | None, expiry: float) -> None:
        self._seq += 1
        self._seen.pop(qid, None)
        self._seen[qid] = _Seen(from_peer, expiry, self._seq)
        heapq.heappush(self._expiries, (expiry, self._seq, qid))
        while len(self._seen) > self._seen_capacity:
            # Evicting a live entry can only let a late duplicate through once
            # more; its TTL still bounds how far that copy travels.
            self._seen.popitem(last=False)
        if len(self._expiries) > 2 * self._seen_capacity + 16:
            self._expiries = [(e.expiry, e.seq, q) for q, e in self._seen.items()]
            heapq.heapify(self._expiries)

    def _prune_waves(self) -> None:
        while self._waves:
            entry = self._seen.get(self._waves[0][1])
            if entry is not None and entry.wave is not None and not entry.wave.closed:
                return
            heapq.heappop(self._waves)

    def _prune_heap_top(self) -> None:
        while self._expiries:
            _, seq, qid = self._expiries[0]
            entry = self._seen.get(qid)
            if entry is not None and entry.seq == seq:
                return
            heapq.heappop(self._expiries)

    def _take_token(self, peer: Peer, now: float) -> bool:
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = Bucket(self._rate, self._burst, now)
        return bucket.take(now)

    def _answer_records(
        self, query: Query, answer: Answer,
    ) -> tuple[list[tuple[bytes, Sequence[bytes]]], tuple[int, tuple[int, ...]] | None]:
        """The node's answer, cut to what the query and the wire allow; each
        record with its context, which only an echoing path carries; and the
        node's collection statistics (valid ones only), for its echo."""
        cap = min(query.limit, limits.MAX_QUERY_HITS)
        given = answer(query)
        records, context = (given.records, given.context) if isinstance(given, Answered) else (given, {})
        stats = _valid_stats(given.stats) if isinstance(given, Answered) else None
        if query.echo_ms is None:
            context = {}
        out: list[tuple[bytes, Sequence[bytes]]] = []
        for raw in records:
            if len(out) >= cap:
                break
            if type(raw) is bytes and 0 < len(raw) <= limits.MAX_RECORD:
                around = [c for c in context.get(raw, ()) if type(c) is bytes and 0 < len(c) <= limits.MAX_RECORD]
                out.append((raw, around))
        return out, stats

    def _collect(self, own: _Own, hits: QueryHits) -> None:
        """Verify each record of an authenticated answer now and keep the
        good ones within the query's budgets; nothing unverified is held.

        Budgets: the records' bytes (MAX_QUERY_RESULT_BYTES), their number
        (MAX_COLLECTED_RECORDS), and per responder the query's limit (an
        honest node answers with at most that many). When the budget is full,
        it is shared max-min fairly: a record of a responder holding less
        evicts the latest records of the responder holding the most bytes,
        so early floods (from one identity or many) cannot lock out a later
        honest answer; it gets at least an equal share of the budget."""
        for raw in hits.records:
            key = record_id(raw)  # the record id, for real records
            best = own.hits.get(key)
            if best is not None:
                # the same bytes were verified already; keep the shortest path
                if hits.hops < best.hops:
                    own.hits[key] = VerifiedHit(best.record, hits.hops, hits.responder)
                continue
            mine = own.added.get(hits.responder, [])
            victims = None if len(mine) >= own.query.limit else self._room(own, hits.responder, len(raw))
            if victims is None:  # dropped unverified: verifying costs CPU
                self._drop("records_over_budget", "a record over the query's result budget")
                continue
            record = self._check(own.query, raw)  # only a record that would be kept
            if record is None:  # and junk evicts nothing
                self._drop("records_invalid", "a record of an answer failed to verify or match")
                continue
            for richest, victim in victims:
                evicted = own.hits.pop(victim)
                own.added[richest].remove(victim)
                own.held_bytes -= len(evicted.record.raw)
                own.added_bytes[richest] -= len(evicted.record.raw)
                if not own.added[richest]:
                    del own.added[richest], own.added_bytes[richest]
                self._drop("records_over_budget", "a record evicted for a fair share of the budget")
            own.added.setdefault(hits.responder, []).append(key)
            own.added_bytes[hits.responder] = own.added_bytes.get(hits.responder, 0) + len(raw)
            own.held_bytes += len(raw)
            own.hits[key] = VerifiedHit(record, hits.hops, hits.responder)

    def _collect_context(self, own: _Own, hits: QueryHits) -> None:
        """Keep the verified context records of an answer, within their own
        budget: half the query's byte budget, MAX_CONTEXT_PER_HIT per held
        record at most."""
        for raw in hits.context:
            key = record_id(raw)
            if key in own.context or key in own.hits:
                continue
            if (len(own.context) >= MAX_CONTEXT_PER_HIT * MAX_COLLECTED_RECORDS
                    or own.context_bytes + len(raw) > self._result_bytes // 2):
                self._drop("records_over_budget", "a context record over the query's budget")
                continue
            record = self._check_context(own.query, raw)
            if record is None:
                self._drop("records_invalid", "a context record failed to verify")
                continue
            own.context[key] = record
            own.context_bytes += len(raw)

    def _room(self, own: _Own, responder: bytes, size: int) -> list[tuple[bytes, bytes]] | None:
        """The records to evict so that a record of ``size`` bytes from
        ``responder`` fits (an empty list when it fits as is), or None when
        it does not fit: only responders holding more bytes than ``responder``
        would with it give way, their latest records first."""
        if size > self._result_bytes:
            return None
        held, count = own.held_bytes, len(own.hits)
        if count < MAX_COLLECTED_RECORDS and held + size <= self._result_bytes:
            return []
        mine = own.added_bytes.get(responder, 0) + size
        bytes_of = dict(own.added_bytes)
        left = {r: len(keys) for r, keys in own.added.items()}
        victims: list[tuple[bytes, bytes]] = []
        while count >= MAX_COLLECTED_RECORDS or held + size > self._result_bytes:
            richest = max(bytes_of, key=lambda r: (bytes_of[r], r), default=None)
            if richest is None or richest == responder or bytes_of[richest] <= mine:
                return None
            left[richest] -= 1
            victim = own.added[richest][left[richest]]
            victim_size = len(own.hits[victim].record.raw)
            victims.append((richest, victim))
            held -= victim_size
            count -= 1
            bytes_of[richest] -= victim_size
            if not left[richest]:
                del bytes_of[richest]
        return victims


def _valid_stats(stats: Any) -> tuple[int, tuple[int, ...]] | None:
    """The node's own statistics if they are within the echo's bounds."""
    try:
        docs, dfs = stats[0], tuple(stats[1])
        encode_echo(Echo(bytes(QID_SIZE), Status.DONE, 1, 0, docs, dfs))
    except (TypeError, IndexError, EchoError):
        return None
    return docs, dfs


def _forwarded(query: Query) -> Query:
    """The copy a node forwards: one link fewer to go, one more crossed."""
    return Query(
        qid=query.qid,
        asker=query.asker,
        ttl=query.ttl - 1,
        hops=query.hops + 1,
        text=query.text,
        since=query.since,
        until=query.until,
        topics=query.topics,
        authors=query.authors,
        target=query.target,
        limit=query.limit,
        timeout_ms=query.timeout_ms,
        echo_ms=query.echo_ms,
    )


# --- the asker's side: verification and fallback ranking -------------------------


def hit_matches(query: Query, record: Record) -> bool:
    """Whether a verified record may answer ``query``: a visible memory within
    its filters. The asker checks this itself because responders are untrusted."""
    if record.kind in ("entity", "observation", "relation"):  # the knowledge graph (p2pmem/graph)
        if record.visibility == "private" or query.topics or query.since is not None or query.until is not None:
            return False
        return (not query.authors or record.author in query.authors) and (
            query.target is None or record.author == query.target)
    if record.kind != "memory" or record.visibility == "private":
        return False
    at = record.at_ms
    if query.since is not None and at < query.since:
        return False
    if query.until is not None and at > query.until:
        return False
    if query.topics and not set(query.topics) & set(record.topics):
        return False
    if query.authors and record.author not in query.authors:
        return False
    return query.target is None or record.author == query.target


def check_hit(query: Query, raw: bytes) -> Record | None:
    """The record of a hit if it decodes, verifies and answers ``query``."""
    try:
        record = decode_record(raw)
    except RecordError:
        return None
    return record if hit_matches(query, record) else None


def check_context_record(_query: Query, raw: bytes) -> Record | None:
    """A context record if it decodes, verifies and is a visible memory (it
    need not match the query: it only helps rank the answers beside it)."""
    try:
        record = decode_record(raw)
    except RecordError:
        return None
    return record if record.kind == "memory" and record.visibility != "private" else None


def verify_hits(query: Query, hits: Iterable[Hit]) -> list[VerifiedHit]:
    """Decode and verify each hit's record; keep the matching ones, one per
    record id with its lowest hops, in order of first arrival. A record that
    fails to decode or verify is dropped, never raised."""
    best: dict[bytes, VerifiedHit] = {}
    for hit in hits:
        try:
            record = decode_record(hit.raw)
        except RecordError:
            continue
        if not hit_matches(query, record):
            continue
        seen = best.get(record.id)
        if seen is None or hit.hops < seen.hops:
            best[record.id] = VerifiedHit(record, hit.hops, hit.responder)
    return list(best.values())


_WORD = re.compile(r"\w+")


def _terms(text: str) -> set[str]:
    return {w.casefold() for w in _WORD.findall(text)}


def order_hits_by_overlap(text: str, hits: Iterable[VerifiedHit]) -> list[VerifiedHit]:
    """A fallback ranking, best first: query terms shared with the memory's
    text and topics, then fewer hops, then newer. The node may use the store's
    scorer instead; this one only needs the hits themselves."""
    terms = _terms(text)

    def key(h: VerifiedHit) -> tuple[int, int, int, bytes]:
        words = _terms(h.record.text) | {t.casefold() for t in h.record.topics}
        return (-len(terms & words), h.hops, -h.record.ts, h.record.id)

    return sorted(hits, key=key)
