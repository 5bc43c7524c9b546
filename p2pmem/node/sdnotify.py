"""systemd's readiness protocol (sd_notify(3)) for ``Type=notify`` units.

A service manager that wants to know when the service is ready sets
``NOTIFY_SOCKET`` to a Unix datagram socket (a path, or ``@name`` for the
abstract namespace); the service sends newline-separated ``KEY=VALUE``
assignments to it, ``READY=1`` once it serves. Without the variable this is
a no-op, so ``serve`` behaves the same outside systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

NOTIFY_ENV = "NOTIFY_SOCKET"
MAX_NOTIFY_PATH = 107  # sockaddr_un's sun_path, less the terminating NUL


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace: a leading NUL byte
    if value.startswith("/") and len(value.encode()) <= MAX_NOTIFY_PATH:
        return value
    return None  # vsock and other forms: not ours to speak


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``assignments`` (e.g. ``"READY=1"``) to the service manager.
    Returns whether a message was sent; never raises (a manager that went
    away must not stop the node)."""
    value = (os.environ if environ is None else environ).get(NOTIFY_ENV, "")
    address = _address(value) if value else None
    if address is None:
        return False
    message = "\n".join(assignments).encode("utf-8", "replace")
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message)
        return True
    return False
