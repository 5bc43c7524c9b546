"""Termination of a flooded query (the echo wave, p2pmem/protocol/wave.py),
stated as properties over the sans-IO QueryRouter in a simulated network.

The simulator is event-driven with a virtual clock: every message gets its
own delay (so messages overtake each other, even on one link) or is lost,
as hypothesis chooses; each router is woken at its ``next_deadline``. The
graphs have cycles, so queries reach nodes by several paths. Some nodes may
be "old" (no peer lists them as echoing), as in a mixed network.

Laws: the asker finishes exactly once, never after its deadline, with
exactly the hits that reached it before it finished (none after); without
losses and with short delays it finishes early, with every record of every
node the flood reached; a silent branch costs only its parent's budget.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmem.model.identity import Identity
from p2pmem.protocol.query import Answered, Query, QueryRouter, decode_hits, decode_query
from p2pmem.protocol.wave import HOP_MARGIN_S, SHRINK

_IDS = [Identity.from_seeds(bytes([i + 1]) * 32, bytes([i + 101]) * 32) for i in range(16)]
KEY = {ident.public_key: i for i, ident in enumerate(_IDS)}


@dataclass(frozen=True)
class Fake:
    raw: bytes


def accept(_q: Query, raw: bytes) -> Fake:
    return Fake(raw)


@dataclass
class Sim:
    n: int
    edges: set[tuple[int, int]]
    old: frozenset[int] = frozenset()
    delay: object = None  # callable(src, dst, kind) -> float | None (None: lost)
    now: float = 0.0
    routers: list[QueryRouter] = field(default_factory=list)
    queue: list[tuple[float, int, int, int, str, bytes]] = field(default_factory=list)
    seq: int = 0
    finished: list[tuple[float, bytes]] = field(default_factory=list)
    arrived: list[tuple[float, bytes]] = field(default_factory=list)  # hits messages at the asker
    result: dict[bytes, set[bytes]] = field(default_factory=dict)
    summary: dict[bytes, dict] = field(default_factory=dict)
    collection: dict[bytes, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    took: dict[bytes, set[int]] = field(default_factory=dict)  # the nodes that had taken it, at the finish
    taken: set[tuple[int, bytes]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.routers = [QueryRouter(_IDS[i].public_key, random.Random(i), sign=_IDS[i].sign, check=accept,
                                    burst=10_000, rate=10_000) for i in range(self.n)]

    def neighbours(self, i: int) -> list[bytes]:
        return [_IDS[j].public_key for j in range(self.n) if (min(i, j), max(i, j)) in self.edges]

    def echo_peers(self, i: int) -> set[bytes]:
        return set() if i in self.old else {k for k in self.neighbours(i) if KEY[k] not in self.old}

    def stats(self, i: int) -> tuple[int, tuple[int, int]]:
        """Node i's collection statistics: i + 1 memories, two query terms."""
        return i + 1, (i % 2, 1)

    def records(self, i: int) -> list[bytes]:
        return [f"record {i}.{k}".encode() for k in range(i % 3)]

    def flush(self, i: int) -> None:
        for peer, kind, data in self.routers[i].take_outbox():
            dst = KEY[peer]
            wait = self.delay(i, dst, kind) if self.delay else 0.01
            if wait is not None:
                self.seq += 1
                heapq.heappush(self.queue, (self.now + wait, self.seq, i, dst, kind, data))
        for qid in self.routers[i].take_finished():
            self.finished.append((self.now, qid))
            # what the asker hands over when it finishes (its state lingers, then goes)
            self.result[qid] = {h.record.raw for h in self.routers[i].results(qid)}
            self.summary[qid] = self.routers[i].summary(qid)
            self.collection[qid] = self.routers[i].collection(qid)
            self.took[qid] = {j for j, q in self.taken if q == qid}

    def ask(self, asker: int, ttl: int, timeout: float) -> bytes:
        self.asker = asker
        r = self.routers[asker]
        qid = r.start_query("q", now=self.now, neighbours=self.neighbours(asker),
                            echo_peers=self.echo_peers(asker), ttl=ttl, timeout=timeout)
        self.flush(asker)
        return qid

    def run(self, until: float) -> None:
        while True:
            timers = [(t, i) for i, r in enumerate(self.routers) if (t := r.next_deadline()) is not None]
            next_timer = min(timers, default=(float("inf"), -1))
            next_msg = self.queue[0][0] if self.queue else float("inf")
            at = min(next_timer[0], next_msg)
            if at > until:
                return
            self.now = max(self.now, at)
            if next_msg <= next_timer[0]:
                _, _, src, dst, kind, data = heapq.heappop(self.queue)
                self.deliver(src, dst, kind, data)
                self.flush(dst)
            else:
                i = next_timer[1]
                self.routers[i].handle_timer(self.now)
                self.flush(i)

    def deliver(self, src: int, dst: int, kind: str, data: bytes) -> None:
        r, peer = self.routers[dst], _IDS[src].public_key
        if kind == "query":
            r.receive_query(peer, data, self.now, self.neighbours(dst),
                            lambda q, d=dst: Answered(self.records(d), stats=self.stats(d)), self.echo_peers(dst))
            qid = decode_query(data).qid
            if dst != self.asker and r.has_seen(qid, self.now):
                self.taken.add((dst, qid))
        elif kind == "hits":
            if dst == self.asker and not r.is_done(decode_hits(data).qid, self.now):
                self.arrived.append((self.now, data))
            r.receive_hits(peer, data, self.now)
        else:
            r.receive_echo(peer, data, self.now)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[int, set[tuple[int, int]]]:
    n = draw(st.integers(2, 10))
    edges = {(i - 1, i) for i in range(1, n)} if draw(st.booleans()) else {
        (draw(st.integers(0, i - 1)), i) for i in range(1, n)}  # a line or a random tree...
    for _ in range(draw(st.integers(0, 2 * n))):  # ...plus chords: cycles, several paths
        a, b = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        if a != b:
            edges.add((min(a, b), max(a, b)))
    return n, edges


def run_one(data: st.DataObject, *, lossy: bool, slow: bool) -> tuple[Sim, bytes, float]:
    n, edges = data.draw(graphs())
    old = frozenset(data.draw(st.sets(st.integers(1, n - 1), max_size=n // 2)))
    timeout = data.draw(st.sampled_from([0.5, 2.0, 10.0]))
    limit = 2.0 * timeout if slow else 0.02

    def delay(_src: int, _dst: int, _kind: str) -> float | None:
        if lossy and data.draw(st.integers(0, 9)) == 0:
            return None
        return data.draw(st.floats(0.0, limit))

    sim = Sim(n, edges, old, delay)
    qid = sim.ask(0, data.draw(st.integers(1, 5)), timeout)
    sim.run(until=timeout + 60.0)
    return sim, qid, timeout


def check_finished_once_in_time(sim: Sim, qid: bytes, timeout: float) -> None:
    mine = [t for t, q in sim.finished if q == qid]
    assert len(mine) == 1, f"the asker finished {len(mine)} times"
    assert mine[0] <= timeout + 1e-9, f"finished at {mine[0]}, its timeout is {timeout}"
    expected = {raw for _, data in sim.arrived for raw in decode_hits(data).records}
    assert sim.result[qid] == expected


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_order_and_losses_finish_exactly_once_in_time_with_what_arrived(data) -> None:
    sim, qid, timeout = run_one(data, lossy=True, slow=True)
    check_finished_once_in_time(sim, qid, timeout)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_without_losses_the_asker_gets_every_record_the_flood_reached(data) -> None:
    sim, qid, timeout = run_one(data, lossy=False, slow=False)
    check_finished_once_in_time(sim, qid, timeout)
    took = sim.took[qid]
    got = sim.result[qid]
    assert got == {raw for i in took for raw in sim.records(i)}
    summary = sim.summary[qid]
    if not sim.old:  # every node echoes: done early, and the echoes counted every node and its statistics
        assert summary["complete"] and summary["reached"] == len(took)
        docs = sum(sim.stats(i)[0] for i in took)
        assert sim.collection[qid] == (docs, (sum(i % 2 for i in took), len(took)) if took else ()) or (
            not took and sim.collection[qid] == (0, ()))
        assert summary["elapsed_s"] < timeout
    elif all(KEY[k] in sim.old for k in sim.neighbours(0)):
        assert summary["elapsed_s"] == timeout  # only old neighbours: the old deadline


def test_a_silent_branch_costs_only_its_parents_budget() -> None:
    """asker 0 - 1 - 2 - 3, and 4 hanging off 2 swallows everything: the
    asker is done when 2 gives up on 4 (2's budget), long before its timeout,
    with the answers of 1, 2 and 3."""
    timeout = 10.0

    def delay(src: int, _dst: int, _kind: str) -> float | None:
        return None if src == 4 else 0.001

    sim = Sim(5, {(0, 1), (1, 2), (2, 3), (2, 4)}, delay=delay)
    qid = sim.ask(0, 4, timeout)
    sim.run(until=timeout + 60)
    ((at, _),) = sim.finished
    b1 = timeout * SHRINK - HOP_MARGIN_S
    b2 = b1 * SHRINK - HOP_MARGIN_S  # node 2's budget: it waits that long for node 4
    assert b2 <= at < b2 + 0.01, at
    summary = sim.summary[qid]
    assert summary["complete"] is False and summary["reached"] == 3  # 1, 2 and 3 echoed; 4 never did
    assert sim.result[qid] == {
        raw for i in (1, 2, 3) for raw in sim.records(i)}


def test_a_duplicate_is_covered_at_once_and_a_lone_asker_is_done_at_once() -> None:
    sim = Sim(3, {(0, 1), (1, 2), (0, 2)})  # a triangle: 1 and 2 get the query twice
    qid = sim.ask(0, 3, 5.0)
    sim.run(until=1.0)
    ((at, _),) = sim.finished
    assert at < 0.1
    stats = [r.stats for r in sim.routers]
    assert sum(s.duplicates for s in stats) == 2 and sum(s.echoes_sent for s in stats) == 4  # 2 covered, 2 done
    assert sim.summary[qid]["reached"] == 2
    alone = Sim(1, set())
    alone.ask(0, 3, 5.0)
    assert [t for t, _ in alone.finished] == [0.0]
