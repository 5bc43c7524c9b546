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

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from p2pmem import limits
from p2pmem.model.record import Record
from p2pmem.protocol.events import IngestJob
from p2pmem.protocol.ports import IngestReport


@dataclass(frozen=True)
class DiskModel:
    """How long a simulated node's pipeline takes, in virtual µs."""

    verify_us_per_record: float = 80.0  # decode and one Ed25519 check, in line (docs/performance.md)
    commit_us: float = 300.0  # one transaction (WAL, synchronous=NORMAL: no fsync per commit)
    write_us_per_kib: float = 20.0  # the bytes of the records (about 50 MB/s)

    def __post_init__(self) -> None:
        if min(self.verify_us_per_record, self.commit_us, self.write_us_per_kib) < 0:
            raise ValueError("disk delays cannot be negative")

    def verify_us(self, job: IngestJob) -> int:
        return math.ceil(self.verify_us_per_record * len(job.raws))

    def write_us(self, nbytes: int, slow: float = 1.0) -> int:
        return max(1, math.ceil((self.commit_us + self.write_us_per_kib * nbytes / 1024) * slow))


@dataclass
class DiskFaults:
    """What the fault plan did to one node's disk; outlives crashes, as a
    disk does."""

    fail_commits: int = 0  # the next this many commits fail
    crash_commits: int = 0  # the next this many commits are followed by a crash before the ack
    restart_after_s: float = 0.0  # how long such a crashed node stays down (0: until restarted)
    slow_factor: float = 1.0
    slow_until_us: int = 0

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
