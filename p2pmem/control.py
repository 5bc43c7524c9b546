"""The local control socket of a serving node (``node.sock`` in the home).

Until a node serves, there is nothing to notify: these calls are no-ops when
the socket is absent.
"""

from __future__ import annotations

from pathlib import Path

from p2pmem.home import CONTROL_SOCKET


def notify_new_records(home: Path, ids: list[bytes]) -> None:
    """Best effort: a serving node also notices new rows by polling."""
    if not ids or not (home / CONTROL_SOCKET).exists():
        return
