"""`ask` against a hostile relay, end to end: real `p2pmem serve` processes
and a hostile node process (tests/hostile_relay.py) between them.

The line is  asker - hostile relay - honest node.  The relay routes the query
honestly but also answers it with a forged answer (another agent named as
responder), garbage records, and more valid Sybil answers than the asker's
per-query budget. The asker must show the honest node's memory via the
honest node, never the forged one, drop the junk as it arrives, and hold no
more than its budget while the query runs.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

from netutil import cli_command, cli_json, network_fixture, remember, run_cli, wait_until

from p2pmem import limits
from p2pmem.node.control import request

net = network_fixture()
RELAY = Path(__file__).resolve().parent / "hostile_relay.py"


def _start_relay(home: Path, *peers: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "P2PMEM_HOME"}
    log = open(home.with_name(home.name + ".serve.log"), "wb")  # noqa: SIM115 (closed by Net)
    proc = subprocess.Popen([sys.executable, str(RELAY), str(home), *peers], stdout=subprocess.PIPE,
                            stderr=log, stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=20.0):
        proc.kill()
        raise AssertionError("the hostile relay did not start")
    json.loads(proc.stdout.readline())
    return proc


def test_a_relay_cannot_forge_via_and_junk_is_dropped_within_the_budget(net) -> None:
    asker, relay, honest = net.homes(3)
    remember(honest, "alpha is the answer the honest node holds", "--visibility", "ask")
    # one peer each, so the relay stays the only path (no peer exchange shortcut)
    na = net.start(asker, "--max-peers", "1")
    nc = net.start(honest, "--max-peers", "1")
    proc = _start_relay(relay, na.address, nc.address)
    try:
        net.wait_peers(na, {net.id_of(relay)})
        net.wait_peers(nc, {net.id_of(relay)})
        out_path = asker.with_name("ask.out")
        with open(out_path, "wb") as out_file:  # a file, not a pipe: megabytes of results
            ask = subprocess.Popen(
                cli_command(asker, "ask", "alpha", "--ttl", "2", "--timeout", "4", "--limit", "100", "--json"),
                stdout=out_file, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
            )
        most = 0
        seen_query = False
        while ask.poll() is None:
            for entry in request(asker, "status")["status"]["queries"]["in_flight"]:
                seen_query = True
                most = max(most, entry["bytes"])
            time.sleep(0.05)
        _, err = ask.communicate()
        assert ask.returncode == 0, err
        results = json.loads(out_path.read_text())
        out_path.unlink()
    finally:
        proc.kill()
        proc.wait()
    assert seen_query
    assert most <= limits.MAX_QUERY_RESULT_BYTES
    honest_id = net.id_of(honest)
    texts = {r["text"]: r for r in results}
    real = texts["alpha is the answer the honest node holds"]
    assert real["via"] == honest_id and real["hops"] == 2
    assert not any("forged answer" in r["text"] for r in results)
    # every result is attributed to the agent that signed the answer carrying it
    assert all(r["via"] != honest_id or r["author"] == honest_id for r in results)
    queries = cli_json(asker, "status")["queries"]
    assert queries["hits_forged"] >= 1
    assert queries["records_invalid"] >= 1
    assert queries["records_over_budget"] >= 1
    assert queries["in_flight"] == []
    # the asker is still serving
    assert run_cli(asker, "status").returncode == 0
    wait_until(lambda: na.alive(), 1.0, "the asker to be alive")
