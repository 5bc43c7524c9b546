"""Membership: the address book, back-off, dialling and the eviction rule,
as a sub-machine of :class:`p2pmem.protocol.core.NodeCore`.

Inputs are explicit methods (an address learnt, a dial that failed, a
handshake that proved who listens at an address, a connection lost, time);
what it asks for comes back as frozen :class:`DialTo` values, which the core
turns into its :class:`p2pmem.protocol.events.Dial` actions. What it needs
to know of the connections comes in as a :class:`Connected` view, so it
holds no reference to them. A refused or dropped entry is counted in the
``limited`` counters it shares with the core (``status --json`` "limits").
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from p2pmem import limits
from p2pmem.logevents import LogEvent, log_event
from p2pmem.protocol.budget import Bucket
from p2pmem.protocol.ports import Rng
from p2pmem.protocol.timing import Timing

log = logging.getLogger("p2pmem.protocol.core")

__all__ = ["Address", "Connected", "DialTo", "Membership"]


@dataclass
class Address:
    """A dialable address and what we learnt of it."""

    address: str
    agent: bytes | None = None
    failures: int = 0
    next_attempt: float = 0.0
    bootstrap: bool = False
    is_self: bool = False
    dialing: bool = False
    verified: bool = False  # a handshake there succeeded (or we were told by our user)
    source: bytes | None = None  # the peer that told us, for unverified addresses


@dataclass(frozen=True)
class DialTo:
    """Output: dial ``address``, expecting ``agent`` there if known."""

    address: str
    agent: bytes | None


@dataclass(frozen=True)
class Connected:
    """What membership needs to know of the node's connections."""

    count: int  # open connections, handshakes included
    agents: Collection[bytes]  # identities with a connection
    addresses: Collection[str]  # addresses we hold a connection to


class Membership:
    """The address book and the active view's upkeep (HyParView-like: a
    target of outgoing peers, room kept for incoming ones)."""

    def __init__(
        self, key: bytes, rng: Rng, timing: Timing, limited: dict[str, int], now: float, *,
        listen_addresses: Sequence[str] = (), bootstrap: Sequence[str] = (),
    ) -> None:
        """``rng`` is the core's own generator (one stream for the node, so
        a simulation replays); ``limited`` the core's limit counters."""
        self.key = key
        self.rng = rng
        self.timing = timing
        self.limited = limited
        self.listen_addresses = tuple(listen_addresses)
        self.addresses: dict[str, Address] = {}
        self.follows: frozenset[bytes] = frozenset()  # agents we follow: always dialled, never evicted
        self._dial_bucket = Bucket(limits.DIALS_PER_S, limits.DIALS_BURST, now)
        self._dial_log_bucket = Bucket(limits.DIAL_LOGS_PER_S, limits.DIAL_LOGS_BURST, now)
        self._last_eviction = -limits.EVICT_INTERVAL_S
        for address in bootstrap:
            self.addresses[address] = Address(address, bootstrap=True, verified=True)

    def _bite(self, name: str, n: int = 1) -> None:
        self.limited[name] = self.limited.get(name, 0) + n

    # -- learning addresses -------------------------------------------------
    def learn(self, address: str, agent: bytes | None, *, source: bytes | None) -> None:
        """Note an address someone told us of, unverified until a handshake
        there succeeds. Bounded per source and in total; when full, a random
        unverified address of the source with the most makes room (so a
        flood from one peer evicts its own entries, not honest ones)."""
        if agent == self.key or address in self.addresses or address in self.listen_addresses:
            return
        unverified = [e for e in self.addresses.values() if not e.verified and not e.bootstrap]
        mine = [e for e in unverified if e.source == source]
        if len(mine) >= limits.MAX_ADDRESSES_PER_SOURCE:
            self._bite("addresses_per_source")
            victim = min(mine, key=lambda e: (e.failures == 0, e.next_attempt, e.address))
            if victim.dialing:
                return
            del self.addresses[victim.address]
        elif len(unverified) >= limits.MAX_UNVERIFIED_ADDRESSES or len(self.addresses) >= limits.MAX_KNOWN_ADDRESSES:
            self._bite("addresses_full")
            if not self._make_room(unverified):
                return
        self.addresses[address] = Address(address, agent=agent, source=source)

    def _make_room(self, unverified: list[Address]) -> bool:
        """Drop a random unverified address of the source that told us most."""
        counts: dict[bytes | None, int] = {}
        for e in unverified:
            counts[e.source] = counts.get(e.source, 0) + 1
        if not counts:
            return False
        top = max(counts.values())
        heavy = sorted((e for e in unverified if counts[e.source] == top and not e.dialing),
                       key=lambda e: e.address)
        if not heavy:
            return False
        del self.addresses[self.rng.choice(heavy).address]
        return True

    def learn_all(self, addresses: Sequence[str], agent: bytes) -> None:
        """Addresses an agent announced of itself (its hello, its profile)."""
        for address in addresses[: limits.MAX_ADDRESSES]:
            self.learn(address, agent, source=agent)

    def offer(self, peers: list[tuple[bytes, str]]) -> tuple[tuple[bytes, str], ...]:
        """The (agent, address) pairs to tell a peer of, from ``peers``."""
        self.rng.shuffle(peers)
        return tuple(peers[: limits.MAX_PEER_EXCHANGE])

    # -- what happened to a dial ----------------------------------------------
    def connected(self, address: str | None) -> None:
        """The dial to ``address`` gave a TCP connection."""
        if address is not None and address in self.addresses:
            self.addresses[address].dialing = False

    def dial_failed(self, address: str, now: float, reason: str) -> None:
        entry = self.addresses.get(address)
        if entry is not None:
            entry.dialing = False
            self._backoff(entry, now)
            self._age_out(entry)
        if self._dial_log_bucket.take(now):
            log_event(log, logging.INFO, LogEvent.DIAL_FAILED, f"dial {address} failed: {reason}", addr=address,
                      reason=reason)
        else:
            self._bite("dial_log_lines")

    def proven(self, address: str | None, agent: bytes) -> None:
        """A handshake proved that ``agent`` listens at ``address`` (None:
        an incoming connection, no address learnt). Bound to it, the address
        is not dialled while the agent is connected (issue 16)."""
        if address is None:
            return
        entry = self.addresses.get(address)
        if entry is None:
            entry = self.addresses[address] = Address(address)
        entry.agent = agent
        entry.failures = 0
        entry.verified = True
        entry.source = None

    def is_self(self, address: str | None) -> None:
        """We reached ourselves at ``address``: never dial it again."""
        if address in self.addresses:
            self.addresses[address].is_self = True

    def lost(self, address: str | None, now: float, *, failed: bool) -> None:
        """A connection we dialled to ``address`` ended; ``failed`` if it
        never became a peer (and was not closed as a duplicate)."""
        if address is None or address not in self.addresses:
            return
        entry = self.addresses[address]
        entry.dialing = False
        if failed:
            self._backoff(entry, now)
            self._age_out(entry)
        else:
            entry.next_attempt = now + self.timing.backoff_base * (0.5 + self.rng.random())

    def _backoff(self, entry: Address, now: float) -> None:
        entry.failures += 1
        delay = min(self.timing.backoff_max, self.timing.backoff_base * 2 ** min(entry.failures, 16))
        entry.next_attempt = now + delay * (0.5 + self.rng.random())  # jitter

    def _age_out(self, entry: Address) -> None:
        """Forget an address that keeps failing (never a bootstrap one, nor
        one of an agent we follow: those keep backing off instead)."""
        if entry.bootstrap or self._followed(entry):
            return
        limit = limits.VERIFIED_MAX_FAILURES if entry.verified else limits.UNVERIFIED_MAX_FAILURES
        if entry.failures >= limit and self.addresses.get(entry.address) is entry:
            del self.addresses[entry.address]
            self._bite("addresses_aged_out")

    # -- the active view ---------------------------------------------------------
    def maintain(self, now: float, view: Connected) -> list[DialTo]:
        """Keep the active view filled: bootstrap peers and followed agents
        always, others until the target is reached."""
        active = self._active_count(view)
        candidates = [e for e in self.addresses.values() if self._dialable(e, view) and e.next_attempt <= now]
        candidates.sort(key=lambda e: (not e.bootstrap, not self._followed(e), not e.verified, e.failures, e.address))
        dials: list[DialTo] = []
        for entry in candidates:
            if not self._room_for(entry, active):
                break
            if not self._dial_bucket.take(now):
                self._bite("dial_rate")
                break
            entry.dialing = True
            entry.next_attempt = now + self.timing.handshake_timeout
            active += 1
            dials.append(DialTo(entry.address, entry.agent))
        return dials

    def next_deadline(self, view: Connected) -> float | None:
        """When :meth:`maintain` would dial next (None: nothing to dial)."""
        active = self._active_count(view)
        times = [max(entry.next_attempt, self._dial_bucket.ready_at(0.999))
                 for entry in self.addresses.values()
                 if self._room_for(entry, active) and self._dialable(entry, view)]  # cheap test first
        return min(times) if times else None

    def evict_for_newcomer(self, incoming: list[tuple[int, bytes]], now: float) -> int | None:
        """HyParView's rule: a node whose active view is full still lets a
        newcomer in by dropping a random incoming peer (never an agent we
        follow), at most once per EVICT_INTERVAL_S. ``incoming`` holds
        (connection id, agent) of the incoming peers; returns the id to
        close, or None to refuse the newcomer."""
        if now < self._last_eviction + limits.EVICT_INTERVAL_S:
            return None
        victims = sorted(conn for conn, agent in incoming if agent not in self.follows)
        if not victims:
            return None
        victim = self.rng.choice(victims)
        self._last_eviction = now
        self._bite("peers_evicted_for_newcomer")
        return victim

    def _dialable(self, entry: Address, view: Connected) -> bool:
        if entry.is_self or entry.dialing or entry.address in self.listen_addresses:
            return False
        if entry.agent is not None and (entry.agent == self.key or entry.agent in view.agents):
            return False
        return entry.address not in view.addresses

    def _active_count(self, view: Connected) -> int:
        """Connections plus dials in flight: counting only connections let
        every dial failure start one more dial, past the target."""
        return view.count + sum(1 for e in self.addresses.values() if e.dialing)

    def _room_for(self, entry: Address, active: int) -> bool:
        """Whether the active view has room to dial ``entry``."""
        must = entry.bootstrap or self._followed(entry)
        return active < self.timing.max_peers and (must or active < self.timing.target_peers)

    def _followed(self, entry: Address) -> bool:
        return entry.agent is not None and entry.agent in self.follows
