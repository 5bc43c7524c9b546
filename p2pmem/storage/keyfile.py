"""The identity key file of a home: the private keys of
:class:`p2pmem.model.identity.Identity` on disk, mode 0600, never overwritten.
(File I/O lives here so that p2pmem.model stays pure, tests/test_layout.py.)"""

from __future__ import annotations

import os
from pathlib import Path

from p2pmem.errors import HomeError
from p2pmem.model.identity import Identity

KEY_FILE = "identity.key"


def save_identity(identity: Identity, home: Path) -> None:
    """Write the key file with mode 0600, refusing to overwrite one."""
    path = home / KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, identity.to_bytes())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_identity(home: Path) -> Identity:
    path = home / KEY_FILE
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except FileNotFoundError:
        raise HomeError(f"no identity in {home} (run `p2pmem init`)") from None
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise HomeError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
    return Identity.from_bytes(data)
