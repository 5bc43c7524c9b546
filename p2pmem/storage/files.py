"""File modes of a home: the store, its indexes and the key hold private
memories and keys, so every file is 0600 and every directory 0700 whatever
existed before (an ``init`` into an existing 0755 directory, a copy made with
a loose umask). File I/O lives here so that p2pmem.model stays pure."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
#: SQLite's companions of a database file in WAL mode.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def tighten(path: Path, mode: int) -> bool:
    """Set ``path``'s permission bits to ``mode`` if they differ; True if
    they did. A file that is gone, not ours or on a read-only disk is left
    as it is (the caller's next step reports what matters)."""
    try:
        current = stat.S_IMODE(os.lstat(path).st_mode)
        if current == mode or stat.S_ISLNK(os.lstat(path).st_mode):
            return False
        os.chmod(path, mode)
        return True
    except OSError:
        return False


def store_files(db: Path) -> Iterator[Path]:
    """The database file and whichever companions it has now."""
    for suffix in SQLITE_SUFFIXES:
        path = db.with_name(db.name + suffix)
        if path.exists():
            yield path


def create_private(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists: SQLite gives its
    -wal and -shm files the database file's mode, so this sets all three."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def loose_paths(home: Path) -> Iterator[tuple[Path, int, int]]:
    """(path, mode, wanted mode) of everything in ``home`` that others may
    read: the home itself and every file and directory under it."""
    for path in [home, *sorted(home.rglob("*"))]:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue  # a socket's mode is set by the node; links have none
        wanted = PRIVATE_DIR if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE
        if stat.S_IMODE(st.st_mode) & 0o077:
            yield path, stat.S_IMODE(st.st_mode), wanted


def secure_home(home: Path, db: Path) -> None:
    """Close the home and its store to everyone but the owner (on open)."""
    tighten(home, PRIVATE_DIR)
    for path in store_files(db):
        tighten(path, PRIVATE_FILE)


def private_dir(path: Path) -> None:
    """Make a directory (and its parents) that only the owner may enter."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    tighten(path, PRIVATE_DIR)
