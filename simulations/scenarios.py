"""The scenarios of ``python -m simulations``: dissemination, partition, churn
and query. Each builds a :class:`p2pmem.testing.SimNetwork` (the real core and
store of every node on a virtual network), runs it, checks what must hold,
and returns a :class:`simulations.report.Result`.

Everything random comes from the seed: the network's own generators, and
``net.rng("scenario")``-style generators for what a scenario decides (who
writes, who leaves, who asks). The summary holds no wall-clock figure, so the
same arguments print the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from p2pmem import limits
from p2pmem.model.record import Record
from p2pmem.model.views import build_views
from p2pmem.testing import DiskModel, LinkModel, SimNetwork, SimulationError, bfs_distances
from simulations.report import Result, Table, num, pct, quantile

# After the topology is up, let the first reconciliations finish before a
# scenario starts measuring.
SETTLE_S = 2.0
# After the last node got a record, how long dissemination keeps counting the
# copies still in flight (duplicates).
TAIL_S = 5.0


@dataclass
class Options:
    """Every knob of every scenario (the CLI's flags)."""

    nodes: int = 30
    seed: int = 1
    topology: str = "random"
    degree: int = 4
    latency_ms: float = 40.0
    latency_sigma: float = 0.5
    jitter: float = 0.1
    spike: float = 0.0
    loss: float = 0.0
    connect_fail: float = 0.0
    link_mbit: float = 100.0  # what one direction of a connection carries
    window_kib: float = 256.0  # bytes on the wire or unread before a sender waits
    commit_fail: float = 0.0  # probability that a node's commit fails
    max_time: float = 600.0
    max_events: int = 50_000_000
    # dissemination
    records: int = 1
    # partition
    groups: int = 2
    writes: int = 20
    # partition length, or churn length (default 60 and 300 virtual seconds)
    duration: float | None = None
    # churn
    churn: float = 0.3
    rate: float = 1.0
    sample: float | None = None
    # query
    memories: int = 3
    queries: int = 10
    max_ttl: int = 6
    timeout: float = 3.0
    min_recall: float = 0.8

    def link_model(self) -> LinkModel:
        return LinkModel(
            latency_ms=self.latency_ms, latency_sigma=self.latency_sigma, jitter_sigma=self.jitter,
            spike=self.spike, reset=self.loss, connect_fail=self.connect_fail,
            rate_bytes_s=self.link_mbit * 125_000, window_bytes=max(1, round(self.window_kib * 1024)),
        )

    def rerun(self, scenario: str) -> str:
        """The command that repeats this run."""
        parts = [f"python -m simulations {scenario} --nodes {self.nodes} --seed {self.seed}"]
        default = Options()
        for f in fields(self):
            if f.name in ("nodes", "seed"):
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                parts.append(f"--{f.name.replace('_', '-')} {value:g}" if isinstance(value, float)
                             else f"--{f.name.replace('_', '-')} {value}")
        return " ".join(parts)

    def header(self) -> str:
        return (
            f"nodes={self.nodes} seed={self.seed} topology={self.topology} degree={self.degree} "
            f"latency={self.latency_ms:g}ms (lognormal sigma {self.latency_sigma:g}, jitter {self.jitter:g}) "
            f"spike={self.spike:g} loss={self.loss:g} connect-fail={self.connect_fail:g} "
            f"link={self.link_mbit:g}Mbit/s window={self.window_kib:g}KiB"
            + (f" commit-fail={self.commit_fail:g}" if self.commit_fail else "")
        )


class Progress:
    """Where a scenario reports how far it got (the CLI shows a bar)."""

    def phase(self, description: str, start: float, end: float) -> None:
        """A phase running from virtual time ``start`` to at most ``end``."""

    def update(self, net: SimNetwork) -> None:
        """Called every few thousand events."""

    def done(self) -> None:
        pass


NO_PROGRESS = Progress()


def _network(opts: Options, progress: Progress, *, replicate_all: bool, membership: str = "fixed") -> SimNetwork:
    net = SimNetwork(
        opts.nodes, opts.seed, topology=opts.topology, degree=opts.degree, replicate_all=replicate_all,
        link=opts.link_model(), disk=DiskModel(commit_fail=opts.commit_fail), membership=membership,
        connect=False, max_events=opts.max_events,
        max_time=10_000_000.0,
    )
    net.on_progress = progress.update
    progress.phase("connecting", 0.0, opts.max_time)
    net.run_until_connected(opts.max_time)
    net.run_for(SETTLE_S)
    return net


def _result(name: str, opts: Options) -> Result:
    return Result(name, opts.header(), opts.rerun(name), opts.seed)


def _guard(name: str, opts: Options, body: Callable[[Result], None]) -> Result:
    """Run a scenario body; a simulation failure becomes a failed check."""
    result = _result(name, opts)
    try:
        body(result)
    except SimulationError as exc:
        result.error = str(exc)
    return result


def _network_table(net: SimNetwork) -> Table:
    topo = net.topology
    degrees = topo.degrees()
    links = [net._link_latency(i, j) / 1000 for i, j in topo.edges]
    table = Table("network", ["property", "value"])
    table.add("nodes", topo.n)
    table.add("links", len(topo.edges))
    table.add("degree (mean / min / max)", f"{sum(degrees) / topo.n:.2f} / {min(degrees)} / {max(degrees)}")
    table.add("diameter (hops)", topo.diameter())
    if links:
        table.add("one-way link latency ms (p50 / p90 / max)",
                  f"{quantile(links, 0.5):.1f} / {quantile(links, 0.9):.1f} / {max(links):.1f}")
    return table


def _footer(net: SimNetwork) -> list[str]:
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(net.close_reasons.items())) or "none"
    received = sum(nd.records_received for nd in net.nodes)
    duplicates = sum(nd.duplicates for nd in net.nodes)
    sent = sum(nd.bytes_sent for nd in net.nodes)
    return [
        f"events {net.events:,}; virtual time {net.now:.3f} s; wire bytes {sent:,}",
        f"records received from peers {received:,}, of which duplicates {duplicates:,}",
        f"connections closed, by reason: {reasons}",
        "shell: {sent:,} writes left send buffers (sent), {resume:,} resumed turns, reads held back "
        "{stalls:,} times; {ingest:,} ingest jobs in {commits:,} commits ({failed_commits} failed, "
        "{crashes_before_ack} crashes before the ack)".format(**net.counts),
        f"wire digest (every byte delivered, handshakes included) {net.wire_digest()[:32]}",
    ]


# =============================================================================
# dissemination
# =============================================================================


def dissemination(opts: Options, progress: Progress = NO_PROGRESS) -> Result:
    """One record written on one node (``--records K``: K records on K
    nodes at once): time and hops until every node has it, duplicates
    received per node, bytes per node. Compared with flooding's exact cost
    and with the log N rounds of gossip."""

    def body(result: Result) -> None:
        net = _network(opts, progress, replicate_all=True)
        result.network = net
        result.tables.append(_network_table(net))
        topo = net.topology
        n = topo.n
        rng = net.rng("scenario")
        sources = rng.sample(range(n), min(max(1, opts.records), n))
        before = [(nd.bytes_sent, nd.records_received, nd.duplicates) for nd in net.nodes]
        start = net.now
        records = [net.remember(s, f"dissemination record {k} written on node {s}", topics=["sim"])
                   for k, s in enumerate(sources)]
        live = len(net.live_nodes())
        progress.phase("disseminating", start, start + opts.max_time)
        try:
            net.run_while(lambda: any(net.holders(r.id) < live for r in records), opts.max_time,
                          what="dissemination to every node")
        except SimulationError as exc:
            result.error = str(exc)
        everywhere = net.now
        net.run_for(TAIL_S)

        times: list[float] = []
        hops: list[int] = []
        distances: list[int] = []
        for source, record in zip(sources, records, strict=True):
            dist = topo.distances(source)
            for index, arrival in net.arrivals.get(record.id, {}).items():
                if index == source:
                    continue
                times.append((arrival.time - start) * 1000)
                if arrival.hops is not None:
                    hops.append(arrival.hops)
                distances.append(dist[index])
        k = len(records)
        got = sum(net.holders(r.id) for r in records)
        sent = [nd.bytes_sent - b[0] for nd, b in zip(net.nodes, before, strict=True)]
        received = [nd.records_received - b[1] for nd, b in zip(net.nodes, before, strict=True)]
        dups = [nd.duplicates - b[2] for nd, b in zip(net.nodes, before, strict=True)]
        edges = len(topo.edges)
        d = sum(topo.degrees()) / n
        flood_dups = k * (2 * edges - 2 * (n - 1))  # every holder pushes to all but its sender
        ecc = [max(topo.distances(s)) for s in sources]

        table = Table(f"dissemination of {k} record(s) from node(s) {', '.join(map(str, sources[:8]))}"
                      + (" ..." if k > 8 else ""), ["metric", "measured", "theory / bound"])
        if times:
            table.add("time until 50% of nodes have it (ms)", num(quantile(times, 0.5)), "")
            table.add("time until 90% (ms)", num(quantile(times, 0.9)), "")
            table.add("time until 99% (ms)", num(quantile(times, 0.99)), "")
            table.add("time until every node has it (ms)", num(max(times)), "")
        if hops:
            table.add("hops to the last node (max)", max(hops),
                      f"{max(ecc)} (source eccentricity, BFS)")
            table.add("hops (mean)", num(sum(hops) / len(hops), 2),
                      f"{sum(distances) / len(distances):.2f} (mean BFS distance)")
            if d > 2:
                table.add("gossip rounds, log N / log(d-1)", "", f"{math.log(n) / math.log(d - 1):.2f}")
            table.add("gossip rounds, log2 N", "", f"{math.log2(n):.2f}")
        table.add("records received per node (mean)", num(sum(received) / n, 2),
                  f"{k * (2 * edges - (n - 1)) / n:.2f} (flooding: (2|E| - (N-1)) / N)")
        table.add("duplicates per node (mean)", num(sum(dups) / n, 2),
                  f"{flood_dups / n:.2f} (flooding: (2|E| - 2(N-1)) / N = d - 2 + 2/N)")
        table.add("duplicates per node (max)", max(dups), "")
        table.add("bytes sent per node (mean)", num(sum(sent) / n, 0), "")
        table.add("bytes sent per node (max)", max(sent), "")
        table.note = (f"window: from the write to {TAIL_S:g} s after the last node got it "
                      f"(at {1000 * (everywhere - start):.1f} ms); bytes are all wire bytes in that window")
        result.tables.append(table)

        if hops:
            histogram = Table("hops: first arrival vs shortest path", ["hops", "nodes (first arrival)",
                                                                       "nodes (BFS distance)"])
            for h in range(1, max(max(hops), max(distances)) + 1):
                histogram.add(str(h), hops.count(h), distances.count(h))
            result.tables.append(histogram)

        result.check("every live node stored every record", got == k * live, f"{got} of {k * live}")
        result.check("no connection closed for a protocol error", net.protocol_errors() == 0,
                     f"{net.protocol_errors()}")
        if opts.loss == 0 and opts.connect_fail == 0:
            result.check("no more duplicates than flooding sends", sum(dups) <= flood_dups,
                         f"{sum(dups)} <= {flood_dups}")
        result.series.update(times_ms=sorted(times), hops=hops, distances=distances, nodes=n,
                             bytes_sent=sent, duplicates=dups)
        result.footer += _footer(net)

    return _guard("dissemination", opts, body)


# =============================================================================
# partition
# =============================================================================


def partition(opts: Options, progress: Progress = NO_PROGRESS) -> Result:
    """Split the network, write on every side (memories, updates,
    retractions, follows, endorsements, profiles), heal; time to converge,
    then identical record sets and CRDT views on every node."""

    def body(result: Result) -> None:
        net = _network(opts, progress, replicate_all=True)
        result.network = net
        result.tables.append(_network_table(net))
        n = net.topology.n
        rng = net.rng("scenario")
        duration = 60.0 if opts.duration is None else opts.duration
        written: list[Record] = []
        lineages: dict[int, list[Record]] = {}  # author -> first versions still alive

        for k in range(opts.writes):
            i = rng.randrange(n)
            record = net.remember(i, f"before the split: memory {k} of node {i}", topics=[f"t{k % 5}"])
            written.append(record)
            lineages.setdefault(i, []).append(record)
        progress.phase("before the split", net.now, net.now + opts.max_time)
        net.run_until_converged(opts.max_time)
        before_split = len(written)

        order = list(range(n))
        rng.shuffle(order)
        groups = [sorted(order[g::opts.groups]) for g in range(max(2, opts.groups))]
        net.partition(groups)
        t_split = net.now
        progress.phase("partitioned", t_split, t_split + duration)
        step = duration / (opts.writes + 1)
        ops = ("remember", "update", "retract", "follow", "endorse", "profile")
        weights = (45, 15, 10, 12, 8, 10)
        for k in range(opts.writes):
            net.run_for(step)
            for members in groups:
                i = rng.choice(members)
                op = rng.choices(ops, weights)[0]
                mine = lineages.get(i, [])
                if op in ("update", "retract") and not mine:
                    op = "remember"
                if op == "remember":
                    record = net.remember(i, f"written on side of node {i}: memory {k}", topics=[f"t{k % 5}"])
                    lineages.setdefault(i, []).append(record)
                elif op == "update":
                    record = net.update(i, rng.choice(mine), f"updated by node {i} during the split ({k})")
                elif op == "retract":
                    target = rng.choice(mine)
                    mine.remove(target)
                    record = net.forget(i, target)
                elif op == "follow":
                    record = net.follow(i, rng.choice([j for j in range(n) if j != i]), rng.random() < 0.8)
                elif op == "endorse":
                    record = net.endorse(i, rng.choice([j for j in range(n) if j != i]))
                else:
                    record = net.set_profile(i, f"node {i} ({k})", [f"skill{k % 3}"])
                written.append(record)
        net.run_until(t_split + duration)

        digests = [{net.nodes[i].digest for i in g if net.nodes[i].alive} for g in groups]
        sides_converged = sum(1 for d in digests if len(d) == 1)
        distinct_before = len({nd.digest for nd in net.nodes if nd.alive})
        silent = net.close_reasons.get("peer silent for too long", 0)
        before = [(nd.bytes_sent, nd.records_received) for nd in net.nodes]
        net.heal()
        t_heal = net.now
        progress.phase("healing", t_heal, t_heal + opts.max_time)
        t_conv = net.run_until_converged(opts.max_time)
        t_links = net.run_until_connected(opts.max_time)
        converge_s = t_conv - t_heal

        live = net.live_nodes()
        sent = [nd.bytes_sent - b[0] for nd, b in zip(net.nodes, before, strict=True)]
        recs = [nd.records_received - b[1] for nd, b in zip(net.nodes, before, strict=True)]
        table = Table("partition", ["metric", "value"])
        table.add("groups (sizes)", " / ".join(str(len(g)) for g in groups))
        table.add("records before the split", before_split)
        table.add("records written during the split", len(written) - before_split)
        table.add("partition length (virtual s)", num(duration, 1))
        table.add("connections closed for silence (keep-alive)", silent)
        table.add("sides converged on their own before the heal", f"{sides_converged} of {len(groups)}")
        table.add("distinct record sets before the heal", distinct_before)
        table.add("time to converge after the heal (s)", num(converge_s, 3))
        table.add("time until every link is up again (s)", num(t_links - t_heal, 3))
        table.add("records received per node after the heal (mean)", num(sum(recs) / n, 1))
        table.add("bytes sent per node after the heal (mean)", num(sum(sent) / n, 0))
        result.tables.append(table)

        _check_identical(result, net, written, live)
        result.check("no connection closed for a protocol error", net.protocol_errors() == 0,
                     f"{net.protocol_errors()}")
        # when did each node complete the final set, after the heal
        final = net.record_ids(live[0])
        completion = []
        for i in live:
            last = max((net.arrivals[r][i].time for r in final if i in net.arrivals.get(r, {})), default=t_heal)
            completion.append(max(0.0, last - t_heal))
        result.series.update(converge_s=converge_s, completion_s=sorted(completion), nodes=n)
        result.footer += _footer(net)

    return _guard("partition", opts, body)


def _check_identical(result: Result, net: SimNetwork, written: list[Record], live: list[int]) -> None:
    """Identical record sets and CRDT views everywhere, and equal to what was written."""
    ids = [net.record_ids(i) for i in live]
    result.check("identical record sets on every live node", all(x == ids[0] for x in ids),
                 f"{len({tuple(x) for x in ids})} distinct set(s) on {len(live)} nodes")
    reference = build_views(written)
    expected = sorted(r.id for r in written if r.id not in reference.retracted)
    result.check("nothing lost: the sets are what was written minus retracted memories",
                 all(sorted(x) == expected for x in ids), f"{len(expected)} records")
    # The views of each node's own records (one build per distinct byte set:
    # equal bytes give equal views, build_views being a function).
    ref = reference.comparable()
    ref_no_tombstones = ref[:3] + ref[4:]
    built: dict[bytes, tuple[object, ...]] = {}
    views = []
    for i in live:
        raws = list(net.nodes[i].store.raw_records())
        key = hashlib.sha256(b"".join(hashlib.sha256(raw).digest() for raw in raws)).digest()
        if key not in built:
            built[key] = build_views(net.records(i)).comparable()
        views.append(built[key])
    result.check("identical CRDT views (build_views) on every live node", all(v == views[0] for v in views),
                 f"{len(built)} distinct view(s)")
    result.check("the views are those of the records written",
                 all(v[:3] + v[4:] == ref_no_tombstones for v in views))
    # The views the store maintains incrementally (its own SQL state).
    heads = sorted(reference.heads)
    mismatched = 0
    for i in live:
        store = net.nodes[i].store
        memories = store.recall("", limit=limits.MAX_RECALL_LIMIT)
        same = (
            sorted(m.record.id for m in memories) == heads
            and {a: r.id for a, r in store.profiles().items()} == reference.profiles
            and store.follows() == set(reference.follows)
            and store.endorsements() == set(reference.endorsements)
        )
        mismatched += not same
    result.check("every store's own views (heads, profiles, follows, endorsements) agree",
                 mismatched == 0, f"{mismatched} node(s) disagree")


# =============================================================================
# churn
# =============================================================================


def churn(opts: Options, progress: Progress = NO_PROGRESS) -> Result:
    """A fraction of nodes leave (crash) and come back: half restart with
    their store, half are replaced by brand-new nodes with an empty store.
    Memories are written all along; the share of records each live node holds
    is sampled over time, and every live node must hold everything at the end."""

    def body(result: Result) -> None:
        net = _network(opts, progress, replicate_all=True, membership="pex")
        result.network = net
        result.tables.append(_network_table(net))
        n = net.topology.n
        duration = 300.0 if opts.duration is None else opts.duration
        sample = opts.sample or duration / 15
        rng = net.rng("churn")
        pick = net.rng("churn/pick")
        t0 = net.now
        written: list[tuple[float, Record]] = []
        replaced = 0
        returned = 0
        comebacks: list[tuple[int, float, int, bool]] = []  # (node, time, records written before, fresh)

        def leave(i: int) -> None:
            if net.nodes[i].alive and len(net.live_nodes()) > 1:
                net.crash(i)

        def come_back(i: int, fresh: bool) -> None:
            nonlocal replaced, returned
            if net.nodes[i].alive:
                return
            if fresh:
                live = net.live_nodes()
                i = net.join(pick.sample(live, min(2, len(live))))
                replaced += 1
            else:
                net.restart(i)
                returned += 1
            comebacks.append((i, net.now, len(written), fresh))

        leavers = rng.sample(range(n), round(opts.churn * n))
        for k, i in enumerate(leavers):
            gone = rng.uniform(0.05, 0.75) * duration
            down = rng.uniform(0.03, 0.2) * duration
            net.call_at(t0 + gone, functools.partial(leave, i))
            net.call_at(t0 + gone + down, functools.partial(come_back, i, k % 2 == 1))

        def write() -> None:
            i = pick.choice(net.live_nodes())
            written.append((net.now, net.remember(i, f"churn memory {len(written)} by node {i}")))

        t = 0.0
        while True:
            t += rng.expovariate(opts.rate) if opts.rate > 0 else duration
            if t >= duration:
                break
            net.call_at(t0 + t, write)

        rows: list[tuple[float, int, int, float, float, float, float]] = []

        def measure() -> None:
            live = net.live_nodes()
            if not written or not live:
                return
            shares = [net.nodes[i].digest[0] / len(written) for i in live]
            old = [r.id for at, r in written if at <= net.now - 5.0]
            if old:
                held = {i: 0 for i in live}
                for record_id in old:
                    for i in net.arrivals.get(record_id, {}):
                        if i in held:
                            held[i] += 1
                old_share = sum(held.values()) / (len(old) * len(live))
            else:
                old_share = 1.0
            full = sum(1 for s in shares if s >= 1.0) / len(live)
            rows.append((net.now - t0, len(live), len(written), sum(shares) / len(live), min(shares), full,
                         old_share))

        k = 1
        while k * sample <= duration + 1e-9:
            net.call_at(t0 + k * sample, measure)
            k += 1
        progress.phase("churning", t0, t0 + duration)
        net.run_until(t0 + duration)
        progress.phase("converging", net.now, net.now + opts.max_time)
        try:
            t_conv = net.run_until_converged(opts.max_time)
        except SimulationError as exc:
            result.error = str(exc)
            t_conv = None
        measure()

        table = Table("share of records held by live nodes over time",
                      ["t (s)", "live", "written", "mean share", "min share", "nodes with all",
                       "mean share (>= 5 s old)"])
        for t, live_count, count, mean, low, full, old_share in rows:
            table.add(num(t, 0), live_count, count, pct(mean), pct(low), pct(full), pct(old_share))
        table.note = "the last row is after the churn stopped and the network converged"
        result.tables.append(table)

        live = net.live_nodes()
        everywhere = set(net.record_ids(live[0])) if live else set()
        lost = sum(1 for _, r in written if not any(net.nodes[i].alive for i in net.arrivals.get(r.id, {})))
        during = [row for row in rows[:-1]]
        summary = Table("churn", ["metric", "value"])
        summary.add("nodes that left", len(leavers))
        summary.add("came back with their store / replaced by new nodes", f"{returned} / {replaced}")
        summary.add("records written", len(written))
        if during:
            summary.add("mean share during churn (all / >= 5 s old)",
                        f"{pct(sum(r[3] for r in during) / len(during))} / "
                        f"{pct(sum(r[6] for r in during) / len(during))}")
            summary.add("lowest share of a live node during churn", pct(min(r[4] for r in during)))
        for fresh, label in ((False, "node restarted with its store"), (True, "new node (empty store)")):
            waits = _catch_up(net, written, [c for c in comebacks if c[3] == fresh])
            if waits:
                done = [w for w in waits if w is not None]
                summary.add(f"catch-up of a {label}: p50 / max (s)",
                            f"{quantile(done, 0.5):.2f} / {max(done):.2f}" if done else "never")
        summary.add("time to converge after the churn stopped (s)",
                    num(t_conv - (t0 + duration), 3) if t_conv is not None else "did not")
        summary.add("records lost with their authors (on no live node)", lost)
        result.tables.append(summary)

        result.check("every live node holds the same records", net.converged() and net.stores_equal(),
                     f"{len(live)} live nodes")
        result.check("every record on a live node reached every live node",
                     all(len(everywhere) == net.nodes[i].digest[0] for i in live))
        result.check("no connection closed for a protocol error", net.protocol_errors() == 0,
                     f"{net.protocol_errors()}")
        result.series.update(rows=rows, nodes=n)
        result.footer += _footer(net)

    return _guard("churn", opts, body)


def _catch_up(net: SimNetwork, written: list[tuple[float, Record]],
              comebacks: list[tuple[int, float, int, bool]]) -> list[float | None]:
    """For each node that came back: how long until it held every record
    written before it came back (None: it never did, e.g. it left again)."""
    out: list[float | None] = []
    for node, back, count, _ in comebacks:
        last = back
        for _, record in written[:count]:
            arrival = net.arrivals.get(record.id, {}).get(node)
            if arrival is None:
                last = None
                break
            last = max(last, arrival.time)
        out.append(None if last is None else last - back)
    return out


# =============================================================================
# query
# =============================================================================


def query(opts: Options, progress: Progress = NO_PROGRESS) -> Result:
    """Nodes replicate follows (and follow nobody), so each memory stays on
    its author's node. For TTL 1..max: recall of ``ask`` against the records
    actually within TTL hops (by BFS over the live overlay), and query
    messages against the links within reach (flooding's bound: each link at
    most once per direction)."""

    def body(result: Result) -> None:
        net = _network(opts, progress, replicate_all=False)
        result.network = net
        result.tables.append(_network_table(net))
        n = net.topology.n
        rng = net.rng("scenario")
        # each word in about 27 memories network-wide: enough hits per query, under every cap
        vocabulary = [f"w{k:04d}" for k in range(max(10, n // 3))]
        holdings: list[list[tuple[Record, frozenset[str]]]] = []
        for i in range(n):
            mine = []
            for _ in range(opts.memories):
                words = rng.sample(vocabulary, 3)
                visibility = rng.choices(("public", "ask", "private"), (50, 35, 15))[0]
                mine.append((net.remember(i, " ".join(words), visibility=visibility), frozenset(words)))
            holdings.append(mine)
        askable = sorted({w for mine in holdings for r, words in mine if r.visibility != "private" for w in words})
        net.run_for(SETTLE_S)
        graph = net.graph()
        adjacency = graph.adjacency()
        edges = len(graph.edges)

        def counters() -> tuple[int, int]:
            forwarded = duplicates = 0
            for nd in net.nodes:
                if nd.core is not None:
                    forwarded += nd.core.router.stats.forwarded
                    duplicates += nd.core.router.stats.duplicates
            return forwarded, duplicates

        table = Table("recall and cost of ask, by TTL",
                      ["ttl", "nodes in reach", "not reached", "records in reach", "recall", "recall (reached)",
                       "outside", "msgs/query",
                       "links in reach", "msgs/link in reach (max)", "msgs/|E|", "dups/query"])
        per_ttl = []
        leaks = 0
        over_bound = 0
        for ttl in range(1, opts.max_ttl + 1):
            progress.phase(f"asking with ttl {ttl}", net.now, net.now + opts.queries * opts.timeout)
            reach_nodes = expected_total = found = outside = msgs = reach_links = dups = 0
            reached_total = reached_found = unreached = 0
            worst = 0.0
            for _ in range(opts.queries):
                asker = rng.randrange(n)
                word = rng.choice(askable)
                dist = [d if d >= 0 else n for d in bfs_distances(adjacency, asker)]
                reach = [v for v in range(n) if 1 <= dist[v] <= ttl]
                expected = {r.id for v in reach for r, words in holdings[v]
                            if word in words and r.visibility != "private"}
                # links a query may cross: those with an end that forwards it
                links = sum(1 for a, b in graph.edges if min(dist[a], dist[b]) <= ttl - 1)
                f0, d0 = counters()
                qid = net.start_ask(asker, word, ttl=ttl, timeout=opts.timeout)
                net.run_for(opts.timeout)
                hits = net.ask_results(asker, qid)
                f1, d1 = counters()
                got = {h.record.id for h in hits}
                # the nodes the flood actually reached (their routers saw the query)
                saw = [v for v in reach if net.nodes[v].core is not None
                       and net.nodes[v].core.router.has_seen(qid, net.wall)]
                reached_expected = {r.id for v in saw for r, words in holdings[v]
                                    if word in words and r.visibility != "private"}
                reached_total += len(reached_expected)
                reached_found += len(got & reached_expected)
                unreached += len(reach) - len(saw)
                leaks += sum(1 for h in hits if h.record.visibility == "private")
                reach_nodes += len(reach)
                expected_total += len(expected)
                found += len(got & expected)
                outside += len(got - expected)
                msgs += f1 - f0
                dups += d1 - d0
                reach_links += links
                if links:
                    worst = max(worst, (f1 - f0) / links)
                if f1 - f0 > 2 * links:
                    over_bound += 1
            q = opts.queries
            recall = found / expected_total if expected_total else None
            reached_recall = reached_found / reached_total if reached_total else None
            per_ttl.append({"ttl": ttl, "recall": recall, "reached_recall": reached_recall, "msgs": msgs / q,
                            "links": reach_links / q, "edges": edges, "reach": reach_nodes / q,
                            "unreached": unreached / q, "outside": outside})
            table.add(str(ttl), num(reach_nodes / q, 1), num(unreached / q, 1), expected_total,
                      "-" if recall is None else f"{recall:.3f}",
                      "-" if reached_recall is None else f"{reached_recall:.3f}",
                      outside, num(msgs / q, 1), num(reach_links / q, 1),
                      f"{msgs / reach_links if reach_links else 0:.2f} ({worst:.2f})",
                      f"{msgs / q / edges if edges else 0:.2f}", num(dups / q, 1))
        table.note = (
            f"{opts.queries} queries per TTL, one word each, from random askers. 'in reach': nodes within ttl\n"
            "hops (BFS over the live overlay); 'not reached': of those, nodes the query never got to (its first\n"
            "copy came by a longer, faster path with less TTL left); 'recall (reached)': over the nodes it got\n"
            "to; 'outside': hits from beyond reach (must be 0). Flooding's bound: msgs/link in reach <= 2.")
        result.tables.append(table)
        for row in per_ttl:
            if row["reached_recall"] is not None:
                result.check(f"ttl {row['ttl']}: every node the query reached answered in full",
                             row["reached_recall"] >= 1.0, f"recall {row['reached_recall']:.3f}")
            if row["recall"] is not None:
                result.check(f"ttl {row['ttl']}: recall within reach >= {opts.min_recall:g}",
                             row["recall"] >= opts.min_recall, f"{row['recall']:.3f}")
        result.check("no hit from beyond the TTL", all(r["outside"] == 0 for r in per_ttl))
        result.check("no private memory ever answered", leaks == 0, f"{leaks}")
        result.check("each query crossed each link at most once per direction", over_bound == 0,
                     f"{over_bound} queries over 2 x links in reach")
        result.check("no connection closed for a protocol error", net.protocol_errors() == 0,
                     f"{net.protocol_errors()}")
        result.series.update(per_ttl=per_ttl, nodes=n, edges=edges)
        result.footer += _footer(net)

    return _guard("query", opts, body)


# =============================================================================
# ask: ranked answers, the echo wave's completion, cost
# =============================================================================

ASK_TTLS = (3, 4, 5)


def _conversation_words(rng: Any, n: int) -> tuple[list[str], list[float]]:
    """A vocabulary with Zipf-like weights (a few common words, a long tail),
    so that ranking, not mere matching, decides the top 10."""
    words = [f"w{k:04d}" for k in range(max(200, 2 * n))]
    return words, [1.0 / (rank + 10) for rank in range(len(words))]


def ask(opts: Options, progress: Progress = NO_PROGRESS) -> Result:
    """Memories spread over the network (each node's own, in a session or
    two, never replicated); questions of three words from random askers
    with TTL 3, 4 and 5. For each: recall@10 of the ranked ``ask`` (the
    asker's merge, p2pmem/agent/ranking.py) against one store holding every
    memory within reach; time to completion (the echo wave, against the
    timeout every ask waited before); query, hits and echo messages and
    bytes."""

    def body(result: Result) -> None:
        net = _network(opts, progress, replicate_all=False)
        result.network = net
        result.tables.append(_network_table(net))
        n = net.topology.n
        rng = net.rng("scenario")
        words, weights = _conversation_words(rng, n)
        held: list[list[Record]] = []
        for i in range(n):
            sessions = [f"s{i}-{k}" for k in range(rng.randint(1, 2))]
            held.append([net.remember(i, " ".join(rng.choices(words, weights, k=rng.randint(6, 12))),
                                      visibility=rng.choices(("public", "ask", "private"), (50, 35, 15))[0],
                                      session=rng.choice(sessions))
                         for _ in range(opts.memories)])
        askable = [r for mine in held for r in mine if r.visibility != "private"]
        net.run_for(SETTLE_S)
        adjacency = net.graph().adjacency()
        table = Table("ask: ranked recall against one store holding everything in reach, completion, cost",
                      ["ttl", "nodes in reach", "recall@10", "recall@10 (reached)", "complete", "time p50 (s)", "time p95 (s)",
                       "time max (s)", "query msgs", "hits msgs", "echo msgs", "KiB/query"])
        rows = []
        for ttl in ASK_TTLS:
            progress.phase(f"asking with ttl {ttl}", net.now, net.now + opts.queries * opts.timeout)
            one = [_ask_one(net, held, adjacency, rng.randrange(n),
                            " ".join(rng.sample(rng.choice(askable).text.split(), 3)), ttl, opts.timeout)
                   for _ in range(opts.queries)]
            rows.append(_ask_row(table, ttl, one))
        table.note = (
            f"{opts.queries} questions per TTL (three words of a random non-private memory), limit 10, timeout "
            f"{opts.timeout:g} s. 'recall@10': of the top 10 that one store holding every memory within reach\n"
            "answers (public and ask ones; private ones stay in their sessions), the share in ask's top 10; '(reached)': the same over the nodes the flood got to\n"
            "(a first copy along a longer, faster path can stop short of the TTL ball). 'complete': the echoes\n"
            "reported every branch in time. "
            "Time: virtual seconds from asking to the answer (before the echo wave, always the timeout).\n"
            "Messages and bytes: all routers, per query (router payload, before framing and encryption).")
        result.tables.append(table)
        for row in rows:
            if row["recall"] is not None:
                result.check(f"ttl {row['ttl']}: ranked recall@10 against the union in reach >= {opts.min_recall:g}",
                             row["recall"] >= opts.min_recall, f"{row['recall']:.3f}")
            result.check(f"ttl {row['ttl']}: no ask waited past its timeout", row["max"] <= opts.timeout + 1e-6,
                         f"max {row['max']:.3f} s")
        result.check("no connection closed for a protocol error", net.protocol_errors() == 0,
                     f"{net.protocol_errors()}")
        result.series.update(ask=rows, nodes=n)
        result.footer += _footer(net)

    return _guard("ask", opts, body)


def _ask_one(net: SimNetwork, held: list[list[Record]], adjacency: list[list[int]], asker: int, text: str,
             ttl: int, timeout: float) -> dict[str, Any]:
    """One ask: what it ranked against one store holding everything in reach."""
    from p2pmem.agent.ranking import rank_hits

    dist = bfs_distances(adjacency, asker)
    reach = [v for v in range(len(held)) if 1 <= dist[v] <= ttl]
    before = _router_sent(net)
    qid = net.start_ask(asker, text, ttl=ttl, timeout=timeout, limit=10)
    node = net.nodes[asker]
    net.run_while(lambda: qid not in node.finished, timeout + 1.0, what="the ask to finish")
    assert node.core is not None
    hits = net.ask_results(asker, qid, finish=False)
    context, summary = node.core.query_context(qid), node.core.query_summary(qid)
    collection = node.core.query_collection(qid)
    # the nodes the flood got to (a first copy along a longer, faster path can stop short of the TTL ball)
    took = [v for v in reach if (c := net.nodes[v].core) is not None and c.router.has_seen(qid, net.wall)]
    net.ask_results(asker, qid)
    sent = [b - a for a, b in zip(before, _router_sent(net), strict=True)]
    ranked = {m["id"] for m in rank_hits(None, text, hits, limit=10, context=context, collection=collection)}
    best, best_took = (_union_top(text, [r for v in nodes for r in held[v]]) for nodes in (reach, took))
    return {"reach": len(reach), "wanted": len(best), "got": len(ranked & set(best)), "wanted_took": len(best_took),
            "got_took": len(ranked & set(best_took)), "complete": bool(summary["complete"]),
            "time": summary["elapsed_s"], "sent": sent}


def _union_top(text: str, records: list[Record]) -> list[str]:
    """The top 10 that one store holding ``records`` (private ones too, as
    they sit in their sessions) answers to a query from the network."""
    from p2pmem.storage.store import Store

    with Store(Path(":memory:"), verify_workers=1) as union:
        union.ingest(records)
        return [m.record.id.hex() for m in union.recall(text, limit=10, visibilities=("public", "ask"))]


def _ask_row(table: Table, ttl: int, asks: list[dict[str, Any]]) -> dict[str, Any]:
    q = len(asks)
    wanted, wanted_took = sum(a["wanted"] for a in asks), sum(a["wanted_took"] for a in asks)
    recall = sum(a["got"] for a in asks) / wanted if wanted else None
    recall_took = sum(a["got_took"] for a in asks) / wanted_took if wanted_took else None
    times = [a["time"] for a in asks]
    sent = [sum(a["sent"][k] for a in asks) / q for k in range(4)]
    complete = sum(a["complete"] for a in asks)
    table.add(str(ttl), num(sum(a["reach"] for a in asks) / q, 1), "-" if recall is None else f"{recall:.3f}",
              "-" if recall_took is None else f"{recall_took:.3f}",
              f"{complete}/{q}", f"{quantile(times, 0.5):.3f}", f"{quantile(times, 0.95):.3f}",
              f"{max(times):.3f}", num(sent[0], 1), num(sent[1], 1), num(sent[2], 1), num(sent[3] / 1024, 1))
    return {"ttl": ttl, "recall": recall, "recall_reached": recall_took, "complete": complete / q, "p50": quantile(times, 0.5),
            "max": max(times)}


def _router_sent(net: SimNetwork) -> list[int]:
    """Query, hits and echo messages, and their bytes, all routers sent so far."""
    out = [0, 0, 0, 0]
    for nd in net.nodes:
        if nd.core is not None:
            st = nd.core.router.stats
            out[0] += st.sent_query
            out[1] += st.sent_hits
            out[2] += st.sent_echo
            out[3] += st.bytes_query + st.bytes_hits + st.bytes_echo
    return out


SCENARIOS: dict[str, Callable[..., Result]] = {
    "dissemination": dissemination,
    "partition": partition,
    "churn": churn,
    "query": query,
    "ask": ask,
}


def run(name: str, opts: Options, progress: Progress = NO_PROGRESS) -> Result:
    return SCENARIOS[name](opts, progress)


def describe() -> dict[str, Any]:
    return {name: (fn.__doc__ or "").strip().split("\n\n")[0] for name, fn in SCENARIOS.items()}
