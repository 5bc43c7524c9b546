"""Application messages carried inside a secure channel.

Each message is a CBOR array ``[type, body]`` (CDDL in docs/protocol.md).
Decoding is strict and bounded: anything unexpected raises
:class:`WireError`, and the peer's connection is closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from p2pmem import limits
from p2pmem.errors import P2pmemError

PROTOCOL_VERSION = 1
# "query-echo-v1": this node echoes queries (p2pmem.protocol.wave) and may be
# sent the query-echo message and a query with an echo budget (field 12).
FEATURES = ("reconcile-v1", "push", "pex", "query-v1", "messages", "query-echo-v1")
MAX_INTEREST_AUTHORS = 4096
MAX_FEATURES = 32


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


def _bytes(value: Any, what: str, size: int | None = None, max_size: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise WireError(f"{what} must be a byte string")
    if size is not None and len(value) != size:
        raise WireError(f"{what} must be {size} bytes")
    if max_size is not None and len(value) > max_size:
        raise WireError(f"{what} is over {max_size} bytes")
    return value


def _text(value: Any, what: str, max_size: int) -> str:
    if type(value) is not str or len(value) > max_size:
        raise WireError(f"{what} must be a text string of at most {max_size} characters")
    return value


def _list(value: Any, what: str, max_items: int) -> list[Any]:
    if not isinstance(value, list | tuple) or len(value) > max_items:
        raise WireError(f"{what} must be an array of at most {max_items} entries")
    return list(value)


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 64:
        raise WireError(f"{what} must be an unsigned 64-bit integer")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise WireError(f"{what} must be a boolean")
    return value


def _map(value: Any, what: str, keys: range) -> dict[int, Any]:
    if not isinstance(value, dict) or set(value) != set(keys):
        raise WireError(f"{what} must be a map with keys {list(keys)}")
    return value


def _authors(value: Any) -> tuple[bytes, ...]:
    return tuple(_bytes(a, "author", 32) for a in _list(value, "authors", MAX_INTEREST_AUTHORS))


def decode(data: bytes) -> Message:
    """Parse one application message, or raise :class:`WireError`."""
    if len(data) > limits.MAX_MESSAGE:
        raise WireError("message over the size limit")
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # every cbor2 failure means the same thing here
        raise WireError(f"malformed CBOR: {str(exc)[:80]}") from None
    if not isinstance(obj, list) or len(obj) != 2 or type(obj[0]) is not int:
        raise WireError("a message is [type, body]")
    kind, body = obj
    if kind == T_HELLO:
        m = _map(body, "hello", range(6))
        return Hello(
            version=_uint(m[0], "version"),
            features=tuple(_text(f, "feature", 64) for f in _list(m[1], "features", MAX_FEATURES)),
            agent=_bytes(m[2], "agent", 32),
            addresses=tuple(
                _text(a, "address", limits.MAX_ADDRESS) for a in _list(m[3], "addresses", limits.MAX_ADDRESSES)
            ),
            replicate_all=_bool(m[4], "replicate"),
            authors=_authors(m[5]),
        )
    if kind == T_INTEREST:
        m = _map(body, "interest", range(2))
        return Interest(_bool(m[0], "replicate"), _authors(m[1]))
    if kind == T_RECON:
        items = _list(body, "recon", 2)
        if len(items) != 2:
            raise WireError("recon is [recon id, payload]")
        return Recon(_uint(items[0], "recon id"), _bytes(items[1], "payload", max_size=limits.MAX_MESSAGE))
    if kind == T_RECORDS:
        raws = _list(body, "records", limits.MAX_RECORDS_PER_MESSAGE)
        return Records(tuple(_bytes(r, "record", max_size=limits.MAX_RECORD) for r in raws))
    if kind == T_PEX:
        peers = []
        for entry in _list(body, "peers", limits.MAX_PEER_EXCHANGE):
            pair = _list(entry, "peer", 2)
            if len(pair) != 2:
                raise WireError("a peer is [agent, address]")
            peers.append((_bytes(pair[0], "agent", 32), _text(pair[1], "address", limits.MAX_ADDRESS)))
        return PeerExchange(tuple(peers))
    if kind == T_PING:
        return Ping(_uint(body, "nonce"))
    if kind == T_PONG:
        return Pong(_uint(body, "nonce"))
    if kind == T_QUERY:
        return QueryMsg(_bytes(body, "query", max_size=limits.MAX_MESSAGE))
    if kind == T_HITS:
        return HitsMsg(_bytes(body, "hits", max_size=limits.MAX_MESSAGE))
    if kind == T_BYE:
        return Bye(_text(body, "reason", 256))
    if kind == T_ECHO:
        return EchoMsg(_bytes(body, "echo", max_size=limits.MAX_MESSAGE))
    raise WireError(f"unknown message type {kind}")
