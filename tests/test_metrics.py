"""The Prometheus endpoint of ``serve --metrics`` (p2pmem/node/metrics.py):
the status walk as a law, and two real nodes on loopback scraped over HTTP
while they sync."""

from __future__ import annotations

import socket
import time
import urllib.request
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netutil import NodeProc, network_fixture, remember_batch, run_cli, wait_until
from prometheus_client.parser import text_string_to_metric_families

from p2pmem.node.metrics import (
    COUNTER_SECTIONS,
    GAUGE_SECTIONS,
    LABELLED_COUNTERS,
    RENAME,
    SKIP,
    status_metrics,
)

net = network_fixture()

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: NodeProc) -> Samples:
    """Every sample of the node's endpoint, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://{node.ready['metrics']}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# -- the walk: every number of the status is exported, with its value ---------
_key = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_leaf = st.integers(0, 2**40) | st.floats(0, 1e9, allow_nan=False) | st.lists(st.integers(), max_size=3)
_tree = st.recursive(_leaf, lambda inner: st.dictionaries(_key, inner, max_size=4), max_leaves=12)


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], float]]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, (*path, k))]
    return [(path, float(len(tree)) if isinstance(tree, list) else float(tree))]


def _expected_name(path: tuple[str, ...], counter: bool) -> str:
    """The walk's naming, restated: a section's prefix, then the path."""
    if len(path) == 1:
        return RENAME.get(path[0], "p2pmem_" + path[0])
    prefix = COUNTER_SECTIONS.get(path[0]) or GAUGE_SECTIONS.get(path[0]) or f"p2pmem_{path[0]}_"
    return prefix + "_".join(path[1:]) + ("_total" if counter else "")


@given(st.dictionaries(_key, _tree, max_size=6))
def test_every_number_of_the_status_becomes_a_metric(status: dict[str, Any]) -> None:
    families = status_metrics(status)
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "no family twice"
    exported = {s.name: s.value for f in families for s in f.samples}
    leaves = [(p, n) for p, n in _leaves(status) if p[0] not in SKIP and p[0] not in LABELLED_COUNTERS]
    wanted: dict[str, list[float]] = {}
    for path, number in leaves:
        counter = path[0] in COUNTER_SECTIONS and len(path) > 1 and not _is_list(status, path)
        wanted.setdefault(_expected_name(path, counter), []).append(number)
    for name, numbers in wanted.items():
        # two paths can flatten to one name (a.b_c and a.b.c): the first is kept
        assert name in exported and exported[name] == numbers[0], (name, numbers, exported)
    assert set(exported) == set(wanted), "nothing exported that the status does not hold"


def _is_list(status: dict[str, Any], path: tuple[str, ...]) -> bool:
    value: Any = status
    for part in path:
        value = value[part]
    return isinstance(value, list)


def test_limit_and_local_counters_are_labelled_families() -> None:
    status = {"limits": {"peer_limit": 3, "query_rate": 1}, "local": {"control_busy": 2}}
    samples = {(s.name, tuple(s.labels.items())): s.value for f in status_metrics(status) for s in f.samples}
    assert samples[("p2pmem_limit_hits_total", (("limit", "peer_limit"),))] == 3
    assert samples[("p2pmem_limit_hits_total", (("limit", "query_rate"),))] == 1
    assert samples[("p2pmem_local_refusals_total", (("event", "control_busy"),))] == 2


# -- real nodes ------------------------------------------------------------------
@pytest.mark.slow
def test_metrics_move_during_a_real_two_node_sync(net) -> None:
    a, b = net.homes(2)
    count = 1500
    ids = remember_batch(a, [{"text": f"metric fact number {i} about sync", "topics": ["m"]}
                             for i in range(count)])
    nb = net.start(b, "--replicate", "all", "--metrics", "127.0.0.1:0")
    before = scrape(nb)
    assert value(before, "p2pmem_peers") == 0
    assert value(before, "p2pmem_records", kind="memory") == 0
    assert value(before, "p2pmem_bytes_in_total") == 0

    na = net.start(a, "--peer", nb.address, "--metrics", "127.0.0.1:0")
    seen: list[Samples] = []

    def synced() -> bool:
        seen.append(scrape(nb))
        return value(seen[-1], "p2pmem_records", kind="memory") == count

    wait_until(synced, 60, f"{count} memories in b's metrics", interval=0.1,
               describe=lambda: str(value(seen[-1], "p2pmem_records", kind="memory")))
    memories = [value(s, "p2pmem_records", kind="memory") for s in seen]
    assert memories == sorted(memories), "the record count only grows"
    after = seen[-1]
    assert value(after, "p2pmem_peers") == 1
    assert value(after, "p2pmem_bytes_in_total") > 0
    # the store commits before the core counts the job done: records_in follows
    wait_until(lambda: value(scrape(nb), "p2pmem_records_in_total") >= count, 10,
               "b's records_in counter to count every record")
    assert value(after, "p2pmem_uptime_seconds") > 0
    assert value(after, "p2pmem_records", kind="profile") >= 2  # its own and a's
    net.wait_has([b], set(ids[-5:]))  # recall lists the newest first

    # a's ask is timed by a's control handler; b answers it with a recall
    recalls_before = value(scrape(nb), "p2pmem_recall_seconds_count")
    asked = run_cli(a, "ask", "metric fact sync", "--timeout", "2", "--json")
    assert asked.returncode == 0, asked.stderr
    sa = scrape(na)
    assert value(sa, "p2pmem_ask_seconds_count", op="ask") == 1
    assert value(sa, "p2pmem_ask_seconds_sum", op="ask") > 0
    assert value(sa, "p2pmem_bytes_out_total") > 0
    wait_until(lambda: value(scrape(nb), "p2pmem_recall_seconds_count") > recalls_before, 10,
               "b's recall histogram to count the query it answered")
    info = [k for k in after if k[0] == "p2pmem_node_info"]
    assert info and dict(info[0][1])["id"] == nb.id


def test_metrics_bind_error_is_one_line_and_exit_1(net) -> None:
    (home,) = net.homes(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_cli(home, "serve", "--metrics", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot serve metrics on 127.0.0.1:{port}" in lines[0], lines
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("bad", ["nope", "127.0.0.1:99999", ":9464"])
def test_a_bad_metrics_address_is_a_usage_error(net, bad: str) -> None:
    (home,) = net.homes(1)
    result = run_cli(home, "serve", "--metrics", bad)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_metrics_are_off_by_default(net) -> None:
    (home,) = net.homes(1)
    node = net.start(home)
    assert "metrics" not in node.ready
