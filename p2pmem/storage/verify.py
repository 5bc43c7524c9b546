"""Signature verification in worker processes.

Ed25519 verification dominates the cost of taking records from outside, and
it is pure CPU: worker processes spread it over every core without
contending for the interpreter lock with the thread that stores. One pool
per process, shared by the store's batch ingest (import, benchmarks) and the
node's ingest pipeline (p2pmem/node/ingest.py).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from p2pmem import limits
from p2pmem.errors import RecordError
from p2pmem.model.record import Record, check_record, decode_record, load_stored

_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
OWNER_CHECK_S = 1.0  # how soon a worker notices that its node is gone


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_or_error(raw: bytes) -> Record | RecordError:
    """Decode and verify here, in this thread (a batch too small for the
    workers, or no workers): the record, or why it is refused."""
    try:
        return decode_record(raw)
    except RecordError as exc:
        return exc


def parts(raws: Sequence[bytes]) -> list[Sequence[bytes]]:
    """``raws`` in tasks for the workers (limits.INGEST_CHUNK records each)."""
    size = limits.INGEST_CHUNK
    return [raws[i : i + size] for i in range(0, len(raws), size)]


def records_from(raws: Sequence[bytes], verdicts: Sequence[str | None]) -> list[Record | RecordError]:
    """The records the workers passed, rebuilt from the very bytes they
    checked (verification is not repeated), and an error for the others."""
    return [load_stored(raw) if verdict is None else RecordError(verdict)
            for raw, verdict in zip(raws, verdicts, strict=True)]


def check_part(raws: Sequence[bytes]) -> list[str | None]:
    """In a worker process: None for each record that passes every check of
    :func:`p2pmem.model.record.decode_record`, else why it does not."""
    out: list[str | None] = []
    for raw in raws:
        try:
            check_record(raw)
            out.append(None)
        except RecordError as exc:
            out.append(str(exc))
    return out


def _exit_with(owner: int) -> None:
    """In each worker, at start: exit once the process that made the pool is
    gone. A node killed with SIGKILL (or by the OOM killer) never tells its
    workers to stop; blocked on the task queue they would wait forever, and
    keep the fork server alive with them. Ctrl-C in a terminal signals the
    whole process group: the workers leave it to the node, which stops them
    (a worker interrupted on its queue would print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while True:
            time.sleep(OWNER_CHECK_S)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # alive, under another user: cannot be ours, but not gone
                pass

    threading.Thread(target=watch, name="p2pmem-owner-watch", daemon=True).start()


def verifier_pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool, started on first use. forkserver: forking a
    process that runs threads (trio, the MCP server) is not safe."""
    global _POOL
    with _POOL_LOCK:  # the node's warm-up thread and its event loop may ask at once
        if _POOL is None:
            context = multiprocessing.get_context("forkserver")
            # the fork server imports the checks once; each worker forks from
            # it ready to verify instead of importing p2pmem itself
            context.set_forkserver_preload(["p2pmem.storage.verify"])
            _POOL = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
            )
        return _POOL


def start_workers(workers: int) -> None:
    """Start every worker of the pool now rather than on the first batch
    (each imports p2pmem, a fraction of a second): a long-running node or a
    benchmark pays that once, before its first records."""
    if workers > 1:
        list(verifier_pool(workers).map(check_part, [[]] * workers))


#: What waiting on a worker's future raises when the pool broke under it.
POOL_FAILURES = (BrokenProcessPool, CancelledError)


def discard_pool(pool: ProcessPoolExecutor) -> None:
    """Forget a pool that broke (a worker was killed): the next call to
    :func:`verifier_pool` starts a fresh one."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is pool:
            _POOL = None
    # not cancel_futures: a broken pool fails its pending futures itself, and a
    # cancelled one would surprise whoever waits on it
    pool.shutdown(wait=False)
