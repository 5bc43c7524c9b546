"""The node's protocol core: sessions, gossip, reconciliation, membership and
queries as one sans-IO state machine.

The core never touches a socket, a clock or the global random generator. A
shell (the trio node in :mod:`p2pmem.node`, or the simulator) tells it what
happened — a connection was made, bytes arrived, a connection was lost, time
passed — with the current time as an argument, and carries out the actions it
asks for: :class:`Send`, :class:`Close`, :class:`Dial`. Every protocol
decision lives here, so a simulation drives exactly what a real node runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmem import limits, wire
from p2pmem.clock import HybridClock
from p2pmem.errors import P2pmemError
from p2pmem.identity import Identity, short_id
from p2pmem.noise import HandshakeComplete, MessageReceived, ProtocolError, SecureChannel
from p2pmem.query import QueryError, QueryRouter, VerifiedHit
from p2pmem.reconcile import ItemIndex, ReconcileError, Reconciler
from p2pmem.record import Record, admission_error
from p2pmem.scope import Interest, shared
from p2pmem.store import Store

log = logging.getLogger("p2pmem.core")

ConnId = int

# Timers (seconds). Tunable per node for simulations and tests.
KEEPALIVE_S = 5.0
DEAD_AFTER_S = 20.0
RESYNC_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
TARGET_PEERS = 8
PEX_INTERVAL_S = 15.0


@dataclass(frozen=True)
class Send:
    conn: ConnId
    data: bytes


@dataclass(frozen=True)
class Close:
    conn: ConnId
    reason: str


@dataclass(frozen=True)
class Dial:
    address: str
    expected: bytes | None


Action = Send | Close | Dial


@dataclass
class Timing:
    keepalive: float = KEEPALIVE_S
    dead_after: float = DEAD_AFTER_S
    resync: float = RESYNC_S
    backoff_base: float = BACKOFF_BASE_S
    backoff_max: float = BACKOFF_MAX_S
    target_peers: int = TARGET_PEERS
    max_peers: int = limits.MAX_ACTIVE_PEERS
    pex_interval: float = PEX_INTERVAL_S
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT_S


@dataclass
class _Address:
    """A dialable address and what we learnt of it."""

    address: str
    agent: bytes | None = None
    failures: int = 0
    next_attempt: float = 0.0
    bootstrap: bool = False
    is_self: bool = False
    dialing: bool = False


@dataclass
class Session:
    """One connection, from handshake to close."""

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
    recon: dict[int, Reconciler] = field(default_factory=dict)
    pushed: dict[int, set[bytes]] = field(default_factory=dict)  # recon id -> ids already sent
    next_recon_id: int = 0
    sent_records: int = 0
    received_records: int = 0
    closed: bool = False

    @property
    def interest(self) -> Interest | None:
        if self.hello is None:
            return None
        return Interest(self.hello.replicate_all, frozenset(self.hello.authors))


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
        store: Store,
        rng: random.Random,
        *,
        now: float,
        listen_addresses: Sequence[str] = (),
        bootstrap: Sequence[str] = (),
        replicate_all: bool = False,
        timing: Timing | None = None,
    ) -> None:
        self.identity = identity
        self.key = identity.public_key
        self.store = store
        self.rng = rng
        self.timing = timing or Timing()
        self.listen_addresses = tuple(listen_addresses)
        self.replicate_all = replicate_all
        self.clock = HybridClock(store.last_ts())
        self.router = QueryRouter(self.key, random.Random(rng.getrandbits(64)), sign=identity.sign)
        self.sessions: dict[ConnId, Session] = {}
        self.by_agent: dict[bytes, ConnId] = {}
        self.addresses: dict[str, _Address] = {}
        self.stats = Stats()
        self.started = now
        self._actions: list[Action] = []
        self._seen_rowid = store.max_rowid()
        self._indexes: dict[Interest, ItemIndex] = {}
        self._interest = self._compute_interest()
        self._pending_answers: dict[bytes, list[VerifiedHit]] = {}
        for address in bootstrap:
            self.addresses[address] = _Address(address, bootstrap=True)
        self._maintain(now)

    # -- the shell's side --------------------------------------------------
    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def connection_made(
        self, conn: ConnId, *, initiator: bool, now: float, address: str | None = None,
        expected: bytes | None = None,
    ) -> None:
        """A TCP connection is up (we dialled ``address``, or accepted)."""
        channel = SecureChannel(initiator, self.identity.signing_key, expected_peer=expected)
        session = Session(conn, channel, initiator, address, opened=now, last_heard=now)
        self.sessions[conn] = session
        if address is not None and address in self.addresses:
            self.addresses[address].dialing = False
        if initiator:
            self._send_raw(session, channel.initiate())

    def dial_failed(self, address: str, now: float, reason: str = "") -> None:
        entry = self.addresses.get(address)
        if entry is not None:
            entry.dialing = False
            self._backoff(entry, now)
        log.info("dial %s failed: %s", address, reason)

    def data_received(self, conn: ConnId, data: bytes, now: float) -> None:
        session = self.sessions.get(conn)
        if session is None or session.closed:
            return
        session.last_heard = now
        self.stats.bytes_in += len(data)
        try:
            session.channel.receive_data(data)
            while (event := session.channel.next_event()) is not None:
                if isinstance(event, HandshakeComplete):
                    self._handshake_complete(session, event.remote_identity, now)
                elif isinstance(event, MessageReceived):
                    self._dispatch(session, wire.decode(event.data), now)
                if session.closed:
                    return
        except (ProtocolError, wire.WireError, ReconcileError, QueryError) as exc:
            self.stats.protocol_errors += 1
            self._close(session, f"protocol error: {exc}", now)
        self._flush(session)

    def connection_lost(self, conn: ConnId, now: float) -> None:
        session = self.sessions.pop(conn, None)
        if session is None:
            return
        session.closed = True
        if session.remote is not None and self.by_agent.get(session.remote) == conn:
            del self.by_agent[session.remote]
        if session.address is not None and session.address in self.addresses:
            entry = self.addresses[session.address]
            entry.dialing = False
            if not session.ready:
                self._backoff(entry, now)
            else:
                entry.next_attempt = now + self.timing.backoff_base * (0.5 + self.rng.random())
        self._maintain(now)

    def next_deadline(self) -> float | None:
        # Only what handle_timer would act on: a deadline it leaves in the
        # past would have the shell call it again at once, in a busy loop.
        deadlines: list[float] = []
        for s in self.sessions.values():
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
        active = self._active_count()
        for entry in self.addresses.values():
            if self._room_for(entry, active) and self._dialable(entry):  # cheap test first
                deadlines.append(entry.next_attempt)
        router = self.router.next_deadline()
        if router is not None:
            deadlines.append(router)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for session in list(self.sessions.values()):
            if session.closed:
                continue
            if not session.ready:
                if now >= session.opened + self.timing.handshake_timeout:
                    self._close(session, "handshake timed out", now)
                continue
            if now >= session.last_heard + self.timing.dead_after:
                self._close(session, "peer silent for too long", now)
                continue
            if now >= session.last_heard + self.timing.keepalive and session.ping_sent is None:
                session.ping_sent = now
                self._send(session, wire.Ping(self.rng.getrandbits(32)))
            if now >= session.next_resync and session.initiator:
                self._start_sync(session, now)
            elif now >= session.next_resync:
                session.next_resync = now + self.timing.resync
            if now >= session.next_pex:
                self._send_pex(session, now)
        self.router.handle_timer(now)
        self._flush_router()
        self._maintain(now)
        self.flush_all()

    # -- local operations ---------------------------------------------------
    def local_records(self, records: Iterable[Record], now: float) -> None:
        """Records this node's agent just stored: push them at once."""
        records = list(records)
        for record in records:
            self._index_record(record)
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
        from p2pmem.record import decode_record

        found = 0
        while True:
            rows = self.store.rows_after(self._seen_rowid)
            if not rows:
                return found
            self._seen_rowid = rows[-1][0]
            records = [decode_record(raw, verify=False) for _, raw in rows
                       if not skip or hashlib.sha256(raw).digest() not in skip]
            if records:
                found += len(records)
                self.local_records(records, now)

    def start_query(self, text: str, *, now: float, **options: Any) -> bytes:
        """Ask the network; see :meth:`QueryRouter.start_query`."""
        neighbours = [s.remote for s in self.sessions.values() if s.ready and s.remote]
        qid = self.router.start_query(text, now=now, neighbours=neighbours, **options)
        self._flush_router()
        return qid

    def query_results(self, qid: bytes) -> list[VerifiedHit]:
        """Verified, de-duplicated hits of one of our queries so far."""
        return self.router.results(qid)  # verified by the router as they arrived

    def finish_query(self, qid: bytes) -> None:
        self.router.finish(qid)

    def ready_peers(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.ready]

    def status(self) -> dict[str, Any]:
        return {
            "id": self.key,
            "addresses": list(self.listen_addresses),
            "peers": len(self.ready_peers()),
            "connections": len(self.sessions),
            "known_addresses": len(self.addresses),
            "records": self.store.count(),
            "replicate": "all" if self.replicate_all else "follows",
            "stats": self.stats.__dict__.copy(),
            "queries": self.router.stats.__dict__.copy() if hasattr(self.router.stats, "__dict__") else {},
        }

    # -- sessions -------------------------------------------------------------
    def _handshake_complete(self, session: Session, remote: bytes, now: float) -> None:
        session.remote = remote
        if remote == self.key:
            if session.address in self.addresses:
                self.addresses[session.address].is_self = True
            self._close(session, "connected to itself", now)
            return
        other = self.by_agent.get(remote)
        if other is not None and other in self.sessions:
            # One connection per identity: both ends keep the one dialled by
            # the smaller key, so simultaneous dials settle the same way.
            # A reconnect in the same direction replaces the old connection.
            existing = self.sessions[other]
            if existing.initiator != session.initiator and existing.initiator == (self.key < remote):
                self._close(session, "duplicate connection", now)
                return
            self._close(existing, "duplicate connection", now)
        if not session.initiator and len(self.ready_peers()) >= self.timing.max_peers:
            self._close(session, "peer limit reached", now)
            return
        self.by_agent[remote] = session.conn
        if session.address is not None:
            entry = self.addresses.setdefault(session.address, _Address(session.address))
            entry.agent = remote
            entry.failures = 0
        self._send(session, self._hello())

    def _hello(self) -> wire.Hello:
        interest = self._interest
        authors = tuple(sorted(interest.authors))[: wire.MAX_INTEREST_AUTHORS]
        return wire.Hello(
            version=wire.PROTOCOL_VERSION, features=wire.FEATURES, agent=self.key,
            addresses=self.listen_addresses[: limits.MAX_ADDRESSES],
            replicate_all=interest.replicate_all, authors=authors,
        )

    def _dispatch(self, session: Session, message: wire.Message, now: float) -> None:
        if not session.ready and not isinstance(message, wire.Hello | wire.Bye):
            raise wire.WireError("expected hello first")
        match message:
            case wire.Hello():
                self._on_hello(session, message, now)
            case wire.Interest():
                session.hello = wire.Hello(
                    session.hello.version if session.hello else 1,
                    session.hello.features if session.hello else (),
                    session.remote or b"", session.hello.addresses if session.hello else (),
                    message.replicate_all, message.authors,
                )
                if session.initiator:
                    self._start_sync(session, now)
            case wire.Recon():
                self._on_recon(session, message, now)
            case wire.Records():
                self._on_records(session, message.records, now)
            case wire.Want():
                # Only what the peer's scope admits: never ask/private memories.
                scope = self._scope_with(session)
                raws = [
                    raw for raw, kind, author, visibility in self.store.scoped_raw(message.ids)
                    if scope.wants(kind, author, visibility)
                ]
                self._send_records(session, raws, now)
            case wire.PeerExchange():
                self._on_pex(message)
            case wire.Ping():
                self._send(session, wire.Pong(message.nonce))
            case wire.Pong():
                session.ping_sent = None
            case wire.QueryMsg():
                neighbours = [s.remote for s in self.ready_peers() if s.remote]
                self.router.receive_query(
                    session.remote, message.payload, now, neighbours, self._answer_query
                )
                self._flush_router()
            case wire.HitsMsg():
                self.router.receive_hits(session.remote, message.payload, now)
                self._flush_router()
            case wire.Bye():
                self._close(session, f"peer said bye: {message.reason}", now, send_bye=False)

    def _on_hello(self, session: Session, hello: wire.Hello, now: float) -> None:
        if session.ready:
            raise wire.WireError("second hello")
        if hello.agent != session.remote:
            raise wire.WireError("hello names another agent than the handshake proved")
        if hello.version != wire.PROTOCOL_VERSION:
            raise wire.WireError(f"unsupported protocol version {hello.version}")
        session.hello = hello
        session.ready = True
        session.ping_sent = None
        for address in hello.addresses:
            if address not in self.addresses and len(self.addresses) < limits.MAX_KNOWN_ADDRESSES:
                self.addresses[address] = _Address(address, agent=hello.agent)
        session.next_pex = now + self.timing.pex_interval * self.rng.random()
        session.next_resync = now + self.timing.resync
        log.info("peer %s ready (%s)", short_id(hello.agent), session.address or "incoming")
        if session.initiator:
            self._start_sync(session, now)
        self._send_pex(session, now)

    # -- replication ------------------------------------------------------------
    def _compute_interest(self) -> Interest:
        follows = {followee for follower, followee in self.store.follows() if follower == self.key}
        return Interest(self.replicate_all, frozenset({self.key} | follows))

    def _interest_changed(self, now: float) -> None:
        new = self._compute_interest()
        if new == self._interest:
            return
        self._interest = new
        self._indexes.clear()
        for session in self.ready_peers():
            self._send(session, wire.Interest(new.replicate_all, tuple(sorted(new.authors))))
            if session.initiator:
                self._start_sync(session, now)

    def _index_for(self, scope: Interest) -> ItemIndex:
        index = self._indexes.get(scope)
        if index is None:
            index = ItemIndex()
            for ts, record_id, kind, author, visibility in self.store.scan():
                if scope.wants(kind, author, visibility):
                    index.add(ts, record_id)
            if len(self._indexes) >= 64:  # bounded cache: interests rarely differ much
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[scope] = index
        return index

    def _index_record(self, record: Record) -> None:
        for scope, index in self._indexes.items():
            if scope.wants(record.kind, record.author, record.visibility) and (record.ts, record.id) not in index:
                index.add(record.ts, record.id)

    def _scope_with(self, session: Session) -> Interest:
        remote = session.interest
        assert remote is not None
        return shared(self._interest, remote)

    def _start_sync(self, session: Session, now: float) -> None:
        session.next_resync = now + self.timing.resync
        if session.recon:  # one reconciliation at a time per connection
            return
        session.next_recon_id += 1
        recon_id = session.next_recon_id
        reconciler = Reconciler(self._index_for(self._scope_with(session)))
        session.recon[recon_id] = reconciler
        session.pushed[recon_id] = set()
        self.stats.syncs += 1
        self._send(session, wire.Recon(recon_id, reconciler.start()))

    def _on_recon(self, session: Session, message: wire.Recon, now: float) -> None:
        self.stats.recon_messages += 1
        self.stats.recon_bytes += len(message.payload)
        reconciler = session.recon.get(message.session)
        if reconciler is None:
            if session.initiator:
                return  # a late reply to a session we already ended
            if len(session.recon) >= 2:
                raise wire.WireError("too many concurrent reconciliations")
            reconciler = Reconciler(self._index_for(self._scope_with(session)))
            session.recon[message.session] = reconciler
            session.pushed[message.session] = set()
        reply = reconciler.receive(message.payload)
        self._push_have(session, message.session, now)
        if reply is not None:
            self._send(session, wire.Recon(message.session, reply))
        if reconciler.done:
            session.recon.pop(message.session, None)
            session.pushed.pop(message.session, None)

    def _push_have(self, session: Session, recon_id: int, now: float) -> None:
        """Send the records reconciliation found the peer lacks: each side
        pushes its own ``have``, so no request round is needed."""
        pushed = session.pushed[recon_id]
        ids = session.recon[recon_id].have - pushed
        pushed |= ids
        if ids:
            scope = self._scope_with(session)
            # (ts, id) order, so a receiver's clock and indexes see them in order
            ordered = sorted(ids)
            raws = [
                raw for raw, kind, author, visibility in self.store.scoped_raw(ordered)
                if scope.wants(kind, author, visibility)
            ]
            self._send_records(session, raws, now)

    def _send_records(self, session: Session, raws: Sequence[bytes], now: float) -> None:
        batch: list[bytes] = []
        size = 0
        for raw in raws:
            if batch and (len(batch) >= limits.MAX_RECORDS_PER_MESSAGE or size + len(raw) > limits.MAX_MESSAGE - 4096):
                self._send(session, wire.Records(tuple(batch)))
                batch, size = [], 0
            batch.append(raw)
            size += len(raw) + 5
        if batch:
            self._send(session, wire.Records(tuple(batch)))
        session.sent_records += len(raws)
        self.stats.records_out += len(raws)

    def _on_records(self, session: Session, raws: Sequence[bytes], now: float) -> None:
        # Bytes whose hash we already store are that very record, verified on
        # the way in: skip them before paying for a signature check. Eager
        # push makes such duplicates common (about two per record per node).
        known = self.store.known_ids([hashlib.sha256(raw).digest() for raw in raws])
        if known:
            fresh = [raw for raw in raws if hashlib.sha256(raw).digest() not in known]
            self.stats.duplicates_skipped += len(raws) - len(fresh)
            raws = fresh
        decoded = self.store.decode_many(list(raws))
        accepted: list[Record] = []
        wall_ms = int(now * 1000)
        for item in decoded:
            if isinstance(item, P2pmemError):
                # A forged or broken record is a protocol violation: honest
                # nodes only forward what they verified.
                self.stats.records_rejected += 1
                raise wire.WireError(f"peer sent an invalid record: {item}")
            if not self._interest.wants(item.kind, item.author, item.visibility):
                continue  # out of our scope: not an error, just not kept
            if admission_error(item, wall_ms) is not None:  # the same check as `import`
                self.stats.records_rejected += 1
                continue
            self.clock.observe(item.ts, wall_ms, limits.MAX_FUTURE_SKEW_MS)
            accepted.append(item)
        result = self.store.ingest(accepted)
        session.received_records += len(raws)
        self.stats.records_in += len(result.added)
        if result.added:
            # Move past the rows just stored without losing any that a CLI
            # command of this home committed in between: those are ours to push.
            self.poll_store(now, skip=frozenset(r.id for r in result.added))
            for record in result.added:
                self._index_record(record)
            if any(r.kind == "follow" and r.author == self.key for r in result.added):
                self._interest_changed(now)
            self._push(result.added, exclude=session.conn, now=now)
            for record in result.added:
                if record.kind == "profile" and record.author in self._interest.authors:
                    self._learn_addresses(record)

    def _push(self, records: Sequence[Record], *, exclude: ConnId | None, now: float) -> None:
        """Eager push to every ready peer whose interest admits the record."""
        if not records:
            return
        for session in self.ready_peers():
            if session.conn == exclude:
                continue
            interest = session.interest
            assert interest is not None
            raws = [r.raw for r in records if interest.wants(r.kind, r.author, r.visibility)]
            if raws:
                self._send_records(session, raws, now)
                self._flush(session)

    def _answer_query(self, query: Any) -> list[bytes]:
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
        if not query.topics and query.since is None and query.until is None:
            # the knowledge graph's best entities too (p2pmem/graph; `graph ask`)
            from p2pmem.graph.ops import answer_records

            raws += answer_records(self.store, query.text, authors=authors, limit=min(query.limit, 10),
                                   max_records=max(0, limits.MAX_QUERY_HITS - len(raws)))
        return raws

    # -- membership -------------------------------------------------------------
    def _learn_addresses(self, profile: Record) -> None:
        """Dial the announced addresses of agents we follow."""
        if not isinstance(profile.body, dict):
            return
        for address in profile.body.get("addresses", ()):
            entry = self.addresses.get(address)
            if entry is None and len(self.addresses) < limits.MAX_KNOWN_ADDRESSES:
                self.addresses[address] = _Address(address, agent=profile.author)

    def _send_pex(self, session: Session, now: float) -> None:
        session.next_pex = now + self.timing.pex_interval
        peers = []
        for s in self.ready_peers():
            if s is session or s.hello is None or s.remote is None:
                continue
            for address in s.hello.addresses[:1]:
                peers.append((s.remote, address))
        self.rng.shuffle(peers)
        if peers:
            self._send(session, wire.PeerExchange(tuple(peers[: limits.MAX_PEER_EXCHANGE])))

    def _on_pex(self, message: wire.PeerExchange) -> None:
        for agent, address in message.peers:
            if agent == self.key or address in self.addresses:
                continue
            if len(self.addresses) >= limits.MAX_KNOWN_ADDRESSES:
                break
            self.addresses[address] = _Address(address, agent=agent)

    def _dialable(self, entry: _Address) -> bool:
        if entry.is_self or entry.dialing or entry.address in self.listen_addresses:
            return False
        if entry.agent is not None and (entry.agent == self.key or entry.agent in self.by_agent):
            return False
        return not any(s.address == entry.address for s in self.sessions.values())

    def _backoff(self, entry: _Address, now: float) -> None:
        entry.failures += 1
        delay = min(self.timing.backoff_max, self.timing.backoff_base * 2 ** min(entry.failures, 16))
        entry.next_attempt = now + delay * (0.5 + self.rng.random())  # jitter

    def _maintain(self, now: float) -> None:
        """Keep the active view filled: bootstrap peers and followed agents
        always, others until the target is reached."""
        active = self._active_count()
        candidates = [e for e in self.addresses.values() if self._dialable(e) and e.next_attempt <= now]
        candidates.sort(key=lambda e: (not e.bootstrap, not self._followed(e), e.failures, e.address))
        for entry in candidates:
            if not self._room_for(entry, active):
                break
            entry.dialing = True
            entry.next_attempt = now + self.timing.handshake_timeout
            active += 1
            self._actions.append(Dial(entry.address, entry.agent))

    def _active_count(self) -> int:
        """Connections plus dials in flight: counting only connections let
        every dial failure start one more dial, past the target."""
        return len(self.sessions) + sum(1 for e in self.addresses.values() if e.dialing)

    def _room_for(self, entry: _Address, active: int) -> bool:
        """Whether the active view has room to dial ``entry``."""
        must = entry.bootstrap or self._followed(entry)
        return active < self.timing.max_peers and (must or active < self.timing.target_peers)

    def _followed(self, entry: _Address) -> bool:
        return entry.agent is not None and entry.agent in self._interest.authors

    # -- output ---------------------------------------------------------------
    def _send(self, session: Session, message: wire.Message) -> None:
        if isinstance(message, wire.Recon):
            self.stats.recon_messages += 1
            self.stats.recon_bytes += len(message.payload)
        try:
            session.channel.send_message(wire.encode(message))
        except ProtocolError:
            return

    def _send_raw(self, session: Session, data: bytes) -> None:
        if data:
            self.stats.bytes_out += len(data)
            self._actions.append(Send(session.conn, data))

    def _flush(self, session: Session) -> None:
        if not session.closed:
            with contextlib.suppress(ProtocolError):
                self._send_raw(session, session.channel.data_to_send())

    def _flush_router(self) -> None:
        for peer, kind, data in self.router.take_outbox():
            conn = self.by_agent.get(peer)
            session = self.sessions.get(conn) if conn is not None else None
            if session is None or not session.ready:
                continue
            self._send(session, wire.QueryMsg(data) if kind == "query" else wire.HitsMsg(data))
            self._flush(session)

    def flush_all(self) -> None:
        for session in list(self.sessions.values()):
            self._flush(session)

    def _close(self, session: Session, reason: str, now: float, *, send_bye: bool = True) -> None:
        if session.closed:
            return
        if send_bye and session.channel.is_established:
            self._send(session, wire.Bye(reason[:200]))
            self._flush(session)
        session.closed = True
        log.info("closing connection %s (%s): %s", session.conn,
                 short_id(session.remote) if session.remote else "?", reason)
        self._actions.append(Close(session.conn, reason))
