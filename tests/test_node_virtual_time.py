"""Two real trio nodes (p2pmem/node/shell.py: its listener, reader, writer,
timer and ingest tasks, the verification pool, the control socket, real
SQLite homes) in one process, over real loopback TCP, on virtual time
(``trio.testing.MockClock`` with autojump): they sync, push, answer a query
and keep their connection through a minute of keep-alives, while the clock
jumps from one deadline to the next.

The shell reads trio's clock for the core's ``now`` (``shell.mono``), so the
core's timers, the shell's sleeps and the test's deadlines are the same
virtual seconds. The wall clock (record stamps) stays real.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from p2pmem.agent.home import Agent, init_home
from p2pmem.node.shell import Node


async def _until(condition, what: str, within: float = 60.0) -> None:
    """Wait (virtual seconds) for ``condition()``, failing after ``within``."""
    with trio.fail_after(within):
        while not condition():
            await trio.sleep(0.05)


def _agent(home: Path) -> Agent:
    init_home(home)
    return Agent.open(home)


def test_two_trio_nodes_sync_push_and_answer_on_virtual_time(tmp_path: Path) -> None:
    a, b = _agent(tmp_path / "a"), _agent(tmp_path / "b")
    synced = a.remember("the lighthouse keeper lives on the north cliff", topics=["sea"])
    asked = a.remember("the lighthouse lamp is lit at dusk", visibility="ask")  # stays on a
    report: dict[str, float] = {}

    async def main() -> None:
        node_a = Node(a, listen="127.0.0.1:0", replicate_all=True)
        node_b = Node(b, listen="127.0.0.1:0", replicate_all=True)
        async with trio.open_nursery() as nursery:
            address_a = await nursery.start(node_a.run)
            node_b.peers = [address_a]
            start = trio.current_time()
            await nursery.start(node_b.run)
            # the reconciliation brings a's public memory to b, through b's ingest pipeline
            await _until(lambda: b.store.has(synced.id), "the sync")
            report["sync"] = trio.current_time() - start
            assert not b.store.has(asked.id)  # "ask" memories do not travel
            # a write on b is pushed to a (the control socket's poke, as the CLI does)
            pushed = b.remember("the ferry leaves at nine", topics=["sea"])
            node_b.poke()
            await _until(lambda: a.store.has(pushed.id), "the push")
            # b asks the network: a answers from its search index (kept current by a
            # worker thread, which virtual time does not wait for: wait until it has
            # indexed), the asker's own store is not searched
            await _until(lambda: asked.id in {m.record.id for m in a.store.recall("lighthouse", fresh=False)},
                         "a's search index")
            answer = await node_b.ask("lighthouse", timeout=3.0)
            report["hits"] = len(answer["results"])
            assert asked.id.hex() in {h["id"] for h in answer["results"]}
            assert answer["complete"]  # the flood echoed back: done before its deadline
            # a virtual minute of silence: keep-alives hold the very same connection
            # (a new one would count its records from zero)
            before, bytes_in = node_a.peers_list(), node_a.status()["stats"]["bytes_in"]
            assert len(before) == 1 and before[0]["records_received"] >= 1
            quiet = trio.current_time()
            await trio.sleep(60.0)
            report["quiet"] = trio.current_time() - quiet
            assert node_a.peers_list() == before
            assert node_a.status()["stats"]["bytes_in"] > bytes_in  # pings and pongs
            report["records_in"] = node_b.status()["stats"]["records_in"]
            await node_a.stop()
            await node_b.stop()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        a.close()
        b.close()
    assert report["quiet"] >= 60.0 - 1e-6  # virtual time passed (float sums); the run did not wait for it
    assert report["records_in"] >= 1
    assert report["hits"] >= 1
