"""The durable store: SQLite in WAL mode, an FTS5 index, and the CRDT views
maintained incrementally.

One table holds every record (its raw signed bytes and the columns queries
need). The views of :mod:`p2pmem.model.views` are kept up to date on each insert:
``state`` says whether a memory is a head, superseded or retracted, and only
heads are in the full-text index. Retracted memories lose their bytes and
text (``secure_delete`` overwrites the freed pages), keeping only the
tombstone that stops them from coming back.

Durability: every write is one transaction with ``synchronous=FULL``, so a
memory whose id was printed is on disk before the caller hears of it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from p2pmem import limits
from p2pmem.errors import RecordError, StoreError
from p2pmem.graph import tables as graph_tables
from p2pmem.model.kinds import REGISTRY
from p2pmem.model.quota import group_limit, over_quota
from p2pmem.model.record import Record, admission_error, decode_record, load_stored
from p2pmem.retrieval.documents import Entry, IndexDoc, make_doc
from p2pmem.retrieval.engine import Ranked, SearchEngine, SearchRequest
from p2pmem.retrieval.lexical import Filters
from p2pmem.storage.diskerrors import explain
from p2pmem.storage.diskerrors import full as full_error
from p2pmem.storage.diskerrors import read_only as read_only_error
from p2pmem.storage.files import private_dir
from p2pmem.storage.opening import connect, open_database
from p2pmem.storage.schema import SCHEMA_VERSION  # noqa: F401 - re-exported
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

HEAD, SUPERSEDED = 0, 1
T = TypeVar("T")
DB_FILE = "store.db"


_COLUMNS = "r.id, r.raw, r.state"
SQL_IN_PART = 500  # values in one `IN (...)` list (see _in_parts)


@dataclass
class IngestResult:
    """What one :meth:`Store.ingest` did."""

    added: list[Record] = field(default_factory=list)
    duplicates: int = 0
    retracted: int = 0  # arrived already retracted: dropped, tombstone kept
    evicted: int = 0  # records removed by a quota (p2pmem/model/quota.py), new or old
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


@dataclass(frozen=True)
class Memory:
    """A memory as recall shows it."""

    record: Record
    conflicts: tuple[bytes, ...] = ()
    score: float = 0.0
    ranked: Ranked | None = None  # how the engine placed it (recall --explain)



class Store:
    """A node's records in one SQLite file. Not shared between threads: each
    process (the serving node, a CLI command) opens its own."""

    def __init__(
        self, path: Path, *, verify_workers: int = 2, index_root: Path | None = None,
        check_same_thread: bool = True,
        decoder: Callable[[Sequence[bytes]], list[Record | RecordError]] | None = None,
        replica: bool = False,
        on_ingest: Callable[[IngestResult], None] | None = None,
        read_only: bool | None = None,
        create: bool = True,
    ) -> None:
        """``decoder`` replaces :meth:`decode_many`'s decode-and-verify (a
        simulation shares one cache of verified bytes among its nodes).
        ``replica`` is for a connection that only stores records received
        from peers: ``synchronous=NORMAL`` keeps the database consistent
        through any crash (WAL) but may lose the last commits to a power
        cut, which the next reconciliation fetches again; nothing
        acknowledged to a local writer goes through such a connection.
        ``read_only``: None writes where the disk allows and else reads
        (p2pmem/storage/opening.py); ``create=False`` refuses a missing file."""
        self.path = Path(path)
        self._decoder = decoder
        self._on_ingest = on_ingest  # told of every ingest's result (a simulator's bookkeeping)
        opened = open_database(self.path, create=create, read_only=read_only, replica=replica,
                               check_same_thread=check_same_thread)
        self._db = opened.db
        self._opened = opened
        #: True when the disk allows only reading: writes raise ReadOnlyError
        #: and the search index is kept in memory (docs/operations.md).
        self.read_only = opened.read_only
        self._lock = threading.Lock()
        self._purged_rids: list[int] = []  # retracted in the transaction just committed
        self._verify_workers = verify_workers
        in_memory = str(path) == ":memory:"
        if index_root is None and not in_memory:
            index_root = self.path.parent / f"{self.path.stem}.index"
        if index_root is not None and not self.read_only:
            try:
                private_dir(index_root)
            except OSError as exc:
                self._db.close()
                raise explain(exc, index_root) from None
        self.search = SearchEngine(self, None if in_memory or self.read_only else index_root)
        self._init_social()

    def _init_social(self) -> None:
        # follow/endorse state, read incrementally (see _social)
        self._social_rowid = 0
        self._social_count = 0
        self._latest_follow: dict[tuple[bytes, bytes], tuple[int, bytes, bool]] = {}
        self._endorsements: set[tuple[bytes, bytes, str]] = set()
        self._social_version = 0
        self._social_epoch = 0

    # -- plumbing --------------------------------------------------------
    def close(self) -> None:
        self.search.close()
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    class _Tx:
        def __init__(self, store: Store) -> None:
            self.store = store
            self.db = store._db

        def __enter__(self) -> sqlite3.Connection:
            if self.store.read_only:
                opened = self.store._opened
                raise full_error(self.store.path) if opened.full else read_only_error(self.store.path)
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, *rest: object) -> None:
            if exc_type is None:
                self.db.execute("COMMIT")
            else:
                self.db.execute("ROLLBACK")
                self.store._purged_rids = []

    def _transaction(self) -> Store._Tx:
        return Store._Tx(self)

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection, for derived views kept in their own tables
        (p2pmem/graph/tables.py). Same thread rules as the store."""
        return self._db

    def data_version(self) -> int:
        """Changes when another connection (a CLI command) commits."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- ingest ----------------------------------------------------------
    def decode_many(self, raws: Sequence[bytes]) -> list[Record | RecordError]:
        """Decode and verify; large batches in worker processes."""
        if self._decoder is not None:
            return self._decoder(raws)
        out: list[Record | RecordError] = []
        for _chunk, part in self._verified_chunks(raws):
            out.extend(part)
        return out

    def _verified_chunks(
        self, raws: Sequence[bytes]
    ) -> Iterator[tuple[Sequence[bytes], list[Record | RecordError]]]:
        """Verified records chunk by chunk, in order.

        Large batches are verified in a pool of worker processes (Ed25519
        dominates ingest, and processes do not contend for the GIL with the
        inserting thread); the caller stores each chunk while the workers
        verify the next ones. Workers only say which bytes passed: the
        records themselves are rebuilt here from the very same bytes."""
        if len(raws) < limits.INGEST_POOL_MIN_RECORDS or self._verify_workers <= 1:
            yield raws, [decode_or_error(raw) for raw in raws]
            return
        pool = verifier_pool(self._verify_workers)
        chunks = parts(raws)
        futures = [pool.submit(check_part, chunk) for chunk in chunks]
        for chunk, future in zip(chunks, futures, strict=True):
            try:
                verdicts = future.result()
            except POOL_FAILURES:  # a worker was killed: verify here, start afresh next time
                discard_pool(pool)
                verdicts = check_part(chunk)
            yield chunk, records_from(chunk, verdicts)

    def start_verifiers(self) -> None:
        """Start the verification workers now rather than on the first large
        batch (a long-running node or a benchmark pays the start-up once)."""
        start_workers(self._verify_workers)

    def ingest_raw(self, raws: Sequence[bytes], *, wall_ms: int | None = None) -> IngestResult:
        """Verify and store signed records from an untrusted source, in one
        transaction, storing each verified chunk while later ones verify.

        With ``wall_ms`` (the caller's clock; every untrusted edge passes
        it), a record is also refused for what a peer's would be:
        :func:`p2pmem.model.record.admission_error`."""
        result = IngestResult()
        position = 0
        with self._lock, self._transaction() as db:
            for _chunk, part in self._verified_chunks(raws):
                good: list[Record] = []
                for item in part:
                    if isinstance(item, RecordError):
                        result.rejected.append((position, str(item)))
                    elif wall_ms is not None and (reason := admission_error(item, wall_ms)):
                        result.rejected.append((position, reason))
                    else:
                        good.append(item)
                    position += 1
                self._store_all(db, good, result)
            self._enforce_quotas(db, result)
        self._after_commit(result)
        return result

    def ingest(self, records: Iterable[Record]) -> IngestResult:
        """Store verified records in one transaction, updating the views."""
        return self.ingest_groups([list(records)])[0]

    def ingest_groups(self, groups: Sequence[Sequence[Record]]) -> list[IngestResult]:
        """Store several batches of verified records in one transaction, with
        a result for each: the node's writer commits at once what verified
        while it was busy (one commit for many peers' messages)."""
        results = [IngestResult() for _ in groups]
        with self._lock, self._transaction() as db:
            for records, result in zip(groups, results, strict=True):
                self._store_all(db, list(records), result)
                self._enforce_quotas(db, result)
        for result in results:
            self._after_commit(result)
        return results

    def _after_commit(self, result: IngestResult) -> None:
        """A retraction committed: its text leaves the derived indexes now,
        not at the next search (docs/retrieval.md)."""
        if self._on_ingest is not None:
            self._on_ingest(result)
        if self._purged_rids:
            purged, self._purged_rids = self._purged_rids, []
            self.search.purge(purged)

    def _enforce_quotas(self, db: sqlite3.Connection, result: IngestResult) -> None:
        """Evict what the groups touched by this ingest hold past their
        quota (p2pmem/model/quota.py): the oldest (ts, id) first, the same on every
        node. Records that arrived already past it leave ``added``."""
        groups = {(r.kind, r.author) for r in result.added if group_limit(r.kind) is not None}
        if not groups:
            return
        victims: set[bytes] = set()
        for kind, author in sorted(groups):
            count, size = group_limit(kind) or (0, None)
            rows = db.execute(
                "SELECT id, ts, length(raw) FROM records WHERE kind = ? AND author = ? ORDER BY ts DESC, id DESC",
                (kind, author),
            ).fetchall()
            victims.update(over_quota(rows, count, size))
        if not victims:
            return
        for record_id in victims:
            db.execute("DELETE FROM topics WHERE rid = (SELECT rowid FROM records WHERE id = ?)", (record_id,))
            db.execute("DELETE FROM records WHERE id = ?", (record_id,))
        # tells every connection's follow/endorse cache to start over
        db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('social_epoch', 0)")
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'social_epoch'")
        result.evicted += len(victims)
        result.added = [r for r in result.added if r.id not in victims]

    def _store_all(self, db: sqlite3.Connection, records: list[Record], result: IngestResult) -> None:
        """Insert in order. Runs of plain memories (no refs) go in bulk;
        anything that touches other records' state goes one by one, between
        the runs, so the outcome equals inserting one at a time."""
        run: list[Record] = []
        for record in records:
            if record.kind == "memory" and not record.refs:
                run.append(record)
                continue
            if run:
                self._insert_plain_memories(db, run, result)
                run = []
            self._tally(result, record, self._insert(db, record))
        if run:
            self._insert_plain_memories(db, run, result)

    def _insert_plain_memories(self, db: sqlite3.Connection, run: list[Record], result: IngestResult) -> None:
        """The bulk path of ingest: a few set-based queries and executemany
        calls for a whole run instead of five statements per record."""
        unique: dict[bytes, Record] = {}
        for record in run:
            if record.id in unique:
                result.duplicates += 1
            else:
                unique[record.id] = record
        for part, marks in _in_parts(list(unique.values())):
            ids = [r.id for r in part]
            existing = {row[0] for row in db.execute(f"SELECT id FROM records WHERE id IN ({marks})", ids)}
            # a plain memory is its own lineage root, so (id, author) is all a tombstone can name
            tombstoned = set(db.execute(f"SELECT target, author FROM tombstones WHERE target IN ({marks})", ids))
            superseded = set(db.execute(f"SELECT target, author FROM supersedes WHERE target IN ({marks})", ids))
            fresh = []
            for r in part:
                if r.id in existing:
                    result.duplicates += 1
                elif (r.id, r.author) in tombstoned:
                    result.retracted += 1
                else:
                    fresh.append(r)
            if not fresh:
                continue
            first = db.execute("SELECT coalesce(max(rowid), 0) + 1 FROM records").fetchone()[0]
            rows, topics, logged = [], [], []
            for offset, r in enumerate(fresh):
                rowid = first + offset
                state = SUPERSEDED if (r.id, r.author) in superseded else HEAD
                rows.append((rowid, r.id, r.ts, r.author, r.kind, r.at_ms, r.session, r.visibility,
                             r.lineage, None, state, r.raw))
                topics.extend((t, rowid) for t in r.topics)
                if state == HEAD:
                    logged.append((rowid,))
            db.executemany(
                "INSERT INTO records(rowid, id, ts, author, kind, at, session, visibility, lineage, "
                "target, state, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("INSERT OR IGNORE INTO topics(topic, rid) VALUES (?, ?)", topics)
            db.executemany("INSERT INTO index_log(rid) VALUES (?)", logged)
            result.added.extend(fresh)

    @staticmethod
    def _tally(result: IngestResult, record: Record, outcome: str) -> None:
        if outcome == "added":
            result.added.append(record)
        elif outcome == "duplicate":
            result.duplicates += 1
        else:
            result.retracted += 1

    def add(self, record: Record) -> bool:
        """Store one record; False if it was already here or is retracted."""
        return bool(self.ingest([record]).added)

    def _insert(self, db: sqlite3.Connection, r: Record) -> str:
        """Insert one record and maintain its kind's view: the registry names
        the hook (p2pmem/model/kinds.py, ``RecordKind.view``)."""
        if db.execute("SELECT 1 FROM records WHERE id = ?", (r.id,)).fetchone():
            return "duplicate"
        return self._VIEWS[REGISTRY[r.kind].view](self, db, r)

    def _view_memory(self, db: sqlite3.Connection, r: Record) -> str:
        """A memory: its lineage, what it supersedes, and the search log."""
        if db.execute(
            "SELECT 1 FROM tombstones WHERE author = ? AND target IN (?, ?)",
            (r.author, r.id, r.lineage),
        ).fetchone():
            return "retracted"
        superseded = db.execute(
            "SELECT 1 FROM supersedes WHERE target = ? AND author = ? LIMIT 1",
            (r.id, r.author),
        ).fetchone()
        state = SUPERSEDED if superseded else HEAD
        rowid = self._insert_row(db, r, r.lineage, None, state)
        if r.topics:
            db.executemany(
                "INSERT OR IGNORE INTO topics(topic, rid) VALUES (?, ?)",
                [(t, rowid) for t in r.topics],
            )
        if state == HEAD:
            self._log(db, rowid)
        for ref in r.refs:
            db.execute(
                "INSERT OR IGNORE INTO supersedes(target, author, source) VALUES (?, ?, ?)",
                (ref, r.author, r.id),
            )
            row = db.execute(
                "SELECT rowid FROM records WHERE id = ? AND author = ? AND kind = 'memory' AND state = ?",
                (ref, r.author, HEAD),
            ).fetchone()
            if row:
                db.execute("UPDATE records SET state = ? WHERE rowid = ?", (SUPERSEDED, row[0]))
                self._log(db, row[0])
        return "added"

    def _view_graph(self, db: sqlite3.Connection, r: Record) -> str:
        """A graph record: the knowledge graph's view (p2pmem/graph/tables.py)."""
        self._insert_row(db, r, None, None, HEAD)
        graph_tables.on_insert(db, r)
        return "added"

    def _view_row(self, db: sqlite3.Connection, r: Record) -> str:
        """The record row alone, with the body key the kind names as its target."""
        key = REGISTRY[r.kind].target
        target = r.body.get(key) if key is not None and isinstance(r.body, dict) else None
        self._insert_row(db, r, None, target, HEAD)
        return "added"

    def _view_retract(self, db: sqlite3.Connection, r: Record) -> str:
        """A retraction: tombstones for good, and the targets' bodies purged."""
        self._insert_row(db, r, None, None, HEAD)
        for ref in r.refs:
            db.execute(
                "INSERT OR IGNORE INTO tombstones(target, author) VALUES (?, ?)", (ref, r.author)
            )
            victims = db.execute(
                "SELECT rowid, id, raw FROM records WHERE kind = 'memory' AND author = ? "
                "AND (id = ? OR (lineage = ? AND lineage != id))",
                (r.author, ref, ref),
            ).fetchall()
            for rowid, victim_id, raw in victims:
                self._purge(db, rowid, victim_id, r.author, raw)
        return "added"

    # RecordKind.view -> hook (p2pmem/model/kinds.py, VIEW_HOOKS)
    _VIEWS = {"memory": _view_memory, "graph": _view_graph, "row": _view_row, "retract": _view_retract}

    def _insert_row(
        self, db: sqlite3.Connection, r: Record, lineage: bytes | None, target: bytes | None, state: int
    ) -> int:
        cursor = db.execute(
            "INSERT INTO records(id, ts, author, kind, at, session, visibility, lineage, target, state, raw) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.id, r.ts, r.author, r.kind, r.at_ms, r.session, r.visibility, lineage, target, state, r.raw),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @staticmethod
    def _log(db: sqlite3.Connection, rowid: int, purge: bool = False) -> None:
        """Tell the derived indexes that this memory's searchable state changed."""
        db.execute("INSERT INTO index_log(rid, purge) VALUES (?, ?)", (rowid, int(purge)))

    def _purge(self, db: sqlite3.Connection, rowid: int, victim_id: bytes, author: bytes, raw: bytes) -> None:
        """Remove a retracted memory's bytes and text; re-expose what it superseded."""
        victim = decode_record(raw, verify=False)
        self._log(db, rowid, purge=True)
        self._purged_rids.append(rowid)
        db.execute("DELETE FROM topics WHERE rid = ?", (rowid,))
        db.execute("DELETE FROM records WHERE rowid = ?", (rowid,))
        db.execute("DELETE FROM supersedes WHERE source = ? AND author = ?", (victim_id, author))
        for ref in victim.refs:
            still = db.execute(
                "SELECT 1 FROM supersedes WHERE target = ? AND author = ? LIMIT 1", (ref, author)
            ).fetchone()
            if still:
                continue
            row = db.execute(
                "SELECT rowid, raw FROM records WHERE id = ? AND author = ? AND kind = 'memory' AND state = ?",
                (ref, author, SUPERSEDED),
            ).fetchone()
            if row:
                db.execute("UPDATE records SET state = ? WHERE rowid = ?", (HEAD, row[0]))
                self._log(db, row[0])

    # -- reads -----------------------------------------------------------
    def get(self, record_id: bytes) -> Record | None:
        row = self._db.execute("SELECT raw FROM records WHERE id = ?", (record_id,)).fetchone()
        return decode_record(row[0], verify=False) if row else None

    def graph_answers(self, text: str, *, authors: Sequence[bytes] = (), limit: int = 10,
                      max_records: int = 100) -> list[bytes]:
        """The knowledge graph's answer to another node's ``ask``: the signed
        additions behind the best matching public and ``ask`` entities
        (:func:`p2pmem.graph.ops.answer_records`). Here so that the protocol
        core reaches the graph through its store port, not by importing it."""
        from p2pmem.graph.ops import answer_records

        return answer_records(self, text, authors=authors, limit=limit, max_records=max_records)

    def get_raw(self, record_id: bytes) -> bytes | None:
        row = self._db.execute("SELECT raw FROM records WHERE id = ?", (record_id,)).fetchone()
        return row[0] if row else None

    def has(self, record_id: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone() is not None

    def is_retracted(self, record_id: bytes) -> bool:
        return (
            self._db.execute("SELECT 1 FROM tombstones WHERE target = ? LIMIT 1", (record_id,)).fetchone()
            is not None
        )

    def resolve_prefix(self, text: str) -> bytes:
        """A record id from its hex form or a unique prefix of at least 8 digits."""
        text = text.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", text):
            raise StoreError(f"not a record id (8 to 64 hex digits): {text[:80]!r}")
        if len(text) == 64:
            return bytes.fromhex(text)
        low = bytes.fromhex(text.ljust(64, "0"))
        high = bytes.fromhex(text.ljust(64, "f"))
        rows = self._db.execute(
            "SELECT id FROM records WHERE id BETWEEN ? AND ? LIMIT 2", (low, high)
        ).fetchall()
        if not rows:
            raise StoreError(f"no record with id {text}")
        if len(rows) > 1:
            raise StoreError(f"id prefix {text} is ambiguous; give more digits")
        return rows[0][0]

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._db.execute("SELECT count(*) FROM records").fetchone()[0]
        return self._db.execute("SELECT count(*) FROM records WHERE kind = ?", (kind,)).fetchone()[0]

    def last_ts(self, author: bytes | None = None) -> int:
        """The greatest timestamp stored (of one author): where the HLC resumes."""
        if author is None:
            row = self._db.execute("SELECT max(ts) FROM records").fetchone()
        else:
            row = self._db.execute(
                "SELECT max(ts) FROM records WHERE author = ? AND kind IN "
                "('memory','retract','profile','follow','endorse','message',"
                "'entity','observation','relation','unlink')",
                (author,),
            ).fetchone()
        return row[0] or 0

    def items(self) -> Iterator[tuple[int, bytes]]:
        """Every stored (ts, id), the set reconciliation works on."""
        yield from self._db.execute("SELECT ts, id FROM records ORDER BY ts, id")

    def scan(self) -> Iterator[tuple[int, bytes, str, bytes, str]]:
        """(ts, id, kind, author, visibility) of every record: what replication
        scopes are computed from, without decoding any record."""
        yield from self._db.execute("SELECT ts, id, kind, author, visibility FROM records")

    def max_rowid(self) -> int:
        return self._db.execute("SELECT coalesce(max(rowid), 0) FROM records").fetchone()[0]

    def ids_after(self, rowid: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        """(rowid, id) of records stored after ``rowid``: how a serving node
        notices what a CLI command of the same home wrote (ids only: most
        of them are the node's own writes, which it skips unread)."""
        return self._db.execute(
            "SELECT rowid, id FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?", (rowid, limit)
        ).fetchall()

    def raws_of(self, ids: Sequence[bytes]) -> list[bytes]:
        """The stored bytes of those ``ids`` that are stored, in rowid order."""
        out: list[tuple[int, bytes]] = []
        for part, marks in _in_parts(ids):
            out.extend(self._db.execute(
                f"SELECT rowid, raw FROM records WHERE id IN ({marks})", part
            ))
        return [raw for _, raw in sorted(out)]

    def known_ids(self, ids: Sequence[bytes]) -> set[bytes]:
        """Which of ``ids`` are stored."""
        found: set[bytes] = set()
        for part, marks in _in_parts(ids):
            found.update(row[0] for row in self._db.execute(f"SELECT id FROM records WHERE id IN ({marks})", part))
        return found

    def scoped_raw(self, ids: Iterable[bytes]) -> Iterator[tuple[bytes, str, bytes, str, bytes | None]]:
        """(raw, kind, author, visibility, target) for each stored id, without
        decoding: the hot path of pushing thousands of records to a peer.
        ``target`` is a message's recipient (and a follow's or endorsement's
        target; None for other kinds)."""
        ids = list(ids)
        for part, marks in _in_parts(ids):  # one query per part, in the order asked
            rows = {
                row[0]: row[1:]
                for row in self._db.execute(
                    "SELECT id, raw, kind, author, visibility, target FROM records "
                    f"WHERE id IN ({marks})",
                    part,
                )
            }
            for record_id in part:
                if record_id in rows:
                    yield rows[record_id]

    def raw_records(self, *, kinds: Sequence[str] | None = None) -> Iterator[bytes]:
        """Raw bytes of stored records in (ts, id) order (export)."""
        if kinds:
            marks = ",".join("?" * len(kinds))
            query = f"SELECT raw FROM records WHERE kind IN ({marks}) ORDER BY ts, id"
            yield from (row[0] for row in self._db.execute(query, tuple(kinds)))
        else:
            yield from (row[0] for row in self._db.execute("SELECT raw FROM records ORDER BY ts, id"))

    def records_by_kind(self, kind: str) -> list[Record]:
        rows = self._db.execute("SELECT raw FROM records WHERE kind = ? ORDER BY ts, id", (kind,))
        return [decode_record(row[0], verify=False) for row in rows]

    def lineage_heads(self, lineage: bytes, author: bytes) -> list[Record]:
        """Heads of one lineage, current first."""
        rows = self._db.execute(
            "SELECT raw FROM records WHERE (id = ? OR (lineage = ? AND lineage != id)) "
            "AND author = ? AND state = ? "
            "ORDER BY ts DESC, id DESC",
            (lineage, lineage, author, HEAD),
        )
        return [decode_record(row[0], verify=False) for row in rows]

    def current_version(self, record_id: bytes) -> Record | None:
        """The current head of the lineage that ``record_id`` belongs to."""
        row = self._db.execute(
            "SELECT lineage, author FROM records WHERE id = ? AND kind = 'memory'", (record_id,)
        ).fetchone()
        if not row:
            return None
        heads = self.lineage_heads(row[0], row[1])
        return heads[0] if heads else None

    def recall(
        self,
        query: str = "",
        *,
        since: int | None = None,
        until: int | None = None,
        topics: Sequence[str] = (),
        authors: Sequence[bytes] = (),
        session: str | None = None,
        visibilities: Sequence[str] = ("public", "ask", "private"),
        limit: int = 10,
        now_ms: int | None = None,
        fresh: bool = True,
    ) -> list[Memory]:
        """Current memories matching ``query`` and the filters, best first
        (the retrieval engine's ranking); without query words, the newest
        first. Each comes with its concurrent heads. ``fresh=False`` uses
        the index as it is, without bringing it up to date first (a serving
        node answering the network, whose index a background task keeps
        current)."""
        limit = max(1, min(limit, limits.MAX_RECALL_LIMIT))
        filters = Filters(
            since=since, until=until, topics=tuple(topics), authors=tuple(authors), session=session,
            visibilities=() if tuple(visibilities) == ("public", "ask", "private") else tuple(visibilities),
        )
        result = self.search.search(SearchRequest(query, filters, limit, now_ms, fresh))
        if result.terms:
            rows = self._head_rows([r.rid for r in result.ranked])
            records = [
                (load_stored(rows[r.rid]), r) for r in result.ranked if r.rid in rows
            ]
        elif since is not None or until is not None:
            # a time window without query words: the search index's fast
            # fields find the newest in any window without scanning the store
            rids = self.search.newest(filters, limit, fresh=fresh)
            rows = self._head_rows(rids)
            records = [(load_stored(rows[rid]), None) for rid in rids if rid in rows]
        else:
            records = [(load_stored(raw), None) for raw in self._newest(filters, limit)]
        conflicts = self._conflicts_many([record for record, _ in records])
        return [
            Memory(record, conflicts.get(record.id, ()), r.score if r else 0.0, r)
            for record, r in records
        ]

    def collection_stats(self, text: str, visibilities: Sequence[str] = ("public", "ask")) -> tuple[int, list[int]]:
        """The current memories of these visibilities, and how many of them
        hold each search term of ``text`` (:func:`query_terms` order), from
        the index as it is."""
        from p2pmem.retrieval.text import query_terms

        index = self.search.sync.as_is()
        return index.counts(query_terms(text), Filters(visibilities=tuple(visibilities)))

    def session_context(self, rids: Sequence[int], text: str = "") -> dict[int, list[bytes]]:
        """For each of these memory rowids, the raw records an asker needs to
        rank the memory as one index over the union of the network would
        (the window and session stages of the engine): its session
        neighbours (the previous and next current memory of its author's
        session) and, for the first memory of each session, the session's
        SESSION_TOP best memories for ``text`` by their own score. Never a
        private memory."""
        from p2pmem.retrieval.engine import SESSION_TOP
        from p2pmem.retrieval.text import query_terms

        docs = self.index_docs(list(rids))
        around: dict[int, list[int]] = {d.rid: [n.rid for n in (d.prev, d.next) if n.rid >= 0] for d in docs}
        terms = query_terms(text)
        if terms:
            index = self.search.sync.as_is()
            firsts: dict[tuple[bytes, str], int] = {}
            for d in docs:
                if d.session:
                    firsts.setdefault((d.author, d.session), d.rid)
            for (author, session), rid in firsts.items():
                best = index.top_scores("body", terms, Filters(authors=(author,), session=session), SESSION_TOP)
                around[rid] += [r for r in best if r != rid and r not in around[rid]]
        wanted = sorted({r for rs in around.values() for r in rs})
        raws = {rid: raw for rid, raw in self._head_rows(wanted).items()
                if decode_record(raw, verify=False).visibility != "private"}
        return {rid: [raws[r] for r in rs if r in raws] for rid, rs in around.items()}

    def _head_rows(self, rids: Sequence[int]) -> dict[int, bytes]:
        """Raw bytes of those rowids that are still current memories: the
        index may lag the store by a commit, never the other way round."""
        out: dict[int, bytes] = {}
        for part, marks in _in_parts(rids):
            rows = self._db.execute(
                f"SELECT rowid, raw FROM records WHERE rowid IN ({marks}) "
                f"AND +state = {HEAD} AND +kind = 'memory'",
                part,
            )
            out.update(rows)
        return out

    def _newest(self, f: Filters, limit: int) -> list[bytes]:
        """Newest current memories passing filters other than a time window
        (``records_ts`` read backwards)."""
        where = [f"r.state = {HEAD}", "r.kind = 'memory'"]
        params: list[object] = []
        if f.authors:
            where.append(f"r.author IN ({','.join('?' * len(f.authors))})")
            params.extend(f.authors)
        if f.session is not None:
            where.append("r.session = ?")
            params.append(f.session)
        if f.visibilities:
            where.append(f"r.visibility IN ({','.join('?' * len(f.visibilities))})")
            params.extend(f.visibilities)
        if f.topics:
            where.append(
                "EXISTS (SELECT 1 FROM topics t WHERE t.rid = r.rowid AND t.topic IN "
                f"({','.join('?' * len(f.topics))}))"
            )
            params.extend(f.topics)
        sql = f"SELECT r.raw FROM records r WHERE {' AND '.join(where)} ORDER BY r.ts DESC LIMIT ?"
        return [row[0] for row in self._db.execute(sql, [*params, limit])]

    def _conflicts_many(self, records: Sequence[Record]) -> dict[bytes, tuple[bytes, ...]]:
        """Other heads of each record's lineage, in one query."""
        if not records:
            return {}
        lineages = list({r.lineage for r in records})
        heads: dict[tuple[bytes, bytes], list[bytes]] = {}
        for part, marks in _in_parts(lineages):
            rows = self._db.execute(
                f"SELECT id, lineage, author FROM records WHERE state = {HEAD} AND (id IN ({marks}) "
                f"OR (lineage IN ({marks}) AND lineage != id)) ORDER BY ts DESC, id DESC",
                part + part,
            )
            for record_id, lineage, author in rows:
                heads.setdefault((lineage, author), []).append(record_id)
        return {
            r.id: tuple(h for h in heads.get((r.lineage, r.author), ()) if h != r.id) for r in records
        }

    # -- what the derived search indexes read (p2pmem/retrieval/sync.py) --
    def log_high(self) -> int:
        """The greatest index_log sequence ever written (pruned or not)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'index_log'").fetchone()
        return row[0] if row else 0

    def log_low(self) -> int:
        """The first sequence still in the log (log_high + 1 when empty)."""
        row = self._db.execute("SELECT min(seq) FROM index_log").fetchone()
        return row[0] if row[0] is not None else self.log_high() + 1

    def log_entries(self, after: int, limit: int) -> list[tuple[int, int, int]]:
        return self._db.execute(
            "SELECT seq, rid, purge FROM index_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()

    _ENTRY = "rowid, raw, at, author, session, visibility, ts, id"

    def index_docs(self, rids: list[int]) -> list[IndexDoc]:
        """Index documents for those rowids that are current memories now,
        each with its session neighbours. Memories of one session are looked
        up together: one range query finds a run of them and their
        neighbours, where one query per memory and side would cost four."""
        rows: list[tuple] = []
        for part, marks in _in_parts(rids):
            rows.extend(self._db.execute(
                f"SELECT {self._ENTRY} FROM records WHERE rowid IN "
                f"({marks}) AND +state = {HEAD} AND +kind = 'memory'",
                part,
            ))
        groups: dict[tuple[bytes, str], list[tuple]] = {}
        docs: list[IndexDoc] = []
        for row in rows:
            if row[4]:
                groups.setdefault((row[3], row[4]), []).append(row)
            else:
                docs.append(make_doc(_entry(row), None, None))
        for (author, session), members in groups.items():
            docs.extend(self._session_docs(author, session, members))
        return docs

    # current memories of one author's session, in (ts, id) order
    _SESSION_HEADS = (
        f"SELECT {_ENTRY} FROM records WHERE author = ? AND session = ? AND kind = 'memory' "
        f"AND state = {HEAD} AND "
    )

    def _session_docs(self, author: bytes, session: str, members: list[tuple]) -> list[IndexDoc]:
        members.sort(key=lambda r: (r[6], r[7]))
        first, last = members[0], members[-1]
        budget = 4 * len(members) + 16  # a run much sparser than this is cheaper row by row
        run = self._db.execute(
            self._SESSION_HEADS + "(ts > ? OR (ts = ? AND id >= ?)) AND (ts < ? OR (ts = ? AND id <= ?)) "
            "ORDER BY ts, id LIMIT ?",
            (author, session, first[6], first[6], first[7], last[6], last[6], last[7], budget + 1),
        ).fetchall()
        if len(run) > budget:
            return [
                doc for row in members
                for doc in _docs_in_order([self._adjacent(row, False), row, self._adjacent(row, True)], [row])
            ]
        return _docs_in_order([self._adjacent(first, False), *run, self._adjacent(last, True)], members)

    def _adjacent(self, row: tuple, after: bool) -> tuple | None:
        """The current memory just after (or before) ``row`` in its author's
        session, by (ts, id); None without a session."""
        _rowid, _raw, _at, author, session, _vis, ts, record_id = row
        if not session:
            return None
        order = "(ts > ? OR (ts = ? AND id > ?)) ORDER BY ts, id" if after else \
            "(ts < ? OR (ts = ? AND id < ?)) ORDER BY ts DESC, id DESC"
        return self._db.execute(
            self._SESSION_HEADS + order + " LIMIT 1", (author, session, ts, ts, record_id)
        ).fetchone()

    def all_index_docs(self, batch: int) -> tuple[int, Iterator[list[IndexDoc]]]:
        """(log position, batches of every current memory's document) read
        from one snapshot, on a connection of its own so the caller may keep
        using this one. Session by session, so neighbours are adjacent rows."""
        in_memory = str(self.path) == ":memory:"
        snapshot = self._db if in_memory else connect(self._opened.target, uri=self._opened.uri)
        if not in_memory:
            snapshot.execute("BEGIN")
        row = snapshot.execute("SELECT seq FROM sqlite_sequence WHERE name = 'index_log'").fetchone()
        high = row[0] if row else 0
        cursor = snapshot.execute(
            f"SELECT {self._ENTRY} FROM records WHERE kind = 'memory' AND state = {HEAD} "
            "ORDER BY author, session, ts, id"
        )
        held = cursor.fetchall() if in_memory else None  # one connection: read it all first

        def rows() -> Iterator[tuple[Entry, tuple]]:
            if held is not None:
                yield from ((_entry(r), r) for r in held)
                return
            while part := cursor.fetchmany(1000):
                yield from ((_entry(r), r) for r in part)

        def batches() -> Iterator[list[IndexDoc]]:
            try:
                out: list[IndexDoc] = []
                before: tuple[Entry, tuple] | None = None
                current: tuple[Entry, tuple] | None = None
                for item in rows():
                    if current is not None:
                        out.append(_doc_between(before, current, item))
                    before, current = current, item
                    if len(out) >= batch:
                        yield out
                        out = []
                if current is not None:
                    out.append(_doc_between(before, current, None))
                if out:
                    yield out
            finally:
                if not in_memory:
                    snapshot.execute("COMMIT")
                    snapshot.close()

        return high, batches()

    def count_current(self) -> int:
        """How many current memories (heads) there are."""
        return self._db.execute(f"SELECT count(*) FROM records WHERE kind = 'memory' AND state = {HEAD}").fetchone()[0]

    def index_applied(self, consumer: str, seq: int) -> None:
        """A derived index durably applied the log up to ``seq``: drop the
        entries every consumer has applied."""
        if self.read_only:
            return  # the in-memory index of a read-only home starts afresh each time
        key = f"index_log.{consumer}"
        with self._lock, self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, seq))
            rows = db.execute("SELECT value FROM meta WHERE key LIKE 'index_log.%'").fetchall()
            floor = min(int(v) for (v,) in rows)
            db.execute("DELETE FROM index_log WHERE seq <= ?", (floor,))

    def times(self, rids: Sequence[int]) -> dict[int, tuple[int, int]]:
        """rowid -> (at, ts) of stored records."""
        out: dict[int, tuple[int, int]] = {}
        for part, marks in _in_parts(rids):
            rows = self._db.execute(
                f"SELECT rowid, at, ts FROM records WHERE rowid IN ({marks})", part
            )
            out.update((rid, (at, ts)) for rid, at, ts in rows)
        return out

    def conflicts_of(self, record: Record) -> tuple[bytes, ...]:
        """The other heads of a memory's lineage: concurrent edits."""
        rows = self._db.execute(
            "SELECT id FROM records WHERE (id = ? OR (lineage = ? AND lineage != id)) "
            "AND author = ? AND state = ? AND id != ? ORDER BY ts DESC, id DESC",
            (record.lineage, record.lineage, record.author, HEAD, record.id),
        )
        return tuple(row[0] for row in rows)

    def profiles(self) -> dict[bytes, Record]:
        """Each author's winning profile (last writer wins by (ts, id))."""
        best: dict[bytes, Record] = {}
        for record in self.records_by_kind("profile"):
            current = best.get(record.author)
            if current is None or (record.ts, record.id) > (current.ts, current.id):
                best[record.author] = record
        return best

    def _social(self) -> None:
        """Bring the follow/endorse state up to date, decoding only records
        stored since the last call (any process may have written them). A
        deletion (a quota eviction) or a reused rowid shows as a count that
        does not add up: then everything is read again."""
        epoch_row = self._db.execute("SELECT value FROM meta WHERE key = 'social_epoch'").fetchone()
        epoch = epoch_row[0] if epoch_row else 0
        count = self._db.execute(
            "SELECT count(*) FROM records WHERE kind IN ('follow', 'endorse')"
        ).fetchone()[0]
        if count < self._social_count or epoch != self._social_epoch:
            self._social_epoch = epoch
            self._social_version += 1
            self._social_rowid, self._social_count = 0, 0
            self._latest_follow.clear()
            self._endorsements.clear()
        rows = self._db.execute(
            "SELECT rowid, raw FROM records WHERE rowid > ? AND kind IN ('follow', 'endorse') ORDER BY rowid",
            (self._social_rowid,),
        ).fetchall()
        if self._social_count + len(rows) != count and self._social_rowid:
            self._social_rowid, self._social_count = 0, 0
            self._latest_follow.clear()
            self._endorsements.clear()
            self._social()
            return
        for rowid, raw in rows:
            record = decode_record(raw, verify=False)
            assert isinstance(record.body, dict)
            if record.kind == "follow":
                key = (record.author, record.body["target"])
                current = self._latest_follow.get(key)
                if current is None or (record.ts, record.id) > current[:2]:
                    self._latest_follow[key] = (record.ts, record.id, bool(record.body["active"]))
            else:
                self._endorsements.add((record.author, record.body["target"], record.body["what"]))
            self._social_rowid = rowid
        if rows:
            self._social_version += 1
        self._social_count = count

    def social_version(self) -> int:
        """Changes whenever follows() or endorsements() would: trust caches on it."""
        self._social()
        return self._social_version

    def follows(self) -> set[tuple[bytes, bytes]]:
        """Active (follower, followee) pairs (last writer wins per pair)."""
        self._social()
        return {k for k, (_, _, active) in self._latest_follow.items() if active}

    def endorsements(self) -> set[tuple[bytes, bytes, str]]:
        self._social()
        return set(self._endorsements)


    def authors(self) -> dict[bytes, int]:
        """Every author with a count of its current memories."""
        rows = self._db.execute(
            "SELECT author, sum(kind = 'memory' AND state = 0) FROM records GROUP BY author"
        )
        return {author: count or 0 for author, count in rows}

    def topic_authors(self, topic: str) -> dict[bytes, int]:
        """How many current memories each author wrote on ``topic`` (any case)."""
        rows = self._db.execute(
            "SELECT r.author, count(*) FROM topics t JOIN records r ON r.rowid = t.rid "
            "WHERE lower(t.topic) = lower(?) AND r.state = 0 GROUP BY r.author",
            (topic,),
        )
        return {author: count for author, count in rows}

    def messages_to(self, recipient: bytes) -> list[Record]:
        rows = self._db.execute(
            "SELECT raw FROM records WHERE target = ? AND kind = 'message' ORDER BY ts DESC, id DESC",
            (recipient,),
        )
        return [decode_record(row[0], verify=False) for row in rows]

    def integrity_check(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

def _entry(row: tuple) -> Entry:
    rid, raw, at, author, session, visibility, ts, _id = row
    record = load_stored(raw)
    return Entry(rid, record.text, at, ts, author, session, tuple(record.topics), visibility)


def _docs_in_order(sequence: list[tuple | None], members: list[tuple]) -> list[IndexDoc]:
    """The documents of ``members``, each between its neighbours in
    ``sequence`` (rows of one session in (ts, id) order; None: no row)."""
    rows = [r for r in sequence if r is not None]
    entries = {r[0]: _entry(r) for r in rows}
    position = {r[0]: i for i, r in enumerate(rows)}
    docs = []
    for row in members:
        i = position[row[0]]
        prev = entries[rows[i - 1][0]] if i > 0 else None
        following = entries[rows[i + 1][0]] if i + 1 < len(rows) else None
        docs.append(make_doc(entries[row[0]], prev, following))
    return docs


def _same_session(a: Entry, b: Entry) -> bool:
    return bool(a.session) and a.author == b.author and a.session == b.session


def _doc_between(
    before: tuple[Entry, tuple] | None, row: tuple[Entry, tuple], after: tuple[Entry, tuple] | None
) -> IndexDoc:
    """The document of ``row`` given the rows around it in (author,
    session, ts, id) order."""
    entry = row[0]
    prev = before[0] if before is not None and _same_session(before[0], entry) else None
    following = after[0] if after is not None and _same_session(entry, after[0]) else None
    return make_doc(entry, prev, following)


def _in_parts(values: Sequence[T]) -> Iterator[tuple[list[T], str]]:
    """``values`` in parts of at most SQL_IN_PART, each with its ``?, ?, ...``
    placeholders: SQLite limits a statement's parameters, and shorter IN
    lists plan better."""
    for i in range(0, len(values), SQL_IN_PART):
        part = list(values[i : i + SQL_IN_PART])
        yield part, ",".join("?" * len(part))
