"""The local control socket of a serving node (``node.sock`` in the home).

While ``serve`` runs, the other commands of the same home talk to it here:
one JSON request line per connection, one JSON reply line. The socket is
created with mode 0600 in a home that is 0700, so only the agent's own user
reaches it. When the home's path is too long for a Unix socket address, the
socket lives in the temporary directory and the home holds a symlink to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pmem import limits
from p2pmem.errors import P2pmemError, UsageError
from p2pmem.home import CONTROL_SOCKET

if TYPE_CHECKING:
    from p2pmem.node import Node

log = logging.getLogger("p2pmem.control")
_MAX_UNIX_PATH = 100
CLIENT_TIMEOUT_S = 5.0


class NotServing(P2pmemError):
    """No node serves this home."""


def _socket_target(home: Path) -> Path:
    path = home / CONTROL_SOCKET
    if len(str(path)) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"p2pmem-{digest}.sock"


class ControlServer:
    def __init__(self, home: Path, node: Node) -> None:
        self.home = home
        self.node = node
        self.path = home / CONTROL_SOCKET
        self.target = _socket_target(home)
        self._owned = False  # cleanup never removes another node's live socket

    def check_free(self) -> None:
        """Refuse to serve a home that a live node already serves."""
        if self._alive():
            raise P2pmemError(f"a node already serves {self.home} (control socket {self.path} answers)")

    async def start(self, nursery: trio.Nursery) -> None:
        self.check_free()
        for stale in {self.path, self.target}:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(str(self.target))
        finally:
            os.umask(old_umask)
        self._owned = True
        os.chmod(self.target, 0o600)
        if self.target != self.path:
            os.symlink(self.target, self.path)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        nursery.start_soon(trio.serve_listeners, self._handle, [listener])

    def _alive(self) -> bool:
        try:
            _request_sync(self.home, {"op": "ping"}, timeout=1.0)
            return True
        except P2pmemError:
            return False

    def cleanup(self) -> None:
        if not self._owned:
            return
        for path in {self.path, self.target}:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(CLIENT_TIMEOUT_S):
                    line = await _read_line(stream)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise UsageError("a request is a JSON object")
                reply = await self._dispatch(request)
                reply = {"ok": True, **reply}
            except (P2pmemError, ValueError, TypeError, trio.TooSlowError) as exc:
                reply = {"ok": False, "error": str(exc) or type(exc).__name__}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        from p2pmem.identity import parse_agent_id

        op = request.get("op")
        node = self.node
        if op == "ping":
            return {}
        if op == "notify":
            node.poke()
            return {}
        if op == "status":
            status = node.status()
            return {"status": status}
        if op == "peers":
            return {"peers": node.peers_list()}
        if op in ("ask", "ask_graph"):
            options: dict[str, Any] = {
                "ttl": int(request.get("ttl", limits.DEFAULT_TTL)),
                "since": request.get("since"),
                "until": request.get("until"),
                "topics": list(request.get("topics", [])),
                "limit": int(request.get("limit", 10)),
            }
            if request.get("agent"):
                options["target"] = parse_agent_id(request["agent"])
            ask = node.ask_graph if op == "ask_graph" else node.ask
            results = await ask(
                str(request.get("text", "")), timeout=float(request.get("query_timeout", 3.0)), **options
            )
            return {"results": results}
        raise UsageError(f"unknown control operation {op!r}")


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            break
        buf += data
        if len(buf) > limits.MAX_CONTROL_REQUEST:
            raise UsageError("control request too large")
    return bytes(buf)


def _request_sync(home: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    path = home / CONTROL_SOCKET
    if not path.exists():
        raise NotServing(f"no node is serving {home}; start one with `p2pmem serve`")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            data = sock.recv(1 << 20)
            if not data:
                break
            buf += data
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotServing(f"no node is serving {home} (stale socket); start one with `p2pmem serve`") from None
    except TimeoutError:
        raise P2pmemError("the serving node did not answer in time") from None
    except OSError as exc:
        raise NotServing(f"cannot reach the serving node of {home}: {exc.strerror}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise P2pmemError("the serving node sent a malformed reply") from None
    if not reply.get("ok"):
        raise P2pmemError(reply.get("error", "the serving node refused the request"))
    return reply


def request(home: Path, op: str, *, timeout: float = CLIENT_TIMEOUT_S, **fields: Any) -> dict[str, Any]:
    """One control request to the node serving ``home``."""
    return _request_sync(home, {"op": op, **fields}, timeout)


def notify_new_records(home: Path, ids: list[bytes]) -> None:
    """Best effort: tell a serving node of this home to push new records at
    once (it would also notice them by polling the store)."""
    if not ids or not (home / CONTROL_SOCKET).exists():
        return
    with contextlib.suppress(P2pmemError):
        request(home, "notify", timeout=2.0)

