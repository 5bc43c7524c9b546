"""The one executor of the core's actions (p2pmem/protocol/actions.py): every
output reaches its effect, in order, consecutive Sends to one connection as
one write, what an effect makes the core queue in the same call."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmem.model.scope import EVERYWHERE
from p2pmem.protocol.actions import execute
from p2pmem.protocol.events import (
    Close,
    CloseReason,
    Dial,
    Ingest,
    IngestFinished,
    IngestJob,
    Output,
    PeerReady,
    Send,
)

JOB = IngestJob(1, (b"r",), frozenset({b"i"}), EVERYWHERE, 0)


class _Queue:
    """Gives its batches one take_actions at a time, like a core."""

    def __init__(self, *batches: list[Output]) -> None:
        self.batches = list(batches)

    def take_actions(self) -> list[Output]:
        return self.batches.pop(0) if self.batches else []


class _Log:
    def __init__(self, queue: _Queue | None = None, on_close: list[Output] | None = None) -> None:
        self.log: list[tuple[str, object]] = []
        self.queue, self.on_close = queue, on_close

    def send(self, conn: int, data: bytes) -> None:
        self.log.append(("send", (conn, data)))

    def close(self, action: Close) -> None:
        self.log.append(("close", action.conn))
        if self.queue is not None and self.on_close is not None:
            self.queue.batches.append(self.on_close)  # the effect called an input of the core

    def dial(self, action: Dial) -> None:
        self.log.append(("dial", action.address))

    def ingest(self, job: IngestJob) -> None:
        self.log.append(("ingest", job.conn))

    def event(self, event: object) -> None:
        self.log.append(("event", type(event).__name__))


def test_every_output_reaches_its_effect_in_order() -> None:
    outputs: list[Output] = [
        Send(1, b"a"), Send(1, b"b"), Send(2, b"c"), PeerReady(1, b"k", None, False), Send(1, b"d"),
        Dial("x:1", None), Ingest(JOB), IngestFinished(1, 1), Close(2, CloseReason.SHUTDOWN),
    ]
    effects = _Log()
    assert execute(_Queue(outputs), effects) == len(outputs)
    assert effects.log == [
        ("send", (1, b"ab")), ("send", (2, b"c")), ("event", "PeerReady"), ("send", (1, b"d")),
        ("dial", "x:1"), ("ingest", 1), ("event", "IngestFinished"), ("close", 2),
    ]


def test_what_an_effect_queues_is_carried_out_in_the_same_call() -> None:
    queue = _Queue([Close(1, CloseReason.SHUTDOWN)])
    effects = _Log(queue, on_close=[Send(3, b"bye")])
    assert execute(queue, effects) == 2
    assert effects.log == [("close", 1), ("send", (3, b"bye"))]
    assert execute(queue, effects) == 0


def test_an_unknown_output_is_an_error() -> None:
    with pytest.raises(TypeError):
        execute(_Queue([object()]), _Log())  # type: ignore[list-item]


@given(st.lists(st.tuples(st.integers(1, 3), st.binary(min_size=1, max_size=4)), max_size=30))
def test_sends_keep_every_byte_in_order_per_connection(sends: list[tuple[int, bytes]]) -> None:
    effects = _Log()
    execute(_Queue([Send(c, d) for c, d in sends]), effects)
    for conn in (1, 2, 3):
        written = b"".join(data for kind, (c, data) in effects.log if c == conn)  # type: ignore[misc]
        assert written == b"".join(d for c, d in sends if c == conn)
    # one write per run of one connection's Sends
    runs = sum(1 for i, (c, _) in enumerate(sends) if i == 0 or sends[i - 1][0] != c)
    assert len(effects.log) == runs
