"""Keeping a derived index in step with the store, across crashes and processes.

The store appends the rowid of every memory whose searchable state changed
(became current, was superseded, was retracted) to ``index_log``, in the
same transaction as the change. An index remembers the last log sequence
it applied (its own commit point, written after the index commits). To catch
up it re-reads the current state of each logged rowid and replaces its
document: replay is idempotent, so a crash between the index's commit and
its commit point only means some work is done twice.

A kill -9 at any moment therefore leaves an index that is behind, never
ahead or wrong; the next reader sees the gap and fills it. An index whose
state is missing, damaged, of another format, or older than the pruned part
of the log is rebuilt from the store. A retraction is applied at once (the
document is deleted, so it is never returned) and then the whole index is
rewritten, because tantivy keeps a deleted document's terms in its segment
files until they are merged, and a retracted text must leave every index.

Processes of one home (``serve``, CLI commands, the MCP server) share the
index directory; an advisory lock on ``<name>.lock`` makes one of them
apply the log at a time, and a pointer file names the current generation so
that a rebuild swaps directories atomically under readers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from p2pmem.logevents import LogEvent, log_event
from p2pmem.retrieval.lexical import FORMAT, IndexDoc, LexicalIndex

log = logging.getLogger("p2pmem.retrieval")

CONSUMER = "lexical"
_BATCH = 20_000  # log entries applied per commit: bounds memory during catch-up
_REBUILD_THREADS = 2
# A backlog this large (or half the index) is cheaper to rebuild than to
# apply entry by entry, each with its neighbour lookups.
REBUILD_BACKLOG = 20_000


class DocumentSource(Protocol):
    """What the store offers an index (implemented by :class:`p2pmem.storage.store.Store`)."""

    def log_high(self) -> int: ...
    def log_low(self) -> int: ...
    def log_entries(self, after: int, limit: int) -> list[tuple[int, int, int]]: ...
    def index_docs(self, rids: list[int]) -> list[IndexDoc]: ...
    def all_index_docs(self, batch: int) -> tuple[int, Iterator[list[IndexDoc]]]: ...
    def index_applied(self, consumer: str, seq: int) -> None: ...
    def times(self, rids: Sequence[int]) -> dict[int, tuple[int, int]]: ...
    def count_current(self) -> int: ...


Progress = Callable[[int, int], None]  # (done, total)


class IndexSync:
    """Owns one process's view of a lexical index and keeps it current."""

    def __init__(self, source: DocumentSource, root: Path | None) -> None:
        self.source = source
        self.root = root  # None: an in-memory index (a scratch or simulated store)
        self.index: LexicalIndex | None = None
        self._generation: str | None = None
        self._seq = -1  # the log position our searcher reflects

    # -- paths and locking ---------------------------------------------------
    def _pointer(self) -> Path:
        assert self.root is not None
        return self.root / f"{CONSUMER}.current"

    def _read_pointer(self) -> str | None:
        try:
            name = self._pointer().read_text().strip()
        except OSError:
            return None
        return name if name.startswith(f"{CONSUMER}-") and "/" not in name else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.root is None:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{CONSUMER}.lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _open_current(self) -> None:
        """Open the generation the pointer names (another process may have
        swapped it); fall back to a fresh in-memory or on-disk index."""
        if self.root is None:
            if self.index is None:
                self.index = LexicalIndex(None)
            return
        name = self._read_pointer()
        if name is not None and name == self._generation and self.index is not None:
            self.index.reload()
            return
        if name is not None and (self.root / name).is_dir():
            try:
                self.index = LexicalIndex(self.root / name)
                self._generation = name
                return
            except (OSError, ValueError):
                pass  # damaged: the caller sees state seq -1 and rebuilds
        self.index = None
        self._generation = None

    @property
    def applied(self) -> int:
        """The log position this process's view of the index reflects (-1: none yet)."""
        return self._seq

    # -- the public surface ----------------------------------------------------
    def current(self) -> LexicalIndex:
        """The index, brought up to date with the store first. When the disk
        refuses the upkeep (full), a copy built in memory answers instead,
        and the next call tries the disk again."""
        high = self.source.log_high()
        if self.index is not None and self._seq >= high:
            return self.index
        try:
            return self._current_on_disk(high)
        except (OSError, ValueError, sqlite3.Error) as exc:
            if self.root is None:
                raise
            log_event(log, logging.WARNING, LogEvent.INDEX_FAILED,
                      f"search index upkeep failed ({exc}): searching a copy in memory", error=str(exc))
            return self._in_memory()

    def _in_memory(self) -> LexicalIndex:
        """Every current memory in a fresh in-memory index, touching no file:
        reads keep working on a full disk."""
        high, batches = self.source.all_index_docs(_BATCH)
        fresh = LexicalIndex(None)
        first = True
        for docs in batches:
            fresh.apply([], docs, high, reset=first)
            first = False
        if first:
            fresh.apply([], [], high, reset=True)
        # the generation is forgotten, so the next catch-up opens the disk's again
        self.index, self._generation, self._seq = fresh, None, high
        return fresh

    def _current_on_disk(self, high: int) -> LexicalIndex:
        with self._locked():
            self._open_current()
            state = self.index.state() if self.index is not None else {"format": 0, "seq": -1}
            if (
                self.index is None or state["format"] != FORMAT or state["seq"] < 0
                or state["seq"] < self.source.log_low() - 1
                or high - state["seq"] > max(REBUILD_BACKLOG, self.index.size // 2)
            ):
                self._rebuild()
            else:
                try:
                    self._catch_up(state["seq"])
                except (ValueError, OSError) as exc:  # tantivy's errors: a damaged index
                    log_event(log, logging.WARNING, LogEvent.INDEX_FAILED,
                              f"search index damaged ({exc}): rebuilding it from the store", error=str(exc))
                    self._rebuild()
        assert self.index is not None
        return self.index

    def as_is(self) -> LexicalIndex:
        """The index without writing to it: the newest generation and commit
        another process (or thread) made, or :meth:`current` if there is no
        index yet."""
        if self.index is None or self.root is None:  # in memory: catching up costs no fsync
            return self.current()
        if self.root is not None:
            state = self.index.state()
            if self._read_pointer() != self._generation or state["seq"] != self._seq:
                self._open_current()
                if self.index is None:
                    return self.current()
                self._seq = self.index.state()["seq"]
        return self.index

    def rebuild(self, progress: Progress | None = None) -> None:
        """Rewrite the index from the store (``p2pmem reindex``)."""
        with self._locked():
            self._rebuild(progress)

    # -- work, under the lock ------------------------------------------------
    def _catch_up(self, seq: int) -> None:
        seq, purged = self._replay(seq)
        self._seq = seq
        if purged:
            self._rebuild()
        else:
            self.source.index_applied(CONSUMER, seq)

    def _replay(self, seq: int) -> tuple[int, bool]:
        """Apply the log after ``seq`` in batches; the last sequence applied
        and whether a retraction was among the entries."""
        purged = False
        while entries := self.source.log_entries(seq, _BATCH):
            purged = purged or any(flag for _, _, flag in entries)
            seq = entries[-1][0]
            self._apply(entries)
        return seq, purged

    def _rebuild(self, progress: Progress | None = None) -> None:
        """A fresh generation from a snapshot of the store, then the log
        written since the snapshot, then an atomic swap of the pointer."""
        for _attempt in range(3):  # a retraction during the rebuild asks for another
            if not self._build_generation(progress):
                return

    def _build_generation(self, progress: Progress | None) -> bool:
        """One rebuild; True if a retraction arrived while it ran."""
        high, batches = self.source.all_index_docs(_BATCH)
        if self.root is None:
            fresh = LexicalIndex(None)
        else:
            for stale in self.root.glob(f"{CONSUMER}-*"):
                if stale.name != self._read_pointer():
                    shutil.rmtree(stale, ignore_errors=True)  # a crashed rebuild's leftovers
            name = f"{CONSUMER}-{secrets.token_hex(4)}"
            fresh = LexicalIndex(self.root / name)
        done = 0
        first = True
        for docs in batches:
            fresh.apply([], docs, -1, reset=first, threads=_REBUILD_THREADS)
            first = False
            done += len(docs)
            if progress is not None:
                progress(done, 0)
        if first:
            fresh.apply([], [], -1, reset=True)
        old = self._generation
        self.index = fresh
        if self.root is not None:
            self._generation = fresh.directory.name if fresh.directory else None
        purged = self._catch_up_plain(high)
        if self.root is not None and self._generation is not None:
            tmp = self._pointer().with_suffix(".tmp")
            tmp.write_text(self._generation)
            os.replace(tmp, self._pointer())
            if old is not None and old != self._generation:
                shutil.rmtree(self.root / old, ignore_errors=True)
        return purged

    def _apply(self, entries: list[tuple[int, int, int]]) -> None:
        """Replace the documents of the logged rowids, and of their session
        neighbours old (as the index has them) and new (as the store has
        them): a neighbour's document holds this memory's text in its window."""
        assert self.index is not None
        changed = list(dict.fromkeys(rid for _, rid, _ in entries))
        docs = self.source.index_docs(changed)
        around = self.index.neighbours(changed)
        around.update(r for d in docs for r in (d.prev.rid, d.next.rid) if r >= 0)
        around.difference_update(changed)
        if around:
            docs += self.source.index_docs(sorted(around))
        self.index.apply([*changed, *sorted(around)], docs, entries[-1][0])

    def _catch_up_plain(self, seq: int) -> bool:
        """Apply the log after ``seq`` without triggering another rebuild
        (the fresh index was built from text that was current at ``seq``)."""
        assert self.index is not None
        seq, purged = self._replay(seq)
        self.index.apply([], [], seq)  # commit point even when nothing followed
        self._seq = seq
        self.source.index_applied(CONSUMER, seq)
        return purged
