"""The local control socket of a serving node (``node.sock`` in the home).

While ``serve`` runs, the other commands of the same home talk to it here:
one JSON request line per connection, one JSON reply line. The socket is
created with mode 0600 in a home that is 0700, so only the agent's own user
reaches it. A Unix socket address holds about 100 bytes, so under a longer
home path both ends name the socket through a short alias of the home
directory (:func:`socket_address`): the socket itself is always in the home.

A local client is trusted with the agent's data but not with the node's life:
every request is checked (size, nesting depth before any JSON parsing, then
each field's type and range) and a bad one gets a one-line error reply. No
request, however malformed, ends the node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pmem import limits
from p2pmem.agent.home import CONTROL_SOCKET
from p2pmem.errors import P2pmemError, UsageError
from p2pmem.logevents import LogEvent, log_event

if TYPE_CHECKING:
    from p2pmem.node.shell import Node

log = logging.getLogger("p2pmem.node.control")
_MAX_UNIX_PATH = 100
CLIENT_TIMEOUT_S = 5.0


class NotServing(P2pmemError):
    """No node serves this home."""


@contextlib.contextmanager
def socket_address(home: Path) -> Iterator[str]:
    """The address that names ``home``'s control socket, for bind and connect
    alike (one function, so server and client cannot disagree). A long home
    is reached through ``/proc/self/fd/N``, a descriptor of the home held
    while the address is in use: no file outside the home, nothing to squat."""
    path = home / CONTROL_SOCKET
    if len(os.fsencode(path)) <= _MAX_UNIX_PATH:
        yield str(path)
        return
    if not os.path.isdir("/proc/self/fd"):
        raise P2pmemError(f"the home path {home} is too long for a control socket on this system "
                          f"(at most {_MAX_UNIX_PATH - len(CONTROL_SOCKET) - 1} bytes)")
    try:
        fd = os.open(home, os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        raise NotServing(f"cannot reach the serving node of {home}: {exc.strerror}") from None
    try:
        yield f"/proc/self/fd/{fd}/{CONTROL_SOCKET}"
    finally:
        os.close(fd)


class ControlServer:
    def __init__(self, home: Path, node: Node) -> None:
        self.home = home
        self.node = node
        self.path = home / CONTROL_SOCKET
        self._owned = False  # cleanup never removes another node's live socket
        self._clients = 0

    def check_free(self) -> None:
        """Refuse to serve a home that a live node already serves."""
        if self._alive():
            raise P2pmemError(f"a node already serves {self.home} (control socket {self.path} answers)")

    async def start(self, nursery: trio.Nursery) -> None:
        self.check_free()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with socket_address(self.home) as address:
                await sock.bind(address)
        finally:
            os.umask(old_umask)
        self._owned = True
        os.chmod(self.path, 0o600)
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
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            if self._clients >= limits.MAX_CONTROL_CLIENTS:
                reply: dict[str, Any] = {"ok": False, "error": "the node is busy (too many control clients)"}
                self.node.count("control_busy")
            else:
                self._clients += 1
                try:
                    reply = await self._serve_one(stream)
                finally:
                    self._clients -= 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError), \
                    trio.fail_after(CLIENT_TIMEOUT_S):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    async def _serve_one(self, stream: trio.SocketStream) -> dict[str, Any]:
        """One request, one reply; never raises but for cancellation."""
        try:
            with trio.fail_after(CLIENT_TIMEOUT_S):
                line = await _read_line(stream)
            request = parse_request(line)
            return {"ok": True, **await self._dispatch(request, stream)}
        except (P2pmemError, trio.TooSlowError) as exc:
            self.node.count("control_refused")
            return {"ok": False, "error": _one_line(str(exc) or type(exc).__name__)}
        except Exception as exc:  # a bug, not the client's fault: log it, keep serving
            log_event(log, logging.ERROR, LogEvent.CONTROL_FAILED, f"control request failed: {type(exc).__name__}",
                      error=str(exc), exc_info=True)
            return {"ok": False, "error": _one_line(f"internal error: {type(exc).__name__}: {exc}")}

    async def _dispatch(self, request: dict[str, Any], stream: trio.SocketStream) -> dict[str, Any]:
        op = request["op"]
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
        assert op in ("ask", "ask_graph")
        options = ask_options(request)
        text = options.pop("text")
        timeout = options.pop("timeout")
        with node.timed_ask(op):
            if op == "ask_graph":
                return {"results": await node.ask_graph(text, timeout=timeout, **options)}
            if not request.get("stream"):
                return await node.ask(text, timeout=timeout, **options)
            return await _ask_streaming(node, stream, text, timeout, options)


async def _ask_streaming(
    node: Node, stream: trio.SocketStream, text: str, timeout: float, options: dict[str, Any],
) -> dict[str, Any]:
    """An ask whose verified hits go to the client as they arrive, one
    ``{"hit": memory}`` line each, before the usual reply line. A client that
    stops reading loses the lines, never the ask (each write is bounded)."""
    from p2pmem.interfaces.output import memory_json
    from p2pmem.model.identity import agent_id

    # unbounded, but a query holds at most MAX_COLLECTED_RECORDS hits
    send, receive = trio.open_memory_channel[list[Any]](math.inf)

    async def write_lines() -> None:
        broken = False
        async for batch in receive:
            if broken:
                continue
            data = b"".join(json.dumps({"hit": memory_json(h.record, hops=h.hops, via=agent_id(h.responder))})
                            .encode() + b"\n" for h in batch)
            try:
                with trio.fail_after(CLIENT_TIMEOUT_S):
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                broken = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_lines)
        with send:
            return await node.ask(text, timeout=timeout, on_hits=send.send_nowait, **options)


# --- request validation -----------------------------------------------------

# The fields each operation accepts; anything else is refused, so a typo in a
# client is an error instead of a silently ignored option.
_FIELDS: dict[str, frozenset[str]] = {
    "ping": frozenset(),
    "notify": frozenset(),
    "status": frozenset(),
    "peers": frozenset(),
    "ask": frozenset({"text", "ttl", "query_timeout", "since", "until", "topics", "limit", "agent", "stream"}),
    "ask_graph": frozenset({"text", "ttl", "query_timeout", "since", "until", "topics", "limit", "agent"}),
}


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def check_depth(data: bytes, max_depth: int = limits.MAX_CONTROL_DEPTH) -> None:
    """Refuse JSON nested deeper than ``max_depth`` before parsing it, so
    the recursive parser never sees a document that could exhaust the stack.
    Brackets inside strings do not count; escapes inside strings are skipped."""
    depth = 0
    in_string = False
    escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                raise UsageError(f"control request nested deeper than {max_depth} levels")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


def parse_request(line: bytes) -> dict[str, Any]:
    """A control request line as a checked dict with a known ``op``; raises
    :class:`UsageError` with a one-line reason for anything else."""
    if len(line) > limits.MAX_CONTROL_REQUEST:
        raise UsageError("control request too large")
    check_depth(line)
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise UsageError(f"control request is not JSON: {exc}") from None
    if type(request) is not dict:
        raise UsageError("a control request is a JSON object")
    op = request.get("op")
    if type(op) is not str or op not in _FIELDS:
        raise UsageError(f"unknown control operation {str(op)[:40]!r}")
    if unknown := set(request) - {"op"} - _FIELDS[op]:
        raise UsageError(f"unknown field(s) for {op}: {', '.join(sorted(unknown))[:200]}")
    return request


def _int_field(request: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = request.get(name)
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise UsageError(f"{name!r} must be an integer from {low} to {high}")
    return value


def ask_options(request: dict[str, Any]) -> dict[str, Any]:
    """The checked arguments of an ``ask`` request for :meth:`Node.ask`."""
    from p2pmem.model.identity import parse_agent_id

    text = request.get("text", "")
    if type(text) is not str:
        raise UsageError("'text' must be a string")
    if len(text.encode("utf-8", "surrogatepass")) > limits.MAX_QUERY_TEXT:
        raise UsageError(f"'text' is over the limit of {limits.MAX_QUERY_TEXT} bytes")
    timeout = request.get("query_timeout", 3.0)
    if type(timeout) not in (int, float) or not math.isfinite(timeout) \
            or not 0 < timeout <= limits.MAX_QUERY_TIMEOUT_S:
        raise UsageError(f"'query_timeout' must be a number of seconds above 0, at most "
                         f"{limits.MAX_QUERY_TIMEOUT_S:g}")
    topics = request.get("topics") or []
    if type(topics) is not list or len(topics) > limits.MAX_TOPICS:
        raise UsageError(f"'topics' must be a list of at most {limits.MAX_TOPICS} strings")
    for topic in topics:
        if type(topic) is not str or not topic or len(topic.encode("utf-8", "surrogatepass")) > limits.MAX_TOPIC:
            raise UsageError(f"each topic must be a non-empty string of at most {limits.MAX_TOPIC} bytes")
    since = _int_field(request, "since", None, 0, _MAX_MS)
    until = _int_field(request, "until", None, 0, _MAX_MS)
    if since is not None and until is not None and since > until:
        raise UsageError("'since' is after 'until'")
    options: dict[str, Any] = {
        "text": text,
        "timeout": float(timeout),
        "ttl": _int_field(request, "ttl", limits.DEFAULT_TTL, 1, limits.MAX_TTL),
        "since": since,
        "until": until,
        "topics": topics,
        "limit": _int_field(request, "limit", 10, 1, limits.MAX_RECALL_LIMIT),
    }
    if type(request.get("stream", False)) is not bool:
        raise UsageError("'stream' must be true or false")
    agent = request.get("agent")
    if agent is not None:
        if type(agent) is not str:
            raise UsageError("'agent' must be an agent id string")
        options["target"] = parse_agent_id(agent)
    return options


_MAX_MS = (1 << 63) - 1


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            break
        buf += data
        if len(buf) > limits.MAX_CONTROL_REQUEST:
            raise UsageError("control request too large")
    return bytes(buf).split(b"\n", 1)[0]


def _request_sync(
    home: Path, request: dict[str, Any], timeout: float, on_line: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One request; the reply is the first line that is not a streamed
    ``{"hit": ...}`` line (those go to ``on_line``, when streaming)."""
    path = home / CONTROL_SOCKET
    if not path.exists():
        raise NotServing(f"no node is serving {home}; start one with `p2pmem serve`")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with socket_address(home) as address:
            sock.connect(address)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = _read_reply(sock, on_line)
    except (ConnectionRefusedError, FileNotFoundError):
        raise NotServing(f"no node is serving {home} (stale socket); start one with `p2pmem serve`") from None
    except TimeoutError:
        raise P2pmemError("the serving node did not answer in time") from None
    except OSError as exc:
        raise NotServing(f"cannot reach the serving node of {home}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise P2pmemError("the serving node sent a malformed reply") from None
    if not reply.get("ok"):
        raise P2pmemError(reply.get("error", "the serving node refused the request"))
    return reply


def _read_reply(sock: socket.socket, on_line: Callable[[dict[str, Any]], None] | None) -> bytes:
    buf = bytearray()
    while True:
        while b"\n" not in buf:
            data = sock.recv(1 << 20)
            if not data:
                return bytes(buf)
            buf += data
        line, _, rest = bytes(buf).partition(b"\n")
        buf = bytearray(rest)
        if on_line is None or not line.startswith(b'{"hit": '):
            return line
        try:
            on_line(json.loads(line)["hit"])
        except (ValueError, KeyError, TypeError):
            raise P2pmemError("the serving node sent a malformed line") from None


def request(
    home: Path, op: str, *, timeout: float = CLIENT_TIMEOUT_S,
    on_line: Callable[[dict[str, Any]], None] | None = None, **fields: Any,
) -> dict[str, Any]:
    """One control request to the node serving ``home``; with ``on_line``,
    each streamed hit line of an ``ask`` with ``stream`` goes there first."""
    return _request_sync(home, {"op": op, **fields}, timeout, on_line)


def notify_new_records(home: Path, ids: list[bytes]) -> None:
    """Best effort: tell a serving node of this home to push new records at
    once (it would also notice them by polling the store)."""
    if not ids or not (home / CONTROL_SOCKET).exists():
        return
    with contextlib.suppress(P2pmemError):
        request(home, "notify", timeout=2.0)

