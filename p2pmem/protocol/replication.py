"""Replication: the key catalogue and one :class:`PeerSync` per connection
(the peer's interest, its open reconciliations, the records we owe it and
its budgets), as sub-machines of :class:`p2pmem.protocol.core.NodeCore`.

A PeerSync never sends: :meth:`PeerSync.start` and :meth:`PeerSync.receive`
return frozen :class:`ReconStart` / :class:`ReconStep` values, which the core
turns into ``wire.Recon`` messages and pushes (reading the store, applying
the relay budget, batching into records messages, flow control). A peer that
breaks a replication bound raises ``wire.WireError`` (the core closes the
connection for a protocol error), and every limit that bites is counted in
the ``limited`` counters shared with the core.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from p2pmem import limits
from p2pmem.model.record import Record
from p2pmem.model.scope import AUTHOR_SCOPED, EVERYWHERE, ReplicationInterest
from p2pmem.protocol import wire
from p2pmem.protocol.budget import Bucket
from p2pmem.protocol.ports import StorePort
from p2pmem.protocol.reconcile import ItemIndex, Reconciler

__all__ = ["Catalogue", "PeerSync", "ReconStart", "ReconStep", "RelayBudget", "recipient"]


def _bite(limited: dict[str, int], name: str, n: int = 1) -> None:
    limited[name] = limited.get(name, 0) + n


class Catalogue:
    """The keys ((ts, id) as 40 bytes) of every record that can travel, by
    scope class, and the reconciliation index of each shared scope. Read from
    the store once, then kept up to date by :meth:`add`, so a peer's new
    interest builds its index without scanning the store (issue #11, CPU
    amplification)."""

    def __init__(self, store: StorePort) -> None:
        self.store = store
        self.indexes: dict[ReplicationInterest, ItemIndex] = {}  # at most MAX_CACHED_INDEXES
        self._everywhere: list[bytes] | None = None
        self._public: dict[bytes, list[bytes]] = {}

    def _keys(self) -> tuple[list[bytes], dict[bytes, list[bytes]]]:
        if self._everywhere is None:
            everywhere: list[bytes] = []
            public: dict[bytes, list[bytes]] = {}
            for ts, rid, kind, author, visibility in self.store.scan():
                key = ts.to_bytes(8, "big") + rid
                if kind in EVERYWHERE:
                    everywhere.append(key)
                elif kind in AUTHOR_SCOPED and visibility == "public":
                    public.setdefault(author, []).append(key)
            self._everywhere, self._public = everywhere, public
        return self._everywhere, self._public

    def index_for(self, scope: ReplicationInterest) -> ItemIndex:
        index = self.indexes.get(scope)
        if index is None:
            everywhere, public = self._keys()
            keys = list(everywhere)
            if scope.replicate_all:
                for author_keys in public.values():
                    keys.extend(author_keys)
            else:
                for author in scope.authors:
                    keys.extend(public.get(author, ()))
            index = ItemIndex.from_keys(keys)
            if len(self.indexes) >= limits.MAX_CACHED_INDEXES:
                self.indexes.pop(next(iter(self.indexes)))
            self.indexes[scope] = index
        return index

    def add(self, record: Record) -> None:
        """A record this node now holds."""
        if self._everywhere is not None:
            key = record.ts.to_bytes(8, "big") + record.id
            if record.kind in EVERYWHERE:
                self._everywhere.append(key)
            elif record.kind in AUTHOR_SCOPED and record.visibility == "public":
                self._public.setdefault(record.author, []).append(key)
        for scope, index in self.indexes.items():
            if scope.wants(record.kind, record.author, record.visibility) and (record.ts, record.id) not in index:
                index.add(record.ts, record.id)

    def interest_changed(self) -> None:
        """Our own interest changed: every shared scope is another one now."""
        self.indexes.clear()


@dataclass(frozen=True)
class ReconStart:
    """Output: open reconciliation ``recon_id`` with ``payload``."""

    recon_id: int
    payload: bytes


@dataclass(frozen=True)
class ReconStep:
    """Output of a received reconciliation message: the ``reply`` to send
    (None: nothing more to say) and the ids newly ``owed`` to the peer (what
    reconciliation found it lacks), to push before the reply."""

    recon_id: int
    reply: bytes | None
    owed: tuple[bytes, ...]


@dataclass
class PeerSync:
    """One connection's replication state."""

    limited: dict[str, int]
    push_bucket: Bucket  # bytes of records pushed per second
    recon_bucket: Bucket  # reconciliations the peer may open
    interest_bucket: Bucket  # interest changes the peer may send
    interest: ReplicationInterest | None = None  # the peer's, from its hello or interest
    recon: dict[int, Reconciler] = field(default_factory=dict)
    pushed: dict[int, set[bytes]] = field(default_factory=dict)  # recon id -> ids already owed
    next_recon_id: int = 0
    push_pending: deque[bytes] = field(default_factory=deque)  # ids we owe the peer
    push_queued: set[bytes] = field(default_factory=set)

    @classmethod
    def new(cls, limited: dict[str, int], push_rate: float, now: float) -> PeerSync:
        return cls(limited, Bucket(push_rate, limits.PUSH_BURST_BYTES, now),
                   Bucket(limits.RECON_STARTS_PER_S, limits.RECON_STARTS_BURST, now),
                   Bucket(limits.INTEREST_PER_S, limits.INTEREST_BURST, now))

    def change_interest(self, replicate_all: bool, authors: Iterable[bytes], now: float) -> None:
        """The peer says what it wants now (rate-limited: each change may
        make us build an index)."""
        if not self.interest_bucket.take(now):
            _bite(self.limited, "interest_rate")
            raise wire.WireError("interest changes too often")
        self.interest = ReplicationInterest(replicate_all, frozenset(authors))

    def start(self, index: Callable[[], ItemIndex]) -> ReconStart | None:
        """Open a reconciliation over ``index()`` unless one is open (one at
        a time per connection)."""
        if self.recon:
            return None
        self.next_recon_id += 1
        recon_id = self.next_recon_id
        reconciler = Reconciler(index(), max_reply=limits.RECON_REPLY_BYTES)
        self.recon[recon_id] = reconciler
        self.pushed[recon_id] = set()
        return ReconStart(recon_id, reconciler.start())

    def receive(self, recon_id: int, payload: bytes, index: Callable[[], ItemIndex], *,
                initiator: bool, now: float) -> ReconStep | None:
        """A reconciliation message from the peer; None for a late reply to
        one we already ended. A responder opens the peer's reconciliations
        within MAX_CONCURRENT_RECONS and the peer's start rate."""
        reconciler = self.recon.get(recon_id)
        if reconciler is None:
            if initiator:
                return None
            if len(self.recon) >= limits.MAX_CONCURRENT_RECONS:
                _bite(self.limited, "recon_concurrent")
                raise wire.WireError("too many concurrent reconciliations")
            if not self.recon_bucket.take(now):
                _bite(self.limited, "recon_rate")
                raise wire.WireError("reconciliations started too often")
            reconciler = Reconciler(index(), max_reply=limits.RECON_REPLY_BYTES)
            self.recon[recon_id] = reconciler
            self.pushed[recon_id] = set()
        reply = reconciler.receive(payload)
        pushed = self.pushed[recon_id]
        owed = reconciler.have - pushed
        pushed |= owed
        if reconciler.done:
            self.recon.pop(recon_id, None)
            self.pushed.pop(recon_id, None)
        return ReconStep(recon_id, reply, tuple(sorted(owed)))

    def owe(self, ids: Iterable[bytes]) -> None:
        """Queue records to push to the peer (bounded: past the limit they
        are dropped, and the next reconciliation finds them again)."""
        pending, queued = self.push_pending, self.push_queued
        dropped = 0
        for rid in ids:
            if rid in queued:
                continue
            if len(pending) >= limits.MAX_PUSH_PENDING:
                dropped += 1
                continue
            queued.add(rid)
            pending.append(rid)
        if dropped:
            _bite(self.limited, "push_pending_dropped", dropped)

    def take_owed(self) -> list[bytes]:
        """The next records message's worth of owed ids, no longer owed."""
        pending = self.push_pending
        batch = [pending.popleft() for _ in range(min(len(pending), limits.MAX_RECORDS_PER_MESSAGE))]
        self.push_queued.difference_update(batch)
        return batch

    def owes_too_much(self) -> bool:
        return len(self.push_pending) >= limits.MAX_PUSH_PENDING

    def forget_owed(self) -> None:
        """The connection is closing: nothing is owed any more."""
        self.push_pending.clear()
        self.push_queued.clear()


def recipient(record: Record) -> bytes | None:
    """A sealed message's recipient (its body's ``to``, p2pmem/model/sealed.py);
    None for other records."""
    if record.kind == "message" and isinstance(record.body, dict):
        return record.body.get("to")
    return None


class RelayBudget:
    """The bytes of sealed messages to one recipient this node sends to its
    peers, all peers together (limits.MESSAGE_RELAY_BYTES_PER_S): a flood
    aimed at one agent is relayed at that rate, never dropped (the next
    reconciliation carries what waited). Buckets of the least recently seen
    recipients are forgotten past MAX_RELAY_RECIPIENTS."""

    def __init__(self, key: bytes, limited: dict[str, int]) -> None:
        self.key = key
        self.limited = limited
        self.buckets: OrderedDict[bytes, Bucket] = OrderedDict()

    def allows(self, kind: str, author: bytes, target: bytes | None, size: int, now: float) -> bool:
        """Whether a record of ``size`` bytes may be sent to a peer now: a
        sealed message to someone else's agent, from someone else's agent,
        only within its recipient's budget. Spends the budget when it allows;
        the caller counts a refusal."""
        if kind != "message" or target is None or target == self.key or author == self.key:
            return True  # not a message, or our own agent's traffic
        buckets = self.buckets
        bucket = buckets.get(target)
        if bucket is None:
            bucket = buckets[target] = Bucket(limits.MESSAGE_RELAY_BYTES_PER_S,
                                              limits.MESSAGE_RELAY_BURST_BYTES, now)
            if len(buckets) > limits.MAX_RELAY_RECIPIENTS:
                buckets.popitem(last=False)
                _bite(self.limited, "message_relay_recipients")
        else:
            buckets.move_to_end(target)
        return bucket.take(now, size)
