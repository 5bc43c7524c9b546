"""Opening a store's SQLite file in whatever state the disk left it.

* A writable home: the usual read-write connection in WAL mode, schema
  created or migrated (p2pmem/storage/schema.py).
* A read-only home (a read-only mount, or a directory the user cannot
  write): a read-only connection (``mode=ro``, or ``immutable=1`` when SQLite
  cannot create its shared-memory file there), so reading commands still
  work and writing ones fail with one line.
* A damaged file (not a database, or shorter than its header says): a
  :class:`p2pmem.errors.DamagedStoreError` naming ``p2pmem doctor``.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from p2pmem.errors import DamagedStoreError, DiskError, ReadOnlyError
from p2pmem.storage import schema
from p2pmem.storage.diskerrors import damaged, explain
from p2pmem.storage.files import PRIVATE_FILE, create_private, store_files, tighten

# Ingest of random 32-byte ids dirties pages all over the id and lineage
# indexes; checkpointing every 10,000 WAL pages (40 MiB) rather than
# 1,000 writes each hot page back once per checkpoint instead of ten times.
WAL_CHECKPOINT_PAGES = 10_000
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Opened:
    db: sqlite3.Connection
    mode: str  # "rw", "ro" or "immutable"
    target: str  # what to pass to sqlite3.connect for another connection
    uri: bool
    old_version: int  # the schema version the store had (0: created now)
    full: bool = False  # read-only because the disk is full (not because it is read-only)

    @property
    def read_only(self) -> bool:
        return self.mode != "rw"


def connect(target: str, *, uri: bool, check_same_thread: bool = True) -> sqlite3.Connection:
    return sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=check_same_thread, uri=uri)


def _ro_target(path: Path, mode: str) -> str:
    flag = "mode=ro" if mode == "ro" else "immutable=1"
    return f"file:{quote(str(path.resolve()))}?{flag}"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def check_length(db: sqlite3.Connection, path: Path) -> None:
    """A file cut short (a copy stopped half way, a truncated disk): SQLite
    only notices when a query reaches the missing pages, so check the size
    the header promises against the file (unless a WAL holds later pages)."""
    if str(path) == ":memory:":
        return
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    actual = path.stat().st_size
    if actual < pages * size:
        raise damaged(path, f"truncated: {actual} bytes of {pages * size}")


def _open_rw(path: Path, *, replica: bool, check_same_thread: bool) -> Opened:
    db = connect(str(path), uri=False, check_same_thread=check_same_thread)
    try:
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL" if replica else "PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        check_length(db, path)
        db.execute("BEGIN IMMEDIATE")
        try:
            old = schema.prepare(db, path)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except BaseException:
        db.close()
        raise
    return Opened(db, "rw", str(path), False, old)


def _open_ro(path: Path, *, check_same_thread: bool) -> Opened:
    last: sqlite3.Error | None = None
    for mode in ("ro", "immutable"):
        target = _ro_target(path, mode)
        db = connect(target, uri=True, check_same_thread=check_same_thread)
        try:
            version = schema.stored_version(db)
            check_length(db, path)
        except sqlite3.Error as exc:
            db.close()
            last = exc
            # CANTOPEN or IOERR: SQLite could not make its -shm file here
            # (a read-only or full disk); immutable=1 reads without one
            if mode == "ro" and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (10, 14):
                continue
            raise explain(exc, path) from None
        except BaseException:
            db.close()
            raise
        schema.check_version(version, path, read_only=True)
        return Opened(db, mode, target, True, version)
    raise explain(last, path) from None  # type: ignore[arg-type]


def _disk_full(exc: sqlite3.Error, path: Path) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == 13:  # SQLITE_FULL
        return True
    if code != 10:  # SQLITE_IOERR: the -shm file could not be written, perhaps for space
        return False
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def open_database(
    path: Path, *, create: bool = True, read_only: bool | None = None, replica: bool = False,
    check_same_thread: bool = True,
) -> Opened:
    """Open the store at ``path``. ``read_only``: True opens read-only,
    False insists on writing, None (the default) writes where it can and
    falls back to reading where the disk refuses."""
    if str(path) == ":memory:":
        db = connect(":memory:", uri=False, check_same_thread=check_same_thread)
        db.execute("BEGIN IMMEDIATE")
        schema.prepare(db, path)
        db.execute("COMMIT")
        return Opened(db, "rw", ":memory:", False, 0)
    if not path.exists():
        if not create:
            raise DiskError(f"no store at {path}")
        try:
            create_private(path)
        except OSError as exc:
            raise explain(exc, path) from None
    if read_only:
        return _open_ro(path, check_same_thread=check_same_thread)
    try:
        opened = _open_rw(path, replica=replica, check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        error = explain(exc, path)
        if read_only is None and _disk_full(exc, path):
            # SQLite cannot even create its shared-memory file: read the file
            # as it is (the last connection to close checkpointed the WAL)
            opened = _open_ro(path, check_same_thread=check_same_thread)
            return dataclasses.replace(opened, full=True)
        can_fall_back = read_only is None and not _writable(path)
        if isinstance(error, DamagedStoreError) or not can_fall_back:
            raise error from None
        return _open_ro(path, check_same_thread=check_same_thread)
    except DiskError as exc:
        if read_only is None and isinstance(exc, ReadOnlyError) and not _writable(path):
            return _open_ro(path, check_same_thread=check_same_thread)
        raise
    for file in store_files(path):
        tighten(file, PRIVATE_FILE)
    return opened
