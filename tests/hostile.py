"""An attacker that speaks the real protocol: a TCP connection, a real Noise
XX handshake from a fresh identity (p2pmem's own :mod:`p2pmem.protocol.noise`), a
valid hello, then whatever wire messages (p2pmem's own :mod:`p2pmem.protocol.wire`)
a test wants, as fast as it wants, reading the answers or never.

Also small probes of the attacked process: peak memory (VmHWM), CPU time,
and how long its control socket takes to answer ``status``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cbor2

from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import Record, sign_record
from p2pmem.node.control import request
from p2pmem.protocol import wire
from p2pmem.protocol.noise import HandshakeComplete, MessageReceived, SecureChannel

#: The 7-byte reconciliation message of issue #11: one IdList range covering
#: everything, with no ids ("I hold nothing, send me all you have").
EMPTY_ID_LIST = cbor2.dumps([1, [0, b"", 2, b""]], canonical=True)
assert len(EMPTY_ID_LIST) == 7


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Attacker:
    """One hostile connection. ``source`` is the local address to bind
    (another 127.0.0.0/8 address than honest nodes, so per-address limits
    can tell them apart on loopback)."""

    def __init__(self, address: str, *, source: str = "127.0.0.2", identity: Identity | None = None,
                 timeout: float = 10.0, handshake: bool = True) -> None:
        self.identity = identity or Identity.generate()
        self.key = self.identity.public_key
        self.sock = socket.create_connection(split_address(address), timeout=timeout,
                                             source_address=(source, 0))
        self.channel = SecureChannel(True, self.identity.signing_key)
        self.messages: list[wire.Message] = []
        self.remote: bytes | None = None
        self.bytes_read = 0
        if handshake:
            self.sock.sendall(self.channel.initiate())
            while self.remote is None:
                self._read_once()
            self.sock.sendall(self.channel.data_to_send())

    # -- reading -----------------------------------------------------------
    def _read_once(self) -> bool:
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("the node closed the connection")
        self.bytes_read += len(data)
        self.channel.receive_data(data)
        while (event := self.channel.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                self.remote = event.remote_identity
            elif isinstance(event, MessageReceived):
                self.messages.append(wire.decode(event.data))
        return True

    def read_for(self, seconds: float) -> None:
        """Read (and decrypt) whatever comes for ``seconds``."""
        end = time.monotonic() + seconds
        self.sock.settimeout(0.2)
        try:
            while time.monotonic() < end:
                try:
                    self._read_once()
                except TimeoutError:
                    continue
        finally:
            self.sock.settimeout(10.0)

    def closed_by_node(self, within: float = 5.0) -> bool:
        """Whether the node closes the connection within ``within`` seconds
        (reading and discarding what comes meanwhile)."""
        end = time.monotonic() + within
        self.sock.settimeout(0.2)
        while time.monotonic() < end:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return True
            if not data:
                return True
        return False

    # -- writing -----------------------------------------------------------
    def queue(self, message: wire.Message) -> None:
        self.channel.send_message(wire.encode(message))

    def flush(self, timeout: float = 120.0) -> int:
        """Write everything queued. The node may stop reading us for a while
        (backpressure, by design): hence the long timeout."""
        data = self.channel.data_to_send()
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(previous)
        return len(data)

    def send(self, *messages: wire.Message) -> int:
        for message in messages:
            self.queue(message)
        return self.flush()

    def hello(self, *, replicate_all: bool = True, authors: Sequence[bytes] = (),
              addresses: Sequence[str] = ()) -> None:
        self.send(wire.Hello(wire.PROTOCOL_VERSION, wire.FEATURES, self.key, tuple(addresses),
                             replicate_all, tuple(authors)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Attacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stalled_connection(address: str, source: str) -> socket.socket | None:
    """A TCP connection that never sends a byte (a stalled handshake), or
    None if the node (or the kernel) refused it."""
    try:
        return socket.create_connection(split_address(address), timeout=2.0, source_address=(source, 0))
    except OSError:
        return None


def stranger_records(kind: str, n: int, identity: Identity | None = None, *,
                     start_ms: int | None = None, size: int = 200) -> list[Record]:
    """``n`` valid signed records of a fresh identity (a stranger)."""
    identity = identity or Identity.generate()
    base = start_ms if start_ms is not None else int(time.time() * 1000) - 60_000
    out = []
    for i in range(n):
        ts = from_ms(base + i // 100, i % 100)
        if kind == "memory":
            out.append(sign_record(identity, "memory", ts, f"stranger {i} " + "x" * size))
        elif kind == "endorse":
            out.append(sign_record(identity, "endorse", ts,
                                   {"target": os.urandom(32), "what": "agent"}))
        elif kind == "message":
            from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            from p2pmem.model.sealed import seal_message

            nobody = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            out.append(seal_message(identity, os.urandom(32), nobody, "z" * size, ts))
        else:
            raise ValueError(kind)
    return out


# -- probes of the attacked process -------------------------------------------
def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_status(home: Path, timeout: float = 5.0) -> tuple[float, dict[str, Any]]:
    """Seconds the node took to answer ``status``, and the answer."""
    start = time.monotonic()
    answer = request(home, "status", timeout=timeout)
    return time.monotonic() - start, answer["status"]


def records_messages(records: Iterable[Record], per_message: int = 200) -> list[wire.Records]:
    batch: list[bytes] = []
    out = []
    for record in records:
        batch.append(record.raw)
        if len(batch) == per_message:
            out.append(wire.Records(tuple(batch)))
            batch = []
    if batch:
        out.append(wire.Records(tuple(batch)))
    return out
