"""p2pmem.testing: the strategies and the simulated network users build on.

The first test is the worked example of docs/testing.md, verbatim.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmem.model.record import decode_record
from p2pmem.model.views import build_views
from p2pmem.testing import (
    BASE_MS,
    Fault,
    SimNetwork,
    SimulationError,
    Topology,
    fault_schedules,
    make_topology,
    record_sets,
    records,
    topologies,
)


# --- the worked example of docs/testing.md ------------------------------------
@settings(max_examples=20, deadline=None)
@given(topology=topologies(min_nodes=3, max_nodes=8), seed=st.integers(0, 1000), data=st.data())
def test_memories_survive_partitions_and_crashes(topology, seed, data):
    faults = data.draw(fault_schedules(topology.n, max_time=60.0))
    net = SimNetwork(topology.n, seed, topology=topology, replicate_all=True)
    written = [net.remember(i, f"note {i}: the build needs python 3.11") for i in range(topology.n)]
    net.schedule(faults)  # partitions, heals, crashes, restarts at virtual times
    net.run_until(70.0)  # the schedule ends healed, every node up
    net.run_until_converged(max_time=300.0)

    assert net.stores_equal()
    views = [v.comparable() for v in net.views()]
    assert all(v == views[0] for v in views)
    assert set(net.views()[0].heads) == {r.id for r in written}
# -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(records())
def test_records_are_valid_and_canonical(record):
    again = decode_record(record.raw)
    assert again == record
    assert record.ts >> 16 <= BASE_MS  # never from the future of a simulated node


@settings(max_examples=40, deadline=None)
@given(record_sets(max_size=15), st.randoms(use_true_random=False))
def test_record_sets_have_order_independent_views(history, rnd):
    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert build_views(shuffled).comparable() == build_views(history).comparable()
    for record in history:
        assert decode_record(record.raw) == record


@settings(max_examples=5, deadline=None)
@given(record_sets(min_size=4, max_size=12, visibilities=("public",)), st.integers(0, 100))
def test_a_record_set_spread_over_nodes_converges_to_its_views(history, seed):
    """Every update, retraction and follow of a history, injected on random
    nodes: once converged every node shows the views of the whole history."""
    net = SimNetwork(5, seed, topology="ring")
    rng = random.Random(seed)
    for record in history:
        net.inject(rng.randrange(5), [record])
    net.run_until_converged(max_time=300.0)
    reference = build_views(history).comparable()
    for view in net.views():
        mine = view.comparable()
        assert mine[:3] + mine[4:] == reference[:3] + reference[4:]  # [3]: purged memories


@settings(max_examples=50, deadline=None)
@given(topologies(min_nodes=1, max_nodes=20))
def test_topologies_are_connected(topology):
    assert topology.is_connected()
    assert all(0 <= i < j < topology.n for i, j in topology.edges)


@pytest.mark.parametrize("kind", ["line", "ring", "star", "grid", "tree", "random", "er"])
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_make_topology(kind, n):
    degree = 4 if kind == "random" and n > 4 else 3
    if kind == "random" and n * degree % 2:
        degree = 4
    topo = make_topology(kind, n, rng=random.Random(1), degree=degree)
    assert topo.n == n and topo.is_connected()
    if kind == "random" and n > degree:
        assert set(topo.degrees()) == {degree}
    if kind == "line":
        assert topo.diameter() == n - 1
    assert make_topology(kind, n, rng=random.Random(1), degree=degree) == topo


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 10).flatmap(lambda n: st.tuples(st.just(n), fault_schedules(n, max_time=30.0))))
def test_fault_schedules_are_well_formed(drawn):
    n, faults = drawn
    down: set[int] = set()
    partitioned = False
    last = 0.0
    for fault in faults:
        assert isinstance(fault, Fault) and fault.at >= last
        last = fault.at
        if fault.kind == "partition":
            assert not partitioned and fault.groups and all(0 <= i < n for g in fault.groups for i in g)
            partitioned = True
        elif fault.kind == "heal":
            assert partitioned
            partitioned = False
        elif fault.kind == "crash":
            assert fault.node not in down
            down.add(fault.node)
            assert len(down) < n
        else:
            assert fault.node in down
            down.remove(fault.node)
    assert not partitioned and not down  # settle=True: it ends whole


def test_same_seed_same_run():
    def run(seed):
        net = SimNetwork(12, seed)
        record = net.remember(3, "hello")
        net.run_until_converged(60.0)
        return net.events, net.now, sorted((i, a.time, a.hops) for i, a in net.arrivals[record.id].items())

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_nodes_write_through_their_agent():
    """A node's records are signed and stored by its Agent, the one writer
    (p2pmem/agent/home.py), on the virtual clock: the CLI's rules for
    update, forget and profiles, and the same bytes from the same seed."""
    from p2pmem.errors import StoreError, UsageError
    from p2pmem.model.clock import physical_ms

    def run():
        net = SimNetwork(3, 8, topology="line")
        net.run_for(1.5)
        first = net.remember(0, "the build needs python 3.11", topics=["build"], session="s1")
        assert physical_ms(first.ts) == BASE_MS + net.now_us // 1000
        newer = net.update(0, first, "the build needs python 3.12")
        # the Agent's rule: the new head keeps the topics and session of the one it supersedes
        assert (newer.root, newer.refs, newer.topics, newer.session) == (first.id, (first.id,), ("build",), "s1")
        assert newer.ts > first.ts and net.nodes[0].agent.clock.last == newer.ts
        net.run_until_converged(60.0)
        with pytest.raises(StoreError, match="only its author"):
            net.update(1, first, "not node 1's to change")
        gone = net.forget(0, newer)
        assert sorted(gone.refs) == sorted({first.id, newer.id})
        net.write(2, "profile", {"name": "n2", "description": "weather station", "skills": [],
                                 "addresses": [], "xkey": net.nodes[2].identity.message_public_key})
        profile = net.set_profile(2, "node two", ["b", "a"])
        assert profile.body["description"] == "weather station"  # kept, as `p2pmem profile` keeps it
        assert (profile.body["skills"], profile.body["addresses"]) == (["a", "b"], ["sim:2"])
        with pytest.raises(UsageError):
            net.follow(1, 1)
        net.follow(1, 2)
        net.run_until_converged(60.0)
        assert net.stores_equal() and net.views_equal()
        return [r.raw for r in net.records(0)]

    assert run() == run()


def test_step_and_time():
    net = SimNetwork(4, 1, topology="line", connect=False)
    assert net.now == 0.0
    times = []
    for _ in range(50):
        assert net.step()
        times.append(net.now)
    assert times == sorted(times)
    net.run_until_connected()
    assert net.connected()
    assert net.peers(0) == [1] and net.peers(1) == [0, 2]
    assert net.graph().edges == ((0, 1), (1, 2), (2, 3))


def test_partition_heal_crash_restart():
    net = SimNetwork(6, 2, topology="ring")
    net.partition([[0, 1, 2]])
    left = net.remember(0, "left side")
    right = net.remember(4, "right side")
    net.run_for(45.0)  # longer than dead_after: cross links time out
    assert net.holders(left.id) == 3 and net.holders(right.id) == 3
    assert not net.converged()
    net.heal()
    net.run_until_converged(120.0)
    assert net.stores_equal() and net.views_equal()

    net.crash(5)
    assert net.live_nodes() == [0, 1, 2, 3, 4]
    later = net.remember(2, "while 5 was down")
    net.run_until_converged(60.0)
    assert later.id not in net.record_ids(5)  # its store survived, without the news
    net.restart(5)
    net.run_until_converged(120.0)
    assert later.id in net.record_ids(5)
    with pytest.raises(ValueError):
        net.restart(5)


def test_join_and_quiet():
    net = SimNetwork(5, 3, topology="star")
    for i in range(5):
        net.remember(i, f"memory {i}")
    newcomer = net.join([1])
    last = net.run_until_quiet(max_time=300.0)
    assert net.now >= last
    assert len(net.record_ids(newcomer)) == 5 and net.stores_equal()


def test_ask_reaches_ttl_hops():
    """Memories stay local (replicate follows, nobody followed); on a line,
    TTL t reaches exactly the t nodes behind the asker."""
    net = SimNetwork(6, 4, topology="line", replicate_all=False)
    for i in range(6):
        net.remember(i, f"weather report from station {i}", visibility="ask" if i % 2 else "public")
    net.remember(5, "weather secret", visibility="private")
    net.run_for(2.0)
    assert len(net.record_ids(0)) == 1  # nothing replicated
    for ttl in (1, 3, 5):
        hits = net.ask(0, "weather", ttl=ttl, timeout=2.0)
        assert sorted(net.node_of(h.record.author) for h in hits) == list(range(1, ttl + 1))
        assert sorted(h.hops for h in hits) == list(range(1, ttl + 1))


def test_limits_fail_with_the_seed():
    net = SimNetwork(3, "my-seed", topology="line", max_events=10, connect=False)
    with pytest.raises(SimulationError, match="seed 'my-seed'"):
        net.run_until_connected()
    net = SimNetwork(3, 9, topology="line")
    net.partition([[0]])
    net.remember(0, "alone")
    with pytest.raises(SimulationError, match="convergence did not happen within 20 virtual seconds.*seed 9"):
        net.run_until_converged(max_time=20.0)


def test_topology_validation():
    with pytest.raises(ValueError):
        Topology(3, ((1, 0),))
    with pytest.raises(ValueError):
        SimNetwork(4, 1, topology=make_topology("line", 3))
    assert Topology.of(3, [(2, 1), (1, 0), (0, 1)]).edges == ((0, 1), (1, 2))
