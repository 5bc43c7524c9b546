"""The node's ingest pipeline (p2pmem/node/ingest.py), with its real worker
processes and a real SQLite file: every job finishes, in order, with what
the store did; jobs that queue up are committed together; a forged record
fails its job alone; a killed worker costs no record."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sqlite3
import time
from pathlib import Path

import trio

from p2pmem.model.identity import Identity
from p2pmem.model.record import Record, sign_record
from p2pmem.model.scope import ReplicationInterest
from p2pmem.node.ingest import IngestPipeline
from p2pmem.protocol.core import IngestOutcome
from p2pmem.protocol.events import IngestJob
from p2pmem.storage.store import DB_FILE, Store
from p2pmem.storage.verify import verifier_pool

ALL = ReplicationInterest(True, frozenset())
WALL_MS = int(time.time() * 1000)
DEADLINE_S = 60.0


def _records(count: int, seed: int) -> list[Record]:
    seed_bytes = hashlib.sha256(f"pipeline {seed}".encode()).digest()
    author = Identity.from_seeds(seed_bytes, seed_bytes)
    return [sign_record(author, "memory", (WALL_MS - 10_000 + i) << 16, f"memory {seed}-{i} of the pipeline")
            for i in range(count)]


def _job(conn: int, raws: list[bytes]) -> IngestJob:
    return IngestJob(conn, tuple(raws), frozenset(hashlib.sha256(r).digest() for r in raws), ALL, WALL_MS)


async def _run(path: Path, jobs: list[IngestJob], *, between=None) -> list[list[tuple[IngestJob, IngestOutcome]]]:
    """Submit every job, wait for all to finish; the groups ``done`` saw."""
    groups: list[list[tuple[IngestJob, IngestOutcome]]] = []
    finished = trio.Event()
    total = len(jobs)

    def done(group):
        groups.append(list(group))
        if sum(len(g) for g in groups) == total:
            finished.set()

    pipeline = IngestPipeline(path, workers=2, done=done)
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(pipeline.run)  # the workers are up
            for i, job in enumerate(jobs):
                pipeline.submit(job)
                if between is not None:
                    await between(i)
            await finished.wait()
            nursery.cancel_scope.cancel()
    return groups


def test_every_job_finishes_in_order(tmp_path):
    path = tmp_path / DB_FILE
    Store(path).close()
    records = _records(2000, seed=1)
    jobs = [_job(i % 3, [r.raw for r in records[k : k + 100]]) for i, k in enumerate(range(0, 2000, 100))]
    jobs.append(_job(9, [r.raw for r in records[:50]]))  # all held already: duplicates
    groups = trio.run(_run, path, jobs)
    finished = [job for group in groups for job, _ in group]
    assert finished == jobs  # submission order
    outcomes = [outcome for group in groups for _, outcome in group]
    assert all(o.error is None for o in outcomes)
    assert sum(len(o.added) for o in outcomes) == 2000
    assert outcomes[-1].added == [] and outcomes[-1].duplicates == 50
    with Store(path) as store:
        assert store.known_ids([r.id for r in records]) == {r.id for r in records}


def test_jobs_verified_while_the_writer_is_busy_are_committed_together(tmp_path):
    """Another connection holds the write lock (as a CLI command might):
    verification goes on, and once the lock is free the writer stores what
    verified meanwhile in one transaction."""
    path = tmp_path / DB_FILE
    Store(path).close()
    records = _records(1200, seed=5)
    jobs = [_job(1, [r.raw for r in records[k : k + 100]]) for k in range(0, 1200, 100)]
    groups: list[list[tuple[IngestJob, IngestOutcome]]] = []

    async def main() -> None:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        pipeline = IngestPipeline(path, workers=2, done=lambda g: groups.append(list(g)))
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(pipeline.run)
                for job in jobs:
                    pipeline.submit(job)
                # the writer holds the first job (waiting for the lock); the rest verify and queue
                while pipeline.backlog()["verified"] < len(jobs) - 1:
                    await trio.sleep(0.01)
                blocker.execute("COMMIT")
                blocker.close()
                while sum(len(g) for g in groups) < len(jobs):
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert [len(g) for g in groups] == [1, len(jobs) - 1]
    assert [job for g in groups for job, _ in g] == jobs
    assert sum(len(o.added) for g in groups for _, o in g) == 1200


def test_a_forged_record_fails_its_job_alone(tmp_path):
    path = tmp_path / DB_FILE
    Store(path).close()
    good, bad = _records(300, seed=2), _records(300, seed=3)
    forged = bytearray(bad[150].raw)
    forged[-1] ^= 1
    bad_raws = [r.raw for r in bad]
    bad_raws[150] = bytes(forged)
    jobs = [_job(1, [r.raw for r in good[:150]]), _job(2, bad_raws), _job(1, [r.raw for r in good[150:]])]
    groups = trio.run(_run, path, jobs)
    outcomes = [outcome for group in groups for _, outcome in group]
    assert [o.error for o in outcomes][0::2] == [None, None]
    assert outcomes[1].error == "bad signature" and outcomes[1].added == []
    with Store(path) as store:
        assert store.known_ids([r.id for r in good]) == {r.id for r in good}
        assert store.known_ids([r.id for r in bad]) == set()  # none of the forger's batch


def test_a_killed_worker_costs_no_record(tmp_path):
    path = tmp_path / DB_FILE
    Store(path).close()
    records = _records(3000, seed=4)
    jobs = [_job(1, [r.raw for r in records[k : k + 250]]) for k in range(0, 3000, 250)]

    killed = []

    async def kill_one(i: int) -> None:
        if i == 3:  # mid-stream, while chunks are queued and running
            pool = verifier_pool(2)
            while not pool._processes:
                await trio.sleep(0.01)
            os.kill(next(iter(pool._processes)), signal.SIGKILL)
            killed.append(pool)
        await trio.sleep(0)

    groups = trio.run(functools.partial(_run, path, jobs, between=kill_one))
    assert verifier_pool(2) is not killed[0]  # the broken pool was replaced
    outcomes = [outcome for group in groups for _, outcome in group]
    assert all(o.error is None for o in outcomes)
    assert sum(len(o.added) for o in outcomes) == 3000
    with Store(path) as store:
        assert store.count("memory") == 3000


def test_single_records_are_checked_in_the_writer_alike(tmp_path):
    """Jobs below limits.INGEST_POOL_MIN_RECORDS (an eager push of one record)
    skip the worker round trip; the checks are the same."""
    path = tmp_path / DB_FILE
    Store(path).close()
    records = _records(6, seed=6)
    forged = bytearray(records[3].raw)
    forged[-1] ^= 1
    jobs = [_job(1, [r.raw]) for r in records[:3]] + [_job(2, [bytes(forged)])]
    jobs += [_job(1, [r.raw]) for r in records[4:]]
    groups = trio.run(_run, path, jobs)
    outcomes = [outcome for group in groups for _, outcome in group]
    assert [o.error for o in outcomes] == [None, None, None, "bad signature", None, None]
    assert [len(o.added) for o in outcomes] == [1, 1, 1, 0, 1, 1]
    with Store(path) as store:
        assert store.known_ids([r.id for r in records]) == {r.id for i, r in enumerate(records) if i != 3}


def test_the_commit_step_both_pipelines_share(tmp_path: Path) -> None:
    """protocol/commit.py, as the node's writer and the simulator run it on a
    real store: good jobs store their records in one group; a forged record
    fails its own job only; a disk that raises stores nothing, says why, and
    keeps the forged job's error."""
    from p2pmem.protocol.commit import commit_group
    from p2pmem.storage.verify import decode_or_error

    store = Store(tmp_path / DB_FILE)
    good, other = _records(3, 7), _records(2, 8)
    forged = bytearray(other[0].raw)
    forged[-1] ^= 1
    jobs = [_job(1, [r.raw for r in good]), _job(2, [bytes(forged), other[1].raw])]
    group = [(job, [decode_or_error(raw) for raw in job.raws]) for job in jobs]

    class FullDisk:
        def ingest_groups(self, groups):
            raise sqlite3.OperationalError("database or disk is full")

    outcomes, error = commit_group(FullDisk(), group)
    assert isinstance(error, sqlite3.OperationalError)
    assert outcomes[0].added == [] and outcomes[0].error is None  # reconciliation brings them again
    assert outcomes[1].error is not None
    assert store.count() == 0

    outcomes, error = commit_group(store, group)
    assert error is None
    assert [r.id for r in outcomes[0].added] == [r.id for r in good]
    assert outcomes[1].error is not None and outcomes[1].added == []
    assert {i for _, i in store.items()} == {r.id for r in good}
    store.close()
