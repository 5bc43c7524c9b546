"""Admission: which incoming connections may start a handshake, as a
sub-machine of :class:`p2pmem.protocol.core.NodeCore`.

Incoming handshakes are bounded per remote host and in total, at once and
per second (docs/threat-model.md, "connection exhaustion"). The core asks
:meth:`Admission.admit` for each incoming connection and gets a frozen
:class:`Verdict` back (refuse it with a reason, or admit it and perhaps drop
the oldest pending handshake), and tells :meth:`Admission.release` when a
handshake is over. Refusals are counted in the ``limited`` counters shared
with the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from p2pmem import limits
from p2pmem.protocol.budget import Bucket
from p2pmem.protocol.events import CloseReason, ConnId

__all__ = ["Admission", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """Output: ``refuse`` the newcomer with that reason, or admit it and
    close ``evict`` (the oldest pending handshake) to make room."""

    refuse: CloseReason | None = None
    evict: ConnId | None = None


class Admission:
    def __init__(self, limited: dict[str, int], now: float) -> None:
        self.limited = limited
        self.pending_hosts: dict[str, int] = {}  # incoming handshakes per remote host
        self.host_buckets: dict[str, Bucket] = {}
        self._bucket = Bucket(limits.HANDSHAKES_PER_S, limits.HANDSHAKES_BURST, now)

    def _bite(self, name: str) -> None:
        self.limited[name] = self.limited.get(name, 0) + 1

    def admit(self, host: str | None, now: float, pending: Sequence[tuple[float, ConnId]]) -> Verdict:
        """An incoming connection from ``host`` (None: a shell that does not
        know the remote address, the simulator, gets the total bounds only).
        ``pending`` holds (opened, id) of the other incoming connections
        whose handshake is not done."""
        if host is not None:
            refused = self._host_refuses(host, now)
            if refused is not None:
                return Verdict(refuse=refused)
        if not self._bucket.take(now):
            self._bite("handshakes_rate")
            return Verdict(refuse=CloseReason.HANDSHAKE_RATE)
        evict = None
        if len(pending) >= limits.MAX_PENDING_HANDSHAKES:
            self._bite("pending_handshakes")
            evict = min(pending)[1]
        if host is not None:
            self.pending_hosts[host] = self.pending_hosts.get(host, 0) + 1
        return Verdict(evict=evict)

    def _host_refuses(self, host: str, now: float) -> CloseReason | None:
        bucket = self.host_buckets.get(host)
        if bucket is None:
            if len(self.host_buckets) >= 4 * limits.MAX_PENDING_HANDSHAKES:
                # forget hosts whose bucket is full again (they cost nothing now)
                for h in [h for h, b in self.host_buckets.items()
                          if b.level(now) >= b.burst and h not in self.pending_hosts]:
                    del self.host_buckets[h]
            bucket = Bucket(limits.HANDSHAKES_PER_HOST_PER_S, limits.HANDSHAKES_PER_HOST_BURST, now)
            self.host_buckets[host] = bucket
        if not bucket.take(now):
            self._bite("handshakes_per_host_rate")
            return CloseReason.HOST_RATE
        if self.pending_hosts.get(host, 0) >= limits.MAX_PENDING_PER_HOST:
            self._bite("pending_handshakes_per_host")
            return CloseReason.HOST_PENDING
        return None

    def release(self, host: str) -> None:
        """A handshake from ``host`` is over (done or closed): free its slot."""
        left = self.pending_hosts.get(host, 0) - 1
        if left > 0:
            self.pending_hosts[host] = left
        else:
            self.pending_hosts.pop(host, None)

    def pending(self) -> int:
        return sum(self.pending_hosts.values())
