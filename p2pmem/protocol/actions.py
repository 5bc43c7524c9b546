"""The one executor of the core's actions, shared by every shell.

:func:`execute` takes what :meth:`NodeCore.take_actions` returns, in order,
and hands each output to a small :class:`Effects` object: the trio node's
(p2pmem/node/shell.py: sockets, tasks, the ingest pipeline), the simulator's
(p2pmem/sim/network.py: virtual links and a virtual ingest pipeline) and the
test harnesses' (tests/test_core.py, tests/test_budget.py). What differs
between shells is what an effect does, never which output means what, in
which order they are carried out, or whether one is forgotten: the set of
outputs is closed (p2pmem.protocol.events) and an unknown one is an error.

An effect may call an input of the core (a harness that delivers a Close at
once calls ``connection_lost``); what that queues is carried out in the same
call, so the core has nothing left to do when :func:`execute` returns.
"""

from __future__ import annotations

from typing import Protocol

from p2pmem.protocol.events import (
    Close,
    ConnId,
    Dial,
    Event,
    Ingest,
    IngestFinished,
    IngestJob,
    Output,
    PeerClosed,
    PeerReady,
    QueryFinished,
    RecordsStored,
    Send,
)

EVENTS = (PeerReady, PeerClosed, RecordsStored, IngestFinished, QueryFinished)


class ActionSource(Protocol):
    """What gives outputs: :class:`p2pmem.protocol.core.NodeCore`."""

    def take_actions(self) -> list[Output]: ...


class Effects(Protocol):
    """What a shell does for each kind of output."""

    def send(self, conn: ConnId, data: bytes) -> None:
        """Queue ``data`` for ``conn`` after what was queued before; report
        it written with ``NodeCore.sent`` as it leaves."""

    def close(self, action: Close) -> None:
        """Close the connection once what was queued before is written."""

    def dial(self, action: Dial) -> None:
        """Open a connection (then ``connection_made`` or ``dial_failed``)."""

    def ingest(self, job: IngestJob) -> None:
        """Verify and store ``job`` beside the loop, then ``ingest_done``."""

    def event(self, event: Event) -> None:
        """Something happened (PeerReady, PeerClosed, RecordsStored,
        IngestFinished, QueryFinished): report it or wait on it."""


def execute(core: ActionSource, effects: Effects) -> int:
    """Carry out every output of ``core`` until it has none left; returns
    how many there were. Consecutive Sends to one connection are handed over
    as one write (one queue entry, one ``sent``): a turn of the core often
    frames several messages for the same peer."""
    count = 0
    while actions := core.take_actions():
        count += len(actions)
        pending: ConnId | None = None
        chunks: list[bytes] = []
        for action in actions:
            kind = type(action)
            if kind is Send:
                assert isinstance(action, Send)
                if action.conn != pending:
                    _write(effects, pending, chunks)
                    pending, chunks = action.conn, []
                chunks.append(action.data)
                continue
            _write(effects, pending, chunks)
            pending, chunks = None, []
            if kind is Close:
                assert isinstance(action, Close)
                effects.close(action)
            elif kind is Dial:
                assert isinstance(action, Dial)
                effects.dial(action)
            elif kind is Ingest:
                assert isinstance(action, Ingest)
                effects.ingest(action.job)
            elif kind in EVENTS:
                effects.event(action)  # type: ignore[arg-type]
            else:
                raise TypeError(f"not an output of the core: {action!r}")
        _write(effects, pending, chunks)
    return count


def _write(effects: Effects, conn: ConnId | None, chunks: list[bytes]) -> None:
    if conn is not None and chunks:
        effects.send(conn, chunks[0] if len(chunks) == 1 else b"".join(chunks))
