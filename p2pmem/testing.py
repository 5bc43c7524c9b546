"""Testing tools for p2pmem, as :mod:`trio.testing` is for trio.

Two things live here, for p2pmem's own tests, its simulations and your
property-based suites alike:

* **Hypothesis strategies**: :func:`records`, :func:`record_sets`,
  :func:`topologies` and :func:`fault_schedules`.
* **A simulated network**, :class:`SimNetwork`: many nodes in one process,
  each the very protocol core, store and views a real node runs
  (:class:`p2pmem.protocol.core.NodeCore` over a :class:`p2pmem.storage.store.Store` in SQLite
  ``:memory:``), driven by a seeded discrete-event loop on virtual time
  instead of trio and sockets. You build it, write memories, break links,
  crash nodes, step it or run it until it is quiet, and inspect every store.

The simulated network itself lives in :mod:`p2pmem.sim` (the virtual network
and clock that drive the same NodeCore as the trio node); every name is
re-exported here, so ``from p2pmem.testing import SimNetwork`` keeps working.
See :mod:`p2pmem.sim.network` for its determinism and network model
(docs/simulations.md).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import Record, sign_record
from p2pmem.sim.disk import DiskModel
from p2pmem.sim.links import LinkModel
from p2pmem.sim.network import (
    BASE_MS,
    EPOCH_S,
    Arrival,
    SimNetwork,
    SimNode,
    SimulationError,
    sim_timing,
)
from p2pmem.sim.schedule import FAULT_KINDS, Fault
from p2pmem.sim.topology import TOPOLOGY_KINDS, Topology, bfs_distances, make_topology

__all__ = [
    "Arrival",
    "BASE_MS",
    "DiskModel",
    "EPOCH_S",
    "FAULT_KINDS",
    "TOPOLOGY_KINDS",
    "Fault",
    "bfs_distances",
    "LinkModel",
    "SimNetwork",
    "SimNode",
    "SimulationError",
    "Topology",
    "fault_schedules",
    "identities",
    "make_topology",
    "record_sets",
    "records",
    "sim_timing",
    "test_identity",
    "topologies",
]


# =============================================================================
# Identities and records (strategies)
# =============================================================================


@functools.cache
def test_identity(index: int) -> Identity:
    """Identity number ``index`` of a fixed pool: the same keys in every run."""
    ed = hashlib.sha256(b"p2pmem.testing identity ed25519 %d" % index).digest()
    x = hashlib.sha256(b"p2pmem.testing identity x25519 %d" % index).digest()
    return Identity.from_seeds(ed, x)


test_identity.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def identities(pool: int = 6) -> st.SearchStrategy[Identity]:
    """One of the first ``pool`` pool identities (shrinks to identity 0)."""
    return st.integers(0, pool - 1).map(test_identity)


_words = st.sampled_from(
    ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
)
_texts = st.one_of(
    st.lists(_words, min_size=1, max_size=6).map(" ".join),
    st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != ""),
)
_topics = st.lists(st.text(min_size=1, max_size=12), max_size=3)
_record_ids = st.binary(min_size=32, max_size=32)
_times_ms = st.integers(0, 10 * 24 * 3600 * 1000).map(lambda ms: BASE_MS - ms)


def _profile_body(draw: st.DrawFn, author: Identity) -> dict[str, Any]:
    return {
        "name": draw(st.text(max_size=20)),
        "description": draw(st.text(max_size=20)),
        "skills": draw(st.lists(st.text(min_size=1, max_size=12), max_size=3)),
        "addresses": [],
        "xkey": author.message_public_key,
    }


@st.composite
def records(
    draw: st.DrawFn,
    kinds: Sequence[str] = ("memory", "retract", "profile", "follow", "endorse"),
    authors: st.SearchStrategy[Identity] | None = None,
    visibilities: Sequence[str] = ("public", "ask", "private"),
) -> Record:
    """One valid signed record (each stands alone: refs name random ids).

    Timestamps are hybrid logical clocks within the ten days before
    :data:`BASE_MS`, where a simulated node's virtual clock starts, so
    simulated nodes accept them (nodes refuse records from the future).
    """
    kind = draw(st.sampled_from(tuple(kinds)))
    author = draw(authors if authors is not None else identities())
    ts = from_ms(draw(_times_ms), draw(st.integers(0, 3)))
    common = {"topics": draw(_topics), "session": draw(st.text(max_size=12))}
    if kind == "memory":
        return sign_record(author, "memory", ts, draw(_texts),
                           visibility=draw(st.sampled_from(tuple(visibilities))), **common)
    if kind == "retract":
        refs = draw(st.lists(_record_ids, min_size=1, max_size=2))
        return sign_record(author, "retract", ts, "", refs=refs, **common)
    if kind == "profile":
        return sign_record(author, "profile", ts, _profile_body(draw, author), **common)
    if kind == "follow":
        body = {"target": draw(identities()).public_key, "active": draw(st.booleans())}
        return sign_record(author, "follow", ts, body, **common)
    if kind == "endorse":
        body = {"target": draw(identities()).public_key, "what": draw(st.sampled_from(("agent", "memory")))}
        return sign_record(author, "endorse", ts, body, **common)
    raise ValueError(f"records() cannot make kind {kind!r}")


@st.composite
def record_sets(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 20, authors: int = 4,
    visibilities: Sequence[str] = ("public", "public", "ask"),
) -> list[Record]:
    """A consistent history, in creation order: memories, updates (supersede)
    and retractions of earlier memories by their authors, concurrent updates
    of one version, profiles, follows and endorsements. Timestamps increase
    from a day before :data:`BASE_MS` by at most a minute a record, except
    that concurrent updates share one. New memories take a visibility from
    ``visibilities`` (``ask`` and ``private`` memories never travel by
    gossip: pass ``("public",)`` for a set that must replicate whole)."""
    ops = draw(st.lists(
        st.sampled_from(("remember", "remember", "update", "concurrent", "retract", "profile",
                         "follow", "endorse")),
        min_size=min_size, max_size=max_size,
    ))
    out: list[Record] = []
    memories: list[Record] = []  # memories that may be updated or retracted
    ms = BASE_MS - 24 * 3600 * 1000
    for op in ops:
        ms += draw(st.integers(1, 60_000))
        ts = from_ms(ms)
        author = draw(identities(authors))
        if op in ("update", "concurrent", "retract") and memories:
            target = draw(st.sampled_from(memories))
            owner = next(test_identity(i) for i in range(authors)
                         if test_identity(i).public_key == target.author)
            if op == "retract":
                out.append(sign_record(owner, "retract", ts, "", refs=sorted({target.lineage, target.id})))
                memories = [m for m in memories if m.lineage != target.lineage]
                continue
            copies = 2 if op == "concurrent" else 1
            for k in range(copies):
                new = sign_record(owner, "memory", ts, f"{draw(_texts)} v{k}",
                                  refs=[target.id], root=target.lineage, topics=list(target.topics))
                out.append(new)
                memories.append(new)
            continue
        if op in ("remember", "update", "concurrent", "retract"):
            new = sign_record(author, "memory", ts, draw(_texts), topics=draw(_topics),
                              visibility=draw(st.sampled_from(tuple(visibilities))))
            out.append(new)
            memories.append(new)
        elif op == "profile":
            out.append(sign_record(author, "profile", ts, _profile_body(draw, author)))
        elif op == "follow":
            other = draw(identities(authors))
            if other.public_key != author.public_key:
                body = {"target": other.public_key, "active": draw(st.booleans())}
                out.append(sign_record(author, "follow", ts, body))
        else:
            body = {"target": draw(identities(authors)).public_key, "what": "agent"}
            out.append(sign_record(author, "endorse", ts, body))
    return out


# =============================================================================
# Topologies and fault schedules (strategies)
# =============================================================================


@st.composite
def topologies(
    draw: st.DrawFn, min_nodes: int = 2, max_nodes: int = 12, kinds: Sequence[str] = ("line", "ring", "star", "grid", "random"),
) -> Topology:
    """Connected graphs of ``min_nodes..max_nodes`` nodes. ``random`` is a
    random spanning tree plus a few random extra links, drawn so that it
    shrinks towards a line."""
    if min_nodes < 1 or max_nodes < min_nodes:
        raise ValueError("need 1 <= min_nodes <= max_nodes")
    n = draw(st.integers(min_nodes, max_nodes))
    kind = draw(st.sampled_from(tuple(kinds)))
    if kind != "random":
        return make_topology(kind, n)
    edges = [(draw(st.integers(0, i - 1)), i) for i in range(1, n)]
    if n > 2:
        pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
        edges += draw(st.lists(pairs, max_size=n))
    return Topology.of(n, edges, "random")


@st.composite
def fault_schedules(
    draw: st.DrawFn, nodes: int, *, max_time: float = 120.0, max_faults: int = 6,
    partitions: bool = True, crashes: bool = True, settle: bool = True, disks: bool = False,
) -> tuple[Fault, ...]:
    """Well-formed fault schedules for ``nodes`` nodes over ``max_time``
    virtual seconds: a heal only while partitioned, a restart only of a
    crashed node, at least one node always up. With ``settle`` the schedule
    ends healed with every node restarted, so the network must converge.
    With ``disks`` also failures of a node's store: a failed commit, a slow
    disk, a crash between a commit and its acknowledgement (the node comes
    back by itself within 5 s)."""
    kinds = [k for k, on in (("partition", partitions), ("crash", crashes), ("disk", disks)) if on]
    if nodes < 2 or not kinds:
        return ()
    times = sorted(draw(st.lists(st.integers(1, int(max_time * 10)), max_size=max_faults)))
    out: list[Fault] = []
    partitioned = False
    down: list[int] = []
    for tenth in times:
        at = tenth / 10
        options = []
        if partitions:
            options.append("heal" if partitioned else "partition")
        if crashes:
            if len(down) < nodes - 1:
                options.append("crash")
            if down:
                options.append("restart")
        if disks:
            options += ["commit-fail", "slow-disk", "crash-before-ack"]
        kind = draw(st.sampled_from(options))
        if kind in ("commit-fail", "slow-disk", "crash-before-ack"):
            out.append(_disk_fault(draw, at, kind, nodes))
        elif kind == "partition":
            side = draw(st.lists(st.integers(0, nodes - 1), min_size=1, max_size=nodes - 1, unique=True))
            out.append(Fault(at, "partition", groups=(tuple(sorted(side)),)))
            partitioned = True
        elif kind == "heal":
            out.append(Fault(at, "heal"))
            partitioned = False
        elif kind == "crash":
            node = draw(st.sampled_from([i for i in range(nodes) if i not in down]))
            down.append(node)
            out.append(Fault(at, "crash", node=node))
        else:
            node = draw(st.sampled_from(down))
            down.remove(node)
            out.append(Fault(at, "restart", node=node))
    if settle:
        if partitioned:
            out.append(Fault(max_time, "heal"))
        out.extend(Fault(max_time, "restart", node=node) for node in down)
    return tuple(out)


def _disk_fault(draw: st.DrawFn, at: float, kind: str, nodes: int) -> Fault:
    node = draw(st.integers(0, nodes - 1))
    if kind == "slow-disk":
        return Fault(at, kind, node=node, factor=draw(st.sampled_from((2.0, 20.0, 500.0))),
                     duration=draw(st.integers(1, 10)) / 1.0)
    if kind == "crash-before-ack":
        return Fault(at, kind, node=node, duration=draw(st.integers(1, 50)) / 10)
    return Fault(at, kind, node=node)
