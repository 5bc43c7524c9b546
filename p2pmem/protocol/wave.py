"""When a flooded query is done: the echo wave, sans-IO.

Why: without it the asker cannot tell "every node answered" from "answers
are still on their way", so it waited out its whole timeout on every ask.

How (the echo algorithm of Chang, 1982, over the flood's tree). The first
copy of a query a node takes makes its sender the node's *parent*. The node
answers, forwards the query to its other neighbours (its *children* for this
query) and waits for each child's echo, or until its own give-up time. Then it
sends its parent one echo: how many nodes its subtree reached, whether every
branch echoed in time, and how many hits messages it sent the parent before
(hits flow up as they come, ahead of the echo, so partial results stream; the
count lets the parent wait for hits an echo overtook). A node that already
has the query, or refuses it, echoes at once ("covered", "refused") so its
sender never waits for it. The asker is done when each of its children echoed
or its deadline passed.

Per-hop budgets shrink with depth: a node with ``r`` seconds left until its
own give-up time gives its children ``r * SHRINK - HOP_MARGIN_S``, so a
child that waits its whole budget still echoes before its parent gives up
(the margin and the shrink cover two link crossings and the lookup). A child
that never echoes costs its parent only the parent's give-up time, and the
parent's echo says "partial".

Old nodes (without :data:`ECHO_FEATURE`) get the query without the echo
budget and never echo; their parent waits for them until its give-up time,
the old behaviour for that branch. A query that arrives without a budget
(it came through an old node) is routed the old way in its whole subtree.

An echo is not signed: a relay could lie in it (claim "done" early, inflate
``reached``), but a relay can already drop every answer of its subtree; an
echo can only end the asker's wait sooner or later than the truth, never
inject or alter a hit (those stay signed by their responders).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import cbor2

from p2pmem.errors import P2pmemError

ECHO_FEATURE = "query-echo-v1"
SHRINK = 0.8
HOP_MARGIN_S = 0.05
MAX_ECHO_MESSAGE = 1024
MAX_ECHO_TERMS = 64  # query terms with a document frequency (the analyser keeps 32)
MAX_DOCS = (1 << 40) - 1  # memories a subtree holds, at most: a bigger claim is hostile
MAX_REACHED = 1 << 24  # more nodes than any TTL reaches; a bigger claim is hostile
MAX_ECHO_HITS = 1 << 16  # hits messages one node sends up for one query, at most
QID_SIZE = 16

Peer = Hashable


class EchoError(P2pmemError):
    """An echo message is malformed or out of bounds."""


class Status(IntEnum):
    DONE = 0  # the whole subtree answered
    PARTIAL = 1  # some branch did not echo in time (slow, silent or old)
    COVERED = 2  # the node had the query already: it is someone else's child
    REFUSED = 3  # the node dropped the query (rate limit)


@dataclass(frozen=True, slots=True)
class Echo:
    qid: bytes
    status: Status
    reached: int  # nodes of the subtree that took the query, this one included
    hits: int  # hits messages sent to the receiver for this query before the echo
    # Collection statistics of the subtree, summed: the memories that may
    # answer (public, ask) and, per search term of the query (in the
    # analyser's order), how many of them hold it. The asker ranks with them.
    docs: int = 0
    dfs: tuple[int, ...] = ()


def encode_echo(echo: Echo) -> bytes:
    _check(echo.qid, int(echo.status), echo.reached, echo.hits)
    _check_stats(echo.docs, echo.dfs)
    return cbor2.dumps({0: echo.qid, 1: int(echo.status), 2: echo.reached, 3: echo.hits, 4: echo.docs,
                        5: list(echo.dfs)}, canonical=True)


def decode_echo(data: Any) -> Echo:
    """Decode and check an echo; raises only :class:`EchoError`, for any bytes."""
    if not isinstance(data, bytes) or len(data) > MAX_ECHO_MESSAGE:
        raise EchoError(f"an echo is bytes, at most {MAX_ECHO_MESSAGE}")
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many types; all mean "malformed"
        raise EchoError(f"malformed echo CBOR: {str(exc)[:80]}") from None
    if type(obj) is not dict or set(obj) != {0, 1, 2, 3, 4, 5}:
        raise EchoError("an echo is a map with exactly the keys 0 to 5")
    qid, status, reached, hits = obj[0], obj[1], obj[2], obj[3]
    _check(qid, status, reached, hits)
    if type(obj[5]) is not list:
        raise EchoError("echo document frequencies must be an array")
    dfs = tuple(obj[5])
    _check_stats(obj[4], dfs)
    echo = Echo(qid, Status(status), reached, hits, obj[4], dfs)
    if encode_echo(echo) != data:
        raise EchoError("echo is not in deterministic CBOR encoding")
    return echo


def _check(qid: Any, status: Any, reached: Any, hits: Any) -> None:
    if type(qid) is not bytes or len(qid) != QID_SIZE:
        raise EchoError(f"echo query id must be {QID_SIZE} bytes")
    if type(status) is not int or status not in tuple(Status):
        raise EchoError("echo status must be 0, 1, 2 or 3")
    if type(reached) is not int or not 0 <= reached <= MAX_REACHED:
        raise EchoError(f"echo reached must be 0..{MAX_REACHED}")
    if type(hits) is not int or not 0 <= hits <= MAX_ECHO_HITS:
        raise EchoError(f"echo hits must be 0..{MAX_ECHO_HITS}")
    if status in (Status.COVERED, Status.REFUSED) and (reached or hits):
        raise EchoError("a covered or refused echo reaches nobody and carries no hits")


def _check_stats(docs: Any, dfs: tuple[Any, ...]) -> None:
    if type(docs) is not int or not 0 <= docs <= MAX_DOCS:
        raise EchoError(f"echo docs must be 0..{MAX_DOCS}")
    if len(dfs) > MAX_ECHO_TERMS or any(type(d) is not int or not 0 <= d <= docs for d in dfs):
        raise EchoError(f"echo holds at most {MAX_ECHO_TERMS} document frequencies, each 0..docs")


def child_budget_ms(remaining_s: float) -> int:
    """The echo budget for the children of a node with ``remaining_s`` seconds
    left until it gives up itself (at least 1 ms: a child with nothing left
    still answers and echoes at once)."""
    return max(1, int((remaining_s * SHRINK - HOP_MARGIN_S) * 1000))


@dataclass(slots=True)
class _Child:
    echoes: bool  # it speaks the echo protocol; an old child never settles
    echo: Echo | None = None
    hits_got: int = 0


@dataclass(slots=True)
class Wave:
    """One node's part of one query's wave: the children it still waits for
    and what the settled ones reported."""

    give_up: float
    pending: dict[Peer, _Child] = field(default_factory=dict)
    reached: int = 1  # this node
    docs: int = 0  # collection statistics of the settled subtree (Echo.docs, Echo.dfs)
    dfs: list[int] | None = None  # None: not known yet (the first report sets the term count)
    partial: bool = False
    closed: bool = False  # the echo went up (or, for the asker, the query finished)

    @classmethod
    def start(cls, give_up: float, children: dict[Peer, bool]) -> Wave:
        """``children`` maps each peer the query went to, to whether it echoes."""
        return cls(give_up, {peer: _Child(echoes) for peer, echoes in children.items()})

    def on_hits(self, peer: Peer) -> None:
        child = self.pending.get(peer)
        if child is not None:
            child.hits_got += 1
            self._settle(peer, child)

    def on_echo(self, peer: Peer, echo: Echo) -> bool:
        """Take a child's echo; False if it was not expected (ignored)."""
        child = self.pending.get(peer)
        if child is None or not child.echoes or child.echo is not None:
            return False
        child.echo = echo
        self._settle(peer, child)
        return True

    def _settle(self, peer: Peer, child: _Child) -> None:
        echo = child.echo
        if echo is None or child.hits_got < echo.hits:
            return
        del self.pending[peer]
        self.reached = min(MAX_REACHED, self.reached + echo.reached)
        if echo.status in (Status.DONE, Status.PARTIAL):
            self.add_stats(echo.docs, echo.dfs)
        if echo.status is Status.PARTIAL:
            self.partial = True

    def add_stats(self, docs: int, dfs: Sequence[int]) -> None:
        """Add one node's (or subtree's) collection statistics; a report
        with another number of terms (another analyser) adds its docs only."""
        if self.dfs is None:
            self.dfs = [0] * len(dfs)
        if len(dfs) == len(self.dfs):
            self.dfs = [min(MAX_DOCS, a + b) for a, b in zip(self.dfs, dfs, strict=True)]
        self.docs = min(MAX_DOCS, self.docs + docs)
        self.dfs = [min(d, self.docs) for d in self.dfs]

    def stats(self) -> tuple[int, tuple[int, ...]]:
        return self.docs, tuple(self.dfs or ())

    def settled(self, now: float) -> bool:
        """Every child settled, or the give-up time came (what is still
        pending then makes the wave partial)."""
        if self.pending and now >= self.give_up:
            self.partial = True
            self.pending.clear()
        return not self.pending

    def status(self) -> Status:
        return Status.PARTIAL if self.partial else Status.DONE
