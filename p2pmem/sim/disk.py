"""The simulated ingest pipeline and disk of a node (docs/simulations.md,
"Store").

A real node verifies received records on worker processes and stores them
with one writer thread in group commits (p2pmem/node/ingest.py). A
simulated node runs the same steps on virtual time: each ``Ingest`` job is
verified after a delay that is a deterministic function of its size, in
order; the writer takes every job verified by the time it is free (up to
limits.INGEST_GROUP_RECORDS records) and commits them after a delay of its
own, through :func:`p2pmem.protocol.commit.commit_group` on the node's real
SQLite store, then the core gets ``ingest_done`` for each job in order.

Faults of the disk, from the run's fault plan (``Fault``): a commit that
fails (nothing stored, the jobs finish empty, reconciliation brings the
records again), a slow disk (commits take ``factor`` times longer for a
while) and a crash between the commit and the acknowledgement (the records
are stored, the core never hears of it, the node restarts from its store).
"""

from __future__ import annotations

import functools
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pmem import limits
from p2pmem.model.record import Record
from p2pmem.protocol.commit import commit_group
from p2pmem.protocol.events import IngestJob
from p2pmem.protocol.ports import IngestReport
from p2pmem.sim.schedule import COMMIT, WRITE, Fault

if TYPE_CHECKING:
    from p2pmem.sim.network import SimNetwork, SimNode


@dataclass(frozen=True)
class DiskModel:
    """How long a simulated node's pipeline takes, in virtual µs."""

    verify_us_per_record: float = 80.0  # decode and one Ed25519 check, in line (docs/performance.md)
    commit_us: float = 300.0  # one transaction (WAL, synchronous=NORMAL: no fsync per commit)
    write_us_per_kib: float = 20.0  # the bytes of the records (about 50 MB/s)
    commit_fail: float = 0.0  # probability that a commit fails (each node's disk/{i} generator)

    def __post_init__(self) -> None:
        if min(self.verify_us_per_record, self.commit_us, self.write_us_per_kib) < 0:
            raise ValueError("disk delays cannot be negative")
        if not 0.0 <= self.commit_fail <= 1.0:
            raise ValueError("commit_fail must be a probability in [0, 1]")

    def verify_us(self, job: IngestJob) -> int:
        return math.ceil(self.verify_us_per_record * len(job.raws))

    def write_us(self, nbytes: int, slow: float = 1.0) -> int:
        return max(1, math.ceil((self.commit_us + self.write_us_per_kib * nbytes / 1024) * slow))


@dataclass
class DiskFaults:
    """What the fault plan did to one node's disk; outlives crashes, as a
    disk does. ``rng`` draws the failures of ``DiskModel.commit_fail``."""

    fail_commits: int = 0  # the next this many commits fail
    crash_commits: int = 0  # the next this many commits are followed by a crash before the ack
    restart_after_s: float = 0.0  # how long such a crashed node stays down (0: until restarted)
    slow_factor: float = 1.0
    slow_until_us: int = 0
    rng: random.Random | None = None

    def slowness(self, now_us: int) -> float:
        return self.slow_factor if now_us < self.slow_until_us else 1.0


class Pipeline:
    """One incarnation's jobs between ``Ingest`` and ``ingest_done``."""

    __slots__ = ("verified", "verify_free_us", "writing")

    def __init__(self) -> None:
        self.verified: deque[tuple[IngestJob, int]] = deque()  # (job, µs its verification ends), in order
        self.verify_free_us = 0  # when the verifiers finish what they were given
        self.writing = False  # the writer is committing, or waiting for the next job's verification

    def submit(self, job: IngestJob, now_us: int, disk: DiskModel) -> None:
        self.verify_free_us = max(now_us, self.verify_free_us) + disk.verify_us(job)
        self.verified.append((job, self.verify_free_us))

    def next_ready_us(self, now_us: int) -> int | None:
        """When the writer can start its next group (None: nothing to do)."""
        return max(now_us, self.verified[0][1]) if self.verified else None

    def take_group(self, now_us: int) -> list[IngestJob]:
        """Every job verified by now, up to the group's record bound (the
        first one in any case), as the node's writer takes them."""
        group: list[IngestJob] = []
        records = 0
        while self.verified and self.verified[0][1] <= now_us and (
                not group or records + len(self.verified[0][0].raws) <= limits.INGEST_GROUP_RECORDS):
            job, _ = self.verified.popleft()
            group.append(job)
            records += len(job.raws)
        return group


class FailingDisk:
    """The store as a failed commit sees it: the transaction raises, nothing is written."""

    def ingest_groups(self, groups: Sequence[Sequence[Record]]) -> Sequence[IngestReport]:
        raise OSError("simulated disk failure: the commit did not happen")


class DiskShell:
    """Each node's pipeline on the event loop: ``Ingest`` -> verified ->
    committed -> ``ingest_done``, and the disk's faults. Mixed into
    :class:`p2pmem.sim.network.SimNetwork` (its ``_push``, ``_apply``,
    ``crash``, ``call_at`` and counters)."""

    def _ingest(self: SimNetwork, node: SimNode, job: IngestJob) -> None:
        self.counts["ingest"] += 1
        node.pipeline.submit(job, self.now_us, self.disk)
        if not node.pipeline.writing:
            self._wake_writer(node)


    def _wake_writer(self: SimNetwork, node: SimNode) -> None:
        pipeline = node.pipeline
        at = pipeline.next_ready_us(self.now_us)
        pipeline.writing = at is not None
        if at is not None:
            self._push(at, WRITE, (node, pipeline))


    def _on_write(self: SimNetwork, node: SimNode, pipeline: Pipeline) -> None:
        """The writer takes what verified meanwhile and commits it."""
        if node.pipeline is not pipeline:
            return  # the node crashed: its jobs died with the process
        group = pipeline.take_group(self.now_us)
        size = sum(job.size for job in group)
        self._push(self.now_us + self.disk.write_us(size, node.disk.slowness(self.now_us)), COMMIT,
                   (node, pipeline, group))


    def _on_commit(self: SimNetwork, node: SimNode, pipeline: Pipeline, group: list[IngestJob]) -> None:
        """The commit ends: the store's real ingest (or the fault plan's
        failure), then the core's ``ingest_done`` for each job in order (or
        the fault plan's crash before it)."""
        if node.pipeline is not pipeline or node.core is None:
            return
        disk = node.disk
        failed = disk.fail_commits > 0
        disk.fail_commits -= failed
        if not failed and self.disk.commit_fail and disk.rng is not None:
            failed = disk.rng.random() < self.disk.commit_fail
        self.counts["commits"] += 1
        self.counts["failed_commits"] += failed
        store = FailingDisk() if failed else node.store
        outcomes, _error = commit_group(store, [(job, node.store.decode_many(job.raws)) for job in group])
        if disk.crash_commits > 0:
            disk.crash_commits -= 1
            self.counts["crashes_before_ack"] += 1
            self.crash(node.index)
            if disk.restart_after_s > 0:
                self.call_at(self.now + disk.restart_after_s,
                             functools.partial(self.apply_fault, Fault(0.0, "restart", node.index)))
            return
        core = node.core
        for job, outcome in zip(group, outcomes, strict=True):
            self.counts["ingest_done"] += 1
            core.ingest_done(job, outcome, self.wall, wall_ms=self.wall_ms)
        self._apply(node)
        self._wake_writer(node)


    def _disk_fault(self: SimNetwork, fault: Fault) -> None:
        if fault.node is None or not 0 <= fault.node < len(self.nodes):
            raise ValueError(f"{fault.kind} needs a node of the network")
        disk = self.nodes[fault.node].disk
        if fault.kind == "commit-fail":
            disk.fail_commits += 1
        elif fault.kind == "crash-before-ack":
            disk.crash_commits += 1
            disk.restart_after_s = fault.duration
        else:
            if fault.factor < 1 or fault.duration <= 0:
                raise ValueError("a slow disk needs factor >= 1 and a positive duration")
            disk.slow_factor = fault.factor
            disk.slow_until_us = self.now_us + round(fault.duration * 1e6)
