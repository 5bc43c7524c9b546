"""The sans-IO node core (p2pmem.protocol.core) on an in-memory network and virtual
time: replication, scope, hostile peers and membership, in one process.

:class:`SimNet` is a third shell around :class:`NodeCore` (after the trio node
and the simulator): it turns ``Dial`` into a pair of connection ids (or a
failed dial), carries ``Send`` bytes to the other end in order, turns
``Close`` into ``connection_lost`` on both ends (after the bytes already
sent, as TCP does), and moves a virtual clock from one ``next_deadline()`` to
the next, calling ``handle_timer``. Which connection delivers next is chosen
by a seeded random generator, so interleavings vary and every run replays.
Every record is a real signed record and every connection a real Noise
handshake.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from p2pmem import limits
from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import VISIBILITIES, Record, sign_record
from p2pmem.model.scope import ReplicationInterest, shared, travels
from p2pmem.protocol import wire
from p2pmem.protocol.actions import execute
from p2pmem.protocol.core import Close, Dial, NodeCore, Send, Timing, run_ingest
from p2pmem.protocol.events import (
    CloseReason,
    IngestFinished,
    IngestJob,
    PeerClosed,
    PeerReady,
    QueryFinished,
    RecordsStored,
)
from p2pmem.protocol.noise import HandshakeComplete, MessageReceived, SecureChannel
from p2pmem.storage.store import Store

BASE_MS = 1_700_000_000_000  # records are stamped from here on
T0 = BASE_MS / 1000 + 3600.0  # virtual time starts an hour later
POOL = 5
# A reconciliation message that says "I hold nothing, send me all you have":
# one IdList range covering everything, with no ids.
EMPTY_ID_LIST = cbor2.dumps([1, [0, b"", 2, b""]], canonical=True)


def ident(index: int) -> Identity:
    import hashlib

    return Identity.from_seeds(
        hashlib.sha256(b"test_core ed %d" % index).digest(),
        hashlib.sha256(b"test_core x %d" % index).digest(),
    )


IDENTS = [ident(i) for i in range(POOL)]
KEYS = [i.public_key for i in IDENTS]


def addr(i: int) -> str:
    return f"node{i}.test:7000"


# --- the in-memory network ------------------------------------------------------


@dataclass
class _End:
    node: int
    peer: int | None  # the other end's connection id; None for a test-driven raw end


class _Effects:
    """SimNet's effects for node ``i`` (p2pmem.protocol.actions.Effects):
    bytes go to the other end's inbox and count as written at once, records
    are stored at once, a dial connects at once or fails."""

    def __init__(self, net: SimNet, i: int) -> None:
        self.net, self.i = net, i

    def send(self, conn: int, data: bytes) -> None:
        self.net._send(self.i, conn, data)

    def close(self, action: Close) -> None:
        self.net._close(self.i, action)

    def dial(self, action: Dial) -> None:
        self.net._dial(self.i, action)

    def ingest(self, job: IngestJob) -> None:
        self.net._ingest(self.i, job)

    def event(self, event: object) -> None:
        self.net.events.append((self.net.now, self.i, event))


class SimNet:
    """Cores joined by virtual TCP connections, on a virtual clock."""

    MAX_STEPS = 500_000

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.now = T0
        self.cores: dict[int, NodeCore] = {}
        self.stores: dict[int, Store] = {}
        self.addresses: dict[str, int] = {}
        self.blocked: set[frozenset[int]] = set()
        self.frozen: set[int] = set()
        self.ends: dict[int, _End] = {}
        self.inbox: dict[int, deque[bytes | None]] = {}  # per receiving conn; None is FIN
        self.raw_out: dict[int, bytearray] = {}
        self.raw_closed: dict[int, str] = {}
        self.dials: list[tuple[float, int, str, bool]] = []  # (time, node, address, connected)
        self.closes: list[tuple[float, int, str]] = []
        self.events: list[tuple[float, int, object]] = []  # the cores' events (p2pmem.protocol.events)
        self._next_conn = 0

    @property
    def wall_ms(self) -> int:
        """The wall clock the cores see: the same virtual instant as ``now``."""
        return int(self.now * 1000)

    # -- nodes -------------------------------------------------------------
    def add(
        self, i: int, *, records: list[Record] = (), bootstrap: list[int] = (),
        replicate_all: bool = True, timing: Timing | None = None, extra_bootstrap: list[str] = (),
        drain: bool = True,
    ) -> NodeCore:
        store = self.stores.get(i) or Store(Path(":memory:"), verify_workers=1)
        self.stores[i] = store
        if records:
            store.ingest(records)
        self.addresses[addr(i)] = i
        rng = random.Random(self.rng.getrandbits(64))
        core = NodeCore(
            IDENTS[i], store, rng, router_rng=random.Random(rng.getrandbits(64)), now=self.now,
            listen_addresses=[addr(i)], bootstrap=[*(addr(b) for b in bootstrap), *extra_bootstrap],
            replicate_all=replicate_all, timing=timing,
        )
        self.cores[i] = core
        if drain:
            self.drain()
        return core

    def crash(self, i: int) -> None:
        """The node's process dies: its connections break, its store stays."""
        for conn, end in list(self.ends.items()):
            if end.node == i:
                self._break(conn)
        del self.cores[i]

    def remember(self, i: int, text: str, visibility: str = "public") -> Record:
        core = self.cores[i]
        record = sign_record(IDENTS[i], "memory", core.clock.now(int(self.now * 1000)), text,
                             visibility=visibility)
        core.store.ingest([record])
        core.local_records([record], self.now)
        self.drain()
        self.settle()
        return record

    # -- links -----------------------------------------------------------------
    def _new_conn(self, node: int, peer: int | None) -> int:
        self._next_conn += 1
        self.ends[self._next_conn] = _End(node, peer)
        self.inbox[self._next_conn] = deque()
        return self._next_conn

    def _reachable(self, src: int, dst: int) -> bool:
        return dst in self.cores and frozenset((src, dst)) not in self.blocked

    def _break(self, conn: int) -> None:
        """Both ends of a connection learn at once that it is gone (a reset)."""
        end = self.ends.pop(conn, None)
        if end is None:
            return
        self.inbox.pop(conn, None)
        if end.node in self.cores:
            self.cores[end.node].connection_lost(conn, self.now)
        if end.peer is not None:
            self._break(end.peer)

    def block(self, a: int, b: int) -> None:
        """Partition a from b: their connections break, dials between them fail."""
        self.blocked.add(frozenset((a, b)))
        for conn, end in list(self.ends.items()):
            if end.peer is not None and conn in self.ends:
                other = self.ends.get(end.peer)
                if other is not None and {end.node, other.node} == {a, b}:
                    self._break(conn)
        self.drain()

    def unblock(self, a: int, b: int) -> None:
        self.blocked.discard(frozenset((a, b)))

    def links(self) -> set[frozenset[int]]:
        """Pairs of distinct nodes with a connection ready at both ends."""
        out = set()
        for i, core in self.cores.items():
            for s in core.ready_peers():
                if s.closed or s.remote is None:
                    continue
                j = KEYS.index(s.remote)
                other = self.cores.get(j)
                if other is None:
                    continue
                peer_conn = self.ends.get(s.conn)
                if peer_conn is None or peer_conn.peer is None:
                    continue
                back = other.connections.get(peer_conn.peer)
                if back is not None and back.ready and not back.closed:
                    out.add(frozenset((i, j)))
        return out

    def connected(self) -> bool:
        nodes = set(self.cores)
        if not nodes:
            return True
        seen, todo = set(), [min(nodes)]
        links = self.links()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo += [m for pair in links if n in pair for m in pair if m != n]
        return seen == nodes

    # -- actions ---------------------------------------------------------------
    def drain(self) -> None:
        """Carry out every action of every core until none is left (the
        shared executor, p2pmem/protocol/actions.py), resuming backlogs."""
        progress = True
        while progress:
            progress = False
            for i, core in list(self.cores.items()):
                if execute(core, _Effects(self, i)):
                    progress = True
                for conn, end in list(self.ends.items()):
                    if end.node == i and i in self.cores and core.has_backlog(conn):
                        core.resume(conn, self.now, wall_ms=self.wall_ms)
                        progress = True

    def _send(self, i: int, conn: int, data: bytes) -> None:
        end = self.ends.get(conn)
        if end is None:
            return
        if end.peer is None:
            self.raw_out.setdefault(conn, bytearray()).extend(data)
        elif end.peer in self.inbox:
            self.inbox[end.peer].append(data)
        self.cores[i].sent(conn, len(data), self.now, wall_ms=self.wall_ms)

    def _close(self, i: int, action: Close) -> None:
        self.closes.append((self.now, i, str(action)))
        end = self.ends.pop(action.conn, None)
        if end is None:
            return
        self.inbox.pop(action.conn, None)
        if end.peer is None:
            self.raw_closed[action.conn] = str(action)
        elif end.peer in self.inbox:
            self.inbox[end.peer].append(None)  # FIN after the bytes already sent
        self.cores[i].connection_lost(action.conn, self.now)

    def _dial(self, i: int, action: Dial) -> None:
        core = self.cores[i]
        target = self.addresses.get(action.address)
        ok = target is not None and self._reachable(i, target)
        self.dials.append((self.now, i, action.address, ok))
        if not ok:
            core.dial_failed(action.address, self.now, "connection refused")
            return
        assert target is not None
        mine = self._new_conn(i, None)
        theirs = self._new_conn(target, mine)
        self.ends[mine].peer = theirs
        core.connection_made(mine, initiator=True, now=self.now, address=action.address,
                             expected=action.expected)
        self.cores[target].connection_made(theirs, initiator=False, now=self.now)

    def _ingest(self, i: int, job: IngestJob) -> None:
        core = self.cores[i]
        core.ingest_done(job, run_ingest(core.store, job), self.now, wall_ms=self.wall_ms)

    def _deliverable(self) -> list[int]:
        return [c for c, q in self.inbox.items()
                if q and c in self.ends and self.ends[c].node not in self.frozen]

    def settle(self) -> int:
        """Deliver bytes until nothing is in flight (except to frozen nodes)."""
        steps = 0
        while True:
            self.drain()
            ready = self._deliverable()
            if not ready:
                return steps
            steps += 1
            assert steps < self.MAX_STEPS, "the network never went quiet (a message storm?)"
            conn = ready[self.rng.randrange(len(ready))] if len(ready) > 1 else ready[0]
            item = self.inbox[conn].popleft()
            end = self.ends[conn]
            core = self.cores[end.node]
            if item is None:
                del self.ends[conn]
                self.inbox.pop(conn, None)
                core.connection_lost(conn, self.now)
            else:
                core.data_received(conn, item, self.now, wall_ms=self.wall_ms)

    def quiet(self) -> bool:
        return not self._deliverable()

    def advance(self, dt: float) -> None:
        """Move the clock ``dt`` seconds, waking each core at its deadlines."""
        end = self.now + dt
        self.settle()
        for _ in range(100_000):
            due = [(d, i) for i, c in self.cores.items()
                   if i not in self.frozen and (d := c.next_deadline()) is not None]
            if not due:
                break
            deadline = min(d for d, _ in due)
            if deadline > end:
                break
            self.now = max(self.now, deadline)
            for d, i in due:
                if d <= self.now and i in self.cores:
                    core = self.cores[i]
                    core.handle_timer(self.now, wall_ms=self.wall_ms)
                    self.drain()
                    after = core.next_deadline()
                    # A deadline left at or before now would make a real shell
                    # call handle_timer again at once: a busy loop.
                    assert after is None or after > self.now, (
                        f"node {i}: next_deadline {after} not after now {self.now} once handled"
                    )
            self.settle()
        else:  # pragma: no cover
            raise AssertionError("too many timer events")
        self.now = end
        self.settle()

    # -- raw test-driven connections -------------------------------------------
    def raw_connect(self, i: int) -> int:
        conn = self._new_conn(i, None)
        self.cores[i].connection_made(conn, initiator=False, now=self.now)
        self.drain()
        return conn

    def feed(self, conn: int, data: bytes) -> None:
        end = self.ends.get(conn)
        if end is None:
            return
        self.cores[end.node].data_received(conn, data, self.now, wall_ms=self.wall_ms)
        self.drain()
        self.settle()

    def take_raw(self, conn: int) -> bytes:
        out = bytes(self.raw_out.get(conn, b""))
        self.raw_out[conn] = bytearray()
        return out

    def items(self, i: int) -> set[tuple[int, bytes]]:
        return set(self.stores[i].items())


class Client:
    """A peer driven by the test: a real Noise handshake, then any bytes."""

    def __init__(self, net: SimNet, node: int, identity: Identity, *, max_message: int = limits.MAX_MESSAGE) -> None:
        self.net = net
        self.identity = identity
        self.channel = SecureChannel(True, identity.signing_key, max_message=max_message)
        self.conn = net.raw_connect(node)
        self.messages: list[wire.Message] = []
        self.remote: bytes | None = None
        net.feed(self.conn, self.channel.initiate())
        self.pump()

    @property
    def closed(self) -> bool:
        return self.conn in self.net.raw_closed

    def pump(self) -> None:
        while True:
            data = self.net.take_raw(self.conn)
            if data and not self.channel.closed:
                self.channel.receive_data(data)
                while (event := self.channel.next_event()) is not None:
                    if isinstance(event, HandshakeComplete):
                        self.remote = event.remote_identity
                    elif isinstance(event, MessageReceived):
                        self.messages.append(wire.decode(event.data))
            out = b"" if self.channel.closed else self.channel.data_to_send()
            if not out:
                return
            self.net.feed(self.conn, out)

    def send(self, message: wire.Message | bytes) -> None:
        data = message if isinstance(message, bytes) else wire.encode(message)
        self.channel.send_message(data)
        self.net.feed(self.conn, self.channel.data_to_send())
        self.pump()

    def hello(self, agent: bytes | None = None) -> None:
        self.send(wire.Hello(wire.PROTOCOL_VERSION, wire.FEATURES, agent or self.identity.public_key,
                             (), True, ()))


# --- records --------------------------------------------------------------------


@st.composite
def records(draw: st.DrawFn) -> Record:
    """A real signed record of the pool: a memory of any visibility, or a
    directory record (profile, follow, endorse)."""
    author = draw(st.integers(0, POOL - 1))
    kind = draw(st.sampled_from(("memory", "memory", "memory", "profile", "follow", "endorse")))
    ts = from_ms(BASE_MS + draw(st.integers(0, 5_000)), draw(st.integers(0, 3)))
    if kind == "memory":
        return sign_record(IDENTS[author], "memory", ts, draw(st.text(min_size=1, max_size=12)),
                           visibility=draw(st.sampled_from(VISIBILITIES)),
                           topics=draw(st.lists(st.sampled_from("abc"), max_size=2)))
    if kind == "profile":
        body = {"name": draw(st.text(max_size=8)), "description": "", "skills": [], "addresses": [],
                "xkey": IDENTS[author].message_public_key}
        return sign_record(IDENTS[author], "profile", ts, body)
    target = KEYS[draw(st.integers(0, POOL - 1).filter(lambda t: t != author))]
    if kind == "follow":
        return sign_record(IDENTS[author], "follow", ts, {"target": target, "active": True})
    return sign_record(IDENTS[author], "endorse", ts, {"target": target, "what": "agent"})


record_sets = st.lists(records(), max_size=25, unique_by=lambda r: r.id)


def items_of(records: list[Record]) -> set[tuple[int, bytes]]:
    return {(r.ts, r.id) for r in records}


def kept(records: list[Record]) -> set[tuple[int, bytes]]:
    """What a store keeps of ``records``: all of them but what the quotas of
    records that go everywhere evict (p2pmem/model/quota.py, the same everywhere)."""
    store = Store(Path(":memory:"), verify_workers=1)
    store.ingest(records)
    return set(store.items())


def final_interest(node: int, all_records: list[Record], replicate_all: bool) -> ReplicationInterest:
    follows = {r.body["target"] for r in all_records
               if r.kind == "follow" and r.author == KEYS[node] and r.body["active"]}
    return ReplicationInterest(replicate_all, frozenset({KEYS[node]} | follows))


def connect_two(a_records: list[Record], b_records: list[Record], seed: int, replicate_all: bool) -> SimNet:
    net = SimNet(seed)
    net.add(1, records=b_records, replicate_all=replicate_all)
    net.add(0, records=a_records, bootstrap=[1], replicate_all=replicate_all)
    net.settle()
    net.advance(2 * Timing().resync + 1)  # interest changes are repaired by the periodic resync
    return net


# --- replication ------------------------------------------------------------------


@given(record_sets, record_sets, st.integers(0, 2**32))
def test_replicate_all_gives_both_the_union_of_what_travels(a_records, b_records, seed):
    net = connect_two(a_records, b_records, seed, replicate_all=True)
    assert net.links() == {frozenset((0, 1))}
    a_travel = [r for r in a_records if travels(r.kind, r.visibility)]
    b_travel = [r for r in b_records if travels(r.kind, r.visibility)]
    assert net.items(0) == kept(a_records + b_travel)
    assert net.items(1) == kept(b_records + a_travel)
    # the replicated part is the same on both sides
    assert {i for i in net.items(0) if i not in items_of(a_records) - items_of(a_travel)} == \
           {i for i in net.items(1) if i not in items_of(b_records) - items_of(b_travel)}


@given(record_sets, record_sets, st.integers(0, 2**32))
def test_replicate_follows_moves_only_what_the_scope_rules_admit(a_records, b_records, seed):
    net = connect_two(a_records, b_records, seed, replicate_all=False)
    union = a_records + b_records
    interests = {n: final_interest(n, union, False) for n in (0, 1)}
    both = shared(interests[0], interests[1])
    for me, mine, theirs in ((0, a_records, b_records), (1, b_records, a_records)):
        got = net.items(me) - items_of(mine)
        by_item = {(r.ts, r.id): r for r in theirs}
        for item in got:
            r = by_item[item]
            assert r.visibility == "public", "an ask or private memory travelled"
            assert interests[me].wants(r.kind, r.author, r.visibility), f"out of scope: {r.kind}"
        survivors = kept(mine + [r for r in theirs if travels(r.kind, r.visibility)])
        expected = {(r.ts, r.id) for r in theirs if both.wants(r.kind, r.author, r.visibility)}
        assert expected & survivors <= net.items(me), "a record both sides want did not arrive"
        # the directory (profiles, follows, endorsements) goes everywhere, within quotas
        assert {(r.ts, r.id) for r in theirs if r.kind != "memory"} & survivors <= net.items(me)


def test_a_follow_received_by_gossip_widens_the_interest():
    """B holds memories of agent 2 and a follow of agent 2 signed by A's key
    (A's earlier session): A learns it follows 2 and then fetches 2's
    public memories, never the ask or private ones."""
    ts = from_ms(BASE_MS)
    follow = sign_record(IDENTS[0], "follow", ts, {"target": KEYS[2], "active": True})
    pub = sign_record(IDENTS[2], "memory", ts + 1, "public of 2")
    ask = sign_record(IDENTS[2], "memory", ts + 2, "ask of 2", visibility="ask")
    other = sign_record(IDENTS[3], "memory", ts + 3, "public of 3")
    b_records = [follow, pub, ask, other]
    net = SimNet(7)
    net.add(1, records=b_records, replicate_all=True)
    net.add(0, bootstrap=[1], replicate_all=False)
    net.settle()
    net.advance(Timing().resync + 1)
    assert net.items(0) == items_of([follow, pub])
    later = sign_record(IDENTS[2], "memory", ts + 4, "pushed at once")
    net.stores[1].ingest([later])
    net.cores[1].local_records([later], net.now)
    net.drain()
    net.settle()
    assert (later.ts, later.id) in net.items(0)


def test_a_record_another_process_stored_is_pushed_even_after_a_peer_pushed_one():
    """A CLI command commits to the store, then a peer's push is stored
    before the node polls: the poll must still find (and push) the CLI's
    record rather than skip past it with the peer's rows."""
    net = SimNet(9)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    from_cli = sign_record(IDENTS[0], "memory", net.cores[0].clock.now(int(net.now * 1000)), "by a CLI")
    net.stores[0].ingest([from_cli])  # another process of node 0's home: the core is not told
    from_peer = net.remember(1, "pushed by the peer meanwhile")
    assert (from_peer.ts, from_peer.id) in net.items(0)
    net.cores[0].poll_store(net.now)  # the CLI's poke arrives
    net.drain()
    net.settle()
    assert (from_cli.ts, from_cli.id) in net.items(1)
    assert net.cores[0].poll_store(net.now) == 0  # each record is picked up once


def test_eager_push_reaches_a_peer_without_waiting_for_a_timer():
    net = SimNet(1)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.add(2, bootstrap=[1])
    net.settle()
    for vis in VISIBILITIES:
        record = net.remember(0, f"a {vis} memory", vis)
        for other in (1, 2):
            assert ((record.ts, record.id) in net.items(other)) == (vis == "public")


# --- hostile peers ----------------------------------------------------------------


def _two_with_hostile(seed: int = 3) -> SimNet:
    net = SimNet(seed)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    assert net.links() == {frozenset((0, 1))}
    return net


def _still_serves(net: SimNet) -> None:
    record = net.remember(0, "after the hostile peer")
    assert (record.ts, record.id) in net.items(1)
    assert net.links() == {frozenset((0, 1))}


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\x20" + bytes(32),  # a first handshake message with a low-order key
    b"\xff\xff" + b"x" * 100,  # a frame header announcing 65535 bytes before the handshake
    b"\x00\x00",  # an empty frame
])
def test_garbage_before_the_handshake_closes_that_connection_only(garbage):
    net = _two_with_hostile()
    conn = net.raw_connect(0)
    net.feed(conn, garbage)
    assert conn in net.raw_closed
    assert net.cores[0].stats.protocol_errors == 1
    _still_serves(net)


@given(st.binary(max_size=300), st.integers(0, 2**16))
@settings(max_examples=30)
def test_any_bytes_before_the_handshake_never_raise(data, seed):
    net = _two_with_hostile(seed)
    conn = net.raw_connect(0)
    net.feed(conn, data)  # must not raise, whatever the bytes
    _still_serves(net)


@given(st.binary(max_size=400))
@settings(max_examples=30)
def test_any_message_after_hello_never_raises(data):
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    client.hello()
    client.send(data)  # closes the connection or is handled; never an exception
    _still_serves(net)


def test_a_forged_record_closes_the_connection_and_is_not_stored():
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    assert client.remote == KEYS[0]
    client.hello()
    assert not client.closed
    good = sign_record(IDENTS[3], "memory", from_ms(BASE_MS + 5), "honest")
    forged = good.raw[:-1] + bytes([good.raw[-1] ^ 1])  # the signature's last byte
    client.send(wire.Records((forged,)))
    assert client.closed
    assert "invalid record" in net.raw_closed[client.conn]
    assert any(isinstance(m, wire.Bye) and "invalid record" in m.reason for m in client.messages)
    assert net.cores[0].stats.records_rejected == 1
    assert not net.stores[0].has(good.id)
    assert not any(rid == good.id for _, rid in net.items(0))
    _still_serves(net)


def test_a_valid_record_from_a_hostile_client_is_kept_and_forwarded():
    """The opposite check, so the forged test is not passing for a wrong reason."""
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    client.hello()
    good = sign_record(IDENTS[3], "memory", from_ms(BASE_MS + 5), "honest")
    client.send(wire.Records((good.raw,)))
    assert not client.closed
    assert (good.ts, good.id) in net.items(0) and (good.ts, good.id) in net.items(1)


def test_a_reconciliation_asking_for_everything_never_hands_out_a_private_or_ask_memory():
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    client.hello()
    records = {vis: net.remember(0, f"a {vis} memory", vis) for vis in VISIBILITIES}
    client.pump()  # the eager push of the public one
    client.messages.clear()
    client.send(wire.Recon(1, EMPTY_ID_LIST))
    assert any(isinstance(m, wire.Recon) and m.recon_id == 1 for m in client.messages)
    sent = {raw for m in client.messages if isinstance(m, wire.Records) for raw in m.records}
    assert records["public"].raw in sent
    assert not {records["ask"].raw, records["private"].raw} & sent
    assert not client.closed


def test_a_message_of_the_removed_type_4_closes_the_connection():
    """Type 4 was `want` (records asked for by id). Nothing sent it, so it
    was removed: a node treats it as any unknown type, closes the
    connection with a protocol error and pushes nothing for it."""
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    client.hello()
    record = net.remember(0, "a public memory")
    client.pump()  # its eager push
    client.messages.clear()
    client.send(cbor2.dumps([4, [record.id]], canonical=True))
    assert client.closed
    assert "unknown message type 4" in net.raw_closed[client.conn]
    assert any(isinstance(m, wire.Bye) and "unknown message type 4" in m.reason for m in client.messages)
    assert not any(isinstance(m, wire.Records) for m in client.messages)
    assert net.cores[0].stats.protocol_errors == 1
    _still_serves(net)


def test_an_oversized_message_closes_the_connection():
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3], max_message=2 * limits.MAX_MESSAGE)
    client.hello()
    client.send(wire.encode(wire.Records((b"x" * limits.MAX_MESSAGE,))))
    assert client.closed
    assert "max_message" in net.raw_closed[client.conn]
    _still_serves(net)


def test_an_oversized_record_inside_a_message_closes_the_connection():
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    client.hello()
    client.send(wire.encode(wire.Records((b"\xd2" + b"x" * (limits.MAX_RECORD + 1),))))
    assert client.closed
    _still_serves(net)


@pytest.mark.parametrize("case", ["before hello", "hello of another agent", "second hello"])
def test_protocol_violations_close_the_connection(case):
    net = _two_with_hostile()
    client = Client(net, 0, IDENTS[3])
    if case == "before hello":
        client.send(wire.Ping(1))
    elif case == "hello of another agent":
        client.hello(KEYS[4])
    else:
        client.hello()
        client.hello()
    assert client.closed
    _still_serves(net)


def test_a_silent_connection_is_closed_after_the_handshake_timeout():
    net = _two_with_hostile()
    conn = net.raw_connect(0)
    net.advance(limits.HANDSHAKE_TIMEOUT_S - 0.5)
    assert conn not in net.raw_closed
    net.advance(1.0)
    assert net.raw_closed[conn] == "handshake timed out"
    _still_serves(net)


# --- membership ----------------------------------------------------------------------


@given(st.integers(0, 2**32))
@settings(max_examples=30)
def test_simultaneous_dials_settle_on_one_connection(seed):
    net = SimNet(seed)
    net.add(0, bootstrap=[1], drain=False)
    net.add(1, bootstrap=[0], drain=False)
    net.drain()
    # both Dial actions are carried out before any byte moves: two connections
    assert sum(1 for _, _, _, ok in net.dials if ok) == 2
    net.settle()
    net.advance(60)
    for i in (0, 1):
        live = [s for s in net.cores[i].connections.values() if not s.closed]
        assert len(live) == 1 and live[0].ready, f"node {i} keeps {len(live)} connections"
    assert net.links() == {frozenset((0, 1))}
    record = net.remember(1, "over the one connection")
    assert (record.ts, record.id) in net.items(0)


@given(st.integers(0, 2**32))
@settings(max_examples=20, deadline=None)
def test_two_nodes_listing_each_other_stop_redialling(seed):
    """Issue 16: two nodes that list each other kept one connection but the
    loser of the tie-break redialled its peer's address every back-off
    period forever, each dial closed again as a duplicate. The address is
    now known to belong to the connected identity, so nobody dials it."""
    net = SimNet(seed)
    net.add(0, bootstrap=[1], drain=False)
    net.add(1, bootstrap=[0], drain=False)
    net.drain()
    net.settle()
    dials, closes = len(net.dials), len(net.closes)
    net.advance(3 * Timing().backoff_max)  # three dial periods at the longest back-off
    assert net.dials[dials:] == [], "an address of a connected identity was dialled again"
    assert [c for c in net.closes[closes:] if "duplicate" in c[2]] == []
    for i in (0, 1):
        live = [s for s in net.cores[i].connections.values() if not s.closed]
        assert len(live) == 1 and live[0].ready
    assert net.links() == {frozenset((0, 1))}


def test_a_reconnect_from_the_same_identity_replaces_the_old_connection():
    net = SimNet(2)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    client_a = Client(net, 1, IDENTS[3])
    client_a.hello()
    client_b = Client(net, 1, IDENTS[3])
    client_b.hello()
    assert client_a.closed and not client_b.closed
    assert len([s for s in net.cores[1].ready_peers() if s.remote == KEYS[3]]) == 1


def test_no_connection_to_itself():
    net = SimNet(4)
    net.addresses["alias-of-node0:7000"] = 0
    net.add(0, extra_bootstrap=["alias-of-node0:7000"])
    net.settle()
    assert "connected to itself" in [r for _, n, r in net.closes if n == 0]
    assert not net.cores[0].connections
    net.advance(600)
    assert len([d for d in net.dials if d[2] == "alias-of-node0:7000"]) == 1, "dialled itself again"
    assert not net.cores[0].connections


def test_reconnect_with_exponential_back_off_and_jitter():
    timing = Timing()
    net = SimNet(5)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    assert net.links() == {frozenset((0, 1))}
    net.advance(3)
    before = len(net.dials)
    net.crash(1)
    lost_at = net.now
    net.advance(400)
    attempts = [t for t, n, a, ok in net.dials[before:] if n == 0 and a == addr(1)]
    assert len(attempts) >= 8 and not any(ok for *_, ok in net.dials[before:])
    # first retry soon after the loss, then each wait is base * 2**k with jitter in [0.5, 1.5)
    assert attempts[0] - lost_at <= timing.backoff_base * 1.5
    ratios = []
    for k, (before, after) in enumerate(zip(attempts, attempts[1:], strict=False), start=1):
        nominal = min(timing.backoff_max, timing.backoff_base * 2**k)
        ratio = (after - before) / nominal
        assert 0.5 - 1e-9 <= ratio < 1.5 + 1e-9, f"wait {after - before:.2f} s after failure {k}"
        ratios.append(round(ratio, 6))
    assert len(set(ratios)) > len(ratios) // 2, "no jitter"
    waits = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert max(waits[:2]) < min(waits[5:]), "waits do not grow"
    assert max(waits) <= timing.backoff_max * 1.5
    # the peer comes back: the next attempt connects
    net.add(1)
    net.advance(timing.backoff_max * 1.5 + 1)
    assert net.links() == {frozenset((0, 1))}


def test_keepalives_hold_a_quiet_connection_and_a_silent_peer_is_dropped():
    timing = Timing()
    net = SimNet(6)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    net.advance(10 * timing.dead_after)  # nothing to say for a long time: pings keep it up
    assert net.links() == {frozenset((0, 1))}
    assert not [c for c in net.closes]
    (connection,) = net.cores[0].ready_peers()
    assert connection.last_heard >= net.now - timing.keepalive - 1
    # node 1 freezes (like SIGSTOP): nothing it receives is answered
    net.frozen.add(1)
    silent_from = connection.last_heard
    net.advance(timing.keepalive + 0.5 - (net.now - silent_from))
    assert connection.ping_sent is not None, "no ping after the keep-alive interval"
    net.advance(timing.dead_after)
    closes = [(t, r) for t, n, r in net.closes if n == 0]
    assert closes and closes[0][1] == "peer silent for too long"
    assert closes[0][0] == pytest.approx(silent_from + timing.dead_after)
    assert not net.cores[0].ready_peers()
    # node 1 wakes up, sees the closed connection, and node 0 reconnects
    net.frozen.discard(1)
    net.advance(timing.backoff_max * 1.5 + 1)
    assert net.links() == {frozenset((0, 1))}


def test_peer_exchange_fills_the_view_and_respects_max_peers():
    timing = Timing(max_peers=2, target_peers=1)
    net = SimNet(8)
    for i in range(5):  # a line: each dials the previous one
        net.add(i, bootstrap=[i - 1] if i else [], timing=timing)
        net.settle()
    net.advance(120)
    assert net.links() == {frozenset((i, i + 1)) for i in range(4)}, "the line did not stay a line"
    for core in net.cores.values():
        assert len(core.connections) <= 2
    # a restarted middle node gets its place back
    net.crash(2)
    net.advance(5)
    net.add(2, bootstrap=[1, 3], timing=timing)
    net.advance(60)
    assert net.connected()


# --- the state machine -----------------------------------------------------------------


class Replication(RuleBasedStateMachine):
    """Nodes remember, links break and heal, nodes crash and restart, time
    passes: whenever the network is quiet and connected, every node holds
    the same public records, and nothing private or ``ask`` ever moved."""

    N = 3

    @initialize(seed=st.integers(0, 2**32))
    def start(self, seed):
        self.net = SimNet(seed)
        self.own: dict[int, set[bytes]] = {i: set() for i in range(self.N)}
        for i in range(self.N):
            self.net.add(i, bootstrap=[j for j in range(self.N) if j != i])
        self.net.settle()

    @rule(node=st.integers(0, N - 1), visibility=st.sampled_from(VISIBILITIES), text=st.text(min_size=1, max_size=8))
    def remember(self, node, visibility, text):
        if node in self.net.cores:
            record = self.net.remember(node, text, visibility)
            self.own[node].add(record.id)

    @rule(a=st.integers(0, N - 1), b=st.integers(0, N - 1))
    def partition(self, a, b):
        if a != b:
            self.net.block(a, b)
            self.net.settle()

    @rule(a=st.integers(0, N - 1), b=st.integers(0, N - 1))
    def heal(self, a, b):
        self.net.unblock(a, b)

    @rule(node=st.integers(0, N - 1))
    def crash_and_restart(self, node):
        if node in self.net.cores:
            self.net.crash(node)
            self.net.settle()
        self.net.add(node, bootstrap=[j for j in range(self.N) if j != node])
        self.net.settle()

    @rule(dt=st.floats(0.01, 45.0))
    def wait(self, dt):
        self.net.advance(dt)

    @rule()
    def heal_all_and_wait(self):
        self.net.blocked.clear()
        for _ in range(40):
            if self.net.links() == {frozenset((i, j)) for i in range(self.N) for j in range(i + 1, self.N)}:
                break
            self.net.advance(5.0)
        else:
            raise AssertionError(f"not reconnected after healing: {self.net.links()}")

    @invariant()
    def nothing_private_travels(self):
        for i, store in self.net.stores.items():
            for _, rid in store.items():
                record = store.get(rid)
                if record is not None and record.visibility != "public":
                    assert rid in self.own[i], f"node {i} holds another node's {record.visibility} memory"

    @invariant()
    def one_connection_per_identity_and_none_to_itself(self):
        for i, core in self.net.cores.items():
            remotes = [s.remote for s in core.connections.values() if s.ready and not s.closed]
            assert len(remotes) == len(set(remotes))
            assert KEYS[i] not in remotes

    @invariant()
    def quiet_and_connected_means_equal(self):
        net = self.net
        if len(net.cores) == self.N and net.quiet() and net.connected():
            public = [{item for item in net.items(i)
                       if (rec := net.stores[i].get(item[1])) is None or rec.visibility == "public"}
                      for i in range(self.N)]
            assert all(p == public[0] for p in public), "connected and quiet, yet stores differ"


TestReplication = Replication.TestCase
TestReplication.settings = settings(stateful_step_count=15)


# -- the core's explicit surface (p2pmem.protocol.events) ----------------------------------


def test_events_report_ready_stored_ingested_and_closed_peers():
    """A shell learns everything from the output queue: who became a peer,
    what was stored from whom, how each records message went, and why a
    connection ended (an enum, never a string to parse)."""
    net = SimNet(5)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    ready = {(n, e.agent) for _, n, e in net.events if isinstance(e, PeerReady)}
    assert ready == {(0, KEYS[1]), (1, KEYS[0])}
    record = net.remember(1, "pushed to node 0")
    stored = [e for _, n, e in net.events if n == 0 and isinstance(e, RecordsStored)]
    assert [record.id] in [list(e.ids) for e in stored]
    finished = [e for _, n, e in net.events if n == 0 and isinstance(e, IngestFinished)]
    assert finished and sum(e.added for e in finished) >= 1 and all(e.error is None for e in finished)
    net.cores[0].shutdown(net.now)
    net.drain()
    net.settle()
    closed = {(n, e.reason) for _, n, e in net.events if isinstance(e, PeerClosed)}
    assert (0, CloseReason.SHUTDOWN) in closed
    assert (1, CloseReason.PEER_BYE) in closed  # node 1 heard the bye
    assert not net.cores[0].connections
    # a node shutting down dials nobody, and closes what still comes in
    net.advance(60.0)
    assert not net.cores[0].connections


def test_a_finished_query_is_an_event_with_its_hits():
    net = SimNet(6)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    net.remember(1, "where the keys are kept")
    qid = net.cores[0].start_query("keys", now=net.now, timeout=1.0)
    net.drain()
    net.settle()
    net.advance(2.0)
    done = [e for _, n, e in net.events if n == 0 and isinstance(e, QueryFinished)]
    assert [e.qid for e in done] == [qid]
    assert [h.record.body for h in done[0].hits] == ["where the keys are kept"]


def test_a_seeded_key_source_makes_handshakes_replay_byte_for_byte():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    def first_bytes(seed: int) -> bytes:
        keys = random.Random(seed)
        store = Store(Path(":memory:"), verify_workers=1)
        rng = random.Random(seed)
        core = NodeCore(IDENTS[0], store, rng, router_rng=random.Random(1), now=T0,
                        key_source=lambda: X25519PrivateKey.from_private_bytes(keys.randbytes(32)))
        core.connection_made(1, initiator=True, now=T0, address="x:1")
        return b"".join(a.data for a in core.take_actions() if isinstance(a, Send))

    assert first_bytes(1) == first_bytes(1) != first_bytes(2)


def test_the_shells_use_only_the_cores_public_surface():
    """No shell calls a private method of the core or reads its connection
    tables: what they need comes as an event (issue: a node that never stalls)."""
    import re

    from tests.conftest import PROJECT_ROOT

    for rel in ("p2pmem/node/shell.py", "p2pmem/sim/network.py", "p2pmem/sim/streams.py", "p2pmem/sim/disk.py"):
        text = (PROJECT_ROOT / rel).read_text()
        assert not re.findall(r"core\._\w+|\.connections\b|\.by_agent\b|core\.stats\b", text), rel


def test_status_reports_queries_from_the_core_itself():
    """``status(now)["queries"]`` comes from the core: its counters and the
    own queries still collecting answers (it used to be always empty)."""
    net = SimNet(5)
    net.add(1)
    core = net.add(0, bootstrap=[1])
    net.settle()
    qid = core.start_query("lighthouse keeper", now=net.now, ttl=2, timeout=5.0)
    net.drain()
    queries = core.status(net.now)["queries"]
    assert queries["started"] == 1
    assert [q["qid"] for q in queries["in_flight"]] == [qid.hex()]
    assert core.status(net.now)["uptime_s"] >= 0
    net.advance(6.0)
    assert core.status(net.now)["queries"]["in_flight"] == []
    assert [p["agent"] for p in core.peers()] == [KEYS[1]]
