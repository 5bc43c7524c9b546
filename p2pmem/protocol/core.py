"""The node's protocol core: the connections, and a router of inputs to the
sub-machines that decide — admission (:mod:`p2pmem.protocol.admission`),
membership (:mod:`p2pmem.protocol.membership`), replication
(:mod:`p2pmem.protocol.replication`) and queries
(:mod:`p2pmem.protocol.query`) — whose typed outputs it turns into its one
closed set of actions and events (docs/architecture.md, "The core as a
router of sub-machines").

The core never touches a socket, a clock or the global random generator. A
shell (the trio node in :mod:`p2pmem.node.shell`, or the simulator) tells it what
happened — a connection was made, bytes arrived, a connection was lost, time
passed — with a monotonic ``now`` and, where records may be admitted, the wall
clock in milliseconds (``wall_ms``) as arguments, and carries out the actions
it asks for and watches the events it reports (the closed set of
:mod:`p2pmem.protocol.events`). Randomness comes from the generators it is
given, Noise keys from the key source it is given. Every protocol decision
lives here, so a simulation drives exactly what a real node runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmem import limits
from p2pmem.logevents import LogEvent, log_event
from p2pmem.model.clock import HybridClock
from p2pmem.model.identity import Identity, short_id
from p2pmem.model.record import Record, record_id
from p2pmem.model.scope import ReplicationInterest, shared
from p2pmem.protocol import wire
from p2pmem.protocol.admission import Admission
from p2pmem.protocol.events import (
    Action,
    Close,
    CloseReason,
    ConnId,
    Dial,
    Ingest,
    IngestFinished,
    IngestJob,
    Output,
    PeerClosed,
    PeerReady,
    QueryFinished,
    RecordsStored,
    Send,
    describe,
)
from p2pmem.protocol.ingest import IngestOutcome, record_stored, run_ingest, screen_ingest
from p2pmem.protocol.membership import Connected, Membership
from p2pmem.protocol.noise import HandshakeComplete, MessageReceived, ProtocolError, SecureChannel
from p2pmem.protocol.ports import KeySource, Rng, StorePort
from p2pmem.protocol.query import Answered, QueryError, QueryRouter, VerifiedHit
from p2pmem.protocol.reconcile import ItemIndex, ReconcileError
from p2pmem.protocol.replication import Catalogue, PeerSync, RelayBudget, recipient
from p2pmem.protocol.timing import BACKOFF_MAX_S, DEAD_AFTER_S, KEEPALIVE_S, RESYNC_S, Timing
from p2pmem.protocol.wave import ECHO_FEATURE

log = logging.getLogger("p2pmem.protocol.core")
_ROUTER_MESSAGES = {"query": wire.QueryMsg, "hits": wire.HitsMsg, "echo": wire.EchoMsg}

__all__ = [  # the actions live in p2pmem.protocol.events; re-exported for the shells
    "Action", "Close", "CloseReason", "ConnId", "Dial", "Ingest", "IngestJob", "IngestOutcome",
    "NodeCore", "Send", "Timing", "record_stored", "run_ingest", "screen_ingest",
    "BACKOFF_MAX_S", "DEAD_AFTER_S", "KEEPALIVE_S", "RESYNC_S",  # protocol/timing.py's, as before
]

@dataclass
class Connection:
    """One connection to a peer, from handshake to close."""

    conn: ConnId
    channel: SecureChannel
    initiator: bool
    address: str | None
    opened: float
    last_heard: float
    remote: bytes | None = None
    hello: wire.Hello | None = None
    ready: bool = False
    ping_sent: float | None = None
    next_resync: float = 0.0
    next_pex: float = 0.0
    sent_records: int = 0
    received_records: int = 0
    closed: bool = False
    superseded: bool = False  # closed as a duplicate of another connection to the same identity
    host: str | None = None  # the remote IP of an incoming connection
    queued: int = 0  # bytes handed to the shell and not yet written (flow control)
    ingest_pending: int = 0  # bytes of received records in the ingest pipeline
    sync: PeerSync | None = None  # replication with this peer (p2pmem.protocol.replication)
    backlog: deque[Any] = field(default_factory=deque)  # received events not handled yet

    @property
    def peer_sync(self) -> PeerSync:
        assert self.sync is not None
        return self.sync

    @property
    def interest(self) -> ReplicationInterest | None:
        return self.peer_sync.interest


@dataclass
class Stats:
    records_in: int = 0
    records_out: int = 0
    records_rejected: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    syncs: int = 0
    duplicates_skipped: int = 0  # records received that we already held
    recon_messages: int = 0  # reconciliation messages sent and received
    recon_bytes: int = 0
    protocol_errors: int = 0


class NodeCore:
    """Everything a node decides, with no I/O."""

    def __init__(
        self,
        identity: Identity,
        store: StorePort,
        rng: Rng,
        *,
        router_rng: Rng,
        now: float,
        listen_addresses: Sequence[str] = (),
        bootstrap: Sequence[str] = (),
        replicate_all: bool = False,
        timing: Timing | None = None,
        key_source: KeySource | None = None,
    ) -> None:
        """Every shell runs the same paths: it reports written bytes with
        :meth:`sent`, stops reading a connection while :meth:`readable` is
        false, calls :meth:`resume` while :meth:`has_backlog` holds, and
        verifies and stores received records beside the loop (:class:`Ingest`
        actions, then :meth:`ingest_done`). ``rng`` and ``router_rng`` (two
        independent streams, the second for the query router) are seeded by
        the shell, as ``store`` is opened by it (p2pmem.protocol.ports).
        ``key_source`` makes the X25519 keys of every Noise handshake
        (default: the OS's randomness; the simulator passes a seeded one so
        a run replays byte for byte). ``now`` here and in every input is
        monotonic seconds: timers, deadlines and rate buckets only."""
        self.identity = identity
        self.key_source = key_source
        self.stopping = False  # shutdown() was called: no new connections, no dials
        # The wall clock (ms) of the input being handled: record admission and
        # the HLC only, never a timer (inputs that may admit records set it).
        self._wall_ms = 0
        # name -> how many times that limit bit (status --json "limits")
        self.limited: dict[str, int] = {}
        self._inflight: set[bytes] = set()  # ids of records in the ingest pipeline
        self.admission = Admission(self.limited, now)
        self._next_interest_at = now  # our own Interest messages are coalesced
        self._interest_dirty = False
        self.key = identity.public_key
        self.store = store
        self.rng = rng
        self.timing = timing or Timing()
        self.listen_addresses = tuple(listen_addresses)
        self.replicate_all = replicate_all
        self.clock = HybridClock(store.last_ts())
        self.router = QueryRouter(self.key, router_rng, sign=identity.sign)
        self.connections: dict[ConnId, Connection] = {}
        self.by_agent: dict[bytes, ConnId] = {}
        self.stats = Stats()
        self.started = now
        self._actions: list[Output] = []
        self._seen_rowid = store.max_rowid()
        self.catalogue = Catalogue(store)
        self.relay = RelayBudget(self.key, self.limited)
        self._interest = self._compute_interest()
        self.membership = Membership(self.key, rng, self.timing, self.limited, now,
                                     listen_addresses=self.listen_addresses, bootstrap=bootstrap)
        self.membership.follows = self._interest.authors
        self._maintain(now)

    @property
    def addresses(self) -> dict[str, Any]:
        """The address book (p2pmem.protocol.membership), for status and tests."""
        return self.membership.addresses

    def _bite(self, name: str, n: int = 1) -> None:
        """Count a limit that refused, delayed or dropped something."""
        self.limited[name] = self.limited.get(name, 0) + n

    # -- the shell's side --------------------------------------------------
    def take_actions(self) -> list[Output]:
        """The actions to carry out and the events that happened since the
        last call, in order (p2pmem.protocol.events)."""
        actions, self._actions = self._actions, []
        return actions

    def shutdown(self, now: float) -> None:
        """Say goodbye to every peer (:attr:`CloseReason.SHUTDOWN`) and open
        nothing new from here on: no dial, and an incoming connection is
        closed at once."""
        self.stopping = True
        for connection in list(self.connections.values()):
            self._close(connection, CloseReason.SHUTDOWN, now)

    def connection_made(
        self, conn: ConnId, *, initiator: bool, now: float, address: str | None = None,
        expected: bytes | None = None, host: str | None = None,
    ) -> None:
        """A TCP connection is up (we dialled ``address``, or accepted one
        from the remote IP ``host``)."""
        channel = SecureChannel(initiator, self.identity.signing_key, expected_peer=expected,
                                key_source=self.key_source)
        connection = Connection(conn, channel, initiator, address, opened=now, last_heard=now)
        connection.sync = PeerSync.new(self.limited, self.timing.push_rate, now)
        self.connections[conn] = connection
        self.membership.connected(address)
        if self.stopping:
            self._close(connection, CloseReason.SHUTDOWN, now, quiet=True)
            return
        if initiator:
            self._send_raw(connection, channel.initiate())
            return
        if not self._admit(connection, host, now):
            return

    def _admit(self, connection: Connection, host: str | None, now: float) -> bool:
        """Carry out admission's verdict on an incoming connection."""
        pending = [(s.opened, s.conn) for s in self.connections.values()
                   if not s.ready and not s.closed and not s.initiator and s is not connection]
        verdict = self.admission.admit(host, now, pending)
        if verdict.refuse is not None:
            self._close(connection, verdict.refuse, now, quiet=True)
            return False
        if verdict.evict is not None:
            self._close(self.connections[verdict.evict], CloseReason.HANDSHAKE_EVICTED, now, quiet=True)
        connection.host = host
        return True

    def _unpend(self, connection: Connection) -> None:
        """The connection's handshake is over (done or closed): free its slot."""
        if connection.host is not None:
            self.admission.release(connection.host)
            connection.host = None

    def dial_failed(self, address: str, now: float, reason: str = "") -> None:
        self.membership.dial_failed(address, now, reason)

    def data_received(self, conn: ConnId, data: bytes, now: float, *, wall_ms: int) -> None:
        """Bytes arrived on ``conn``."""
        self._wall_ms = wall_ms
        connection = self.connections.get(conn)
        if connection is None or connection.closed:
            return
        connection.last_heard = now
        self.stats.bytes_in += len(data)
        try:
            connection.channel.receive_data(data)
        except ProtocolError as exc:
            self.stats.protocol_errors += 1
            self._close(connection, CloseReason.PROTOCOL_ERROR, now, detail=str(exc))
            return
        while (event := connection.channel.next_event()) is not None:
            connection.backlog.append(event)
        self._pump(connection, now)
        self._flush(connection)

    def _pump(self, connection: Connection, now: float) -> None:
        """Handle the connection's received messages until none is left, the
        turn's work budget is spent (limits.WORK_PER_TURN: the shell lets
        other tasks run, then calls :meth:`resume`), or the peer has filled
        its queues: then messages wait in the backlog (at most one read's
        worth) and the shell stops reading the peer (:meth:`readable`) until
        the pressure is relieved."""
        work = 0
        backlog = connection.backlog
        try:
            while backlog and not connection.closed:
                if work >= limits.WORK_PER_TURN or self._pressured(connection):
                    return
                event = backlog.popleft()
                if isinstance(event, HandshakeComplete):
                    self._handshake_complete(connection, event.remote_identity, now)
                    work += limits.EXPENSIVE_MESSAGE_COST
                elif isinstance(event, MessageReceived):
                    message = wire.decode(event.data)
                    expensive = isinstance(message, wire.Recon | wire.Interest | wire.QueryMsg)
                    work += limits.EXPENSIVE_MESSAGE_COST if expensive else 1
                    self._dispatch(connection, message, now)
        except (ProtocolError, wire.WireError, ReconcileError, QueryError) as exc:
            self.stats.protocol_errors += 1
            self._close(connection, CloseReason.PROTOCOL_ERROR, now, detail=str(exc))
        if connection.closed:
            backlog.clear()

    def has_backlog(self, conn: ConnId) -> bool:
        """Whether received messages of ``conn`` wait to be handled and may
        be now (the shell then yields once and calls :meth:`resume`)."""
        connection = self.connections.get(conn)
        return (connection is not None and not connection.closed and bool(connection.backlog)
                and self.readable(conn))

    def resume(self, conn: ConnId, now: float, *, wall_ms: int) -> None:
        """Handle the next turn of ``conn``'s backlog."""
        self._wall_ms = wall_ms
        connection = self.connections.get(conn)
        if connection is not None and not connection.closed:
            self._pump(connection, now)
            self._flush(connection)

    def _pressured(self, connection: Connection) -> bool:
        if connection.queued >= limits.MAX_SEND_QUEUE:
            self._bite("send_queue_full")
            return True
        if connection.ingest_pending >= limits.MAX_INGEST_PENDING:
            self._bite("ingest_pending_full")
            return True
        if connection.peer_sync.owes_too_much():
            self._bite("push_pending_full")
            return True
        return False

    def readable(self, conn: ConnId) -> bool:
        """Whether the shell should read more from ``conn`` now. False while
        the peer's queues are full: a peer we cannot write to, or whose
        records are still being stored, is not read from."""
        connection = self.connections.get(conn)
        if connection is None or connection.closed:
            return True  # let the shell notice the end of the stream
        return not (
            connection.queued >= limits.MAX_SEND_QUEUE
            or connection.ingest_pending >= limits.MAX_INGEST_PENDING
            or connection.peer_sync.owes_too_much()
        )

    def sent(self, conn: ConnId, nbytes: int, now: float, *, wall_ms: int) -> None:
        """The shell wrote ``nbytes`` of this connection's queued data."""
        self._wall_ms = wall_ms
        connection = self.connections.get(conn)
        if connection is None:
            return
        connection.queued = max(0, connection.queued - nbytes)
        if not connection.closed and connection.queued < limits.SEND_QUEUE_LOW:
            self._relieve(connection, now)

    def _relieve(self, connection: Connection, now: float) -> None:
        """Room again: push what we owe, then handle waiting messages."""
        self._drain(connection, now)
        self._pump(connection, now)
        self._flush(connection)

    def ingest_done(self, job: IngestJob, outcome: IngestOutcome, now: float, *, wall_ms: int) -> None:
        """The shell ran an :class:`Ingest` job."""
        self._wall_ms = wall_ms
        self._inflight.difference_update(job.ids)
        connection = self.connections.get(job.conn)
        if connection is not None:
            connection.ingest_pending = max(0, connection.ingest_pending - job.size)
        for record in outcome.added:
            self.clock.observe(record.ts, max(wall_ms, job.wall_ms), limits.MAX_FUTURE_SKEW_MS)
        try:
            self._ingested(job.conn, connection, job, outcome, now)
        except wire.WireError as exc:
            if connection is not None:
                self.stats.protocol_errors += 1
                self._close(connection, CloseReason.PROTOCOL_ERROR, now, detail=str(exc))
        if connection is not None and not connection.closed:
            self._relieve(connection, now)
        self.flush_all()

    def connection_lost(self, conn: ConnId, now: float) -> None:
        connection = self.connections.pop(conn, None)
        if connection is None:
            return
        if not connection.closed:
            self._actions.append(PeerClosed(conn, connection.remote, CloseReason.CONNECTION_LOST,
                                            was_ready=connection.ready))
        connection.closed = True
        self._unpend(connection)
        if connection.remote is not None and self.by_agent.get(connection.remote) == conn:
            del self.by_agent[connection.remote]
        # a duplicate is no failure: the identity is connected
        self.membership.lost(connection.address, now, failed=not connection.ready and not connection.superseded)
        self._maintain(now)

    def next_deadline(self) -> float | None:
        # Only what handle_timer would act on: a deadline it leaves in the
        # past would have the shell call it again at once, in a busy loop.
        deadlines: list[float] = []
        for s in self.connections.values():
            if s.closed:
                continue  # waiting for the shell's connection_lost
            if not s.ready:
                deadlines.append(s.opened + self.timing.handshake_timeout)
                continue
            if s.ping_sent is None:
                deadlines.append(s.last_heard + self.timing.keepalive)
            deadlines.append(s.last_heard + self.timing.dead_after)
            deadlines.append(s.next_resync)
            deadlines.append(s.next_pex)
            if s.peer_sync.push_pending and s.queued < limits.SEND_QUEUE_LOW:
                deadlines.append(s.peer_sync.push_bucket.ready_at())
        if self._interest_dirty:
            deadlines.append(self._next_interest_at)
        dial = None if self.stopping else self.membership.next_deadline(self._connected())  # no dial once shut down
        if dial is not None:
            deadlines.append(dial)
        router = self.router.next_deadline()
        if router is not None:
            deadlines.append(router)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float, *, wall_ms: int) -> None:
        """Time passed: keep-alives, timeouts, resyncs, dials, query deadlines."""
        self._wall_ms = wall_ms
        for connection in list(self.connections.values()):
            if connection.closed:
                continue
            if not connection.ready:
                if now >= connection.opened + self.timing.handshake_timeout:
                    self._close(connection, CloseReason.HANDSHAKE_TIMEOUT, now)
                continue
            if now >= connection.last_heard + self.timing.dead_after:
                self._close(connection, CloseReason.PEER_SILENT, now)
                continue
            if (now >= connection.last_heard + self.timing.keepalive
                    and connection.ping_sent is None):
                connection.ping_sent = now
                self._send(connection, wire.Ping(self.rng.getrandbits(32)))
            if now >= connection.next_resync and connection.initiator:
                self._start_sync(connection, now)
            elif now >= connection.next_resync:
                connection.next_resync = now + self.timing.resync
            if now >= connection.next_pex:
                self._send_pex(connection, now)
            if connection.peer_sync.push_pending:
                self._relieve(connection, now)
        if self._interest_dirty and now >= self._next_interest_at:
            self._interest_changed(now)
        self.router.handle_timer(now)  # finished queries come out of _flush_router
        self._flush_router()
        self._maintain(now)
        self.flush_all()

    # -- local operations ---------------------------------------------------
    def local_records(self, records: Iterable[Record], now: float) -> None:
        """Records this node's agent just stored: push them at once."""
        records = list(records)
        for record in records:
            self.catalogue.add(record)
        # A new interest goes out before the follow record itself: a peer that
        # has the follow has then also heard what we now want pushed.
        if any(r.kind == "follow" and r.author == self.key for r in records):
            self._interest_changed(now)
        self._push(records, exclude=None, now=now)
        self.flush_all()

    def poll_store(self, now: float, *, skip: frozenset[bytes] = frozenset()) -> int:
        """Pick up records another process of this home stored (the CLI
        writes to the store and pokes the node); returns how many. Records
        whose id is in ``skip`` (the node stored them itself) are passed over."""
        from p2pmem.model.record import decode_record

        if self._inflight:
            skip = skip | self._inflight  # the ingest pipeline's own writes
        found = 0
        while True:
            rows = self.store.ids_after(self._seen_rowid)
            if not rows:
                return found
            self._seen_rowid = rows[-1][0]
            fresh = [rid for _, rid in rows if rid not in skip]
            records = [decode_record(raw, verify=False) for raw in self.store.raws_of(fresh)] if fresh else []
            if records:
                found += len(records)
                self.local_records(records, now)

    def start_query(self, text: str, *, now: float, **options: Any) -> bytes:
        """Ask the network; see :meth:`QueryRouter.start_query`."""
        neighbours = [s.remote for s in self.connections.values() if s.ready and s.remote]
        qid = self.router.start_query(text, now=now, neighbours=neighbours, echo_peers=self._echo_peers(),
                                      **options)
        self._flush_router()
        return qid

    def query_results(self, qid: bytes) -> list[VerifiedHit]:
        """Verified, de-duplicated hits of one of our queries so far."""
        return self.router.results(qid)  # verified by the router as they arrived

    def query_collection(self, qid: bytes) -> tuple[int, tuple[int, ...]]:
        """Collection statistics the echoes of one of our queries summed."""
        return self.router.collection(qid)

    def query_context(self, qid: bytes) -> list[Any]:
        """Verified context records of one of our queries' answers (ranking)."""
        return self.router.context(qid)

    def query_summary(self, qid: bytes) -> dict[str, Any]:
        """How one of our queries went: nodes reached, complete, elapsed."""
        return self.router.summary(qid)

    def finish_query(self, qid: bytes) -> None:
        self.router.finish(qid)

    def ready_peers(self) -> list[Connection]:
        return [s for s in self.connections.values() if s.ready]

    def status(self, now: float) -> dict[str, Any]:
        """What the node reports of itself (``p2pmem status``), at ``now``."""
        return {
            "id": self.key,
            "uptime_s": round(now - self.started, 1),
            "addresses": list(self.listen_addresses),
            "peers": len(self.ready_peers()),
            "connections": len(self.connections),
            "known_addresses": len(self.addresses),
            "records": self.store.count(),
            "replicate": "all" if self.replicate_all else "follows",
            "stats": self.stats.__dict__.copy(),
            # how many times each limit of p2pmem.limits bit (docs/threat-model.md)
            "limits": dict(sorted(self.limited.items())),
            "queues": {
                "send_bytes": sum(s.queued for s in self.connections.values()),
                "push_pending": sum(len(s.peer_sync.push_pending) for s in self.connections.values()),
                "ingest_bytes": sum(s.ingest_pending for s in self.connections.values()),
                "pending_handshakes": self.admission.pending(),
            },
            "queries": {**dataclasses.asdict(self.router.stats), "in_flight": self.router.in_flight(now)},
        }

    def peers(self) -> list[dict[str, Any]]:
        """The ready peers (``p2pmem peers``): agent key, address, direction
        and records each way."""
        out = []
        for connection in self.ready_peers():
            hello = connection.hello
            advertised = hello.addresses[0] if hello is not None and hello.addresses else None
            out.append({
                "agent": connection.remote,
                "address": connection.address or advertised,
                "direction": "out" if connection.initiator else "in",
                "records_sent": connection.sent_records,
                "records_received": connection.received_records,
            })
        return out

    # -- connections ----------------------------------------------------------
    def _handshake_complete(self, connection: Connection, remote: bytes, now: float) -> None:
        connection.remote = remote
        if remote == self.key:
            self.membership.is_self(connection.address)
            self._close(connection, CloseReason.SELF_CONNECTION, now)
            return
        # The handshake proved who listens at the address we dialled, whatever
        # happens to this connection next: bound to that identity, the address
        # is not dialled again while the identity is connected (issue 16: the
        # loser of the tie-break below redialled it every back-off period).
        self.membership.proven(connection.address, remote)
        other = self.by_agent.get(remote)
        if other is not None and other in self.connections:
            # One connection per identity: both ends keep the one dialled by
            # the smaller key, so simultaneous dials settle the same way.
            # A reconnect in the same direction replaces the old connection.
            existing = self.connections[other]
            if (existing.initiator != connection.initiator
                    and existing.initiator == (self.key < remote)):
                connection.superseded = True
                self._close(connection, CloseReason.DUPLICATE, now)
                return
            existing.superseded = True
            self._close(existing, CloseReason.DUPLICATE, now)
        if not connection.initiator and len(self.ready_peers()) >= self.timing.max_peers and not self._evict_for_newcomer(now):
            self._bite("peer_limit")
            self._close(connection, CloseReason.PEER_LIMIT, now)
            return
        self.by_agent[remote] = connection.conn
        self._send(connection, self._hello())

    def _evict_for_newcomer(self, now: float) -> bool:
        """Make room for a newcomer by closing the incoming peer membership
        picks (:meth:`Membership.evict_for_newcomer`); False if none."""
        incoming = [(s.conn, s.remote) for s in self.ready_peers() if not s.initiator and s.remote is not None]
        victim = self.membership.evict_for_newcomer(incoming, now)
        if victim is None:
            return False
        self._close(self.connections[victim], CloseReason.EVICTED, now)
        return True

    def _hello(self) -> wire.Hello:
        interest = self._interest
        authors = tuple(sorted(interest.authors))[: limits.MAX_INTEREST_AUTHORS]
        return wire.Hello(
            version=wire.PROTOCOL_VERSION, features=wire.FEATURES, agent=self.key,
            addresses=self.listen_addresses[: limits.MAX_ADDRESSES],
            replicate_all=interest.replicate_all, authors=authors,
        )

    def _dispatch(self, connection: Connection, message: wire.Message, now: float) -> None:
        if not connection.ready and not isinstance(message, wire.Hello | wire.Bye):
            raise wire.WireError("expected hello first")
        match message:
            case wire.Hello():
                self._on_hello(connection, message, now)
            case wire.Interest():
                connection.peer_sync.change_interest(message.replicate_all, message.authors, now)
                if connection.initiator:
                    self._start_sync(connection, now)
            case wire.Recon():
                self._on_recon(connection, message, now)
            case wire.Records():
                self._on_records(connection, message.records, now)
            case wire.PeerExchange():
                self._on_pex(connection, message)
            case wire.Ping():
                self._send(connection, wire.Pong(message.nonce))
            case wire.Pong():
                connection.ping_sent = None
            case wire.QueryMsg():
                neighbours = [s.remote for s in self.ready_peers() if s.remote]
                self.router.receive_query(
                    connection.remote, message.payload, now, neighbours, self._answer_query,
                    self._echo_peers(),
                )
                self._flush_router()
            case wire.EchoMsg():
                self.router.receive_echo(connection.remote, message.payload, now)
                self._flush_router()
            case wire.HitsMsg():
                self.router.receive_hits(connection.remote, message.payload, now)
                self._flush_router()
            case wire.Bye():
                self._close(connection, CloseReason.PEER_BYE, now, detail=message.reason,
                            send_bye=False)

    def _on_hello(self, connection: Connection, hello: wire.Hello, now: float) -> None:
        if connection.ready:
            raise wire.WireError("second hello")
        if hello.agent != connection.remote:
            raise wire.WireError("hello names another agent than the handshake proved")
        if hello.version != wire.PROTOCOL_VERSION:
            raise wire.WireError(f"unsupported protocol version {hello.version}")
        connection.hello = hello
        connection.peer_sync.interest = ReplicationInterest(hello.replicate_all, frozenset(hello.authors))
        connection.ready = True
        connection.ping_sent = None
        self._unpend(connection)
        self.membership.learn_all(hello.addresses, hello.agent)
        connection.next_pex = now + self.timing.pex_interval * self.rng.random()
        connection.next_resync = now + self.timing.resync
        log_event(log, logging.INFO, LogEvent.PEER_READY,
                  f"peer {short_id(hello.agent)} ready ({connection.address or 'incoming'})",
                  peer=short_id(hello.agent), addr=connection.address, conn=connection.conn)
        self._actions.append(PeerReady(connection.conn, hello.agent, connection.address,
                                       connection.initiator))
        if connection.initiator:
            self._start_sync(connection, now)
        self._send_pex(connection, now)

    # -- replication ------------------------------------------------------------
    def _compute_interest(self) -> ReplicationInterest:
        follows = {followee for follower, followee in self.store.follows() if follower == self.key}
        return ReplicationInterest(self.replicate_all, frozenset({self.key} | follows))

    def _interest_changed(self, now: float) -> None:
        new = self._compute_interest()
        if new != self._interest:
            self._interest = new
            self.membership.follows = new.authors
            self.catalogue.interest_changed()
            self._interest_dirty = True
        if not self._interest_dirty:
            return
        if now < self._next_interest_at:
            return  # coalesced: sent by handle_timer (peers rate-limit Interest)
        self._interest_dirty = False
        self._next_interest_at = now + limits.INTEREST_MIN_INTERVAL_S
        for connection in self.ready_peers():
            self._send(connection, wire.Interest(new.replicate_all, tuple(sorted(new.authors))))
            if connection.initiator:
                self._start_sync(connection, now)

    def _scope_with(self, connection: Connection) -> ReplicationInterest:
        remote = connection.interest
        assert remote is not None
        return shared(self._interest, remote)

    def _index_with(self, connection: Connection) -> Callable[[], ItemIndex]:
        return lambda: self.catalogue.index_for(self._scope_with(connection))

    def _start_sync(self, connection: Connection, now: float) -> None:
        connection.next_resync = now + self.timing.resync
        start = connection.peer_sync.start(self._index_with(connection))
        if start is not None:
            self.stats.syncs += 1
            self._send(connection, wire.Recon(start.recon_id, start.payload))

    def _on_recon(self, connection: Connection, message: wire.Recon, now: float) -> None:
        """Each side pushes its own ``have`` (what the peer lacks), so no
        request round is needed: the records go out before the reply."""
        self.stats.recon_messages += 1
        self.stats.recon_bytes += len(message.payload)
        step = connection.peer_sync.receive(message.recon_id, message.payload, self._index_with(connection),
                                            initiator=connection.initiator, now=now)
        if step is None:
            return  # a late reply to a reconciliation we already ended
        if step.owed:
            connection.peer_sync.owe(step.owed)
            self._drain(connection, now)
        if step.reply is not None:
            self._send(connection, wire.Recon(step.recon_id, step.reply))

    def _drain(self, connection: Connection, now: float) -> None:
        """Push owed records while the send queue has room and the peer's
        push budget (bytes per second) allows. A message over its recipient's
        relay budget is not sent: it is no longer owed, and the next
        reconciliation finds it again."""
        sync = connection.peer_sync
        pending, bucket = sync.push_pending, sync.push_bucket
        batches = 0
        while pending and connection.ready and not connection.closed:
            if connection.queued >= limits.SEND_QUEUE_LOW or batches >= limits.PUSH_BATCHES_PER_TURN:
                return  # sent() resumes
            if not bucket.ready(now):
                self._bite("push_rate")
                return  # next_deadline() resumes
            batch = sync.take_owed()
            scope = self._scope_with(connection)
            raws: list[bytes] = []
            withheld = 0
            for raw, kind, author, visibility, target in self.store.scoped_raw(batch):
                if not scope.wants(kind, author, visibility):
                    continue
                if self.relay.allows(kind, author, target, len(raw), now):
                    raws.append(raw)
                else:
                    withheld += 1
            if withheld:
                self._bite("message_relay_budget", withheld)
            if raws:
                bucket.spend(now, sum(len(raw) for raw in raws))
                self._send_records(connection, raws, now)
                # counted in connection.queued now, not at the end of the turn:
                # the mark above must see this batch before the next one
                self._flush(connection)
                batches += 1  # with flow control, sent() tops the queue up

    def _send_records(self, connection: Connection, raws: Sequence[bytes], now: float) -> None:
        batch: list[bytes] = []
        size = 0
        for raw in raws:
            if batch and (len(batch) >= limits.MAX_RECORDS_PER_MESSAGE or size + len(raw) > limits.RECORDS_MESSAGE_BYTES):
                self._send(connection, wire.Records(tuple(batch)))
                batch, size = [], 0
            batch.append(raw)
            size += len(raw) + 5
        if batch:
            self._send(connection, wire.Records(tuple(batch)))
        connection.sent_records += len(raws)
        self.stats.records_out += len(raws)

    def _on_records(self, connection: Connection, raws: Sequence[bytes], now: float) -> None:
        # Bytes whose hash we already store (or are storing) are that very
        # record, verified on the way in: skip them before paying for a
        # signature check. Eager push makes such duplicates common (about two
        # per record per node).
        ids = [record_id(raw) for raw in raws]
        known = self.store.known_ids(ids)
        if self._inflight:
            known |= self._inflight.intersection(ids)
        if known:
            pairs = [(i, raw) for i, raw in zip(ids, raws, strict=True) if i not in known]
            self.stats.duplicates_skipped += len(raws) - len(pairs)
        else:
            pairs = list(zip(ids, raws, strict=True))
        if not pairs:
            connection.received_records += len(raws)
            self._actions.append(IngestFinished(connection.conn, len(raws), known=len(raws)))
            return
        wall_ms = self._wall_ms
        job = IngestJob(connection.conn, tuple(raw for _, raw in pairs),
                        frozenset(i for i, _ in pairs), self._interest, wall_ms,
                        known=len(raws) - len(pairs))
        connection.received_records += job.known
        connection.ingest_pending += job.size
        self._inflight.update(job.ids)
        self._actions.append(Ingest(job))

    def _ingested(self, conn: ConnId, connection: Connection | None, job: IngestJob,
                  outcome: IngestOutcome, now: float) -> None:
        """What follows a stored ingest job: indexes, interest, eager push."""
        added = outcome.added
        self._actions.append(IngestFinished(
            conn, job.known + len(job.raws), known=job.known, offered=outcome.offered,
            duplicates=outcome.duplicates, added=len(added), rejected=outcome.skipped_future,
            error=outcome.error,
        ))
        if added and outcome.error is None:
            self._actions.append(RecordsStored(conn, tuple(r.id for r in added)))
        if outcome.error is not None:
            # A forged or broken record is a protocol violation: honest
            # nodes only forward what they verified.
            self.stats.records_rejected += 1
            raise wire.WireError(f"peer sent an invalid record: {outcome.error}")
        self.stats.records_rejected += outcome.skipped_future
        if outcome.evicted:
            self._bite("quota_evicted", outcome.evicted)
        if connection is not None:
            connection.received_records += len(job.raws)
        self.stats.records_in += len(added)
        if added:
            # Move past the rows just stored without losing any that a CLI
            # command of this home committed in between: those are ours to push.
            self.poll_store(now, skip=frozenset(r.id for r in added))
            for record in added:
                self.catalogue.add(record)
            if any(r.kind == "follow" and r.author == self.key for r in added):
                self._interest_changed(now)
            self._push(added, exclude=connection.conn if connection is not None else None, now=now)
            for record in added:
                if record.kind == "profile" and record.author in self._interest.authors:
                    self._learn_addresses(record)  # dial the agents we follow

    def _push(self, records: Sequence[Record], *, exclude: ConnId | None, now: float) -> None:
        """Eager push to every ready peer whose interest admits the record
        (a message within its recipient's relay budget: reconciliation
        delivers the others later)."""
        if not records:
            return
        for connection in self.ready_peers():
            if connection.conn == exclude:
                continue
            interest = connection.interest
            assert interest is not None
            wanted = [r for r in records if interest.wants(r.kind, r.author, r.visibility)]
            if not wanted:
                continue
            if connection.queued >= limits.SEND_QUEUE_LOW:
                # a peer that does not keep up gets them by reconciliation
                self._bite("eager_push_skipped", len(wanted))
                continue
            raws = [r.raw for r in wanted
                    if self.relay.allows(r.kind, r.author, recipient(r), len(r.raw), now)]
            if len(raws) < len(wanted):
                self._bite("message_relay_budget", len(wanted) - len(raws))
            if not raws:
                continue
            connection.peer_sync.push_bucket.spend(now, sum(len(raw) for raw in raws))
            self._send_records(connection, raws, now)
            self._flush(connection)

    def _answer_query(self, query: Any) -> Answered:
        """Answer a flooded query from the local store: public and ``ask``
        memories, never private ones."""
        authors = list(query.authors)
        if query.target is not None:
            if authors and query.target not in authors:
                return []
            authors = [query.target]
        found = self.store.recall(
            query.text, since=query.since, until=query.until, topics=query.topics,
            authors=authors, visibilities=("public", "ask"),
            limit=min(query.limit, limits.MAX_QUERY_HITS), fresh=False,
        )
        raws = [m.record.raw for m in found]
        context: dict[bytes, list[bytes]] = {}
        if query.echo_ms is not None and found:  # an asker that ranks with context (query.py)
            around = self.store.session_context([m.ranked.rid for m in found if m.ranked is not None], query.text)
            context = {m.record.raw: around.get(m.ranked.rid, []) for m in found if m.ranked is not None}
        if not query.topics and query.since is None and query.until is None:
            # the knowledge graph's best entities too (p2pmem/graph; `graph ask`)
            raws += self.store.graph_answers(query.text, authors=authors, limit=min(query.limit, 10),
                                             max_records=max(0, limits.MAX_QUERY_HITS - len(raws)))
        stats = self.store.collection_stats(query.text) if query.echo_ms is not None else None
        return Answered(raws, context, stats)

    # -- membership -------------------------------------------------------------
    def _learn_addresses(self, profile: Record) -> None:
        if isinstance(profile.body, dict):
            self.membership.learn_all(profile.body.get("addresses", ()), profile.author)

    def _send_pex(self, connection: Connection, now: float) -> None:
        connection.next_pex = now + self.timing.pex_interval
        peers = []
        for s in self.ready_peers():
            if s is connection or s.hello is None or s.remote is None:
                continue
            for address in s.hello.addresses[:1]:
                peers.append((s.remote, address))
        offered = self.membership.offer(peers)
        if offered:
            self._send(connection, wire.PeerExchange(offered))

    def _on_pex(self, connection: Connection, message: wire.PeerExchange) -> None:
        for agent, address in message.peers:
            self.membership.learn(address, agent, source=connection.remote)

    def _connected(self) -> Connected:
        return Connected(len(self.connections), self.by_agent,
                         {s.address for s in self.connections.values() if s.address is not None})

    def _maintain(self, now: float) -> None:
        """Carry out membership's dials (none once shut down)."""
        if self.stopping:
            return
        for dial in self.membership.maintain(now, self._connected()):
            self._actions.append(Dial(dial.address, dial.agent))

    # -- output ---------------------------------------------------------------
    def _send(self, connection: Connection, message: wire.Message) -> None:
        if isinstance(message, wire.Recon):
            self.stats.recon_messages += 1
            self.stats.recon_bytes += len(message.payload)
        try:
            connection.channel.send_message(wire.encode(message))
        except ProtocolError:
            return

    def _send_raw(self, connection: Connection, data: bytes) -> None:
        if data:
            self.stats.bytes_out += len(data)
            connection.queued += len(data)
            self._actions.append(Send(connection.conn, data))

    def _flush(self, connection: Connection) -> None:
        if not connection.closed:
            with contextlib.suppress(ProtocolError):
                self._send_raw(connection, connection.channel.data_to_send())

    def _flush_router(self) -> None:
        for peer, kind, data in self.router.take_outbox():
            conn = self.by_agent.get(peer)
            connection = self.connections.get(conn) if conn is not None else None
            if connection is None or not connection.ready:
                continue
            message = _ROUTER_MESSAGES[kind](data)
            self._send(connection, message)
            self._flush(connection)
        for qid in self.router.take_finished():  # by its echoes, or at its deadline
            self._actions.append(QueryFinished(qid, tuple(self.router.results(qid))))

    def _echo_peers(self) -> set[bytes]:
        """The ready peers that echo queries (p2pmem.protocol.wave)."""
        return {s.remote for s in self.ready_peers()
                if s.remote and s.hello is not None and ECHO_FEATURE in s.hello.features}

    def flush_all(self) -> None:
        for connection in list(self.connections.values()):
            self._flush(connection)

    def _close(
        self, connection: Connection, reason: CloseReason, now: float, *, detail: str = "",
        send_bye: bool = True, quiet: bool = False,
    ) -> None:
        if connection.closed:
            return
        text = describe(reason, detail)
        if send_bye and connection.channel.is_established:
            self._send(connection, wire.Bye(text[: limits.MAX_BYE_REASON]))
            self._flush(connection)
        connection.closed = True
        self._unpend(connection)
        connection.peer_sync.forget_owed()
        if not quiet:
            peer = short_id(connection.remote) if connection.remote else None
            log_event(log, logging.INFO, LogEvent.PEER_CLOSED,
                      f"closing connection {connection.conn} ({peer or '?'}): {text}", peer=peer,
                      addr=connection.address, conn=connection.conn, reason=reason.value, detail=detail or None)
        self._actions.append(Close(connection.conn, reason, detail))
        self._actions.append(PeerClosed(connection.conn, connection.remote, reason, detail,
                                        was_ready=connection.ready))
