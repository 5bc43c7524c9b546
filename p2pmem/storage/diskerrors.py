"""One clear line for every way the disk under a home can refuse.

SQLite and the OS report a full disk, a read-only mount or a damaged file as
``sqlite3.Error`` or ``OSError`` with their own wording; :func:`explain`
turns either into a :class:`p2pmem.errors.DiskError` naming the file and
what to do, so the CLI, the MCP server and the serving node all say the same
thing (docs/operations.md, "Disk states and `p2pmem doctor`").
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from p2pmem.errors import DamagedStoreError, DiskError, DiskFullError, ReadOnlyError

_READ_ONLY = ("readonly database", "read-only file system", "attempt to write a readonly")
_DAMAGED = ("file is not a database", "malformed", "file is encrypted", "database corrupt")
_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk's refusal rather than a bug."""
    return isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, (ConnectionError, TimeoutError))


def _code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF


def damaged(path: Path | str, detail: str) -> DamagedStoreError:
    return DamagedStoreError(
        f"the store {path} is damaged ({detail}); run `p2pmem doctor` to check it, "
        "and restore a backup (`p2pmem restore`) if doctor cannot repair it"
    )


def full(path: Path | str) -> DiskFullError:
    return DiskFullError(
        f"the disk holding {path} is full: the write was not kept (everything acknowledged "
        "before is); free some space and retry"
    )


def read_only(path: Path | str) -> ReadOnlyError:
    return ReadOnlyError(
        f"{path} is read-only: this command writes, so it cannot run here "
        "(reading commands such as recall, agents and export still work)"
    )


def explain(exc: BaseException, path: Path | str) -> DiskError:
    """The one-line :class:`DiskError` for a ``sqlite3.Error`` or ``OSError``
    raised while working on ``path`` (the store, or a file of the home)."""
    if isinstance(exc, DiskError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            return full(exc.filename or path)
        if exc.errno in _READ_ONLY_ERRNOS:
            return read_only(exc.filename or path)
        return DiskError(f"cannot use {exc.filename or path}: {exc.strerror or exc}")
    text = str(exc).lower()
    code = _code(exc) if isinstance(exc, sqlite3.Error) else 0
    if code == 13 or "database or disk is full" in text:  # SQLITE_FULL
        return full(path)
    if code == 8 or any(word in text for word in _READ_ONLY):  # SQLITE_READONLY
        return read_only(path)
    if code in (11, 26) or any(word in text for word in _DAMAGED):  # SQLITE_CORRUPT, SQLITE_NOTADB
        return damaged(path, str(exc))
    if code == 10 or "disk i/o error" in text:  # SQLITE_IOERR: often a full disk mid-write
        return DiskError(f"the disk failed a write to {path} ({exc}): nothing of it was kept; "
                         "check free space, then run `p2pmem doctor`")
    if code == 14 or "unable to open" in text:  # SQLITE_CANTOPEN
        return DiskError(f"cannot open the store {path} ({exc}): check that its directory is "
                         "readable and writable, or run `p2pmem doctor`")
    return DiskError(f"the store {path} failed: {exc}")
