"""Soak (``make soak``; marked ``slow`` and ``soak``, deselected by default):
three honest nodes and several attackers running a mix of the attacks of
issue #11 for about a minute. No acknowledged record is lost, honest
replication keeps going, every node stays under 300 MB and answers status
within a second, and each stops within 5 s of SIGTERM."""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time

import pytest
from hostile import (
    EMPTY_ID_LIST,
    Attacker,
    records_messages,
    stalled_connection,
    stranger_records,
    timed_status,
    vm_hwm_mb,
)
from netutil import network_fixture, remember

from p2pmem.protocol import wire

pytestmark = [pytest.mark.slow, pytest.mark.soak]

net = network_fixture()

ATTACK_S = 45.0


def _attack_loop(kind: str, address: str, stop: threading.Event, errors: list[str], seed: int) -> None:
    rng = random.Random(seed)
    source = f"127.0.0.{2 + seed % 8}"
    while not stop.is_set():
        try:
            if kind == "stalled":
                socks = [stalled_connection(address, source) for _ in range(50)]
                stop.wait(2.0)
                for sock in socks:
                    if sock is not None:
                        sock.close()
                continue
            with Attacker(address, source=source) as attacker:
                attacker.hello(replicate_all=kind != "interest")
                for round_ in range(1000):
                    if stop.is_set():
                        return
                    if kind == "recon":
                        for session in range(20):
                            attacker.queue(wire.Recon(round_ * 100 + session, EMPTY_ID_LIST))
                    elif kind == "interest":
                        authors = tuple(sorted(os.urandom(32) for _ in range(10)))
                        attacker.queue(wire.Interest(False, authors))
                        attacker.queue(wire.Recon(round_ + 1, EMPTY_ID_LIST))
                    elif kind == "pex":
                        peers = tuple((os.urandom(32), f"127.0.0.1:{rng.randrange(1, 1024)}") for _ in range(32))
                        attacker.queue(wire.PeerExchange(peers))
                    elif kind == "records":
                        if round_ % 10 == 0:
                            batch = records_messages(stranger_records("memory", 400, size=100))
                        for message in batch:
                            attacker.queue(message)
                    attacker.flush(timeout=5.0)
                    stop.wait(0.2)
        except (OSError, EOFError, Exception) as exc:  # the node closed us: come back
            if not isinstance(exc, OSError | EOFError) and "closed" not in str(exc):
                errors.append(f"{kind}: {exc!r}")
            stop.wait(0.5)


def _attackers(addresses: list[str], seconds: float) -> None:
    """In a child process (so the attackers' CPU and GIL do not distort the
    test's own status timings): every attack, twice, for ``seconds``."""
    stop = threading.Event()
    errors: list[str] = []
    threads = []
    for i, kind in enumerate(["recon", "interest", "pex", "records", "stalled"] * 2):
        thread = threading.Thread(target=_attack_loop, args=(kind, addresses[i % len(addresses)], stop, errors, i),
                                  daemon=True)
        thread.start()
        threads.append(thread)
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    if errors:
        raise SystemExit("attacker errors: " + "; ".join(errors[:5]))


def test_soak_three_honest_nodes_under_mixed_attack(net):
    homes = net.homes(3)
    nodes = [net.start(homes[0], "--replicate", "all")]
    nodes.append(net.start(homes[1], "--replicate", "all", "--peer", nodes[0].address))
    nodes.append(net.start(homes[2], "--replicate", "all", "--peer", nodes[1].address))
    for node in nodes:
        net.wait_peers(node, {net.id_of(h) for h in homes if h != node.home} & set(net.home_ids.values()))
    attackers = multiprocessing.get_context("fork").Process(
        target=_attackers, args=([n.address for n in nodes], ATTACK_S), daemon=True)
    attackers.start()
    acknowledged: list[str] = []
    worst = 0.0
    try:
        end = time.monotonic() + ATTACK_S
        i = 0
        while time.monotonic() < end:
            home = homes[i % 3]
            acknowledged.append(remember(home, f"honest soak record {i}"))
            for h in homes:
                took, _ = timed_status(h)
                worst = max(worst, took)
            i += 1
            time.sleep(0.5)
    finally:
        attackers.join(timeout=30)
        if attackers.is_alive():
            attackers.kill()
    assert attackers.exitcode == 0, attackers.exitcode
    assert worst < 1.0, f"status took {worst:.2f} s under attack"
    net.wait_has(homes, set(acknowledged), timeout=60)
    for node in nodes:
        peak = vm_hwm_mb(node.pid)
        _, status = timed_status(node.home)
        print(f"\n  {node.home.name}: peak RSS {peak:.0f} MB, limits {status['limits']}")
        assert peak < 300, f"{node.home.name}: peak RSS {peak:.0f} MB"
    for node in nodes:
        node.stop(timeout=5.0)
    assert len(acknowledged) > 20
