"""Laws of the flooding query router (p2pmem.protocol.query), stated as properties.

A tiny in-memory network simulator drives many QueryRouters: random connected
graphs, messages delivered in FIFO (breadth-first) order or in an order chosen
by hypothesis, and opaque fake records per node (the routers of the simulator
accept any bytes as a record, see ``fake_check``; answers are really signed).
Real signed records appear in the verify_hits and budget tests, where record
signatures matter.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field

import cbor2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from p2pmem import limits
from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import sign_record
from p2pmem.protocol.query import (
    MAX_HITS_MESSAGE,
    MAX_RELAYED_RECORDS,
    Hit,
    Query,
    QueryError,
    QueryHits,
    QueryRouter,
    VerifiedHit,
    decode_hits,
    decode_query,
    encode_hits,
    encode_query,
    order_hits_by_overlap,
    verify_hits,
)

BIG_BURST = 10_000  # the flooding laws are about routing, not rate limits


_IDS = [Identity.from_seeds(bytes([i + 1]) * 32, bytes([i + 1]) * 32) for i in range(128)]


def node_id(i: int) -> bytes:
    return _IDS[i].public_key


@dataclass(frozen=True)
class FakeRecord:
    raw: bytes


def fake_check(_q: Query, raw: bytes) -> FakeRecord:
    """Routing tests use opaque bytes as records: accept them all."""
    return FakeRecord(raw)


def make_router(i: int, **kw) -> QueryRouter:
    """The router of node ``i``, signing its answers with node ``i``'s key."""
    kw.setdefault("check", fake_check)
    return QueryRouter(node_id(i), random.Random(i), sign=_IDS[i].sign, **kw)


def signed_hits(i: int, qid: bytes, hops: int, records: tuple[bytes, ...]) -> bytes:
    """A hits message answered (and signed) by node ``i``."""
    return encode_hits(QueryHits(qid, hops, node_id(i), records).signed(_IDS[i].sign))


def no_records(_q: Query) -> list[bytes]:
    return []


# --- the simulator -------------------------------------------------------------------


@st.composite
def graphs(
    draw: st.DrawFn, min_nodes: int = 2, max_nodes: int = 25
) -> tuple[int, list[tuple[int, int]]]:
    """A connected undirected graph: a random spanning tree plus random extra edges."""
    n = draw(st.integers(min_nodes, max_nodes))
    edges = {(draw(st.integers(0, i - 1)), i) for i in range(1, n)}
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    edges |= {(min(a, b), max(a, b)) for a, b in extra if a != b}
    return n, sorted(edges)


@dataclass
class Network:
    n: int
    edges: list[tuple[int, int]]
    holdings: list[frozenset[bytes]]
    rng: random.Random | None = None  # None: FIFO delivery
    routers: list[QueryRouter] = field(init=False)
    adj: list[list[int]] = field(init=False)
    queue: deque[tuple[int, int, str, bytes, int]] = field(init=False)
    # (src, dst, qid) for every query message delivered
    query_links: Counter[tuple[int, int, bytes]] = field(init=False)
    # (node, qid) -> path length of the copy the node processed
    first_depth: dict[tuple[int, bytes], int] = field(init=False)
    processed: Counter[tuple[int, bytes]] = field(init=False)

    def __post_init__(self) -> None:
        self.routers = [
            make_router(i, burst=BIG_BURST) for i in range(self.n)
        ]
        self.adj = [[] for _ in range(self.n)]
        for a, b in self.edges:
            self.adj[a].append(b)
            self.adj[b].append(a)
        self.index = {node_id(i): i for i in range(self.n)}
        self.queue = deque()
        self.query_links = Counter()
        self.first_depth = {}
        self.processed = Counter()

    def neighbours(self, i: int) -> list[bytes]:
        return [node_id(j) for j in self.adj[i]]

    def answer(self, i: int):
        def lookup(_q: Query) -> list[bytes]:
            return sorted(self.holdings[i])

        return lookup

    def pump(self, src: int, depth: int) -> None:
        """Move a router's outbox onto the wire; query copies sent now have
        travelled one link more than the copy that triggered them."""
        for peer, kind, data in self.routers[src].take_outbox():
            self.queue.append((src, self.index[peer], kind, data, depth + 1))

    def ask(self, asker: int, ttl: int, now: float = 0.0) -> bytes:
        qid = self.routers[asker].start_query(
            "what do you know", ttl=ttl, now=now, neighbours=self.neighbours(asker)
        )
        self.pump(asker, 0)
        return qid

    def run(self, now: float = 0.0) -> None:
        while self.queue:
            if self.rng is None:
                src, dst, kind, data, depth = self.queue.popleft()
            else:
                k = self.rng.randrange(len(self.queue))
                self.queue.rotate(-k)
                src, dst, kind, data, depth = self.queue.popleft()
                self.queue.rotate(k)
            router = self.routers[dst]
            if kind == "query":
                q = decode_query(data)
                self.query_links[(src, dst, q.qid)] += 1
                # hops on the wire is the length of the path this copy took
                assert q.hops == depth
                before = router.has_seen(q.qid, now)
                router.receive_query(
                    node_id(src), data, now, self.neighbours(dst), self.answer(dst)
                )
                if not before and router.has_seen(q.qid, now):
                    self.processed[(dst, q.qid)] += 1
                    self.first_depth[(dst, q.qid)] = depth
                    self.pump(dst, depth)
                else:
                    assert not router.take_outbox()  # a dropped copy causes nothing
            else:
                router.receive_hits(node_id(src), data, now)
                self.pump(dst, depth)


def bfs(adj: list[list[int]], start: int) -> dict[int, int]:
    dist = {start: 0}
    todo = deque([start])
    while todo:
        u = todo.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                todo.append(v)
    return dist


@st.composite
def networks(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[frozenset[bytes]]]:
    n, edges = draw(graphs())
    pool = [b"item-%d" % k for k in range(2 * n)]
    holdings = [frozenset(draw(st.lists(st.sampled_from(pool), max_size=4))) for _ in range(n)]
    return n, edges, holdings


@st.composite
def askers(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    """One to three concurrent queries: (asker, ttl)."""
    return draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(1, limits.MAX_TTL)), min_size=1, max_size=3
        )
    )


def check_flood_laws(net: Network, asked: list[tuple[int, int, bytes]], fifo: bool) -> None:
    for asker, ttl, qid in asked:
        dist = bfs(net.adj, asker)
        within = {v for v, d in dist.items() if 1 <= d <= ttl}
        reached = {v for (v, q) in net.processed if q == qid}

        # (1) each node processes each query at most once; the asker never does;
        # only nodes within ttl links are reached, and with breadth-first
        # delivery all of them are.
        assert all(c == 1 for (v, q), c in net.processed.items() if q == qid)
        assert asker not in reached
        assert reached <= within
        if fifo:
            assert reached == within

        # (2) no directed link carries the query more than once: <= 2|E| messages.
        links = {(s, d): c for (s, d, q), c in net.query_links.items() if q == qid}
        assert all(c == 1 for c in links.values())
        assert all(d in net.adj[s] for s, d in links)
        assert sum(links.values()) <= 2 * len(net.edges)

        # (3) every record held by a reached node comes back exactly once.
        results = net.routers[asker].results(qid)
        raws = [h.record.raw for h in results]
        assert len(raws) == len(set(raws))
        assert set(raws) == set().union(*(net.holdings[v] for v in reached))
        if fifo:
            assert set(raws) == set().union(*(net.holdings[v] for v in within))

        # (4) hops is the length of the path the query took to the responder,
        # the lowest among the reached holders; breadth-first, the BFS distance.
        for h in results:
            responder = net.index[h.responder]
            assert responder in reached
            assert h.record.raw in net.holdings[responder]
            assert h.hops == net.first_depth[(responder, qid)]
            assert h.hops == min(
                net.first_depth[(v, qid)] for v in reached if h.record.raw in net.holdings[v]
            )
            if fifo:
                assert h.hops == dist[responder]


@given(networks(), st.data())
def test_flooding_fifo_reaches_exactly_the_ttl_ball(net_spec, data) -> None:
    n, edges, holdings = net_spec
    net = Network(n, edges, holdings)
    asked = [(a, t, net.ask(a, t)) for a, t in data.draw(askers(n))]
    net.run()
    check_flood_laws(net, asked, fifo=True)


@given(networks(), st.data(), st.randoms(use_true_random=False))
def test_flooding_any_order_processes_each_query_at_most_once(net_spec, data, order) -> None:
    n, edges, holdings = net_spec
    net = Network(n, edges, holdings, rng=order)
    asked = [(a, t, net.ask(a, t)) for a, t in data.draw(askers(n))]
    net.run()
    check_flood_laws(net, asked, fifo=False)


def test_ttl_one_reaches_neighbours_only() -> None:
    # a line 0 - 1 - 2: TTL 1 from 0 reaches 1, which answers but does not forward
    net = Network(3, [(0, 1), (1, 2)], [frozenset(), frozenset({b"a"}), frozenset({b"b"})])
    qid = net.ask(0, 1)
    net.run()
    assert [(h.record.raw, h.hops) for h in net.routers[0].results(qid)] == [(b"a", 1)]
    assert net.routers[1].stats.forwarded == 0
    assert net.routers[2].stats.received == 0


def test_query_is_not_sent_back_to_its_asker() -> None:
    net = Network(3, [(0, 1), (1, 2), (0, 2)], [frozenset()] * 3)
    qid = net.ask(0, 4)
    net.run()
    assert net.routers[0].stats.received == 0
    assert {(s, d) for s, d, q in net.query_links if q == qid} == {(0, 1), (0, 2), (1, 2), (2, 1)}


# --- codec -----------------------------------------------------------------------------

keys32 = st.binary(min_size=32, max_size=32)
topic = st.text(min_size=1, max_size=16)
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def queries(draw: st.DrawFn) -> Query:
    ttl = draw(st.integers(1, limits.MAX_TTL))
    since, until = draw(st.none() | u64), draw(st.none() | u64)
    if since is not None and until is not None and since > until:
        since, until = until, since
    return Query(
        qid=draw(st.binary(min_size=16, max_size=16)),
        asker=draw(keys32),
        ttl=ttl,
        hops=draw(st.integers(1, limits.MAX_TTL + 1 - ttl)),
        text=draw(st.text(max_size=200)),
        since=since,
        until=until,
        topics=tuple(sorted(set(draw(st.lists(topic, max_size=limits.MAX_TOPICS))))),
        authors=tuple(sorted(set(draw(st.lists(keys32, max_size=16))))),
        target=draw(st.none() | keys32),
        limit=draw(st.integers(1, limits.MAX_QUERY_HITS)),
        timeout_ms=draw(st.integers(1, int(limits.MAX_QUERY_TIMEOUT_S * 1000))),
    )


hits_messages = st.builds(
    QueryHits,
    qid=st.binary(min_size=16, max_size=16),
    hops=st.integers(1, limits.MAX_TTL),
    responder=keys32,
    records=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8).map(tuple),
)


@given(queries())
def test_query_round_trips(q: Query) -> None:
    data = encode_query(q)
    assert decode_query(data) == q
    assert encode_query(decode_query(data)) == data


@given(hits_messages)
def test_hits_round_trip(h: QueryHits) -> None:
    data = encode_hits(h)
    assert decode_hits(data) == h


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats()
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 12), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, random CBOR maps with the right keys, and damaged valid messages."""
    how = draw(st.sampled_from(["random", "map", "mutated", "truncated", "extended"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    if how == "map":
        return cbor2.dumps(draw(st.dictionaries(st.integers(0, 12), cbor_values, max_size=13)))
    valid = (
        encode_query(draw(queries())) if draw(st.booleans()) else encode_hits(draw(hits_messages))
    )
    if how == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if how == "extended":
        return valid + draw(st.binary(min_size=1, max_size=8))
    i = draw(st.integers(0, len(valid) - 1))
    return valid[:i] + bytes([valid[i] ^ draw(st.integers(1, 255))]) + valid[i + 1 :]


@given(hostile_bytes())
def test_decoders_raise_only_query_error(data: bytes) -> None:
    for decode, encode in ((decode_query, encode_query), (decode_hits, encode_hits)):
        try:
            msg = decode(data)
        except QueryError:
            continue
        assert encode(msg) == data  # whatever is accepted has exactly one encoding


@given(hostile_bytes())
def test_receive_never_raises_on_hostile_bytes(data: bytes) -> None:
    r = QueryRouter(node_id(0), random.Random(0))
    r.receive_query(node_id(1), data, 0.0, [node_id(1), node_id(2)], no_records)
    r.receive_hits(node_id(1), data, 0.0)
    try:
        decode_query(data)
    except QueryError:
        assert r.stats.malformed >= 1
        assert r.dropped


def test_decoders_reject_out_of_bounds_fields() -> None:
    q = Query(qid=b"q" * 16, asker=b"a" * 32, ttl=2, text="hi")
    good = cbor2.loads(encode_query(q))
    for key, bad in [
        (2, limits.MAX_TTL + 1),  # ttl over the cap
        (2, 0),
        (3, limits.MAX_TTL),  # ttl + hops over the cap
        (4, "x" * (limits.MAX_QUERY_TEXT + 1)),
        (7, [f"t{i:02d}" for i in range(limits.MAX_TOPICS + 1)]),
        (7, ["b", "a"]),  # unsorted
        (8, [bytes([i]) * 32 for i in range(17)]),
        (10, limits.MAX_QUERY_HITS + 1),
        (11, 0),
        (0, b"short"),
        (1, "not bytes"),
        (5, None),
        (12, 0),  # an echo budget of nothing
        (12, q.timeout_ms + 1),  # an echo budget beyond the query's own timeout
        (12, None),
        (13, 1),  # unknown field
    ]:
        with pytest.raises(QueryError):
            decode_query(cbor2.dumps({**good, key: bad}, canonical=True))
    with pytest.raises(QueryError):
        decode_query(encode_query(q) + b"\x00")
    h = {0: b"q" * 16, 1: 1, 2: b"r" * 32}
    for records in (
        [],
        [b"x"] * (limits.MAX_QUERY_HITS + 1),
        [b"x" * (limits.MAX_RECORD + 1)],
        ["s"],
    ):
        with pytest.raises(QueryError):
            decode_hits(cbor2.dumps({**h, 3: records}, canonical=True))


# --- single-router behaviour ------------------------------------------------------------


def test_start_query_clamps_and_refuses() -> None:
    r = QueryRouter(node_id(0), random.Random(0))
    qid = r.start_query("x", ttl=99, timeout=1e9, limit=10**6, now=0.0, neighbours=[node_id(1)])
    ((peer, kind, data),) = r.take_outbox()
    q = decode_query(data)
    assert (peer, kind, q.qid, q.ttl, q.hops) == (node_id(1), "query", qid, limits.MAX_TTL, 1)
    assert q.timeout_ms == limits.MAX_QUERY_TIMEOUT_S * 1000 and q.limit == limits.MAX_QUERY_HITS
    for bad in (
        {"ttl": 0},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"limit": 0},
        {"since": 5, "until": 4},
    ):
        with pytest.raises(QueryError):
            r.start_query("x", now=0.0, neighbours=[], **bad)
    with pytest.raises(QueryError):
        r.start_query("x" * (limits.MAX_QUERY_TEXT + 1), now=0.0, neighbours=[])


def incoming(
    qid: bytes, *, ttl: int = 3, hops: int = 1, timeout_ms: int = 1000, limit: int = 100
) -> bytes:
    return encode_query(
        Query(
            qid=qid,
            asker=node_id(99),
            ttl=ttl,
            hops=hops,
            text="q",
            limit=limit,
            timeout_ms=timeout_ms,
        )
    )


def test_answer_forward_and_reverse_path() -> None:
    me, up, down = node_id(0), node_id(1), node_id(2)
    r = make_router(0)
    r.receive_query(up, incoming(b"q" * 16, ttl=3, hops=2), 0.0, [up, down], lambda q: [b"rec"])
    out = r.take_outbox()
    assert [(p, k) for p, k, _ in out] == [(up, "hits"), (down, "query")]
    answer = decode_hits(out[0][2])
    assert (answer.qid, answer.hops, answer.responder, answer.records) == (b"q" * 16, 2, me, (b"rec",))
    assert answer.verify()
    fwd = decode_query(out[1][2])
    assert (fwd.ttl, fwd.hops) == (2, 3)
    # hits from downstream go back upstream unchanged, while the query lives
    hits = encode_hits(QueryHits(b"q" * 16, 3, node_id(5), (b"other",)))
    r.receive_hits(down, hits, 0.5)
    assert r.take_outbox() == [(up, "hits", hits)]
    r.receive_hits(up, hits, 0.5)  # hits coming down from upstream are bogus
    r.receive_hits(down, hits, 1.0)  # expired
    r.receive_hits(down, encode_hits(QueryHits(b"z" * 16, 3, node_id(5), (b"x",))), 0.5)
    assert r.take_outbox() == []
    assert r.stats.hits_dropped == 3


def test_answer_is_cut_to_limit_and_split_into_wire_sized_messages() -> None:
    r = make_router(0)
    big = [bytes([i]) * (120 * 1024) for i in range(30)]
    r.receive_query(
        node_id(1), incoming(b"q" * 16, ttl=1, limit=20), 0.0, [node_id(1)], lambda q: big
    )
    msgs = [decode_hits(d) for p, k, d in r.take_outbox()]
    assert len(msgs) > 1
    assert all(len(encode_hits(m)) <= MAX_HITS_MESSAGE for m in msgs)
    assert [raw for m in msgs for raw in m.records] == big[:20]
    assert all(m.verify() for m in msgs)


def test_relay_volume_per_query_is_bounded() -> None:
    me, up, down = node_id(0), node_id(1), node_id(2)
    r = QueryRouter(me, random.Random(0))
    r.receive_query(up, incoming(b"q" * 16), 0.0, [up, down], no_records)
    r.take_outbox()
    batch = tuple(b"r%d" % i for i in range(limits.MAX_QUERY_HITS))
    for k in range(MAX_RELAYED_RECORDS // limits.MAX_QUERY_HITS + 3):
        r.receive_hits(down, encode_hits(QueryHits(b"q" * 16, 2, bytes([k]) * 32, batch)), 0.0)
    relayed = sum(len(decode_hits(d).records) for _, _, d in r.take_outbox())
    assert relayed == MAX_RELAYED_RECORDS
    assert r.stats.hits_dropped == 3


def test_own_query_collects_lowest_hops_until_its_deadline() -> None:
    r = make_router(0)
    qid = r.start_query("x", ttl=3, timeout=2.0, now=10.0, neighbours=[node_id(1)])
    r.take_outbox()
    r.receive_hits(node_id(1), signed_hits(3, qid, 3, (b"a", b"b")), 10.5)
    r.receive_hits(node_id(1), signed_hits(1, qid, 1, (b"a",)), 11.0)
    r.receive_hits(node_id(1), signed_hits(2, qid, 2, (b"a",)), 11.0)
    r.receive_hits(node_id(1), signed_hits(4, qid, 4, (b"c",)), 11.0)  # > ttl
    r.receive_hits(node_id(1), signed_hits(1, qid, 1, (b"d",)), 12.0)  # late
    assert r.results(qid) == [
        VerifiedHit(FakeRecord(b"a"), 1, node_id(1)), VerifiedHit(FakeRecord(b"b"), 3, node_id(3))
    ]
    assert not r.is_done(qid, 11.9) and r.is_done(qid, 12.0)
    assert r.next_deadline() == 12.0
    assert r.handle_timer(12.0) == [qid]
    assert r.handle_timer(12.5) == []
    assert len(r.results(qid)) == 2  # still readable after the deadline
    r.handle_timer(r.next_deadline())
    with pytest.raises(QueryError):
        r.results(qid)
    assert r.next_deadline() is None and r.seen_size == 0


def test_loops_are_dropped() -> None:
    r = QueryRouter(node_id(0), random.Random(0))
    qid = r.start_query("x", now=0.0, neighbours=[node_id(1)])
    ((_, _, data),) = r.take_outbox()
    r.receive_query(node_id(1), data, 0.0, [node_id(1)], lambda q: [b"x"])
    forged = encode_query(Query(qid=b"n" * 16, asker=node_id(0), ttl=2, text="x"))
    r.receive_query(node_id(1), forged, 0.0, [node_id(1)], lambda q: [b"x"])
    assert r.take_outbox() == [] and r.stats.loops == 2
    assert qid != b"n" * 16


# --- (6) rate limiting ----------------------------------------------------------------


@given(
    st.integers(1, 30),
    st.integers(0, 60),
    st.sampled_from([0.5, 1.0, 4.0]),
    st.integers(0, 20),
)
def test_rate_limit_drops_and_counts_a_flood(
    burst: int, extra: int, rate: float, wait_steps: int
) -> None:
    r = QueryRouter(node_id(0), random.Random(0), burst=burst, rate=rate)
    nbrs = [node_id(1), node_id(2)]
    flood = [incoming(i.to_bytes(16, "big")) for i in range(burst + extra)]
    for data in flood:
        r.receive_query(node_id(1), data, 0.0, nbrs, no_records)
    assert r.stats.rate_limited == extra
    assert r.seen_size == burst
    # another peer is not affected, and what was limited is not marked seen
    r.receive_query(node_id(2), flood[-1], 0.0, nbrs, no_records)
    assert r.stats.rate_limited == extra and r.stats.duplicates == (0 if extra else 1)
    # tokens come back at `rate` per second, never beyond the burst
    wait = wait_steps / 2
    for i in range(burst + 5):
        r.receive_query(
            node_id(1), incoming((1000 + i).to_bytes(16, "big")), wait, nbrs, no_records
        )
    allowed = min(burst, int(wait * rate))
    assert r.stats.rate_limited == extra + (burst + 5 - allowed)


# --- (7) seen cache and rate limiter as a state machine --------------------------------


class SeenCacheMachine(RuleBasedStateMachine):
    """The router's seen cache and token buckets against a plain model.

    Times are multiples of 1/2 and rates are small integers, so the model's
    float arithmetic is exact and must agree with the router to the bit.
    """

    qids = Bundle("qids")

    @initialize(capacity=st.integers(1, 8), burst=st.integers(1, 4))
    def setup(self, capacity: int, burst: int) -> None:
        self.capacity, self.burst, self.rate = capacity, burst, 2.0
        self.router = QueryRouter(
            node_id(0), random.Random(0), seen_capacity=capacity, rate=2.0, burst=burst
        )
        self.now = 0.0
        self.counter = 0
        self.model: dict[bytes, float] = {}  # insertion ordered: qid -> expiry
        self.buckets: dict[int, tuple[float, float]] = {}

    def _model_token(self, peer: int) -> bool:
        tokens, last = self.buckets.get(peer, (float(self.burst), self.now))
        tokens = min(float(self.burst), tokens + max(0.0, self.now - last) * self.rate)
        ok = tokens >= 1.0
        self.buckets[peer] = (tokens - 1.0 if ok else tokens, max(last, self.now))
        return ok

    def _send(self, qid: bytes, timeout_ms: int, peer: int) -> None:
        stats = self.router.stats
        before = (stats.duplicates, stats.rate_limited)
        self.router.receive_query(
            node_id(peer), incoming(qid, timeout_ms=timeout_ms), self.now, [], no_records
        )
        expiry = self.model.get(qid)
        if expiry is not None and self.now < expiry:
            assert (stats.duplicates, stats.rate_limited) == (before[0] + 1, before[1])
            return
        self.model.pop(qid, None)
        if not self._model_token(peer):
            assert stats.rate_limited == before[1] + 1
            return
        assert (stats.duplicates, stats.rate_limited) == before
        self.model[qid] = self.now + timeout_ms / 1000
        while len(self.model) > self.capacity:
            del self.model[next(iter(self.model))]

    @rule(target=qids, timeout_ms=st.sampled_from([500, 1000, 3000]), peer=st.integers(1, 3))
    def new_query(self, timeout_ms: int, peer: int) -> bytes:
        self.counter += 1
        qid = self.counter.to_bytes(16, "big")
        self._send(qid, timeout_ms, peer)
        return qid

    @rule(qid=qids, timeout_ms=st.sampled_from([500, 1000, 3000]), peer=st.integers(1, 3))
    def resend(self, qid: bytes, timeout_ms: int, peer: int) -> None:
        self._send(qid, timeout_ms, peer)

    @rule(qid=consumes(qids))
    def forget_handle(self, qid: bytes) -> None:
        pass  # keeps the bundle from growing without bound

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.5]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def timer(self) -> None:
        assert self.router.handle_timer(self.now) == []
        self.model = {q: e for q, e in self.model.items() if e > self.now}

    @invariant()
    def bounded_and_agrees(self) -> None:
        if not hasattr(self, "router"):
            return
        assert self.router.seen_size == len(self.model) <= self.capacity
        for qid, expiry in self.model.items():
            assert self.router.has_seen(qid, self.now) == (self.now < expiry)
        assert self.router.next_deadline() == (min(self.model.values()) if self.model else None)


SeenCacheMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=40, deadline=None
)
test_seen_cache_machine = SeenCacheMachine.TestCase


def test_seen_cache_stays_bounded_under_many_queries_and_expires() -> None:
    r = QueryRouter(node_id(0), random.Random(0), seen_capacity=50, burst=BIG_BURST)
    for i in range(1000):
        r.receive_query(
            node_id(1),
            incoming(i.to_bytes(16, "big"), timeout_ms=1000 + i),
            i * 0.001,
            [],
            no_records,
        )
        assert r.seen_size <= 50
    assert len(r._expiries) <= 2 * 50 + 16  # the lazy heap is bounded too
    r.handle_timer(100.0)
    assert r.seen_size == 0 and r.next_deadline() is None


# --- (8) verify_hits with real signed records ----------------------------------------

ALICE, BOB = Identity.generate(), Identity.generate()
BASE_MS = 1_700_000_000_000


@dataclass(frozen=True)
class Spec:
    author: int  # 0 alice, 1 bob
    at_offset: int
    topics: tuple[str, ...]
    visibility: str


specs = st.builds(
    Spec,
    author=st.integers(0, 1),
    at_offset=st.integers(0, 100),
    topics=st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True).map(tuple),
    visibility=st.sampled_from(["public", "ask", "private"]),
)


def make(spec: Spec, n: int):
    who = (ALICE, BOB)[spec.author]
    return sign_record(
        who,
        "memory",
        from_ms(BASE_MS + 1000 + n),
        f"memory {n} about things",
        topics=spec.topics,
        visibility=spec.visibility,
        at=BASE_MS + spec.at_offset,
    )


@given(
    st.lists(specs, min_size=1, max_size=6),
    st.none() | st.integers(0, 100),
    st.none() | st.integers(0, 100),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True),
    st.sampled_from(["none", "alice", "bob", "both"]),
    st.sampled_from(["none", "alice", "bob"]),
    st.data(),
)
def test_verify_hits_keeps_exactly_the_valid_matching_records(
    record_specs, since, until, topics, authors, target, data
) -> None:
    if since is not None and until is not None:
        assume(since <= until)
    keys = {"alice": (ALICE.public_key,), "bob": (BOB.public_key,)}
    keys["both"] = tuple(sorted(keys["alice"] + keys["bob"]))
    q = Query(
        qid=b"q" * 16,
        asker=b"a" * 32,
        ttl=3,
        text="things",
        since=None if since is None else BASE_MS + since,
        until=None if until is None else BASE_MS + until,
        topics=tuple(sorted(topics)),
        authors=keys.get(authors, ()),
        target=keys[target][0] if target in keys else None,
    )
    records = [make(s, i) for i, s in enumerate(record_specs)]
    hits: list[Hit] = []
    for rec in records:
        for hops in data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)):
            hits.append(Hit(rec.raw, hops, bytes([hops]) * 32))
    tampered = bytearray(records[0].raw)
    tampered[-1] ^= 1  # the signature's last byte
    hits += [
        Hit(bytes(tampered), 1, b"t" * 32),
        Hit(b"garbage", 1, b"g" * 32),
        Hit(b"", 1, b"e" * 32),
    ]
    hits = data.draw(st.permutations(hits))

    def wanted(rec) -> bool:
        return (
            rec.visibility != "private"
            and (q.since is None or rec.at_ms >= q.since)
            and (q.until is None or rec.at_ms <= q.until)
            and (not q.topics or bool(set(q.topics) & set(rec.topics)))
            and (not q.authors or rec.author in q.authors)
            and (q.target is None or rec.author == q.target)
        )

    got = verify_hits(q, hits)
    assert {v.record.id for v in got} == {r.id for r in records if wanted(r)}
    assert len(got) == len({v.record.id for v in got})
    for v in got:
        assert v.hops == min(h.hops for h in hits if h.raw == v.record.raw)
        assert v.responder == bytes([v.hops]) * 32


def test_verify_hits_drops_other_kinds() -> None:
    follow = sign_record(
        ALICE, "follow", from_ms(BASE_MS), {"target": BOB.public_key, "active": True}
    )
    q = Query(qid=b"q" * 16, asker=b"a" * 32, ttl=1, text="")
    assert verify_hits(q, [Hit(follow.raw, 1, b"r" * 32)]) == []


def test_order_hits_by_overlap_prefers_overlap_then_fewer_hops() -> None:
    def vh(text: str, hops: int) -> VerifiedHit:
        return VerifiedHit(
            sign_record(ALICE, "memory", from_ms(BASE_MS + hops), text), hops, b"r" * 32
        )

    a, b, c = vh("the cat sat on the mat", 3), vh("a dog", 1), vh("cat and mat", 2)
    assert order_hits_by_overlap("Cat mat", [b, a, c]) == [c, a, b]


# --- (9) the asker authenticates who answered and bounds what it holds -----------------


def _asker(**kw) -> tuple[QueryRouter, bytes]:
    """Node 0 asking through neighbour 1, with the real record check."""
    r = QueryRouter(node_id(0), random.Random(0), sign=_IDS[0].sign, **kw)
    qid = r.start_query("things", ttl=4, timeout=5.0, now=0.0, neighbours=[node_id(1)])
    r.take_outbox()
    return r, qid


def _memory(who: Identity, n: int, size: int = 0):
    return sign_record(who, "memory", from_ms(BASE_MS + n), f"memory {n} about things " + "x" * size)


def test_a_relay_cannot_claim_another_agent_answered() -> None:
    r, qid = _asker()
    rec = _memory(ALICE, 1)
    relay = 1  # the asker's neighbour, relaying what it pretends node 7 said
    # signed by the relay but claiming node 7 answered
    forged = QueryHits(qid, 2, node_id(7), (rec.raw,)).signed(_IDS[relay].sign)
    r.receive_hits(node_id(relay), encode_hits(forged), 0.1)
    # node 7's real answer, altered by the relay (hops, records, or re-attributed)
    real = QueryHits(qid, 2, node_id(7), (rec.raw,)).signed(_IDS[7].sign)
    for altered in (
        QueryHits(qid, 1, node_id(7), real.records, real.signature),
        QueryHits(qid, 2, node_id(7), (_memory(BOB, 2).raw,), real.signature),
        QueryHits(qid, 2, node_id(relay), real.records, real.signature),
        QueryHits(b"o" * 16, 2, node_id(7), real.records, real.signature),
    ):
        r.receive_hits(node_id(relay), encode_hits(altered), 0.1)
    assert r.results(qid) == []
    assert r.stats.hits_forged == 4 and r.stats.hits_dropped == 1  # the other qid is unknown
    # the real answer, relayed unchanged, is kept with its true responder
    r.receive_hits(node_id(relay), encode_hits(real), 0.2)
    assert [(h.record.id, h.hops, h.responder) for h in r.results(qid)] == [(rec.id, 2, node_id(7))]


def test_junk_records_are_dropped_on_arrival_and_never_held() -> None:
    r, qid = _asker()
    good = _memory(ALICE, 1)
    tampered = bytearray(_memory(ALICE, 2).raw)
    tampered[-1] ^= 1
    private = sign_record(ALICE, "memory", from_ms(BASE_MS + 3), "private things", visibility="private")
    junk = (b"\x00" * limits.MAX_RECORD, bytes(tampered), private.raw, b"garbage")
    r.receive_hits(node_id(1), signed_hits(5, qid, 2, (*junk, good.raw)), 0.1)
    assert [h.record.id for h in r.results(qid)] == [good.id]
    assert r.stats.records_invalid == len(junk)
    (entry,) = r.in_flight(0.1)
    assert entry["bytes"] == len(good.raw) and entry["records"] == 1


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(2, 9), st.lists(st.integers(0, 3000), min_size=1, max_size=6)),
        min_size=1, max_size=12,
    ),
    st.integers(1, 6),
)
def test_held_records_stay_within_the_byte_and_responder_budgets(answers, limit_kib) -> None:
    budget = limit_kib * 2048
    r = QueryRouter(node_id(0), random.Random(0), sign=_IDS[0].sign, result_bytes=budget)
    qid = r.start_query("things", ttl=4, timeout=5.0, now=0.0, limit=4, neighbours=[node_id(1)])
    r.take_outbox()
    n = 0
    offered = 0
    for responder, sizes in answers:
        records = []
        for size in sizes:
            n += 1
            records.append(_memory(ALICE, n, size).raw)
        offered += len(records)
        r.receive_hits(node_id(1), signed_hits(responder, qid, 2, tuple(records)), 0.1)
        held = r.results(qid)
        assert sum(len(h.record.raw) for h in held) <= budget
        assert Counter(h.responder for h in held).most_common(1)[0][1] <= 4 if held else True
    held = r.results(qid)
    assert len(held) + r.stats.records_over_budget == offered
    assert r.stats.records_invalid == 0


def test_a_full_budget_is_counted_and_skips_verification() -> None:
    checked: list[bytes] = []

    def counting_check(q: Query, raw: bytes):
        checked.append(raw)
        return FakeRecord(raw)

    r, qid = _asker(check=counting_check, result_bytes=1000)
    r.receive_hits(node_id(1), signed_hits(3, qid, 1, (b"a" * 600, b"b" * 600, b"c" * 300)), 0.1)
    assert [h.record.raw[:1] for h in r.results(qid)] == [b"a", b"c"]
    assert checked == [b"a" * 600, b"c" * 300]
    assert r.stats.records_over_budget == 1


def test_a_late_honest_answer_gets_a_fair_share_of_a_flooded_budget() -> None:
    r, qid = _asker(check=fake_check, result_bytes=10_000)
    for sybil in range(10, 20):  # ten identities fill the budget first
        r.receive_hits(node_id(1), signed_hits(sybil, qid, 1, (bytes([sybil]) * 1000,)), 0.1)
    assert sum(len(h.record.raw) for h in r.results(qid)) == 10_000
    # junk from a newcomer is checked first and evicts nothing
    r2_check_calls = r.stats.records_over_budget
    honest = b"honest" * 50
    r.receive_hits(node_id(1), signed_hits(30, qid, 2, (honest,)), 0.2)
    held = r.results(qid)
    assert honest in {h.record.raw for h in held}
    assert sum(len(h.record.raw) for h in held) <= 10_000
    assert r.stats.records_over_budget == r2_check_calls + 1  # one sybil record gave way


def test_junk_from_a_newcomer_evicts_nothing() -> None:
    r, qid = _asker(result_bytes=3 * 2000)  # the real check: garbage fails it
    recs = tuple(_memory(ALICE, n, 1500).raw for n in range(3))
    for i, raw in enumerate(recs):
        r.receive_hits(node_id(1), signed_hits(10 + i, qid, 1, (raw,)), 0.1)
    before = [h.record.id for h in r.results(qid)]
    assert len(before) == 3
    r.receive_hits(node_id(1), signed_hits(40, qid, 1, (b"\x01" * 500,)), 0.2)
    assert [h.record.id for h in r.results(qid)] == before
    assert r.stats.records_invalid == 1 and r.stats.records_over_budget == 0


# --- context records (session neighbours for the asker's ranking) ----------------------


def _context_setup():
    """An asker 0 and a relay-and-responder 1 that answers one memory with
    two context records, over an echoing link."""
    who = _IDS[5]
    answer_rec, before, after = (_memory(who, n) for n in range(3))
    asker = QueryRouter(node_id(0), random.Random(0), sign=_IDS[0].sign)
    responder = QueryRouter(node_id(1), random.Random(1), sign=_IDS[1].sign)
    from p2pmem.protocol.query import Answered

    def answer(_q):
        return Answered([answer_rec.raw], {answer_rec.raw: [before.raw, after.raw, answer_rec.raw]})

    return asker, responder, answer, (answer_rec, before, after)


def test_context_travels_only_on_an_echoing_path_and_is_kept_apart() -> None:
    for echoing in (True, False):
        asker, responder, answer, (rec, before, after) = _context_setup()
        qid = asker.start_query("x", now=0.0, neighbours=[node_id(1)],
                                echo_peers={node_id(1)} if echoing else set(), ttl=2)
        ((_, _, query),) = asker.take_outbox()
        responder.receive_query(node_id(0), query, 0.0, [node_id(0)], answer, {node_id(0)})
        out = responder.take_outbox()
        (hits,) = [data for _, kind, data in out if kind == "hits"]
        assert decode_hits(hits).context == ((before.raw, after.raw) if echoing else ())
        for _, kind, data in out:
            (asker.receive_hits if kind == "hits" else asker.receive_echo)(node_id(1), data, 0.1)
        assert [h.record.id for h in asker.results(qid)] == [rec.id]  # context is never an answer
        assert {r.id for r in asker.context(qid)} == ({before.id, after.id} if echoing else set())
        assert asker.is_done(qid, 0.1) is echoing  # an old path waits for the deadline


def test_context_is_signed_and_private_context_is_dropped() -> None:
    asker, _responder, _answer, (rec, before, _after) = _context_setup()
    qid = asker.start_query("x", now=0.0, neighbours=[node_id(1)], echo_peers={node_id(1)}, ttl=2)
    secret = sign_record(_IDS[5], "memory", from_ms(1_700_000_000_000), "secret", visibility="private")
    good = QueryHits(qid, 1, node_id(1), (rec.raw,), context=(secret.raw,)).signed(_IDS[1].sign)
    forged = QueryHits(qid, 1, node_id(1), (rec.raw,), good.signature, context=(before.raw,))
    asker.receive_hits(node_id(1), encode_hits(forged), 0.1)  # context swapped: signature fails
    assert asker.stats.hits_forged == 1 and asker.context(qid) == []
    asker.receive_hits(node_id(1), encode_hits(good), 0.1)
    assert asker.context(qid) == [] and asker.stats.records_invalid == 1
    with pytest.raises(QueryError):  # more than MAX_CONTEXT_PER_HIT context records per answer record
        encode_hits(QueryHits(qid, 1, node_id(1), (rec.raw,), context=tuple(b"c%d" % i for i in range(6))))
