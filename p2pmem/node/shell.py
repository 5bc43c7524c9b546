"""The trio node: a thin shell that feeds :class:`p2pmem.protocol.core.NodeCore` real
sockets and the real clock, and carries out the actions it returns.

No protocol decision lives here. The shell owns tasks and sockets only: one
listener, one reader and one writer task per connection, a timer task that
wakes the core at its next deadline, dial tasks, and the local control socket
through which the other commands of the home reach the running node. It calls
only the core's public inputs (p2pmem.protocol.events.INPUTS), with the
monotonic clock as ``now`` and the wall clock in milliseconds as ``wall_ms``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pmem import limits
from p2pmem.agent.home import Agent
from p2pmem.errors import P2pmemError, UsageError
from p2pmem.logevents import LogEvent, log_event
from p2pmem.node.control import ControlServer
from p2pmem.node.ingest import IngestPipeline
from p2pmem.node.metrics import NodeMetrics
from p2pmem.node.sdnotify import notify as sd_notify
from p2pmem.protocol.actions import execute
from p2pmem.protocol.core import IngestOutcome, NodeCore, Timing
from p2pmem.protocol.events import Close, ConnId, Dial, Event, IngestJob, QueryFinished
from p2pmem.storage.diskerrors import explain
from p2pmem.storage.store import Store
from p2pmem.storage.verify import usable_cores

log = logging.getLogger("p2pmem.node.shell")

READ_SIZE = 65536
DIAL_TIMEOUT_S = 5.0
POLL_STORE_S = 0.25
CLOSE_GRACE_S = 2.0  # a closed connection's writer gets this long to flush, then is cancelled


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) with a clear error."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise UsageError(f"not an address (HOST:PORT expected): {text!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"not a port number in {text!r}") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"port out of range in {text!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


INDEX_INTERVAL_S = 1.0  # how stale the index the network's queries see may be, when calm
INDEX_BURST = 2_000  # log entries behind that make a still-growing log a burst to wait out
INDEX_MAX_STALE_S = 10.0  # the longest a burst delays indexing


def mono() -> float:
    """The core's ``now``: trio's clock, monotonic seconds (timers,
    deadlines, buckets), the one the shell's sleeps and timeouts use too, so
    a node runs on virtual time under ``trio.testing.MockClock``
    (tests/test_node_virtual_time.py)."""
    return trio.current_time()


def wall_ms() -> int:
    """The core's ``wall_ms``: the wall clock in milliseconds (the HLC and
    record admission)."""
    return time.time_ns() // 1_000_000


@dataclass
class _StreamConn:
    stream: trio.SocketStream
    outbox: trio.MemorySendChannel[bytes | None]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    resume: trio.Event = field(default_factory=trio.Event)
    closing: bool = False


class _NodeEffects:
    """What the trio node does for each of the core's outputs
    (:class:`p2pmem.protocol.actions.Effects`)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def send(self, conn_id: ConnId, data: bytes) -> None:
        conn = self.node._conns.get(conn_id)
        if conn is not None:  # the writer task reports it written (core.sent)
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                conn.outbox.send_nowait(data)

    def close(self, action: Close) -> None:
        conn = self.node._conns.get(action.conn)
        if conn is not None and not conn.closing:
            conn.closing = True
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                conn.outbox.send_nowait(None)  # writer closes after what is queued
            # a peer that does not read would keep the writer blocked
            assert self.node._nursery is not None
            self.node._nursery.start_soon(self.node._cancel_later, conn)

    def dial(self, action: Dial) -> None:
        assert self.node._nursery is not None
        self.node._nursery.start_soon(self.node._dial, action.address, action.expected)

    def ingest(self, job: IngestJob) -> None:
        self.node._ingest.submit(job)  # then Node._ingested calls core.ingest_done

    def event(self, event: Event) -> None:
        # PeerReady, PeerClosed, RecordsStored, IngestFinished: the core logs them
        if isinstance(event, QueryFinished):
            waiter = self.node._query_waiters.get(event.qid)
            if waiter is not None:
                self.node._query_hits[event.qid] = event.hits
                waiter.set()


class Node:
    """One running node of a home."""

    def __init__(
        self,
        agent: Agent,
        *,
        listen: str = "127.0.0.1:0",
        peers: list[str] | None = None,
        replicate_all: bool = False,
        timing: Timing | None = None,
        announce: bool = True,
        metrics: str | None = None,
    ) -> None:
        self.agent = agent
        # serve --metrics HOST:PORT (p2pmem/node/metrics.py); off when None
        self.metrics_listen = parse_address(metrics) if metrics is not None else None
        self.metrics: NodeMetrics | None = None
        self.listen = parse_address(listen)
        self.peers = list(peers or [])
        for peer in self.peers:
            parse_address(peer)
        self.replicate_all = replicate_all
        self.timing = timing
        self.announce = announce
        self.core: NodeCore | None = None
        self.address: str | None = None
        self._conns: dict[ConnId, _StreamConn] = {}
        self._next_conn = 0
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._last_data_version = -1
        self._stopping = False
        # Local defences that bit (control requests refused, ...), for status.
        self.local_stats: dict[str, int] = {}
        # Received records are verified and stored beside the event loop; the
        # core bounds the bytes each peer may have waiting there
        # (limits.MAX_INGEST_PENDING) and stops reading a peer past it.
        self._ingest = IngestPipeline(agent.store.path, workers=usable_cores(), done=self._ingested)
        # own queries being waited on: qid -> the event set when the core finishes it
        self._query_waiters: dict[bytes, trio.Event] = {}
        self._query_hits: dict[bytes, tuple[Any, ...]] = {}
        self._effects = _NodeEffects(self)
        # own queries whose hits stream out as they arrive (ask --json-lines)
        self._query_streams: dict[bytes, _HitStream] = {}

    # -- lifecycle -------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.listen
        control = ControlServer(self.agent.home, self)
        control.check_free()  # before listening or announcing an address in the profile
        if self.metrics_listen is not None:
            self.metrics = NodeMetrics()
            self.metrics.start(self, *self.metrics_listen)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            if self.metrics is not None:
                self.metrics.close()
            raise P2pmemError(f"cannot listen on {format_address(host, port)}: {exc.strerror}") from None
        bound = listeners[0].socket.getsockname()
        self.address = format_address(bound[0], bound[1])
        if self.announce:
            self._announce_address(self.address)
        rng = random.Random()
        self.core = NodeCore(
            self.agent.identity, self.agent.store, rng, router_rng=random.Random(rng.getrandbits(64)),
            now=mono(), listen_addresses=[self.address], bootstrap=self.peers,
            replicate_all=self.replicate_all, timing=self.timing,
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await control.start(nursery)
                nursery.start_soon(self._serve_listeners, listeners)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._keep_indexes_current)
                await nursery.start(self._ingest.run)
                self._apply()
                task_status.started(self.address)
        finally:
            control.cleanup()
            if self.metrics is not None:
                self.metrics.close()

    async def _keep_indexes_current(self) -> None:
        """Bring the derived search indexes up to date about once a second,
        in a worker thread with its own store connection: the network's
        queries are answered from the index as it is (core: fresh=False),
        so neither they nor the event loop wait on an index commit or on
        re-embedding after a model change."""
        store = self.agent.store
        indexer = Store(store.path, verify_workers=1, check_same_thread=False)
        indexer.search.model_path = store.search.model_path

        busy = False

        def work() -> None:
            nonlocal busy
            busy = True
            try:
                indexer.search.sync.current()
                semantic = indexer.search.semantic
                if semantic is not None:
                    semantic.catch_up()
            finally:
                busy = False

        last_high, waited = -1, 0.0
        last_failure = ""  # said once, not every second while the disk stays full
        try:
            while True:
                await trio.sleep(INDEX_INTERVAL_S)
                # During a burst (a sync), wait for the log to settle: one
                # bulk catch-up or rebuild afterwards costs a fraction of many
                # small ones, and leaves the GIL and the cores to ingest. A
                # burst that never settles still gets indexed every
                # INDEX_MAX_STALE_S.
                high = store.log_high()
                behind = high - max(indexer.search.sync.applied, 0)
                growing = high != last_high
                last_high = high
                if behind > INDEX_BURST and growing and waited < INDEX_MAX_STALE_S:
                    waited += INDEX_INTERVAL_S
                    continue
                waited = 0.0
                try:
                    await trio.to_thread.run_sync(work, abandon_on_cancel=True)
                except P2pmemError as exc:  # a model that cannot load: say so once, keep lexical
                    log_event(log, logging.WARNING, LogEvent.INDEX_FAILED, f"search index: {exc}", error=str(exc))
                    indexer.search.model_path = None
                except (OSError, ValueError, sqlite3.Error) as exc:  # a full disk: retry next round
                    reason = str(explain(exc, store.path))
                    if reason != last_failure:
                        log_event(log, logging.WARNING, LogEvent.INDEX_FAILED, f"search index upkeep: {reason}",
                                  error=reason)
                    last_failure = reason
                else:
                    last_failure = ""
        finally:
            if not busy:  # an abandoned worker still holds the connection: the process exit closes it
                indexer.close()

    def _announce_address(self, address: str) -> None:
        """Publish where we listen in our profile, so followers can dial us."""
        host, _ = parse_address(address)
        if host in ("0.0.0.0", "::"):
            return
        profile = self.agent.store.profiles().get(self.agent.key)
        current = profile.body.get("addresses", []) if profile and isinstance(profile.body, dict) else []
        if list(current) != [address]:
            self.agent.set_profile(addresses=[address])

    async def stop(self) -> None:
        """Say goodbye to every peer, give writers a moment, then cancel."""
        core = self.core
        self._stopping = True  # no new connections, in or out, from here on
        if core is not None:
            core.shutdown(mono())
            self._apply()
            with trio.move_on_after(1.0):
                while self._conns:
                    await trio.sleep(0.02)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- the core's actions ------------------------------------------------
    def _apply(self, *, wake: bool = True) -> None:
        """Carry out the core's actions (p2pmem/protocol/actions.py), then
        wake the timer task (its next deadline may have moved); the timer
        task itself passes ``wake=False``, or it would wake itself at once,
        forever, in a busy loop."""
        assert self.core is not None
        execute(self.core, self._effects)
        for qid, stream in self._query_streams.items():
            stream.feed(self.core.query_results(qid))
        if wake:
            self._wakeup.set()
        for conn in self._conns.values():
            conn.resume.set()  # readers waiting on backpressure look again

    @staticmethod
    async def _cancel_later(conn: _StreamConn) -> None:
        await trio.sleep(CLOSE_GRACE_S)
        conn.scope.cancel()

    # -- ingest: verification and storage beside the event loop ---------------
    def _ingested(self, finished: Sequence[tuple[IngestJob, IngestOutcome]]) -> None:
        """The pipeline stored a group of jobs (p2pmem/node/ingest.py)."""
        assert self.core is not None
        now, wall = mono(), wall_ms()
        for job, outcome in finished:
            self.core.ingest_done(job, outcome, now, wall_ms=wall)
        self._apply()

    def poke(self) -> None:
        """Something changed in the store (a CLI command wrote)."""
        assert self.core is not None
        self.core.poll_store(mono())
        self._apply()

    # -- tasks --------------------------------------------------------------
    async def _serve_listeners(self, listeners: list[trio.SocketListener]) -> None:
        async def handler(stream: trio.SocketStream) -> None:
            if self._stopping:
                await stream.aclose()
                return
            await self._run_connection(stream, initiator=False, address=None, expected=None)

        await trio.serve_listeners(handler, listeners)

    async def _dial(self, address: str, expected: bytes | None) -> None:
        assert self.core is not None
        host, port = parse_address(address)
        stream = None
        with trio.move_on_after(DIAL_TIMEOUT_S):
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                self.core.dial_failed(address, mono(), exc.strerror or str(exc))
                self._apply()
                return
        if stream is None:
            self.core.dial_failed(address, mono(), "timed out")
            self._apply()
            return
        await self._run_connection(stream, initiator=True, address=address, expected=expected)

    async def _run_connection(
        self, stream: trio.SocketStream, *, initiator: bool, address: str | None, expected: bytes | None
    ) -> None:
        assert self.core is not None
        self._next_conn += 1
        conn_id = self._next_conn
        # Unbounded in count, bounded in bytes: the core stops producing for
        # (and reading from) a peer with limits.MAX_SEND_QUEUE bytes queued.
        send, receive = trio.open_memory_channel[bytes | None](math.inf)
        conn = _StreamConn(stream, send)
        self._conns[conn_id] = conn
        host = None
        if not initiator:
            with contextlib.suppress(OSError, IndexError, TypeError):
                host = str(stream.socket.getpeername()[0])
        try:
            with conn.scope:
                self.core.connection_made(conn_id, initiator=initiator, now=mono(), address=address,
                                          expected=expected, host=host)
                self._apply()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn_id, conn, receive, nursery.cancel_scope)
                    while True:
                        while True:
                            if self.core.has_backlog(conn_id):
                                # what the last read held, a turn at a time,
                                # letting every other task run in between
                                await trio.sleep(0)
                                self.core.resume(conn_id, mono(), wall_ms=wall_ms())
                                self._apply()
                            elif self.core.readable(conn_id):
                                break
                            else:
                                # backpressure: not read until the core has room again
                                conn.resume = trio.Event()
                                await conn.resume.wait()
                        try:
                            data = await stream.receive_some(READ_SIZE)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                        if not data:
                            break
                        self.core.data_received(conn_id, data, mono(), wall_ms=wall_ms())
                        self._apply()
                    nursery.cancel_scope.cancel()
        finally:
            del self._conns[conn_id]
            self.core.connection_lost(conn_id, mono())
            self._apply()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _writer(
        self, conn_id: ConnId, conn: _StreamConn, receive: trio.MemoryReceiveChannel[bytes | None],
        scope: trio.CancelScope,
    ) -> None:
        assert self.core is not None
        try:
            async for data in receive:
                if data is None:
                    break
                await conn.stream.send_all(data)
                self.core.sent(conn_id, len(data), mono(), wall_ms=wall_ms())
                self._apply()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()  # closing: stop the reader too

    async def _timer_loop(self) -> None:
        assert self.core is not None
        next_poll = 0.0
        while True:
            deadline = self.core.next_deadline()
            now = mono()
            wait = POLL_STORE_S if deadline is None else max(0.0, min(deadline - now, POLL_STORE_S))
            with trio.move_on_after(wait):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            now = mono()
            if now >= next_poll:
                next_poll = now + POLL_STORE_S
                version = self.agent.store.data_version()
                if version != self._last_data_version:
                    self._last_data_version = version
                    self.core.poll_store(now)
            deadline = self.core.next_deadline()
            if deadline is not None and now >= deadline:
                self.core.handle_timer(now, wall_ms=wall_ms())
            self._apply(wake=False)

    # -- control requests ------------------------------------------------------
    def timed_ask(self, op: str) -> contextlib.AbstractContextManager[None]:
        """Time one ask of the control socket into the metrics (if on)."""
        return self.metrics.timed_ask(op) if self.metrics is not None else contextlib.nullcontext()

    def count(self, what: str) -> None:
        self.local_stats[what] = self.local_stats.get(what, 0) + 1

    def status(self) -> dict[str, Any]:
        assert self.core is not None
        from p2pmem.model.identity import agent_id

        out = self.core.status(mono())
        out["id"] = agent_id(self.agent.key)
        out["pid"] = os.getpid()
        out["queues"]["ingest_jobs"] = self._ingest.backlog()  # per stage of node/ingest.py
        out["local"] = dict(sorted(self.local_stats.items()))
        return out

    def peers_list(self) -> list[dict[str, Any]]:
        assert self.core is not None
        from p2pmem.model.identity import agent_id

        return [
            {"id": agent_id(peer["agent"]), **{k: v for k, v in peer.items() if k != "agent"}}
            for peer in self.core.peers()
        ]

    async def ask(
        self, text: str, *, timeout: float, on_hits: Callable[[list[Any]], None] | None = None, **options: Any,
    ) -> dict[str, Any]:
        """Ask the network: the ranked results and how the flood went
        (``reached``, ``complete``, ``elapsed_s``). ``on_hits`` gets each
        batch of new verified hits as they arrive."""
        from p2pmem.agent.ranking import rank_hits

        hits, summary = await self._collect_hits(text, timeout, options, on_hits)
        context, collection = summary.pop("context"), summary.pop("collection")
        # the merge builds a throw-away index (seconds for megabytes of answers):
        # on a worker thread, so the node keeps serving meanwhile
        rank = functools.partial(rank_hits, None, text, hits, limit=options.get("limit", 10), context=context,
                                 collection=collection, now_ms=self.agent.wall_ms(), trust=self.agent.trust())
        ranked = await trio.to_thread.run_sync(rank)
        return {"results": ranked, **summary}

    async def _collect_hits(
        self, text: str, timeout: float, options: dict[str, Any],
        on_hits: Callable[[list[Any]], None] | None = None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """Flood a query and gather the verified hits until the core says it
        is finished (its QueryFinished event: when the flood echoed back, or
        at the query's deadline when some branch is slow)."""
        assert self.core is not None
        timeout = max(0.05, min(timeout, limits.MAX_QUERY_TIMEOUT_S))
        qid = self.core.start_query(text, now=mono(), timeout=timeout, **options)
        waiter = self._query_waiters[qid] = trio.Event()
        if on_hits is not None:
            self._query_streams[qid] = _HitStream(on_hits)
        self._apply()
        try:
            # the core decides when the query ends; the bound only guards
            # against a timer task that is gone (the node stopping)
            with trio.move_on_after(timeout + CLOSE_GRACE_S):
                await waiter.wait()
            hits = self._query_hits.pop(qid, None)
            hits = list(hits) if hits is not None else self.core.query_results(qid)
            stream = self._query_streams.pop(qid, None)
            if stream is not None:
                stream.feed(hits)
            return hits, {**self.core.query_summary(qid), "context": self.core.query_context(qid),
                          "collection": self.core.query_collection(qid)}
        finally:
            self._query_waiters.pop(qid, None)
            self._query_hits.pop(qid, None)
            self._query_streams.pop(qid, None)
            self.core.finish_query(qid)

    async def ask_graph(self, text: str, *, timeout: float, **options: Any) -> dict[str, Any]:
        """Ask the network's knowledge graphs (``graph ask``): the merged graph
        of every answer's entity, observation and relation records, searched
        like search_nodes, with who said what."""
        from p2pmem.graph import ops
        from p2pmem.graph.view import build_graph
        from p2pmem.model.identity import agent_id

        hits, _summary = await self._collect_hits(text, timeout, options)
        graph = build_graph(h.record for h in hits if h.record.kind in ("entity", "observation", "relation"))
        names = ops.search_names(graph, text, options.get("limit", 10))
        out = ops.describe(graph, names)
        order = {n: i for i, n in enumerate(names)}
        out["entities"].sort(key=lambda e: order[e["name"]])
        via: dict[str, dict[str, Any]] = {}
        for hit in hits:
            seen = via.get(hit.record.id.hex())
            if seen is None or hit.hops < seen["hops"]:
                via[hit.record.id.hex()] = {"hops": hit.hops, "via": agent_id(hit.responder)}
        out["answered"] = via
        return out


class _HitStream:
    """Hands each verified hit of one query to a callback once, as it arrives."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self.send = send
        self.sent: set[bytes] = set()

    def feed(self, hits: list[Any]) -> None:
        new = [h for h in hits if h.record.id not in self.sent]
        if new:
            self.sent.update(h.record.id for h in new)
            self.send(new)


async def serve_forever(node: Node, on_ready: Callable[[str], None] | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    async with trio.open_nursery() as nursery:
        address = await nursery.start(node.run)
        # the handlers are in place before the ready line: a supervisor that
        # stops the node as soon as it is ready gets a clean stop
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if on_ready is not None:
                on_ready(address)
            async for signum in signals:
                name = signal.Signals(signum).name
                log_event(log, logging.INFO, LogEvent.NODE_STOPPING, f"received {name}, stopping", signal=name)
                sd_notify("STOPPING=1")
                break
        await node.stop()


def run_serve(
    agent: Agent, *, listen: str, peers: list[str], replicate_all: bool, json_out: bool,
    max_peers: int = limits.MAX_ACTIVE_PEERS, push_rate: float = limits.PUSH_BYTES_PER_S,
    metrics: str | None = None,
    log_level: str = "info", log_format: str = "text",
) -> int:
    from p2pmem.model.identity import agent_id, short_id
    from p2pmem.node.logs import setup

    setup(log_level, log_format)
    timing = dataclasses.replace(Timing.for_max_peers(max_peers), push_rate=push_rate)
    node = Node(agent, listen=listen, peers=peers, replicate_all=replicate_all, timing=timing,
                metrics=metrics)

    def ready(address: str) -> None:
        scrape = node.metrics.address if node.metrics is not None else None
        log_event(log, logging.INFO, LogEvent.NODE_STARTED, f"serving {agent_id(agent.key)} on {address}",
                  peer=short_id(agent.key), addr=address)
        if json_out:
            extra = {"metrics": scrape} if scrape else {}
            print(json.dumps({"id": agent_id(agent.key), "address": address, **extra}), flush=True)
        else:
            print(f"serving {agent_id(agent.key)} on {address}", flush=True)
        if scrape:
            log_event(log, logging.INFO, LogEvent.METRICS_STARTED, f"metrics on http://{scrape}/metrics", addr=scrape)
        # Type=notify units (p2pmem service install): ready once peers can connect
        sd_notify("READY=1", f"STATUS=serving {agent_id(agent.key)} on {address}")

    try:
        trio.run(serve_forever, node, ready)
    except BaseExceptionGroup as group:
        # trio's nurseries wrap errors in groups; a user gets the one line of
        # a P2pmemError (address in use, home already served), never a traceback
        error = _only_error(group)
        if error is None:
            raise
        raise error from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise P2pmemError(f"address already in use: {listen}") from None
        raise
    log_event(log, logging.INFO, LogEvent.NODE_STOPPED, "stopped")
    return 0


def _only_error(group: BaseExceptionGroup) -> P2pmemError | None:
    """The first P2pmemError of a group that holds nothing else."""
    matched, rest = group.split(P2pmemError)
    if matched is None or rest is not None:
        return None
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched if isinstance(matched, P2pmemError) else None
