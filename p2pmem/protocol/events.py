"""The closed sets of what goes into :class:`p2pmem.protocol.core.NodeCore`
and what comes out of it.

Inputs are the core's public methods (listed in :data:`INPUTS`); each takes a
monotonic ``now`` (seconds, for timers, deadlines and rate buckets) and,
where records may be admitted or stamped, the wall clock in milliseconds
``wall_ms`` as its own argument (the hybrid logical clock and the "too far in
the future" check). The two clocks are never mixed.

Outputs come from :meth:`NodeCore.take_actions`, in order, as one queue of
frozen dataclasses:

* :data:`Action` — what the shell must carry out: :class:`Send` bytes,
  :class:`Close` a connection, :class:`Dial` an address, :class:`Ingest`
  records beside the event loop (then call ``ingest_done``).
* :data:`Event` — what happened, for the shell to report or wait on:
  :class:`PeerReady`, :class:`PeerClosed`, :class:`RecordsStored`,
  :class:`IngestFinished`, :class:`QueryFinished`.

A shell that does not care about an event ignores it; it never has to read
the core's internals or parse a reason string to learn any of this.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

from p2pmem.model.scope import ReplicationInterest

ConnId = int


class CloseReason(enum.Enum):
    """Why the core closes (or lost) a connection. The value is the text a
    node has always logged and sent in its ``bye`` (the wire carries text:
    ``str(close)`` is ``value`` or ``value: detail``)."""

    PROTOCOL_ERROR = "protocol error"  # hostile or broken input, handshake included
    HANDSHAKE_TIMEOUT = "handshake timed out"
    PEER_SILENT = "peer silent for too long"  # keep-alive timeout
    PEER_BYE = "peer said bye"  # the peer closed, telling us why (detail)
    DUPLICATE = "duplicate connection"  # one connection per identity
    SELF_CONNECTION = "connected to itself"
    PEER_LIMIT = "peer limit reached"
    EVICTED = "evicted to let a newcomer in"
    HANDSHAKE_EVICTED = "handshake evicted by a newer one"
    HANDSHAKE_RATE = "too many connections"  # total incoming handshakes per second
    HOST_RATE = "too many connections from this address"
    HOST_PENDING = "too many pending handshakes from this address"
    SHUTDOWN = "node stopping"
    CONNECTION_LOST = "connection lost"  # the shell saw the stream end (PeerClosed only)

    @property
    def is_protocol_error(self) -> bool:
        return self is CloseReason.PROTOCOL_ERROR

    @property
    def is_limit(self) -> bool:
        """A defence of docs/threat-model.md refused the connection."""
        return self in (CloseReason.PEER_LIMIT, CloseReason.EVICTED, CloseReason.HANDSHAKE_EVICTED,
                        CloseReason.HANDSHAKE_RATE, CloseReason.HOST_RATE, CloseReason.HOST_PENDING)


def describe(reason: CloseReason, detail: str = "") -> str:
    """The human text of a close: what is logged and said in ``bye``."""
    return f"{reason.value}: {detail}" if detail else reason.value


# -- actions: the shell carries them out ---------------------------------------------


@dataclass(frozen=True)
class Send:
    """Write ``data`` to connection ``conn`` (in order)."""

    conn: ConnId
    data: bytes


@dataclass(frozen=True)
class Close:
    """Close ``conn`` once what was sent before is written. ``detail`` is
    for logs only (an exception's text, the peer's bye)."""

    conn: ConnId
    reason: CloseReason
    detail: str = ""

    def __str__(self) -> str:
        return describe(self.reason, self.detail)


@dataclass(frozen=True)
class Dial:
    """Open a connection to ``address``; ``expected`` is the agent key the
    handshake must prove, when known. Then ``connection_made(initiator=True)``
    or ``dial_failed``."""

    address: str
    expected: bytes | None


@dataclass(frozen=True)
class IngestJob:
    """Records received from ``conn`` to verify and store beside the event
    loop. ``interest`` and ``wall_ms`` are the core's filter when the job was
    made: out-of-scope records and records stamped too far ahead are dropped."""

    conn: ConnId
    raws: tuple[bytes, ...]
    ids: frozenset[bytes]
    interest: ReplicationInterest
    wall_ms: int
    known: int = 0  # records of the same message skipped as already held

    @functools.cached_property
    def size(self) -> int:
        """Bytes of records (the core's per-peer ingest budget counts them)."""
        return sum(len(raw) for raw in self.raws)


@dataclass(frozen=True)
class Ingest:
    """Run :func:`p2pmem.protocol.core.run_ingest` on ``job`` off the event
    loop, then call :meth:`NodeCore.ingest_done` (every shell: the trio
    node's pipeline, the simulator's virtual one, the test harnesses)."""

    job: IngestJob


Action = Send | Close | Dial | Ingest


# -- events: what happened ------------------------------------------------------------------


@dataclass(frozen=True)
class PeerReady:
    """A connection finished its handshake and hello: ``agent`` is a peer."""

    conn: ConnId
    agent: bytes
    address: str | None  # the address we dialled; None for an incoming connection
    initiator: bool


@dataclass(frozen=True)
class PeerClosed:
    """A connection ended (every connection, ready or not, ends exactly once).
    ``agent`` is None when the handshake never proved who it was."""

    conn: ConnId
    agent: bytes | None
    reason: CloseReason
    detail: str = ""
    was_ready: bool = False


@dataclass(frozen=True)
class RecordsStored:
    """Records received from ``conn`` were verified and stored (new ones
    only), in storage order."""

    conn: ConnId
    ids: tuple[bytes, ...]

    @property
    def count(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class IngestFinished:
    """One ``records`` message from ``conn`` has been dealt with: of its
    ``received`` records, ``known`` were already held (skipped before any
    check), ``offered`` passed verification, scope and clock checks and went
    to the store, which found ``duplicates`` of those already there and
    ``added`` new. ``rejected`` were stamped too far in the future. With
    ``error`` set the sender misbehaved (the connection is being closed)."""

    conn: ConnId
    received: int
    known: int = 0
    offered: int = 0
    duplicates: int = 0
    added: int = 0
    rejected: int = 0
    error: str | None = None


@dataclass(frozen=True)
class QueryFinished:
    """An own query's deadline passed: these are its verified hits
    (:class:`p2pmem.protocol.query.VerifiedHit`). Its state lingers until
    ``finish_query`` (or the router's linger time)."""

    qid: bytes
    hits: tuple[Any, ...]


Event = PeerReady | PeerClosed | RecordsStored | IngestFinished | QueryFinished
Output = Action | Event

#: The core's inputs, all public methods of NodeCore (the shell calls nothing else
#: that changes state).
INPUTS = (
    "connection_made", "data_received", "connection_lost", "dial_failed", "sent", "resume",
    "ingest_done", "handle_timer", "local_records", "poll_store", "start_query", "finish_query",
    "shutdown",
)
