"""The simulated network (:class:`SimNetwork`): many nodes in one process,
each the very protocol core, store and views a real node runs
(:class:`p2pmem.protocol.core.NodeCore` over a
:class:`p2pmem.storage.store.Store` in SQLite ``:memory:``), its records
written by the same :class:`p2pmem.agent.home.Agent` as the CLI's, driven by
a seeded discrete-event loop on virtual time instead of trio and sockets.
Re-exported by :mod:`p2pmem.testing`, where users find it.

Determinism. One seed splits into one ``random.Random`` per component
(``f"{seed}/node/{i}/{incarnation}"``, ``f"{seed}/conn/{id}"``,
``f"{seed}/link/{a}/{b}"``, ...), so adding a node or a fault does not shift
the randomness of the others, and the same seed gives the same run: the same
events in the same order at the same virtual times, and the same bytes on
the wire: nothing reads the wall clock, ``os.urandom`` decides nothing (the
X25519 keys of the Noise handshakes come from each core's seeded key source,
``f"{seed}/keys/{i}/{incarnation}"``), and nothing iterates a set whose order
depends on ``PYTHONHASHSEED``.

The network is a shell like the trio node: it carries out the core's actions
and learns what happened from its events (p2pmem.protocol.events) — who is
ready, why a connection closed, what was stored from whom — never from the
core's internals.

The network runs the paths a production node runs: the one action executor
(p2pmem/protocol/actions.py), send buffers that report written bytes with
``sent`` over the link model of p2pmem/sim/links.py, a reader that stops
on backpressure and calls ``resume`` between turns (both in
p2pmem/sim/streams.py), and an ingest pipeline that verifies and
group-commits ``Ingest`` jobs on the node's real store before
``ingest_done`` (p2pmem/sim/disk.py), with the disk's faults. Event kinds
and the fault plan's :class:`Fault` are in p2pmem/sim/schedule.py.

The network model (docs/simulations.md):

* A connection is a TCP stream: each write leaves its sender's buffer at the
  link's rate (``LinkModel.rate_bytes_s``, within the receiver's
  ``window_bytes``), then arrives in order, after a latency drawn
  per link from a lognormal law (``LinkModel.latency_ms``/``latency_sigma``)
  and per message around it (``jitter_sigma``). A message may be held up by a
  latency spike (``spike``, as a TCP retransmission would), and the stream
  keeps its order behind it (head-of-line blocking).
* Loss. Noise frames cannot vanish silently from a TCP stream (the next frame
  would fail to decrypt), so a lost message is modelled as what it becomes on
  a real network: a broken connection (``reset``: the message is lost and both
  ends see the connection reset). The core reconnects and reconciliation
  repairs what was lost.
* A dial fails with probability ``connect_fail``, at once when the target is
  down, and after ``connect_timeout_s`` when a partition separates the two.
* A partition holds every byte crossing it, as TCP would keep retransmitting;
  the cores notice the silence through their keep-alives and close the
  connection. Bytes of a connection still open on both ends when the
  partition heals are delivered then.
* A crash kills the process: its peers see a reset (unless partitioned away),
  its store survives, and :meth:`SimNetwork.restart` brings it back with a
  fresh core over the same store.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pmem import limits
from p2pmem.agent.home import Agent
from p2pmem.errors import P2pmemError, RecordError
from p2pmem.model.identity import Identity
from p2pmem.model.record import Record, decode_record
from p2pmem.model.views import ViewSnapshot, build_views
from p2pmem.protocol.actions import execute
from p2pmem.protocol.core import NodeCore, Timing
from p2pmem.protocol.events import (
    Close,
    CloseReason,
    Dial,
    Event,
    IngestFinished,
    IngestJob,
    PeerClosed,
    PeerReady,
    QueryFinished,
    RecordsStored,
)
from p2pmem.protocol.query import VerifiedHit
from p2pmem.sim.disk import DiskFaults, DiskModel, DiskShell, Pipeline
from p2pmem.sim.links import FIN, RST, LinkModel, SimLink
from p2pmem.sim.schedule import (
    CALL,
    COMMIT,
    CONNECT,
    DELIVER,
    DIAL_FAIL,
    LOST,
    READ,
    TIMER,
    TX,
    WRITE,
    Fault,
)
from p2pmem.sim.streams import Streams
from p2pmem.sim.topology import Topology, make_topology
from p2pmem.storage.store import IngestResult, Store
from p2pmem.storage.verify import decode_or_error

#: Virtual time zero, in seconds since the Unix epoch (2023-11-14). Record
#: timestamps are hybrid logical clocks on this virtual wall clock.
EPOCH_S = 1_700_000_000
#: The same instant in milliseconds: where strategy-made records are stamped.
#: Each node's Agent reads ``BASE_MS + now_us // 1000`` as its wall clock.
BASE_MS = EPOCH_S * 1000


class SimulationError(P2pmemError):
    """A simulation broke a limit or a node failed; the message names the seed."""


# =============================================================================
# The simulated network
# =============================================================================


def sim_timing(**overrides: Any) -> Timing:
    """Timers for simulations, in virtual seconds: keep-alives and resyncs
    rare enough that a long run stays cheap, back-off short enough that a
    healed partition reconnects within seconds."""
    values: dict[str, Any] = {
        "keepalive": 10.0, "dead_after": 30.0, "resync": 30.0, "backoff_base": 0.5,
        "backoff_max": 8.0, "target_peers": 0, "max_peers": limits.MAX_ACTIVE_PEERS,
        "pex_interval": 60.0, "handshake_timeout": 10.0,
    }
    values.update(overrides)
    return Timing(**values)


def shared_decoder(cache: dict[bytes, Record | RecordError]) -> Callable[[Sequence[bytes]], list[Record | RecordError]]:
    """Decode-and-verify for the stores of one network, each distinct
    record's bytes once per simulation rather than once per node:
    :func:`decode_record` is a pure function of the bytes, so this changes
    the CPU time of a run, never its outcome (and the virtual clock does not
    charge CPU time anyway)."""

    def decode(raws: Sequence[bytes]) -> list[Record | RecordError]:
        out: list[Record | RecordError] = []
        for raw in raws:
            item = cache.get(raw)
            if item is None:
                item = cache[raw] = decode_or_error(raw)
            out.append(item)
        return out

    return decode




@dataclass
class SimNode:
    """One simulated node: identity, store (kept across crashes), the Agent
    that writes its records, and core."""

    index: int
    address: str
    identity: Identity
    store: Store
    bootstrap: list[str]
    replicate_all: bool
    agent: Agent  # over ``store``, on the virtual clock; like the store it outlives crashes
    core: NodeCore | None = None
    alive: bool = False
    incarnation: int = 0
    conns: dict[int, SimLink] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    records_received: int = 0  # records that arrived from peers, new or not
    duplicates: int = 0  # of those, already stored
    digest: tuple[int, int] = (0, 0)  # (record count, xor of id prefixes)
    timer_gen: int = 0
    timer_at: int | None = None
    spins: int = 0
    effects: _NodeEffects | None = None  # what the simulator does for the core's outputs
    pipeline: Pipeline = field(default_factory=Pipeline)  # this incarnation's ingest jobs
    disk: DiskFaults = field(default_factory=DiskFaults)  # outlives crashes, as the store does
    stalled: dict[int, SimLink] = field(default_factory=dict)  # connections not read (backpressure)
    ready: dict[int, bytes] = field(default_factory=dict)  # conn -> agent, from PeerReady/PeerClosed
    finished: dict[bytes, tuple[VerifiedHit, ...]] = field(default_factory=dict)  # QueryFinished hits

    @property
    def key(self) -> bytes:
        return self.identity.public_key


class _NodeEffects:
    """The simulator's :class:`p2pmem.protocol.actions.Effects` for one node."""

    __slots__ = ("net", "node")

    def __init__(self, net: SimNetwork, node: SimNode) -> None:
        self.net = net
        self.node = node

    def send(self, conn: int, data: bytes) -> None:
        self.net._write(self.node, conn, data)

    def close(self, action: Close) -> None:
        self.net._on_close(self.node, action.conn, action.reason)

    def dial(self, action: Dial) -> None:
        self.net._dial(self.node, action.address, action.expected)

    def ingest(self, job: IngestJob) -> None:
        self.net._ingest(self.node, job)

    def event(self, event: Event) -> None:
        self.net._event(self.node, event)


@dataclass(frozen=True)
class Arrival:
    """When and over how many links a node first stored a record."""

    time: float  # virtual seconds
    hops: int | None  # links from the author (None: unknown, e.g. via a restarted node)


class SimNetwork(Streams, DiskShell):
    """Many p2pmem nodes in one process on a virtual network and clock.

    ``SimNetwork(n, seed, topology="random", degree=4, replicate_all=True)``
    creates ``n`` nodes whose bootstrap lists follow the topology (a
    :class:`Topology` or a kind of :func:`make_topology`), starts them, and
    runs until every link of the topology is up (``connect=False`` skips
    that). Each link is dialled by one of its ends, so with the default
    ``membership="fixed"`` (``target_peers=0``: dial bootstrap peers only) the
    overlay stays the topology; ``membership="pex"`` lets nodes dial peers
    they learn of until they have ``degree``, as real nodes do.

    Times given to and returned by the public methods are virtual seconds
    since the start (:attr:`now`).
    """

    def __init__(
        self,
        n: int,
        seed: int | str = 0,
        *,
        topology: Topology | str = "random",
        degree: int = 4,
        replicate_all: bool = True,
        link: LinkModel | None = None,
        disk: DiskModel | None = None,
        timing: Timing | None = None,
        membership: str = "fixed",
        connect: bool = True,
        max_events: int = 20_000_000,
        max_time: float = 100_000.0,
        track_arrivals: bool = True,
        share_verification: bool = True,
    ) -> None:
        if n < 1:
            raise ValueError("a network needs at least one node")
        if membership not in ("fixed", "pex"):
            raise ValueError("membership is 'fixed' or 'pex'")
        self.seed = seed
        self.link = link or LinkModel()
        self.disk = disk or DiskModel()
        # how often each shell duty ran: the core inputs the production
        # paths need (sent, resume, ingest_done) and the disk's faults
        self.counts: dict[str, int] = dict.fromkeys(
            ("sent", "resume", "ingest", "ingest_done", "commits", "failed_commits", "crashes_before_ack",
             "stalls"), 0)
        if isinstance(topology, str):
            topology = make_topology(topology, n, rng=self.rng("topology"), degree=degree)
        if topology.n != n:
            raise ValueError(f"the topology has {topology.n} nodes, not {n}")
        self.topology = topology
        max_degree = max(topology.degrees(), default=0)
        if timing is None:
            timing = sim_timing(
                target_peers=degree if membership == "pex" else 0,
                max_peers=max(limits.MAX_ACTIVE_PEERS, max_degree + 2),
            )
        self.timing = timing
        self.membership = membership
        self.replicate_all = replicate_all
        self.max_events = max_events
        self.max_time = max_time
        self.track_arrivals = track_arrivals
        self.share_verification = share_verification
        self._decoded: dict[bytes, Record | RecordError] = {}
        self.nodes: list[SimNode] = []
        self._down = 0  # crashed nodes not restarted yet
        self.events = 0
        self.now_us = 0
        self.close_reasons: dict[str, int] = {}  # by CloseReason value, and "lost message (reset)"
        self.closes: dict[CloseReason, int] = {}
        self.arrivals: dict[bytes, dict[int, Arrival]] = {}
        self.on_progress: Callable[[SimNetwork], None] | None = None
        self.last_change = 0.0  # virtual time a store last changed
        self._heap: list[tuple[int, int, int, tuple[Any, ...]]] = []
        self._seq = 0
        self._next_cid = 0
        self._conns: dict[int, SimLink] = {}
        self._by_address: dict[str, SimNode] = {}
        self._by_key: dict[bytes, SimNode] = {}
        self._groups: dict[int, int] | None = None
        self._digests: dict[tuple[int, int], int] = {}
        # every byte delivered, in delivery order, with its connection and
        # direction: two runs of one seed agree on it exactly (wire_digest)
        self._wire = hashlib.sha256()
        self._link_us: dict[tuple[int, int], float] = {}
        direction = self.rng("direction")
        dialled: list[list[int]] = [[] for _ in range(n)]
        for i, j in topology.edges:
            if direction.random() < 0.5:
                dialled[i].append(j)
            else:
                dialled[j].append(i)
        for i in range(n):
            self._add_node([self._address(j) for j in dialled[i]], replicate_all)
        for node in self.nodes:
            self._start(node)
        if connect:
            self.run_until_connected()

    # -- randomness and time ------------------------------------------------------
    def rng(self, component: str) -> random.Random:
        """The generator of one component of this run: ``Random(f"{seed}/{component}")``."""
        return random.Random(f"{self.seed}/{component}")

    @property
    def now(self) -> float:
        """Virtual seconds since the start."""
        return self.now_us / 1e6

    @property
    def wall(self) -> float:
        """The virtual clock the cores see as their monotonic ``now``
        (seconds since the epoch, so it reads as the wall clock too)."""
        return EPOCH_S + self.now_us / 1e6

    @property
    def wall_ms(self) -> int:
        """The virtual wall clock in whole milliseconds: the cores' ``wall_ms``
        (integer arithmetic, the same instant the Agents read)."""
        return BASE_MS + self.now_us // 1000

    def wire_digest(self) -> str:
        """SHA-256 over every byte delivered so far (handshakes included),
        with its connection and direction, in delivery order: a run replays
        byte for byte from its seed exactly when this agrees."""
        return self._wire.hexdigest()

    def fail(self, message: str) -> SimulationError:
        return SimulationError(f"{message} (at virtual t={self.now:.3f}s, seed {self.seed!r})")

    # -- nodes ----------------------------------------------------------------------
    @staticmethod
    def _address(index: int) -> str:
        return f"sim:{index}"

    def _add_node(self, bootstrap: list[str], replicate_all: bool) -> SimNode:
        index = len(self.nodes)
        rng = self.rng(f"identity/{index}")
        identity = Identity.from_seeds(rng.randbytes(32), rng.randbytes(32))
        decoder = shared_decoder(self._decoded) if self.share_verification else None
        node_box: list[SimNode] = []
        store = Store(Path(":memory:"), verify_workers=1, decoder=decoder,
                      on_ingest=lambda result: self._stored(node_box[0], result))
        # An Agent reads its home only in Agent.open; a simulated node has none.
        agent = Agent(Path(":memory:"), identity, store, wall_ms=lambda: self.wall_ms)
        node = SimNode(index, self._address(index), identity, store, bootstrap, replicate_all, agent)
        node.disk.rng = self.rng(f"disk/{index}")
        node_box.append(node)
        self.nodes.append(node)
        self._by_address[node.address] = node
        self._by_key[node.key] = node
        return node

    def _start(self, node: SimNode) -> None:
        if node.incarnation:
            self._down -= 1
        node.incarnation += 1
        node.alive = True
        node.spins = 0
        rng = self.rng(f"node/{node.index}/{node.incarnation}")
        keys = self.rng(f"keys/{node.index}/{node.incarnation}")
        node.ready.clear()
        node.finished.clear()
        node.effects = _NodeEffects(self, node)
        node.pipeline = Pipeline()
        node.stalled.clear()
        node.core = NodeCore(
            node.identity, node.store, rng, router_rng=random.Random(rng.getrandbits(64)), now=self.wall,
            listen_addresses=[node.address], bootstrap=node.bootstrap,
            replicate_all=node.replicate_all, timing=self.timing,
            key_source=lambda: X25519PrivateKey.from_private_bytes(keys.randbytes(32)),
        )
        self._digests[node.digest] = self._digests.get(node.digest, 0) + 1
        self._apply(node)

    def live_nodes(self) -> list[int]:
        return [node.index for node in self.nodes if node.alive]

    def node_of(self, key: bytes) -> int:
        """The index of the node with this agent key."""
        return self._by_key[key].index

    def _live(self, index: int) -> SimNode:
        try:
            node = self.nodes[index]
        except IndexError:
            raise ValueError(f"no node {index} (the network has {len(self.nodes)})") from None
        if not node.alive or node.core is None:
            raise ValueError(f"node {index} is down")
        return node

    # -- writing records --------------------------------------------------------------
    # Every record a node writes is signed and stored by its Agent, the one
    # writer a real node has (p2pmem/agent/home.py): the same rules for
    # update, forget and profiles as the CLI and the MCP server. The network
    # then does what the serving node does for a CLI write: the core pushes it.
    def _written(self, node: SimNode, records: Sequence[Record]) -> None:
        """``node``'s Agent just stored ``records``: note their arrival (hop
        0) and let the core push them."""
        assert node.core is not None
        self._arrived(node, [r.id for r in records if node.store.has(r.id)], None)
        node.core.local_records(records, self.wall)
        self._apply(node)

    def _as_agent(self, index: int, write: Callable[[Agent], Record]) -> Record:
        node = self._live(index)
        record = write(node.agent)
        self._written(node, [record])
        return record

    def write(self, index: int, kind: str, body: Any, **fields: Any) -> Record:
        """Sign a record of any kind as node ``index``'s agent at the virtual
        time (``Agent.sign``), store it (``Agent.commit``) and let the core
        push it, as ``p2pmem remember`` does."""
        return self._as_agent(index, lambda agent: agent.commit([agent.sign(kind, body, **fields)])[0])

    def remember(self, index: int, text: str, *, topics: Sequence[str] = (), visibility: str = "public",
                 session: str = "") -> Record:
        return self._as_agent(
            index, lambda agent: agent.remember(text, topics=list(topics), visibility=visibility, session=session)
        )

    def update(self, index: int, record: Record, text: str) -> Record:
        """Supersede every current head of ``record``'s lineage (its author's node only)."""
        return self._as_agent(index, lambda agent: agent.update(record.id.hex(), text))

    def forget(self, index: int, record: Record) -> Record:
        """Retract ``record``'s whole lineage (its author's node only)."""
        return self._as_agent(index, lambda agent: agent.forget(record.id.hex()))

    def follow(self, index: int, other: int, active: bool = True) -> Record:
        return self._as_agent(index, lambda agent: agent.follow(self.nodes[other].key, active))

    def endorse(self, index: int, other: int, what: str = "agent") -> Record:
        return self._as_agent(index, lambda agent: agent.endorse(self.nodes[other].key, what))

    def set_profile(self, index: int, name: str, skills: Sequence[str] = ()) -> Record:
        """Name, skills and the node's address (``Agent.set_profile``)."""
        address = self.nodes[index].address
        return self._as_agent(
            index, lambda agent: agent.set_profile(name=name, skills=list(skills), addresses=[address])
        )

    def inject(self, index: int, records: Iterable[Record]) -> int:
        """Store records made elsewhere (e.g. by :func:`records`) on a node
        and push them, as ``p2pmem import`` would (``Agent.import_raw``: the
        checks a peer's records get, on the virtual clock); returns how many
        were new."""
        node = self._live(index)
        added = node.agent.import_raw([r.raw for r in records]).added
        self._written(node, added)
        return len(added)

    # -- asking -------------------------------------------------------------------------
    def start_ask(self, index: int, text: str, *, ttl: int = limits.DEFAULT_TTL, timeout: float = 3.0,
                  **filters: Any) -> bytes:
        """Flood a query from node ``index``; returns its id (see :meth:`ask_results`)."""
        node = self._live(index)
        assert node.core is not None
        qid = node.core.start_query(text, now=self.wall, ttl=ttl, timeout=timeout, **filters)
        self._apply(node)
        return qid

    def ask_results(self, index: int, qid: bytes, *, finish: bool = True) -> list[VerifiedHit]:
        """The verified hits of a query so far; ``finish`` drops its state."""
        node = self._live(index)
        assert node.core is not None
        hits = node.core.query_results(qid)
        if finish:
            node.finished.pop(qid, None)
            node.core.finish_query(qid)
        return hits

    def ask(self, index: int, text: str, *, ttl: int = limits.DEFAULT_TTL, timeout: float = 3.0,
            **filters: Any) -> list[VerifiedHit]:
        """Ask the network from node ``index`` and run the simulation for
        ``timeout`` virtual seconds; returns the verified hits (the asker's
        own store is not searched, as with ``p2pmem ask``)."""
        qid = self.start_ask(index, text, ttl=ttl, timeout=timeout, **filters)
        self.run_for(timeout)
        return self.ask_results(index, qid)

    # -- faults ---------------------------------------------------------------------------
    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Cut the network into ``groups`` (nodes named in no group form one
        more group). Bytes crossing the cut are held until :meth:`heal`."""
        self._groups = {}
        for g, members in enumerate(groups, start=1):
            for index in members:
                self._groups[index] = g

    def heal(self) -> None:
        """End the partition: held bytes of still-open connections flow again."""
        self._groups = None
        for conn in list(self._conns.values()):
            for dest in (0, 1):
                held = conn.held[dest]
                if not held:
                    continue
                items = list(held)
                held.clear()
                for seq, item in items:
                    self._schedule_item(conn, dest, seq, item)

    def partitioned(self, a: int, b: int) -> bool:
        groups = self._groups
        return groups is not None and groups.get(a, 0) != groups.get(b, 0)

    def crash(self, index: int) -> None:
        """Kill node ``index``: its peers see a reset, its store survives."""
        node = self._live(index)
        for conn in list(node.conns.values()):
            side = conn.side_of(node)
            conn.drop_queues(side)
            if conn.open[side]:
                conn.open[side] = False
                self._send_item(conn, side, RST)
            self._forget_conn(conn)
        node.conns.clear()
        node.stalled.clear()
        node.pipeline = Pipeline()  # the jobs in the pipeline die with the process
        node.alive = False
        self._down += 1
        node.core = None
        node.timer_gen += 1
        node.timer_at = None
        self._digest_remove(node.digest)

    def restart(self, index: int) -> None:
        """Bring a crashed node back: a fresh core over its old store."""
        node = self.nodes[index]
        if node.alive:
            raise ValueError(f"node {index} is already running")
        self._start(node)

    def join(self, bootstrap: Sequence[int], *, replicate_all: bool | None = None) -> int:
        """Add a new node (new identity, empty store) that dials ``bootstrap``; returns its index."""
        node = self._add_node([self._address(i) for i in bootstrap],
                              self.replicate_all if replicate_all is None else replicate_all)
        self._start(node)
        return node.index

    def apply_fault(self, fault: Fault) -> None:
        if fault.kind == "partition":
            self.partition(fault.groups)
        elif fault.kind == "heal":
            self.heal()
        elif fault.kind == "crash":
            assert fault.node is not None
            if self.nodes[fault.node].alive:
                self.crash(fault.node)
        elif fault.kind == "restart":
            assert fault.node is not None
            if not self.nodes[fault.node].alive:
                self.restart(fault.node)
        elif fault.kind in ("commit-fail", "slow-disk", "crash-before-ack"):
            self._disk_fault(fault)
        else:
            raise ValueError(f"unknown fault {fault.kind!r}")

    def schedule(self, faults: Iterable[Fault], *, start: float | None = None) -> None:
        """Apply each fault at ``start + fault.at`` (default: now)."""
        base = self.now if start is None else start
        for fault in faults:
            self.call_at(base + fault.at, functools.partial(self.apply_fault, fault))

    def call_at(self, time: float, fn: Callable[[], object]) -> None:
        """Run ``fn()`` at virtual time ``time`` (seconds since the start)."""
        self._push(max(self.now_us, round(time * 1e6)), CALL, (fn,))

    # -- running ------------------------------------------------------------------------------
    def step(self) -> bool:
        """Process the next event; False when there is none."""
        if not self._heap:
            return False
        t, _, kind, payload = heapq.heappop(self._heap)
        self.now_us = t
        self.events += 1
        if self.events > self.max_events:
            raise self.fail(f"more than {self.max_events} events: raise max_events or shorten the run")
        if t > self.max_time * 1e6:
            raise self.fail(f"virtual time passed max_time={self.max_time:g}s")
        try:
            self._handle(kind, payload)
        except SimulationError:
            raise
        except Exception as exc:
            raise self.fail(f"event {kind} raised {exc!r}") from exc
        if self.on_progress is not None and self.events % 2000 == 0:
            self.on_progress(self)
        return True

    def next_event_time(self) -> float | None:
        return self._heap[0][0] / 1e6 if self._heap else None

    def run_until(self, time: float) -> None:
        """Process every event up to virtual time ``time``, then set the clock there."""
        end = round(time * 1e6)
        while self._heap and self._heap[0][0] <= end:
            self.step()
        self.now_us = max(self.now_us, end)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_while(self, keep_going: Callable[[], bool], max_time: float, *, what: str = "the condition",
                  check_every: int = 1) -> float:
        """Step while ``keep_going()`` holds (checked every ``check_every``
        events); returns the virtual time it stopped at. Raises
        :class:`SimulationError` after ``max_time`` more virtual seconds."""
        end = self.now_us + round(max_time * 1e6)
        count = 0
        while keep_going():
            while True:
                if not self._heap or self._heap[0][0] > end:
                    self.now_us = max(self.now_us, end)
                    raise self.fail(f"{what} did not happen within {max_time:g} virtual seconds")
                self.step()
                count += 1
                if count % check_every == 0:
                    break
        return self.now

    def run_until_converged(self, max_time: float = 600.0) -> float:
        """Run until every live node holds the same record set; returns the time."""
        return self.run_while(lambda: not self.converged(), max_time, what="convergence")

    def run_until_connected(self, max_time: float = 120.0) -> float:
        """Run until every topology link between live nodes is up."""
        every = max(1, len(self.nodes))
        return self.run_while(lambda: not self.connected(), max_time, what="connecting the topology",
                              check_every=every)

    def run_until_quiet(self, max_time: float = 600.0, *, idle: float | None = None) -> float:
        """Run until no store has changed for ``idle`` virtual seconds
        (default: long enough for a back-off, a reconnect and a periodic
        resync); returns the time of the last change."""
        if idle is None:
            idle = self.timing.resync + self.timing.backoff_max + self.timing.handshake_timeout
        idle_us = round(idle * 1e6)
        end = self.now_us + round(max_time * 1e6)
        while True:
            quiet_at = max(round(self.last_change * 1e6) + idle_us, self.now_us)
            if not self._heap or self._heap[0][0] > quiet_at:
                if quiet_at > end:
                    raise self.fail(f"the network was not quiet within {max_time:g} virtual seconds")
                self.now_us = quiet_at
                return self.last_change
            if self._heap[0][0] > end:
                raise self.fail(f"the network was not quiet within {max_time:g} virtual seconds")
            self.step()

    # -- inspecting ------------------------------------------------------------------------------
    def converged(self) -> bool:
        """Whether every live node holds the same record set (by an
        incremental digest of record ids; :meth:`stores_equal` compares them)."""
        return len(self._digests) <= 1

    def connected(self) -> bool:
        """Whether every topology link between two live nodes has a ready connection."""
        for i, j in self.topology.edges:
            a, b = self.nodes[i], self.nodes[j]
            if not (a.alive and b.alive):
                continue
            if not (self._ready(a, b) and self._ready(b, a)):
                return False
        return True

    @staticmethod
    def _ready(a: SimNode, b: SimNode) -> bool:
        return b.key in a.ready.values()

    def peers(self, index: int) -> list[int]:
        """Indexes of the nodes ``index`` has a ready connection with."""
        node = self._live(index)
        out = []
        for agent in node.ready.values():
            other = self._by_key.get(agent)
            if other is not None:
                out.append(other.index)
        return sorted(out)

    def graph(self) -> Topology:
        """The overlay as it is now: ready connections between live nodes."""
        edges = [(i, j) for i in self.live_nodes() for j in self.peers(i)]
        return Topology.of(len(self.nodes), edges, "overlay")

    def record_ids(self, index: int) -> list[bytes]:
        """The ids a node stores, in (timestamp, id) order (crashed nodes too)."""
        return [record_id for _, record_id in self.nodes[index].store.items()]

    def records(self, index: int) -> list[Record]:
        return [decode_record(raw, verify=False) for raw in self.nodes[index].store.raw_records()]

    def stores_equal(self, nodes: Iterable[int] | None = None) -> bool:
        """Whether the given (default: live) nodes store exactly the same records."""
        indexes = list(self.live_nodes() if nodes is None else nodes)
        sets = [self.record_ids(i) for i in indexes]
        return all(s == sets[0] for s in sets)

    def views(self, nodes: Iterable[int] | None = None) -> list[ViewSnapshot]:
        """The CRDT views of each given (default: live) node's records."""
        indexes = list(self.live_nodes() if nodes is None else nodes)
        return [build_views(self.records(i)) for i in indexes]

    def views_equal(self, nodes: Iterable[int] | None = None) -> bool:
        comparable = [v.comparable() for v in self.views(nodes)]
        return all(c == comparable[0] for c in comparable)

    def holders(self, record_id: bytes) -> int:
        """How many live nodes have stored ``record_id`` (needs ``track_arrivals``)."""
        seen = self.arrivals.get(record_id, {})
        if self._down == 0:
            return len(seen)  # every node is up (checked after every event by the scenarios)
        return sum(1 for i in seen if self.nodes[i].alive)

    def protocol_errors(self) -> int:
        """Connections closed for a protocol violation: zero in a correct run."""
        return sum(count for reason, count in self.closes.items() if reason.is_protocol_error)

    # -- the event loop's internals ------------------------------------------------------------------
    def _push(self, t_us: int, kind: int, payload: tuple[Any, ...]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_us, self._seq, kind, payload))

    def _handle(self, kind: int, payload: tuple[Any, ...]) -> None:
        if kind == DELIVER:
            self._on_deliver(*payload)
        elif kind == TIMER:
            node, gen = payload
            if node.core is None or gen != node.timer_gen:
                return
            node.timer_at = None
            node.core.handle_timer(self.wall, wall_ms=self.wall_ms)
            self._apply(node, after_timer=True)
        elif kind == CONNECT:
            self._on_connect(*payload)
        elif kind == DIAL_FAIL:
            node, incarnation, address, reason = payload
            if node.alive and node.incarnation == incarnation:
                assert node.core is not None
                node.core.dial_failed(address, self.wall, reason)
                self._apply(node)
        elif kind == LOST:
            conn, side = payload
            node = conn.nodes[side]
            if node.core is conn.cores[side] and node.core is not None:
                node.core.connection_lost(conn.cid, self.wall)
                self._apply(node)
            self._forget_conn(conn)
        elif kind == TX:
            self._on_tx(*payload)
        elif kind == READ:
            self._on_read(*payload)
        elif kind == WRITE:
            self._on_write(*payload)
        elif kind == COMMIT:
            self._on_commit(*payload)
        elif kind == CALL:
            payload[0]()

    def _apply(self, node: SimNode, *, after_timer: bool = False) -> None:
        """Carry out what the node's core asked for, then set its timer."""
        core = node.core
        assert core is not None
        assert node.effects is not None
        execute(core, node.effects)
        if node.core is not core:  # the node crashed meanwhile
            return
        if node.stalled:  # readers waiting on backpressure look again
            for cid, conn in list(node.stalled.items()):
                if core.readable(cid):
                    del node.stalled[cid]
                    self._schedule_read(conn, conn.side_of(node))
        deadline = core.next_deadline()
        if deadline is None:
            node.timer_gen += 1
            node.timer_at = None
            return
        t_us = math.ceil((deadline - EPOCH_S) * 1e6)
        while EPOCH_S + t_us / 1e6 < deadline:
            t_us += 1
        t_us = max(t_us, self.now_us)
        if after_timer and t_us <= self.now_us:
            node.spins += 1
            if node.spins > 100:
                raise self.fail(f"node {node.index} asks to be woken at the same instant again and again "
                                "(next_deadline() does not move after handle_timer())")
        elif after_timer:
            node.spins = 0
        if t_us != node.timer_at:
            node.timer_gen += 1
            node.timer_at = t_us
            self._push(t_us, TIMER, (node, node.timer_gen))

    def _event(self, node: SimNode, event: Event) -> None:
        """The bookkeeping of the core's events: who is ready, what arrived."""
        kind = type(event)
        if kind is IngestFinished:
            # records that came from a peer, new or not (known ones were
            # skipped by the core before any check)
            node.records_received += event.known + event.offered
            node.duplicates += event.known + event.duplicates
        elif kind is RecordsStored:
            self._arrived(node, event.ids, self._other_end(node, event.conn))
        elif kind is PeerReady:
            node.ready[event.conn] = event.agent
        elif kind is PeerClosed:
            node.ready.pop(event.conn, None)
        elif kind is QueryFinished:
            node.finished[event.qid] = event.hits

    def _open_end(self, node: SimNode, cid: int) -> tuple[SimLink, int] | None:
        """The connection and ``node``'s side of it, if that side is still open."""
        conn = self._conns.get(cid)
        if conn is None:
            return None
        side = conn.side_of(node)
        return (conn, side) if conn.open[side] else None

    def _other_end(self, node: SimNode, cid: int) -> SimNode | None:
        conn = self._conns.get(cid)
        return conn.nodes[1 - conn.side_of(node)] if conn is not None else None

    def _on_close(self, node: SimNode, cid: int, reason: CloseReason) -> None:
        self.closes[reason] = self.closes.get(reason, 0) + 1
        self.close_reasons[reason.value] = self.close_reasons.get(reason.value, 0) + 1
        end = self._open_end(node, cid)
        if end is None:
            return
        conn, side = end
        conn.open[side] = False
        self._send_item(conn, side, FIN)
        self._push(self.now_us, LOST, (conn, side))

    def _forget_conn(self, conn: SimLink) -> None:
        if conn.open[0] or conn.open[1]:
            return
        self._conns.pop(conn.cid, None)
        for node in conn.nodes:
            node.conns.pop(conn.cid, None)

    def _link_latency(self, a: int, b: int) -> float:
        pair = (min(a, b), max(a, b))
        base = self._link_us.get(pair)
        if base is None:
            rng = self.rng(f"link/{pair[0]}/{pair[1]}")
            base = self.link.latency_ms * 1000 * rng.lognormvariate(0.0, self.link.latency_sigma)
            self._link_us[pair] = base
        return base

    def _delay(self, rng: random.Random, base_us: float) -> int:
        delay = base_us
        if self.link.jitter_sigma:
            delay *= rng.lognormvariate(0.0, self.link.jitter_sigma)
        if self.link.spike and rng.random() < self.link.spike:
            delay += rng.expovariate(1.0 / self.link.spike_ms) * 1000
        return max(1, round(delay))

    def _dial(self, node: SimNode, address: str, expected: bytes | None) -> None:
        self._next_cid += 1
        cid = self._next_cid
        target = self._by_address.get(address)
        rng = self.rng(f"dial/{cid}")
        if target is None or target is node:
            self._push(self.now_us + 1000, DIAL_FAIL, (node, node.incarnation, address, "no such host"))
            return
        rtt = 2 * self._delay(rng, self._link_latency(node.index, target.index))
        if self.partitioned(node.index, target.index):
            timeout = round(self.link.connect_timeout_s * 1e6)
            self._push(self.now_us + timeout, DIAL_FAIL, (node, node.incarnation, address, "timed out"))
        elif self.link.connect_fail and rng.random() < self.link.connect_fail:
            self._push(self.now_us + rtt, DIAL_FAIL, (node, node.incarnation, address, "connection reset"))
        else:
            self._push(self.now_us + rtt, CONNECT, (cid, node, node.incarnation, target, address, expected))

    def _on_connect(self, cid: int, node: SimNode, incarnation: int, target: SimNode, address: str,
                    expected: bytes | None) -> None:
        if not node.alive or node.incarnation != incarnation:
            return  # the dialler died meanwhile; the half-open socket never mattered
        if not target.alive or self.partitioned(node.index, target.index):
            reason = "connection refused" if not target.alive else "timed out"
            assert node.core is not None
            node.core.dial_failed(address, self.wall, reason)
            self._apply(node)
            return
        base = self._link_latency(node.index, target.index)
        conn = SimLink(cid, node, target, self.rng(f"conn/{cid}"), base)
        self._conns[cid] = conn
        node.conns[cid] = conn
        target.conns[cid] = conn
        assert node.core is not None and target.core is not None
        target.core.connection_made(cid, initiator=False, now=self.wall, address=None)
        self._apply(target)
        node.core.connection_made(cid, initiator=True, now=self.wall, address=address, expected=expected)
        self._apply(node)

    # -- store bookkeeping ----------------------------------------------------------------------------------
    def _digest_remove(self, digest: tuple[int, int]) -> None:
        count = self._digests.get(digest, 0) - 1
        if count > 0:
            self._digests[digest] = count
        else:
            self._digests.pop(digest, None)

    def _stored(self, node: SimNode, result: IngestResult) -> None:
        """Every store write on ``node`` (the core's ingests and local writes
        alike, told by the store's ``on_ingest``): the digest that tells
        convergence."""
        ids = [r.id for r in result.added]
        if not ids:
            return
        self.last_change = self.now
        old = node.digest
        if any(r.kind == "retract" for r in result.added) or result.evicted:  # recount from the store
            count, xor = 0, 0
            for _, record_id in node.store.items():
                count += 1
                xor ^= int.from_bytes(record_id[:8], "big")
            node.digest = (count, xor)
        else:
            count, xor = old
            for record_id in ids:
                xor ^= int.from_bytes(record_id[:8], "big")
            node.digest = (count + len(ids), xor)
        if node.alive:
            self._digest_remove(old)
            self._digests[node.digest] = self._digests.get(node.digest, 0) + 1
    def _arrived(self, node: SimNode, ids: Iterable[bytes], via: SimNode | None) -> None:
        """``node`` stored ``ids``: written there (``via`` None, hop 0) or
        received from ``via`` (a RecordsStored event)."""
        if not self.track_arrivals:
            return
        now = self.now
        for record_id in ids:
            seen = self.arrivals.setdefault(record_id, {})
            if node.index in seen:
                continue
            if via is None:
                hops: int | None = 0
            else:
                before = seen.get(via.index)
                hops = before.hops + 1 if before is not None and before.hops is not None else None
            seen[node.index] = Arrival(now, hops)
