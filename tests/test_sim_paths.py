"""The simulator runs the paths production runs (issue 17): send buffers
drained at link rate that call ``sent``, backpressure and ``resume``, the
ingest pipeline (``Ingest`` -> a virtual verify and group commit on the real
SQLite store -> ``ingest_done``), and the disk's faults from the fault plan:
a failed commit, a slow disk, a crash between commit and acknowledgement."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmem.model.record import Record
from p2pmem.sim.links import LinkModel
from p2pmem.testing import Fault, SimNetwork, fault_schedules, topologies


def _acknowledged_are_stored(net: SimNetwork) -> None:
    """Every record a core was told was stored (RecordsStored, or written
    there) is in that node's store, crashes and failed commits whatever."""
    for record_id, seen in net.arrivals.items():
        for index in seen:
            assert net.nodes[index].store.has(record_id), (index, record_id.hex())


def _synced_network(seed: int, records: int = 120, size: int = 400) -> tuple[SimNetwork, list[Record]]:
    net = SimNetwork(5, seed, degree=2, topology="ring")
    written = [net.remember(i % 5, f"memory {i} " + "x" * size) for i in range(records)]
    net.run_until_converged()
    return net, written


def test_the_production_inputs_are_called_in_simulation():
    """100 memories written at once on 5 nodes: every write that leaves a
    send buffer is reported with ``sent``, every ``Ingest`` ends in one
    ``ingest_done`` (in group commits), and the bursts of pushes that one
    read takes exceed the core's work per turn: ``resume`` handles the rest."""
    net, written = _synced_network(1, records=100)
    counts = net.counts
    assert counts["sent"] > 100
    assert counts["ingest_done"] == counts["ingest"] >= 4 * len(written)  # each node gets each record
    assert 0 < counts["commits"] < counts["ingest"]  # jobs verified meanwhile share a commit
    assert counts["resume"] > 0
    assert net.stores_equal()
    _acknowledged_are_stored(net)


def test_a_slow_disk_holds_the_reader_back_and_the_sync_completes():
    """A node joins a network holding 3 MB of records with a disk 2000
    times slower: its ingest budget (limits.MAX_INGEST_PENDING) fills, its
    reader stops reading the peer until ``ingest_done`` makes room, and it
    ends up with everything."""
    net, written = _synced_network(2, records=100, size=30_000)
    late = net.join([0, 1])
    net.apply_fault(Fault(0.0, "slow-disk", node=late, factor=2000.0, duration=30.0))
    before = dict(net.counts)
    net.run_until_converged(max_time=120.0)
    assert set(net.record_ids(late)) == {r.id for r in written}
    assert net.stores_equal()
    assert net.counts["stalls"] > before["stalls"]
    assert net.counts["ingest_done"] == net.counts["ingest"]
    _acknowledged_are_stored(net)


def test_a_failed_commit_and_a_crash_before_the_ack_mid_sync_lose_nothing_acknowledged():
    net, written = _synced_network(4)
    late = net.join([0, 1])
    node = net.nodes[late]
    net.apply_fault(Fault(0.0, "commit-fail", node=late))
    net.run_while(lambda: net.counts["failed_commits"] == 0, 30.0, what="a failed commit")
    assert node.alive and node.store.count() < len(written)  # mid-sync
    # the next commit is stored, then the node dies before its core hears of it
    net.apply_fault(Fault(net.now, "crash-before-ack", node=late, duration=2.0))
    net.run_while(lambda: net.counts["crashes_before_ack"] == 0, 30.0, what="a crash before the ack")
    assert not node.alive
    held = set(net.record_ids(late))
    assert held  # the commit before the crash is in the store...
    _acknowledged_are_stored(net)
    net.run_while(lambda: not node.alive, 10.0, what="the restart")  # ...the node restarts from it
    net.run_until_converged(max_time=200.0)  # and catches up
    assert node.alive and node.incarnation == 2
    assert held <= set(net.record_ids(late))
    assert net.stores_equal()
    assert set(net.record_ids(late)) == {r.id for r in written}
    _acknowledged_are_stored(net)
    assert net.protocol_errors() == 0


def test_store_faults_replay_byte_for_byte():
    def run() -> tuple[str, dict[str, int]]:
        net, _ = _synced_network(3, records=40)
        late = net.join([0, 2])
        net.schedule([Fault(0.0, "commit-fail", node=late), Fault(0.0, "crash-before-ack", node=4, duration=1.0),
                      Fault(0.0, "slow-disk", node=late, factor=50.0, duration=5.0)])
        net.run_for(0.001)
        net.remember(3, "pushed to node 4, whose disk is about to fail")
        net.run_until_converged(max_time=200.0)
        return net.wire_digest(), dict(net.counts)

    first, second = run(), run()
    assert first == second
    assert first[1]["failed_commits"] == 1 and first[1]["crashes_before_ack"] == 1


def test_a_slow_link_fills_the_send_buffer_and_sent_drains_it():
    """At 20 kB/s the records of a sync take seconds to leave: ``sent`` is
    called as they go, far later than they were queued, and the network
    still converges."""
    net = SimNetwork(2, 4, topology="line", link=LinkModel(rate_bytes_s=20_000.0, window_bytes=16_384))
    written = [net.remember(0, f"memory {i} " + "y" * 500) for i in range(60)]
    start = net.now
    net.run_until_converged(max_time=120.0)
    assert net.now - start > 1.0  # 60 * ~700 bytes at 20 kB/s
    assert set(net.record_ids(1)) == {r.id for r in written}
    assert net.counts["sent"] > 60


@settings(max_examples=8, deadline=None)
@given(topology=topologies(min_nodes=3, max_nodes=6), seed=st.integers(0, 1000), data=st.data())
def test_memories_survive_store_faults_partitions_and_crashes(topology, seed, data):
    faults = data.draw(fault_schedules(topology.n, max_time=40.0, disks=True))
    net = SimNetwork(topology.n, seed, topology=topology, replicate_all=True)
    written = [net.remember(i, f"note {i}") for i in range(topology.n)]
    net.schedule(faults)
    for i in range(topology.n):  # writes while the faults happen
        net.call_at(net.now + 5.0 * i, lambda i=i: net.nodes[i].alive and written.append(
            net.remember(i, f"later note {i}")))
    net.run_until(50.0)
    for node in net.nodes:  # a crash-before-ack may still be pending: let it happen or clear it
        node.disk.crash_commits = 0
        if not node.alive:
            net.restart(node.index)
    net.run_until_converged(max_time=300.0)
    assert net.stores_equal()
    assert set(net.views()[0].heads) == {r.id for r in written}
    _acknowledged_are_stored(net)


def test_a_partition_with_one_commit_in_ten_failing_converges_to_what_was_written():
    """The partition scenario (its checks: identical sets and views, nothing
    lost) with every node's disk failing 10% of its commits (each node's own
    seeded generator): the failed jobs' records come again by reconciliation."""
    from simulations.scenarios import Options, partition

    result = partition(Options(nodes=10, seed=5, writes=8, duration=40.0, commit_fail=0.1))
    assert result.ok, result.text()
    assert result.network.counts["failed_commits"] > 0
    assert "commit-fail=0.1" in result.text()
