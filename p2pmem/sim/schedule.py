"""What the simulator's event loop schedules: the kinds of its events, and
the faults of a run's fault plan (:class:`Fault`)."""

from __future__ import annotations

from dataclasses import dataclass

# Event kinds of the loop (p2pmem/sim/network.py SimNetwork._handle).
TIMER, CONNECT, DIAL_FAIL, DELIVER, LOST, CALL, TX, READ, WRITE, COMMIT = range(10)
READ_SIZE = 65536  # what one read takes at most (p2pmem/node/shell.py reads as much)
FAULT_KINDS = ("partition", "heal", "crash", "restart", "commit-fail", "slow-disk", "crash-before-ack")


@dataclass(frozen=True)
class Fault:
    """One fault at virtual time ``at`` (seconds after the schedule starts).

    ``partition`` splits the nodes into ``groups`` (nodes in no group form one
    more group); ``heal`` ends it; ``crash`` and ``restart`` act on ``node``.
    The disk of ``node`` (p2pmem/sim/disk.py): ``commit-fail`` fails its next
    commit; ``slow-disk`` makes its commits ``factor`` times slower for
    ``duration`` seconds; ``crash-before-ack`` crashes it right after its
    next commit, before the core hears of it, and restarts it ``duration``
    seconds later (0: only a ``restart`` fault brings it back).
    """

    at: float
    kind: str
    node: int | None = None
    groups: tuple[tuple[int, ...], ...] = ()
    factor: float = 1.0
    duration: float = 0.0

    def __str__(self) -> str:
        what = {"partition": f"partition {list(map(list, self.groups))}", "heal": "heal",
                "slow-disk": f"slow-disk node {self.node} x{self.factor:g} for {self.duration:g}s"}.get(
            self.kind, f"{self.kind} node {self.node}"
        )
        return f"t+{self.at:g}s {what}"


