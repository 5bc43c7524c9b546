"""Three nodes in three network namespaces, joined by veth pairs in a line:

    A (10.77.1.1) ==veth== (10.77.1.2) B (10.77.2.2) ==veth== (10.77.2.3) C

There is no routing, so A and C cannot reach each other at all: a memory
remembered on A can only reach C through B's node. Each `p2pmem serve` runs
inside its namespace (`ip netns exec`); the other commands run outside, since
they reach the node through the home's Unix control socket and store file.

Needs root and `ip netns`; skipped with the reason otherwise. The namespaces
are named after this process and a random tag, and always deleted.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest
from netutil import network_fixture, remember

pytestmark = [pytest.mark.netns, pytest.mark.slow]

net = network_fixture()


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str, str]]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    tag = f"p2pm{os.getpid()}{secrets.token_hex(2)}"
    a, b, c = (f"{tag}{x}" for x in "abc")
    created: list[str] = []
    try:
        for name in (a, b, c):
            result = _ip("netns", "add", name)
            if result.returncode != 0:
                pytest.skip(f"`ip netns add` is not allowed here: {result.stderr.strip()}")
            created.append(name)
        steps = [
            ("link", "add", "ab", "netns", a, "type", "veth", "peer", "name", "ba", "netns", b),
            ("link", "add", "cb", "netns", c, "type", "veth", "peer", "name", "bc", "netns", b),
            ("-n", a, "addr", "add", "10.77.1.1/24", "dev", "ab"),
            ("-n", b, "addr", "add", "10.77.1.2/24", "dev", "ba"),
            ("-n", b, "addr", "add", "10.77.2.2/24", "dev", "bc"),
            ("-n", c, "addr", "add", "10.77.2.3/24", "dev", "cb"),
            *(("-n", ns, "link", "set", dev, "up")
              for ns, dev in ((a, "lo"), (a, "ab"), (b, "lo"), (b, "ba"), (b, "bc"), (c, "lo"), (c, "cb"))),
        ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f"cannot build the veth line (`ip {' '.join(step)}`): {result.stderr.strip()}")
        yield a, b, c
    finally:
        for name in created:
            _ip("netns", "del", name)  # also removes the veth pairs inside


def test_three_namespaces_in_a_line_converge_through_the_middle(namespaces, net):
    ns_a, ns_b, ns_c = namespaces
    ha, hb, hc = net.homes(3)

    def exec_in(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    na = net.start(ha, "--replicate", "all", listen="10.77.1.1:0", prefix=exec_in(ns_a))
    nb = net.start(hb, "--replicate", "all", "--peer", na.address, listen="10.77.2.2:0", prefix=exec_in(ns_b))
    nc = net.start(hc, "--replicate", "all", "--peer", nb.address, listen="10.77.2.3:0", prefix=exec_in(ns_c))
    assert na.address.startswith("10.77.1.1:") and nc.address.startswith("10.77.2.3:")
    net.wait_peers(nb, {na.id, nc.id})
    from_a = remember(ha, "remembered in namespace A", "--topic", "netns")
    from_c = remember(hc, "remembered in namespace C")
    net.wait_has([ha, hb, hc], {from_a, from_c})
    # A and C never talked: they have no route to each other, only to B
    assert na.peer_ids() == {nb.id} and nc.peer_ids() == {nb.id}
    for node in (nc, nb, na):
        node.stop(signal.SIGTERM)
