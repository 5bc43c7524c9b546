"""Any sequence of wire messages from hostile peers leaves the sans-IO core's
memory and queues within the limits of p2pmem/limits.py (issue #11).

A hypothesis state machine drives one :class:`NodeCore` (as every shell
runs it: flow control, the ingest pipeline) through real Noise connections from several
attackers that send any mix of reconciliation messages (including the
7-byte "send me everything", in floods and paced within the reconciliation
rate limit), Interest, peer exchange, records, pings and stalled handshakes, while the shell writes out only what the test says
(a peer that never reads) and runs the ingest pipeline when the test says.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2pmem import limits
from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import sign_record
from p2pmem.protocol import wire
from p2pmem.protocol.actions import execute
from p2pmem.protocol.core import Close, Dial, NodeCore, run_ingest
from p2pmem.protocol.events import Event, IngestJob
from p2pmem.protocol.noise import HandshakeComplete, MessageReceived, SecureChannel
from p2pmem.storage.store import Store

BASE_MS = 1_700_000_000_000
T0 = BASE_MS / 1000 + 3600.0
EMPTY_ID_LIST = cbor2.dumps([1, [0, b"", 2, b""]], canonical=True)
# A little slower than the reconciliation starts a peer may make (a token each).
RECON_PACE_S = 1.05 / limits.RECON_STARTS_PER_S


def _ident(tag: str) -> Identity:
    return Identity.from_seeds(hashlib.sha256(b"ed" + tag.encode()).digest(),
                               hashlib.sha256(b"x" + tag.encode()).digest())


NODE = _ident("node")
STRANGER = _ident("stranger")
# The node's store: 400 public memories of ~600 bytes (~250 KB to amplify).
RECORDS = [sign_record(NODE, "memory", from_ms(BASE_MS + i), f"memory {i} " + "y" * 600) for i in range(400)]
STRANGER_RECORDS = [sign_record(STRANGER, "endorse", from_ms(BASE_MS + i), {"target": bytes(32), "what": "agent"})
                    for i in range(60)]
# What one handled message may add on top of a full send queue: a reconciliation
# reply, one batch of pushed records, and small control messages.
SLACK = 2 * limits.MAX_MESSAGE + 64 * 1024


class _Peer:
    def __init__(self, conn: int, identity: Identity) -> None:
        self.conn = conn
        self.identity = identity
        self.channel = SecureChannel(True, identity.signing_key)
        self.inbox = bytearray()  # bytes the core sent us and we did not read yet
        self.ready = False


class HostilePeers(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        self.now = T0
        self.store = Store(Path(":memory:"), verify_workers=1)
        self.store.ingest(RECORDS)
        rng = random.Random(seed)
        self.core = NodeCore(NODE, self.store, rng, router_rng=random.Random(rng.getrandbits(64)), now=self.now,
                             listen_addresses=["node.test:7000"], replicate_all=True)
        self.peers: dict[int, _Peer] = {}
        self.unsent: dict[int, int] = {}  # conn -> bytes the shell holds, not yet written
        self.jobs: list = []
        self.next_conn = 0
        self.closed: set[int] = set()
        self.rng = random.Random(seed)
        self.next_recon_id = 1_000_000  # above the ids recon_flood uses

    # -- the shell ----------------------------------------------------------------
    def _apply(self) -> None:
        execute(self.core, self)  # the shared executor; this machine is its Effects

    def send(self, conn: int, data: bytes) -> None:
        """Held by the shell until shell_writes: a peer that never reads."""
        self.unsent[conn] = self.unsent.get(conn, 0) + len(data)
        peer = self.peers.get(conn)
        if peer is not None:
            peer.inbox += data

    def close(self, action: Close) -> None:
        if action.conn not in self.closed:
            self.closed.add(action.conn)
            self.core.connection_lost(action.conn, self.now)
            self.peers.pop(action.conn, None)
            self.unsent.pop(action.conn, None)

    def dial(self, action: Dial) -> None:
        self.core.dial_failed(action.address, self.now, "no network here")

    def ingest(self, job: IngestJob) -> None:
        self.jobs.append(job)  # stored when shell_ingests says

    def event(self, event: Event) -> None:
        pass  # the bounds are read from the core itself

    def _connect(self, host: str, identity: Identity) -> _Peer:
        self.next_conn += 1
        peer = _Peer(self.next_conn, identity)
        self.peers[peer.conn] = peer
        self.core.connection_made(peer.conn, initiator=False, now=self.now, host=host)
        self._apply()
        return peer

    def _read(self, peer: _Peer) -> None:
        """The peer reads what it was sent (its side of the handshake)."""
        data, peer.inbox = bytes(peer.inbox), bytearray()
        if data and not peer.channel.closed:
            peer.channel.receive_data(data)
            while (event := peer.channel.next_event()) is not None:
                if isinstance(event, HandshakeComplete | MessageReceived):
                    pass

    def _feed(self, peer: _Peer, data: bytes) -> None:
        if peer.conn in self.closed or not data:
            return
        if not self.core.readable(peer.conn):
            return  # the shell does not read this peer now (backpressure)
        self.core.data_received(peer.conn, data, self.now, wall_ms=int(self.now * 1000))
        self._apply()
        while self.core.has_backlog(peer.conn):  # the shell's turns
            self.core.resume(peer.conn, self.now, wall_ms=int(self.now * 1000))
            self._apply()

    def _send(self, peer: _Peer, message: wire.Message | bytes) -> None:
        if peer.conn in self.closed or not peer.ready:
            return
        data = message if isinstance(message, bytes) else wire.encode(message)
        peer.channel.send_message(data)
        self._feed(peer, peer.channel.data_to_send())

    def _ready_peers(self) -> list[_Peer]:
        return [p for p in self.peers.values() if p.ready and p.conn not in self.closed]

    # -- attackers ------------------------------------------------------------------
    @rule(host=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
          replicate_all=st.booleans())
    def attacker_joins(self, host: str, replicate_all: bool) -> None:
        identity = _ident(f"attacker {self.next_conn}")
        peer = self._connect(host, identity)
        self._feed(peer, peer.channel.initiate())
        self._read(peer)
        if peer.conn in self.closed or peer.channel.remote_identity is None:
            return
        self._feed(peer, peer.channel.data_to_send())
        peer.ready = True
        self._send(peer, wire.Hello(wire.PROTOCOL_VERSION, wire.FEATURES, identity.public_key,
                                    ("127.0.0.1:1",), replicate_all, ()))

    @rule(host=st.sampled_from(["10.0.0.1", "10.0.0.9"]), n=st.integers(1, 40))
    def stalled_handshakes(self, host: str, n: int) -> None:
        for _ in range(n):
            self._connect(host, STRANGER)

    @precondition(lambda self: self._ready_peers())
    @rule(data=st.data(), count=st.integers(1, 50),
          payload=st.one_of(st.just(EMPTY_ID_LIST), st.binary(max_size=64)))
    def recon_flood(self, data, count: int, payload: bytes) -> None:
        peer = data.draw(st.sampled_from(self._ready_peers()))
        for recon_id in range(count):
            self._send(peer, wire.Recon(data.draw(st.integers(0, 5)) * 1000 + recon_id, payload))

    def _ask_for_everything_paced(self, peer: _Peer) -> None:
        """One more "send me everything" reconciliation, once the peer's
        reconciliation rate limit allows it: it is answered in one round (the
        store fits one reply) and makes the node owe the peer its whole
        store again, with nothing to close the connection for."""
        self.now += RECON_PACE_S
        self.core.handle_timer(self.now, wall_ms=int(self.now * 1000))
        self._apply()
        self.next_recon_id += 1
        self._send(peer, wire.Recon(self.next_recon_id, EMPTY_ID_LIST))

    @precondition(lambda self: self._ready_peers())
    @rule(data=st.data(), repeat=st.integers(1, 20))
    def paced_recon_flood(self, data, repeat: int) -> None:
        peer = data.draw(st.sampled_from(self._ready_peers()))
        for _ in range(repeat):
            self._ask_for_everything_paced(peer)

    @precondition(lambda self: self._ready_peers())
    @rule(data=st.data(), n=st.integers(0, 300), replicate_all=st.booleans())
    def interest_churn(self, data, n: int, replicate_all: bool) -> None:
        peer = data.draw(st.sampled_from(self._ready_peers()))
        authors = tuple(sorted({hashlib.sha256(b"a%d" % self.rng.getrandbits(32)).digest() for _ in range(n)}))
        self._send(peer, wire.Interest(replicate_all, authors))

    @precondition(lambda self: self._ready_peers())
    @rule(data=st.data(), messages=st.integers(1, 60))
    def pex_junk(self, data, messages: int) -> None:
        peer = data.draw(st.sampled_from(self._ready_peers()))
        for m in range(messages):
            entries = tuple((hashlib.sha256(b"p%d%d" % (m, i)).digest(), f"10.{m}.{i}.1:7000")
                            for i in range(limits.MAX_PEER_EXCHANGE))
            self._send(peer, wire.PeerExchange(entries))

    @precondition(lambda self: self._ready_peers())
    @rule(data=st.data(), start=st.integers(0, 59), size=st.integers(1, 60))
    def records(self, data, start: int, size: int) -> None:
        peer = data.draw(st.sampled_from(self._ready_peers()))
        raws = tuple(r.raw for r in STRANGER_RECORDS[start : start + size])
        if raws:
            self._send(peer, wire.Records(raws))

    @precondition(lambda self: self._ready_peers())
    @rule(data=st.data())
    def ping(self, data) -> None:
        self._send(data.draw(st.sampled_from(self._ready_peers())), wire.Ping(7))

    # -- the shell writes, ingests, time passes --------------------------------------------
    @rule(fraction=st.floats(0.0, 1.0))
    def shell_writes(self, fraction: float) -> None:
        for conn in list(self.unsent):
            n = int(self.unsent[conn] * fraction)
            if n:
                self.unsent[conn] -= n
                self.core.sent(conn, n, self.now, wall_ms=int(self.now * 1000))
        self._apply()

    @precondition(lambda self: self.jobs)
    @rule()
    def shell_ingests(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            self.core.ingest_done(job, run_ingest(self.store, job), self.now, wall_ms=int(self.now * 1000))
            self._apply()

    @rule(dt=st.floats(0.01, 30.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.core.handle_timer(self.now, wall_ms=int(self.now * 1000))
        self._apply()

    # -- the bounds -------------------------------------------------------------------
    @invariant()
    def queues_within_limits(self) -> None:
        for connection in self.core.connections.values():
            assert connection.queued <= limits.MAX_SEND_QUEUE + SLACK, connection.queued
            assert len(connection.peer_sync.push_pending) <= limits.MAX_PUSH_PENDING
            assert connection.ingest_pending <= limits.MAX_INGEST_PENDING + limits.MAX_MESSAGE
            assert len(connection.peer_sync.recon) <= limits.MAX_CONCURRENT_RECONS

    @invariant()
    def membership_within_limits(self) -> None:
        core = self.core
        assert len(core.addresses) <= limits.MAX_KNOWN_ADDRESSES
        unverified = [e for e in core.addresses.values() if not e.verified and not e.bootstrap]
        assert len(unverified) <= limits.MAX_UNVERIFIED_ADDRESSES
        by_source: dict = {}
        for e in unverified:
            by_source[e.source] = by_source.get(e.source, 0) + 1
        assert all(n <= limits.MAX_ADDRESSES_PER_SOURCE for n in by_source.values()), by_source
        pending = [s for s in core.connections.values() if not s.ready and not s.closed and not s.initiator]
        assert len(pending) <= limits.MAX_PENDING_HANDSHAKES
        assert all(n <= limits.MAX_PENDING_PER_HOST for n in core.admission.pending_hosts.values())
        assert len(core.admission.host_buckets) <= 4 * limits.MAX_PENDING_HANDSHAKES + 3

    @invariant()
    def backlog_bounded(self) -> None:
        # at most what one feed held: a test feed is one message, or a handshake
        for connection in self.core.connections.values():
            assert len(connection.backlog) <= 2

    @invariant()
    def indexes_bounded(self) -> None:
        assert len(self.core.catalogue.indexes) <= limits.MAX_CACHED_INDEXES


TestHostilePeers = HostilePeers.TestCase
TestHostilePeers.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)


def test_a_flood_fills_the_send_queue_up_to_its_limit_and_no_further():
    """The state machine's bounds are reached, not just respected: a peer
    that never reads gets its queue filled to the mark, then is not read."""
    machine = HostilePeers()
    machine.start(seed=1)
    machine.attacker_joins("10.0.0.1", True)
    peer = machine._ready_peers()[0]
    connection = machine.core.connections[peer.conn]
    assert connection.ready
    for i in range(8):
        machine._send(peer, wire.Recon(i + 1, EMPTY_ID_LIST))
    assert connection.queued > limits.SEND_QUEUE_LOW
    # 200 more, each allowed by the rate limit, each owing the whole store again
    for _ in range(200):
        machine._ask_for_everything_paced(peer)
        assert not connection.closed
        assert len(connection.peer_sync.push_pending) <= len(RECORDS)  # owed ids are de-duplicated
    assert connection.queued <= limits.MAX_SEND_QUEUE + SLACK
    assert not connection.peer_sync.recon  # each one was answered in one round
    machine.queues_within_limits()
    # pushes wait for the shell to write; then they resume
    machine.shell_writes(1.0)
    assert machine.core.readable(peer.conn)


@given(st.randoms(use_true_random=False), st.lists(st.integers(0, 320), max_size=5))
@settings(max_examples=10, deadline=None)
def test_quotas_are_confluent_whatever_the_order_and_batches(rng, cuts):
    """Two stores given a stranger's 300 endorsements (over the quota) in any
    order and any batches keep the very same survivors: the newest."""
    from p2pmem.model import quota

    records = STRANGER_MANY
    assert len(quota.kept(records)) == limits.MAX_ENDORSEMENTS_PER_AUTHOR
    stores = []
    for _ in range(2):
        shuffled = list(records)
        rng.shuffle(shuffled)
        store = Store(Path(":memory:"), verify_workers=1)
        bounds = sorted({c % (len(shuffled) + 1) for c in cuts} | {0, len(shuffled)})
        for a, b in zip(bounds, bounds[1:], strict=False):
            store.ingest(shuffled[a:b])
        stores.append(set(store.items()))
    newest = sorted(records, key=lambda r: (r.ts, r.id))[-limits.MAX_ENDORSEMENTS_PER_AUTHOR:]
    assert stores[0] == stores[1] == {(r.ts, r.id) for r in newest}


STRANGER_MANY = [sign_record(STRANGER, "endorse", from_ms(BASE_MS + i % 37, i), {"target": bytes(32), "what": "agent"})
                 for i in range(300)]
