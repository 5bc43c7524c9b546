"""Application messages carried inside a secure channel.

Each message is a CBOR array ``[type, body]`` (CDDL in docs/protocol.md).
Decoding is strict and bounded: anything unexpected raises
:class:`WireError`, and the peer's connection is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from p2pmem import limits
from p2pmem.errors import P2pmemError
from p2pmem.model.strict import Fields

PROTOCOL_VERSION = 1
# "query-echo-v1": this node echoes queries (p2pmem.protocol.wave) and may be
# sent the query-echo message and a query with an echo budget (field 12).
FEATURES = ("reconcile-v1", "push", "pex", "query-v1", "messages", "query-echo-v1")


class WireError(P2pmemError):
    """A peer sent a message that breaks the wire protocol."""


@dataclass(frozen=True)
class Hello:
    version: int
    features: tuple[str, ...]
    agent: bytes
    addresses: tuple[str, ...]
    replicate_all: bool
    authors: tuple[bytes, ...]  # whose public memories this node wants


@dataclass(frozen=True)
class Interest:
    replicate_all: bool
    authors: tuple[bytes, ...]


@dataclass(frozen=True)
class Recon:
    recon_id: int  # which reconciliation of this connection (not an agent's work session)
    payload: bytes


@dataclass(frozen=True)
class Records:
    records: tuple[bytes, ...]


@dataclass(frozen=True)
class PeerExchange:
    peers: tuple[tuple[bytes, str], ...]


@dataclass(frozen=True)
class Ping:
    nonce: int


@dataclass(frozen=True)
class Pong:
    nonce: int


@dataclass(frozen=True)
class QueryMsg:
    payload: bytes


@dataclass(frozen=True)
class HitsMsg:
    payload: bytes


@dataclass(frozen=True)
class EchoMsg:
    payload: bytes  # a query-echo (p2pmem.protocol.wave); only to peers with "query-echo-v1"


@dataclass(frozen=True)
class Bye:
    reason: str


Message = Hello | Interest | Recon | Records | PeerExchange | Ping | Pong | QueryMsg | HitsMsg | Bye | EchoMsg

# Type 4 is reserved. It was `want` (records asked for by id); nothing sent it
# once reconciliation pushed what the peer lacks, so it was removed: a message
# of type 4 is now an unknown type like any other and closes the connection.
# Never reuse the number; the other types keep theirs.
T_HELLO, T_INTEREST, T_RECON, T_RECORDS, T_PEX = 0, 1, 2, 3, 5
T_PING, T_PONG, T_QUERY, T_HITS, T_BYE = 6, 7, 8, 9, 10
T_ECHO = 11


def encode(message: Message) -> bytes:
    """The bytes of one application message."""
    body: Any
    match message:
        case Hello():
            kind, body = T_HELLO, {
                0: message.version, 1: list(message.features), 2: message.agent,
                3: list(message.addresses), 4: message.replicate_all, 5: list(message.authors),
            }
        case Interest():
            kind, body = T_INTEREST, {0: message.replicate_all, 1: list(message.authors)}
        case Recon():
            kind, body = T_RECON, [message.recon_id, message.payload]
        case Records():
            kind, body = T_RECORDS, list(message.records)
        case PeerExchange():
            kind, body = T_PEX, [[agent, address] for agent, address in message.peers]
        case Ping():
            kind, body = T_PING, message.nonce
        case Pong():
            kind, body = T_PONG, message.nonce
        case QueryMsg():
            kind, body = T_QUERY, message.payload
        case HitsMsg():
            kind, body = T_HITS, message.payload
        case Bye():
            kind, body = T_BYE, message.reason
        case EchoMsg():
            kind, body = T_ECHO, message.payload
        case _:
            raise TypeError(f"not a wire message: {message!r}")
    return cbor2.dumps([kind, body], canonical=True)


_fields = Fields(WireError)  # the one typed-field reader (p2pmem/model/strict.py)


def _authors(value: Any) -> tuple[bytes, ...]:
    authors = _fields.array(value, "authors", limits.MAX_INTEREST_AUTHORS)
    return tuple(_fields.bytes_(a, "author", size=32) for a in authors)


def _texts(value: Any, what: str, max_items: int, max_chars: int) -> tuple[str, ...]:
    return tuple(_fields.text(v, what, max_chars=max_chars) for v in _fields.array(value, what + "s", max_items))


def decode(data: bytes) -> Message:
    """Parse one application message, or raise :class:`WireError`. Strict:
    the bytes must be the canonical encoding of what they say."""
    obj = _fields.loads(data, "message", max_size=limits.MAX_MESSAGE)
    if not isinstance(obj, list) or len(obj) != 2 or type(obj[0]) is not int:
        raise WireError("a message is [type, body]")
    kind, body = obj
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise WireError(f"unknown message type {kind}")
    return decoder(body)


def _hello(body: Any) -> Hello:
    m = _fields.map(body, "hello", range(6))
    return Hello(
        version=_fields.uint(m[0], "version"),
        features=_texts(m[1], "feature", limits.MAX_FEATURES, limits.MAX_FEATURE),
        agent=_fields.bytes_(m[2], "agent", size=32),
        addresses=_texts(m[3], "address", limits.MAX_ADDRESSES, limits.MAX_ADDRESS),
        replicate_all=_fields.boolean(m[4], "replicate"),
        authors=_authors(m[5]),
    )


def _interest(body: Any) -> Interest:
    m = _fields.map(body, "interest", range(2))
    return Interest(_fields.boolean(m[0], "replicate"), _authors(m[1]))


def _recon(body: Any) -> Recon:
    recon_id, payload = _fields.array(body, "recon", 2, length=2)
    return Recon(_fields.uint(recon_id, "recon id"), _fields.bytes_(payload, "payload", max_size=limits.MAX_MESSAGE))


def _records(body: Any) -> Records:
    raws = _fields.array(body, "records", limits.MAX_RECORDS_PER_MESSAGE)
    return Records(tuple(_fields.bytes_(r, "record", max_size=limits.MAX_RECORD) for r in raws))


def _pex(body: Any) -> PeerExchange:
    peers = []
    for entry in _fields.array(body, "peers", limits.MAX_PEER_EXCHANGE):
        agent, address = _fields.array(entry, "peer", 2, length=2)
        peers.append((_fields.bytes_(agent, "agent", size=32),
                      _fields.text(address, "address", max_chars=limits.MAX_ADDRESS)))
    return PeerExchange(tuple(peers))


_DECODERS: dict[int, Callable[[Any], Message]] = {
    T_HELLO: _hello,
    T_INTEREST: _interest,
    T_RECON: _recon,
    T_RECORDS: _records,
    T_PEX: _pex,
    T_PING: lambda body: Ping(_fields.uint(body, "nonce")),
    T_PONG: lambda body: Pong(_fields.uint(body, "nonce")),
    T_QUERY: lambda body: QueryMsg(_fields.bytes_(body, "query", max_size=limits.MAX_MESSAGE)),
    T_HITS: lambda body: HitsMsg(_fields.bytes_(body, "hits", max_size=limits.MAX_MESSAGE)),
    T_BYE: lambda body: Bye(_fields.text(body, "reason", max_chars=limits.MAX_BYE_REASON)),
    T_ECHO: lambda body: EchoMsg(_fields.bytes_(body, "echo", max_size=limits.MAX_MESSAGE)),
}
