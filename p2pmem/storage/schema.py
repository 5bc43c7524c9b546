"""The store's schema and its versions.

The version lives in ``PRAGMA user_version`` (schema 4 on); stores written
before that carry it in ``meta.schema`` (2 and 3). Opening a store for
writing runs every forward migration from its version to
:data:`SCHEMA_VERSION` in one transaction, so a crash mid-upgrade leaves the
old store as it was. A store newer than this code is refused: its meaning of
a column may have changed, and guessing could lose data.

History:
  1  records in SQLite with an FTS5 table
  2  FTS5 replaced by the derived tantivy index and ``index_log``
  3  ``records_lineage`` and ``records_at`` dropped (cheaper ingest)
  4  the version moves to ``PRAGMA user_version``; ``meta.schema`` kept in
     step so that a release reading only ``meta`` refuses a newer store
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from p2pmem.errors import StoreError
from p2pmem.graph import tables as graph_tables

SCHEMA_VERSION = 4
#: The oldest version a read-only open can read as it is (no migration can
#: run on a read-only home): 3 and 4 have the same tables.
READABLE_FROM = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    ts INTEGER NOT NULL,
    author BLOB NOT NULL,
    kind TEXT NOT NULL,
    at INTEGER NOT NULL,
    session TEXT NOT NULL,
    visibility TEXT NOT NULL,
    lineage BLOB,
    target BLOB,
    state INTEGER NOT NULL DEFAULT 0,
    raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts ON records(ts, id);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, author, ts);
-- only records that are not their lineage's root: a root is found by its id,
-- and indexing every memory's random root id would cost ingest a second
-- random-key index (queries say `id = L OR (lineage = L AND lineage != id)`)
CREATE INDEX IF NOT EXISTS records_lineage_later ON records(lineage) WHERE lineage != id;
CREATE INDEX IF NOT EXISTS records_target ON records(target, kind) WHERE target IS NOT NULL;
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT NOT NULL,
    rid INTEGER NOT NULL,
    PRIMARY KEY (topic, rid)
) WITHOUT ROWID;
-- supersede edges of stored, unretracted memories: source supersedes target
CREATE TABLE IF NOT EXISTS supersedes (
    target BLOB NOT NULL,
    author BLOB NOT NULL,
    source BLOB NOT NULL,
    PRIMARY KEY (target, author, source)
) WITHOUT ROWID;
-- what retract records named: a memory matching (id or lineage, author) is gone for good
CREATE TABLE IF NOT EXISTS tombstones (
    target BLOB NOT NULL,
    author BLOB NOT NULL,
    PRIMARY KEY (target, author)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
-- rowids of memories whose searchable state changed, in commit order: what
-- the derived search indexes replay (p2pmem/retrieval/sync.py). purge = 1
-- when the change was a retraction, whose text must leave every index
CREATE TABLE IF NOT EXISTS index_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rid INTEGER NOT NULL,
    purge INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_session ON records(author, session, ts) WHERE kind = 'memory';
"""


class NewerStoreError(StoreError):
    """The store was written by a newer p2pmem."""


def stored_version(db: sqlite3.Connection) -> int:
    """The store's schema version; 0 for a new, empty database."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version:
        return int(version)
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if has_meta:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None:
            return int(row[0])
    has_records = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone()
    return 1 if has_records else 0


def check_version(version: int, path: Path, *, read_only: bool) -> None:
    if version > SCHEMA_VERSION:
        raise NewerStoreError(
            f"the store {path} was written by a newer p2pmem (schema {version}; this one knows "
            f"up to {SCHEMA_VERSION}): upgrade p2pmem to open it")
    if read_only and 0 < version < READABLE_FROM:
        raise StoreError(
            f"the store {path} has the old schema {version} and the home is read-only, so it "
            "cannot be upgraded here; open it once where it can be written")


def _drop_fts(db: sqlite3.Connection) -> None:
    # secure_delete is on: the dropped FTS5 pages are zeroed, and the
    # derived index is rebuilt from the records on first use
    db.execute("DROP TABLE IF EXISTS memory_fts")


def _drop_ingest_indexes(db: sqlite3.Connection) -> None:
    db.execute("DROP INDEX IF EXISTS records_lineage")  # on every memory
    # a random-key index every memory paid for at ingest (the cost that grew
    # with the store); time-window listings read the search index instead
    db.execute("DROP INDEX IF EXISTS records_at")


def _nothing(db: sqlite3.Connection) -> None:
    """3 -> 4 moves only the version number (done by :func:`prepare`)."""


#: The migration from each version to the next.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _drop_fts,
    2: _drop_ingest_indexes,
    3: _nothing,
}


def create_tables(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    graph_tables.create(db)


def prepare(db: sqlite3.Connection, path: Path) -> int:
    """Create or migrate the schema inside the caller's write transaction;
    returns the version the store had."""
    version = stored_version(db)
    check_version(version, path, read_only=False)
    for step in range(version, SCHEMA_VERSION) if version else ():
        MIGRATIONS[step](db)
    create_tables(db)  # writes nothing when every table exists (a full disk still opens)
    if version != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
    return version
