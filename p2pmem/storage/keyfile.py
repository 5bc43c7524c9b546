"""The identity key file of a home: the private keys of
:class:`p2pmem.model.identity.Identity` on disk, mode 0600, never overwritten.
(File I/O lives here so that p2pmem.model stays pure, tests/test_layout.py.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p2pmem.errors import HomeError
from p2pmem.model.identity import Identity

KEY_FILE = "identity.key"
MAX_KEY_FILE = 4096  # a real one is under 100 bytes


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
    """The identity of ``home``; every problem with its key file is one
    line naming the file and the fix."""
    path = home / KEY_FILE
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise HomeError(f"{path} is not a regular file; restore the key file from a backup")
        data = path.read_bytes()[: MAX_KEY_FILE + 1]
    except FileNotFoundError:
        raise HomeError(f"no identity in {home} (run `p2pmem init`)") from None
    except OSError as exc:
        raise HomeError(f"cannot read the key file {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise HomeError(f"the key file {path} is readable by others (mode {mode:o}); "
                        f"run `chmod 600 {path}` (or `p2pmem doctor --repair`)")
    if len(data) > MAX_KEY_FILE:
        raise HomeError(f"the key file {path} is too large to be a p2pmem identity; "
                        "restore it from a backup (`p2pmem restore`)")
    try:
        return Identity.from_bytes(data)
    except HomeError:
        raise HomeError(f"the key file {path} is damaged (not a p2pmem identity); "
                        "restore it from a backup (`p2pmem restore`)") from None
