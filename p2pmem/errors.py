"""The exception types of p2pmem.

Each carries a one-line, human-readable reason: the CLI prints it as is, the
node logs it and closes the offending connection.
"""

from __future__ import annotations


class P2pmemError(Exception):
    """Base of every error p2pmem raises on purpose."""


class RecordError(P2pmemError):
    """A record is malformed, non-canonical, oversized or badly signed."""


class StoreError(P2pmemError):
    """The store refused an operation (unknown id, wrong author, ...)."""


class UsageError(P2pmemError):
    """Bad user input: the CLI exits with status 2."""


class HomeError(P2pmemError):
    """The home directory is missing, unreadable or not initialised."""


class DiskError(StoreError):
    """The disk under a home refused: read-only, full, damaged or missing
    files. The message names the file and what to do (docs/operations.md)."""


class ReadOnlyError(DiskError):
    """A write to a home that can only be read (a read-only mount or mode)."""


class DiskFullError(DiskError):
    """ENOSPC or EFBIG: nothing of the failed write was kept."""


class DamagedStoreError(DiskError):
    """The store file is not a SQLite database or fails its integrity check."""
