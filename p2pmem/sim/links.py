"""The simulated links: how a virtual TCP connection carries bytes
(docs/simulations.md, "Links").

Each direction of a connection has a send buffer (what the core handed its
shell and was not written yet) that drains onto the wire at the link's rate,
one write at a time; the core is told with ``sent`` as each write leaves.
On the wire a write takes the link's latency (lognormal per link, jitter per
write, sometimes a spike) and is read in order at the other end. Bytes on
the wire or not yet read count against a receive window: a node that stops
reading a peer (the core's backpressure) stops that peer's sender once the
window is full, so the peer's send buffer grows and its own core is told
nothing is leaving, as a real TCP connection would do.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pmem.sim.network import SimNode

FIN = "fin"  # stream items besides bytes: orderly close,
RST = "rst"  # and reset (delivered at once, discarding what is queued)
Item = bytes | str


@dataclass(frozen=True)
class LinkModel:
    """How the virtual network carries bytes. Times in milliseconds unless named ``_s``."""

    latency_ms: float = 40.0  # median one-way latency of a link
    latency_sigma: float = 0.5  # lognormal spread of link latencies
    jitter_sigma: float = 0.1  # lognormal spread of one message around its link's latency
    spike: float = 0.0  # probability that a message is held up (a TCP retransmission)
    spike_ms: float = 1000.0  # mean extra delay of a spike (exponential)
    reset: float = 0.0  # probability that a message is lost, which resets its connection
    connect_fail: float = 0.0  # probability that a dial fails
    connect_timeout_s: float = 3.0  # a dial across a partition fails after this long
    rate_bytes_s: float = 12_500_000.0  # what one direction of a connection carries (100 Mbit/s)
    window_bytes: int = 256 * 1024  # bytes on the wire or unread before the sender must wait

    def __post_init__(self) -> None:
        for name in ("spike", "reset", "connect_fail"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if self.latency_ms <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("latency and connect timeout must be positive")
        if self.rate_bytes_s <= 0 or self.window_bytes <= 0:
            raise ValueError("link rate and window must be positive")

    def transmit_us(self, nbytes: int) -> int:
        """Virtual µs a write of ``nbytes`` takes to leave the send buffer."""
        return max(1, math.ceil(nbytes * 1e6 / self.rate_bytes_s)) if nbytes else 0


class SimLink:
    """One simulated TCP connection; side 0 dialled side 1. Lists indexed
    by side: ``outq``/``tx_busy`` of the sending side, ``inbox``/``unread``
    and the sequence numbers of the receiving side."""

    __slots__ = ("cid", "nodes", "cores", "open", "send_seq", "next_seq", "reorder", "held", "rng",
                 "base_us", "outq", "tx_busy", "inbox", "unread", "read_scheduled")

    def __init__(self, cid: int, a: SimNode, b: SimNode, rng: random.Random, base_us: float) -> None:
        self.cid = cid
        self.nodes = (a, b)
        self.cores = (a.core, b.core)
        self.open = [True, True]
        self.send_seq = [0, 0]  # next sequence number of items sent towards side i
        self.next_seq = [0, 0]  # next sequence number side i takes off the wire
        self.reorder: tuple[dict[int, Item], dict[int, Item]] = ({}, {})
        self.held: tuple[list[tuple[int, Item]], list[tuple[int, Item]]] = ([], [])
        self.rng = rng
        self.base_us = base_us
        self.outq: tuple[deque[Item], deque[Item]] = (deque(), deque())  # the send buffers
        self.tx_busy = [False, False]  # a write of this side is leaving now
        self.inbox: tuple[deque[Item], deque[Item]] = (deque(), deque())  # arrived, not read yet
        self.unread = [0, 0]  # bytes towards side i on the wire or in its inbox (the window)
        self.read_scheduled = [False, False]

    def side_of(self, node: SimNode) -> int:
        return 0 if self.nodes[0] is node else 1

    def drop_queues(self, side: int) -> None:
        """A reset or a crash: what ``side`` had buffered or not read is gone."""
        self.outq[side].clear()
        self.inbox[side].clear()
        self.tx_busy[side] = False
