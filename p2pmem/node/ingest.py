"""The node's ingest pipeline: records from peers are verified on every core
and stored by one writer, beside the event loop.

::

    core --Ingest(job)--> submit --> verifier processes (limits.INGEST_CHUNK records a task)
                                         |  in order, at most MAX_VERIFYING jobs in flight
    core.ingest_done <-- writer thread <-+  one transaction for every job verified meanwhile

The event loop only hands bytes to the pool and takes verdicts back; the
signature checks run in worker processes (p2pmem/storage/verify.py) and the
SQLite writes on one thread with one connection, so the loop never waits on
CPU or disk. Verification never waits for the writer: while it commits one
group, the workers verify the next jobs, and whatever verified meanwhile
goes into the writer's next transaction (group commit). Every stage is
bounded: the core stops reading a peer whose records wait
(limits.MAX_INGEST_PENDING), and the stages between hold at most
MAX_VERIFYING + MAX_VERIFIED jobs.

Jobs finish in the order they were submitted. A job whose store write
failed (disk full, the file locked by hand) finishes with nothing added;
reconciliation brings its records again.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import trio

from p2pmem import limits
from p2pmem.logevents import LogEvent, log_event
from p2pmem.protocol.commit import commit_group
from p2pmem.protocol.core import IngestOutcome
from p2pmem.protocol.events import IngestJob
from p2pmem.storage.diskerrors import explain, is_disk_error
from p2pmem.storage.store import Store
from p2pmem.storage.verify import (
    POOL_FAILURES,
    check_part,
    decode_or_error,
    discard_pool,
    parts,
    records_from,
    start_workers,
    verifier_pool,
)

log = logging.getLogger("p2pmem.node.ingest")

# the bounds of the stages (p2pmem/limits.py says why these sizes)
POOL_MIN_RECORDS = limits.INGEST_POOL_MIN_RECORDS
MAX_VERIFYING = limits.INGEST_VERIFYING_JOBS
MAX_VERIFIED = limits.INGEST_VERIFIED_JOBS
MAX_GROUP_RECORDS = limits.INGEST_GROUP_RECORDS

Done = Callable[[Sequence[tuple[IngestJob, IngestOutcome]]], None]


class IngestPipeline:
    """Verify and store :class:`IngestJob` s off the event loop.

    ``done([(job, outcome), ...])`` is called on the event loop for every
    group the writer stored, jobs in submission order. ``workers`` <= 1
    verifies in the writer thread."""

    def __init__(self, store_path: Path, *, workers: int, done: Done) -> None:
        self._store_path = store_path
        self._workers = workers
        self._done = done
        self._jobs_send, self._jobs_receive = trio.open_memory_channel[IngestJob](math.inf)
        self._verifying_send, self._verifying_receive = trio.open_memory_channel[
            tuple[IngestJob, ProcessPoolExecutor | None, list[Future[list[str | None]]] | None]
        ](MAX_VERIFYING)
        self._verified_send, self._verified_receive = trio.open_memory_channel[
            tuple[IngestJob, list[str | None] | None]
        ](MAX_VERIFIED)
        self._store: Store | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    def submit(self, job: IngestJob) -> None:
        """From the event loop; never blocks. The core bounds what may wait
        (bytes per peer), so this first queue needs no bound of its own."""
        self._jobs_send.send_nowait(job)

    def backlog(self) -> dict[str, int]:
        """Jobs waiting at each stage: submitted, verifying, verified (for status)."""
        return {
            "submitted": self._jobs_send.statistics().current_buffer_used,
            "verifying": self._verifying_send.statistics().current_buffer_used,
            "verified": self._verified_send.statistics().current_buffer_used,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The pipeline's three tasks, until cancelled. Started (with
        ``nursery.start``) once the worker processes are up, so a node that
        says it is ready verifies at full speed from its first record."""
        self._token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(self._start_workers)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._submit_chunks)
                nursery.start_soon(self._collect)
                nursery.start_soon(self._write)
        finally:
            if self._store is not None:
                self._store.close()

    # -- stage 1: hand each job's chunks to the worker processes ------------
    def _pool(self) -> ProcessPoolExecutor | None:
        return verifier_pool(self._workers) if self._workers > 1 else None

    def _start_workers(self) -> None:
        """In a thread: start every worker process (each imports p2pmem,
        a fraction of a second) before the first records arrive."""
        try:
            start_workers(self._workers)
        except Exception as exc:  # no processes here (a sandbox, no /dev/shm): verify in the writer
            log_event(log, logging.WARNING, LogEvent.INGEST_WORKERS,
                      f"no verification worker processes ({exc}): verifying in the writer thread", error=str(exc))
            self._workers = 1

    async def _submit_chunks(self) -> None:
        async with self._verifying_send:
            async for job in self._jobs_receive:
                # small jobs (single eager pushes) cost less checked in the writer
                pool = self._pool() if len(job.raws) >= POOL_MIN_RECORDS else None
                futures = None
                if pool is not None:
                    try:
                        futures = [pool.submit(check_part, part) for part in parts(job.raws)]
                    except (BrokenProcessPool, RuntimeError):  # broken, or shut down by another thread
                        discard_pool(pool)  # the writer verifies this job itself
                        futures = None
                await self._verifying_send.send((job, pool, futures))

    # -- stage 2: take the verdicts back, in order ---------------------------
    async def _collect(self) -> None:
        async with self._verified_send:
            async for job, pool, futures in self._verifying_receive:
                verdicts: list[str | None] | None = None
                if futures is not None:
                    try:
                        verdicts = []
                        for future in futures:
                            verdicts.extend(await self._result(future))
                    except POOL_FAILURES as exc:  # a worker was killed
                        log_event(log, logging.WARNING, LogEvent.INGEST_WORKERS,
                                  f"verification worker failed ({exc}): verifying in the writer", error=str(exc))
                        assert pool is not None
                        discard_pool(pool)  # that pool only: a newer one may already be at work
                        verdicts = None
                await self._verified_send.send((job, verdicts))

    async def _result(self, future: Future[list[str | None]]) -> list[str | None]:
        """Wait for a worker's future without a thread: its callback (on the
        pool's manager thread) wakes this task through the trio token."""
        if not future.done():
            event = trio.Event()
            token = self._token
            assert token is not None
            future.add_done_callback(lambda _f: _wake(token, event))
            await event.wait()
        return future.result()

    # -- stage 3: store whatever verified, in one transaction ----------------
    async def _write(self) -> None:
        async for first in self._verified_receive:
            group = [first]
            size = len(first[0].raws)
            while size < MAX_GROUP_RECORDS:
                try:
                    item = self._verified_receive.receive_nowait()
                except trio.WouldBlock:
                    break
                group.append(item)
                size += len(item[0].raws)
            try:
                outcomes = await trio.to_thread.run_sync(self._store_group, group)
            except Exception as exc:  # the store would not open (locked...): keep serving
                why = explain(exc, self._store_path) if is_disk_error(exc) else exc
                log_event(log, logging.WARNING, LogEvent.INGEST_FAILED, f"could not store received records: {why}",
                          error=str(why))
                outcomes = [IngestOutcome() for _ in group]  # reconciliation brings them again
            self._done([(job, outcome) for (job, _), outcome in zip(group, outcomes, strict=True)])

    def _store_group(
        self, group: Sequence[tuple[IngestJob, list[str | None] | None]]
    ) -> list[IngestOutcome]:
        """In the writer thread: rebuild the verified records from the very
        bytes that were checked, screen each job, store them all at once."""
        if self._store is None:
            # opened here, not on the event loop: opening waits for the write
            # lock (a CLI command of the home may hold it). replica: records
            # from peers are stored with synchronous=NORMAL (storage/store.py)
            self._store = Store(self._store_path, replica=True, check_same_thread=False)
        group_decoded = [
            (job, [decode_or_error(raw) for raw in job.raws] if verdicts is None
             else records_from(job.raws, verdicts))
            for job, verdicts in group
        ]
        outcomes, error = commit_group(self._store, group_decoded)
        if error is not None:  # the disk failed (full, locked...): keep serving
            why = explain(error, self._store_path) if is_disk_error(error) else error
            log_event(log, logging.WARNING, LogEvent.INGEST_FAILED,
                      f"could not store received records (reconciliation brings them again): {why}", error=str(why))
        return outcomes


def _wake(token: trio.lowlevel.TrioToken, event: trio.Event) -> None:
    """On the pool's manager thread: a future finished."""
    with contextlib.suppress(trio.RunFinishedError):  # the node stopped meanwhile
        token.run_sync_soon(event.set)
