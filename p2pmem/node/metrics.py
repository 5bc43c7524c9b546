"""Prometheus metrics of a serving node (``p2pmem serve --metrics HOST:PORT``).

The endpoint is prometheus_client's own HTTP server on a daemon thread, so a
scrape never runs on the event loop. What a scrape reports is read *on* the
loop, though: the collector asks the trio run for a snapshot
(``trio.from_thread.run_sync``), because the core's state and the store's
SQLite connection belong to the loop's thread. Snapshots are shared by
scrapes less than :data:`SNAPSHOT_TTL_S` apart, so a scraper in a tight loop
costs the node at most a few status calls a second.

Every number of ``p2pmem status --json`` becomes a metric by walking the
status dict (:func:`status_metrics`), so a counter added to the status later
is exported without touching this file. Latencies are histograms observed
where the work happens: recall where the node answers the network's queries
from its store, ask where the control socket serves ``p2pmem ask``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import start_http_server

from p2pmem import __version__
from p2pmem.errors import P2pmemError
from p2pmem.logevents import LogEvent, log_event
from p2pmem.model.record import KINDS

if TYPE_CHECKING:
    from p2pmem.node.shell import Node

log = logging.getLogger("p2pmem.node.metrics")

SNAPSHOT_TTL_S = 0.25
SNAPSHOT_TIMEOUT_S = 5.0  # a loop this busy gets a scrape without node metrics, not a hung one
RECALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)

# How the sections of the status dict are exported. Sections of counters
# that only grow become counters; "queues" are levels (gauges); the keys of
# "limits" and "local" appear as they first bite, so they are labels of one
# family each. A section not listed here is exported as gauges.
COUNTER_SECTIONS = {"stats": "p2pmem_", "queries": "p2pmem_queries_"}
GAUGE_SECTIONS = {"queues": "p2pmem_queue_"}
LABELLED_COUNTERS = {
    "limits": ("p2pmem_limit_hits", "limit", "times each limit of p2pmem.limits bit (status 'limits')"),
    "local": ("p2pmem_local_refusals", "event", "local defences that bit, e.g. control requests refused (status 'local')"),
}
# top-level keys that are not metrics, or are exported better another way
SKIP = {"id", "pid", "replicate", "records"}
RENAME = {"uptime_s": "p2pmem_uptime_seconds"}

_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _name(text: str) -> str:
    return _BAD_NAME_CHARS.sub("_", text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _flatten(section: dict[str, Any], prefix: str, path: str) -> Iterator[tuple[str, str, float]]:
    """(metric name, status path, value) of every number in a nested dict;
    a list counts as its length."""
    for key, value in section.items():
        name, where = prefix + _name(str(key)), f"{path}.{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + "_", where)
        elif isinstance(value, list | tuple):
            yield name, where, float(len(value))
        elif (number := _number(value)) is not None:
            yield name, where, number


def status_metrics(status: dict[str, Any]) -> list[Metric]:
    """The metric families of one ``status`` dict (the shape of
    ``p2pmem status --json``), found by walking it."""
    out: list[Metric] = []
    seen: set[str] = set()

    def add(metric: Metric) -> None:
        if metric.name not in seen:  # two paths that sanitise alike: keep the first
            seen.add(metric.name)
            out.append(metric)

    for key, value in status.items():
        if key in SKIP:
            continue
        if key in LABELLED_COUNTERS and isinstance(value, dict):
            name, label, doc = LABELLED_COUNTERS[key]
            family = CounterMetricFamily(name, doc, labels=[label])
            for which, count in sorted(value.items()):
                if (number := _number(count)) is not None:
                    family.add_metric([str(which)], number)
            add(family)
        elif isinstance(value, dict):
            counters = key in COUNTER_SECTIONS
            prefix = COUNTER_SECTIONS.get(key) or GAUGE_SECTIONS.get(key) or f"p2pmem_{_name(key)}_"
            for name, where, number in _flatten(value, prefix, key):
                doc = f"status {where} (p2pmem status --json)"
                # a list's length is a level even in a section of counters
                if counters and not isinstance(_lookup(status, where), list | tuple):
                    add(CounterMetricFamily(name, doc, value=number))
                else:
                    add(GaugeMetricFamily(name, doc, value=number))
        else:
            for name, where, number in _flatten({key: value}, "p2pmem_", "status"):
                add(GaugeMetricFamily(RENAME.get(key, name), f"{where} (p2pmem status --json)", value=number))
    return out


def _lookup(status: dict[str, Any], path: str) -> Any:
    value: Any = status
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class _NodeCollector:
    """The node's state at scrape time, read on the event loop."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], token: trio.lowlevel.TrioToken) -> None:
        self._snapshot = snapshot
        self._token = token
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _read(self) -> dict[str, Any] | None:
        with self._lock:  # concurrent scrapes share one snapshot
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < SNAPSHOT_TTL_S:
                return self._cached[1]
            done = threading.Event()
            result: dict[str, Any] = {}

            def on_loop() -> None:
                # an exception here would end the trio run: report it as no snapshot
                try:
                    result.update(self._snapshot())
                except Exception:
                    log_event(log, logging.ERROR, LogEvent.METRICS_FAILED, "metrics snapshot failed", exc_info=True)
                finally:
                    done.set()

            try:
                # run_sync_soon does not wait: a loop too busy to answer
                # within the timeout gives a scrape without node metrics
                self._token.run_sync_soon(on_loop)
            except trio.RunFinishedError:
                return None
            if not done.wait(SNAPSHOT_TIMEOUT_S) or not result:
                return None
            self._cached = (time.monotonic(), result)
            return result

    def collect(self) -> Iterator[Metric]:
        snap = self._read()
        if snap is None:
            return
        status = snap["status"]
        info = InfoMetricFamily("p2pmem_node", "this node: agent id, version, replication mode")
        info.add_metric([], {"id": str(status.get("id", "")), "version": __version__,
                             "replicate": str(status.get("replicate", ""))})
        yield info
        records = GaugeMetricFamily("p2pmem_records", "records in the store, by kind", labels=["kind"])
        for kind, count in snap["kinds"].items():
            records.add_metric([kind], count)
        yield records
        yield from status_metrics(status)


class NodeMetrics:
    """The registry, the latency histograms and the HTTP endpoint of one node."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.recall_seconds = Histogram(
            "p2pmem_recall_seconds", "time to search the local store for a query from the network",
            buckets=RECALL_BUCKETS, registry=self.registry,
        )
        self.ask_seconds = Histogram(
            "p2pmem_ask_seconds", "time to answer `p2pmem ask` (ask, ask_graph) on the control socket, "
            "flooding included", labelnames=["op"], buckets=ASK_BUCKETS, registry=self.registry,
        )
        for op in ("ask", "ask_graph"):
            self.ask_seconds.labels(op)  # exported at zero before the first ask
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of the node process
        self.address: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._unwrap: Callable[[], None] | None = None

    @contextlib.contextmanager
    def timed_ask(self, op: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ask_seconds.labels(op).observe(time.perf_counter() - started)

    def start(self, node: Node, host: str, port: int) -> str:
        """Serve the endpoint for ``node`` (call on its event loop); returns
        the address bound. A bind error is a one-line P2pmemError."""
        from p2pmem.node.shell import format_address

        self.registry.register(_NodeCollector(lambda: snapshot(node), trio.lowlevel.current_trio_token()))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise P2pmemError(
                f"cannot serve metrics on {format_address(host, port)}: {exc.strerror or exc}"
            ) from None
        self.address = format_address(host, self._server.server_address[1])
        self._unwrap = _time_recall(node, self.recall_seconds)
        return self.address

    def close(self) -> None:
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None
        if self._server is not None:
            self._server.shutdown()  # returns within the server's 0.5 s poll
            self._server.server_close()
            self._server = None


def snapshot(node: Node) -> dict[str, Any]:
    """What one scrape reports; runs on the event loop. Empty until the
    node's core exists (a scrape in the first moments of start-up)."""
    if node.core is None:
        return {}
    store = node.agent.store
    return {"status": node.status(), "kinds": {kind: store.count(kind) for kind in KINDS}}


def _time_recall(node: Node, histogram: Histogram) -> Callable[[], None]:
    """Time the recalls that answer the network's queries. The core is
    sans-IO and has no clock to time them with, and it calls ``recall`` on
    this node's store object; a wrapper on that one object times exactly
    those calls. Returns the function that takes the wrapper off."""
    store = node.agent.store
    inner = store.recall

    def recall(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            histogram.observe(time.perf_counter() - started)

    store.recall = recall  # type: ignore[method-assign]

    def unwrap() -> None:
        vars(store).pop("recall", None)  # the class's method shows through again

    return unwrap
