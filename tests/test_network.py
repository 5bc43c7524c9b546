"""The network issue, end to end: real `p2pmem serve` processes on loopback,
driven only through the `p2pmem` command (and, for the hostile peer, a raw
TCP client and a real secure channel from the test process).

Every wait polls with a deadline (netutil.wait_until); every port comes from
the OS; every node is killed and every home removed by the `net` fixture.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time

import pytest
from netutil import (
    DEADLINE_S,
    Net,
    cli_json,
    exported_ids,
    line,
    memory_ids,
    network_fixture,
    parallel_remember,
    remember,
    remember_batch,
    run_cli,
    wait_until,
)

from p2pmem import limits
from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import sign_record
from p2pmem.node.control import request
from p2pmem.protocol import wire
from p2pmem.protocol.noise import HandshakeComplete, MessageReceived, SecureChannel

net = network_fixture()

LINE_ARGS = ("--replicate", "all", "--max-peers", "2")


def _five_line(net: Net, *args: str) -> tuple[list, list]:
    homes = net.homes(5)
    nodes = line(net, homes, *args)
    for i, node in enumerate(nodes):
        neighbours = {nodes[j].id for j in (i - 1, i + 1) if 0 <= j < len(nodes)}
        net.wait_peers(node, neighbours)
    return homes, nodes


@pytest.mark.slow
def test_five_nodes_in_a_line_converge(net):
    homes, nodes = _five_line(net, *LINE_ARGS)
    first = remember(homes[0], "written at one end of the line", "--topic", "line")
    net.wait_has([homes[4]], {first})
    ids = {first} | set(parallel_remember([(h, f"one memory from node {i}") for i, h in enumerate(homes)]))
    net.wait_has(homes, ids)
    # still a line: peer exchange told everyone about everyone, yet max-peers held
    for i, node in enumerate(nodes):
        assert node.peer_ids() == {nodes[j].id for j in (i - 1, i + 1) if 0 <= j < 5}
    far = [m for m in cli_json(homes[4], "recall", "written at one end") if m["id"] == first]
    assert far and far[0]["author"] == nodes[0].id and far[0]["topics"] == ["line"]


@pytest.mark.slow
def test_stop_the_middle_write_both_sides_restart_and_converge(net):
    homes, nodes = _five_line(net, *LINE_ARGS)
    middle = nodes[2]
    middle.stop(signal.SIGTERM)
    # the line is cut in two: each side keeps to itself (max-peers leaves no
    # reason to dial across, and nobody can reach the stopped node)
    net.wait_peers(nodes[1], {nodes[0].id})
    net.wait_peers(nodes[3], {nodes[4].id})
    left = {remember(homes[0], "left side, while the middle was down"),
            remember(homes[1], "left side again")}
    right = {remember(homes[4], "right side, while the middle was down"),
             remember(homes[3], "right side again")}
    net.wait_has(homes[:2], left)
    net.wait_has(homes[3:], right)
    assert not (left & memory_ids(homes[4])) and not (right & memory_ids(homes[0]))
    # restart: same home, a new port; it dials its neighbours again
    restarted = net.start(homes[2], *LINE_ARGS, "--peer", nodes[1].address, "--peer", nodes[3].address)
    assert restarted.id == middle.id
    net.wait_peers(restarted, {nodes[1].id, nodes[3].id})
    net.wait_has(homes, left | right)


@pytest.mark.slow
def test_sigkill_and_restart_loses_nothing_acknowledged(net):
    a, b = net.homes(2)
    na = net.start(a, "--replicate", "all")
    nb = net.start(b, "--replicate", "all", "--peer", na.address)
    net.wait_peers(na, {nb.id})
    acked = {remember(a, f"acknowledged {i}") for i in range(5)}
    batch = "\n".join(json.dumps({"text": f"batch {i}"}) for i in range(20))
    result = run_cli(a, "remember", "--batch", "-", "--json", input=batch)
    assert result.returncode == 0, result.stderr
    acked |= {m["id"] for m in json.loads(result.stdout)}
    acked.add(remember(a, "the very last one before the kill"))
    na.kill()  # SIGKILL right after the last acknowledgement
    assert na.proc.returncode == -signal.SIGKILL
    assert acked <= memory_ids(a)
    # the dead node's stale control socket: a clear one-line error, exit 1
    asked = run_cli(a, "ask", "anything")
    assert asked.returncode == 1 and "p2pmem serve" in asked.stderr
    assert len(asked.stderr.strip().splitlines()) == 1
    restarted = net.start(a, "--replicate", "all", "--peer", nb.address)
    assert acked <= memory_ids(a)
    net.wait_peers(restarted, {nb.id})
    net.wait_has([b], acked)


# --- a hostile peer ---------------------------------------------------------------


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
    sock.settimeout(DEADLINE_S)
    return sock


def _closed_by_peer(sock: socket.socket, channel: SecureChannel | None = None) -> list[wire.Message]:
    """Read until the node closes the connection; return what it said on the way."""
    said: list[wire.Message] = []
    deadline = time.monotonic() + DEADLINE_S
    with sock:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return said
            if not data:
                return said
            if channel is not None and not channel.closed:
                channel.receive_data(data)
                while (event := channel.next_event()) is not None:
                    if isinstance(event, MessageReceived):
                        said.append(wire.decode(event.data))
    raise AssertionError("the node did not close the hostile connection")


def _handshake(address: str, identity: Identity, *, max_message: int = limits.MAX_MESSAGE) -> tuple[socket.socket, SecureChannel]:
    """A real Noise XX handshake and a Hello, as an honest peer would do."""
    sock = _connect(address)
    channel = SecureChannel(True, identity.signing_key, max_message=max_message)
    sock.sendall(channel.initiate())
    established = False
    while not established:
        data = sock.recv(65536)
        assert data, "the node closed during the handshake"
        channel.receive_data(data)
        while (event := channel.next_event()) is not None:
            established = established or isinstance(event, HandshakeComplete)
    channel.send_message(wire.encode(wire.Hello(
        wire.PROTOCOL_VERSION, wire.FEATURES, identity.public_key, (), True, ())))
    sock.sendall(channel.data_to_send())
    return sock, channel


def _send(sock: socket.socket, channel: SecureChannel, data: bytes) -> None:
    channel.send_message(data)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(channel.data_to_send())


@pytest.mark.slow
def test_a_hostile_peer_is_disconnected_and_the_node_keeps_serving(net):
    a, b = net.homes(2)
    na = net.start(a, "--replicate", "all")
    nb = net.start(b, "--replicate", "all", "--peer", na.address)
    net.wait_peers(na, {nb.id})

    # garbage bytes
    sock = _connect(na.address)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: p2pmem\r\n\r\n" + bytes(range(256)))
    _closed_by_peer(sock)

    # a frame header announcing the largest frame, refused from the header alone
    sock = _connect(na.address)
    sock.sendall(b"\xff\xff" + b"\x00" * 64)
    _closed_by_peer(sock)

    # after an honest handshake: one message over the size limit
    sock, channel = _handshake(na.address, Identity.generate(), max_message=4 * limits.MAX_MESSAGE)
    _send(sock, channel, b"\x00" * (limits.MAX_MESSAGE + 1))
    _closed_by_peer(sock)

    # after an honest handshake: a forged record in a proper Records message
    hostile = Identity.generate()
    sock, channel = _handshake(na.address, hostile)
    good = sign_record(hostile, "memory", from_ms(int(time.time() * 1000)), "forged by a peer")
    forged = good.raw[:-1] + bytes([good.raw[-1] ^ 0x01])
    _send(sock, channel, wire.encode(wire.Records((forged,))))
    said = _closed_by_peer(sock, channel)
    assert any(isinstance(m, wire.Bye) and "invalid record" in m.reason for m in said), said

    # the node keeps serving: status answers, the honest peer stays, memories flow
    status = na.status()
    assert status["stats"]["protocol_errors"] >= 4
    assert status["stats"]["records_rejected"] >= 1
    assert na.peer_ids() == {nb.id}
    later = remember(b, "after the hostile peer")
    net.wait_has([a], {later})
    assert good.id.hex() not in exported_ids(a)
    assert nb.alive() and na.alive()


# --- scope ------------------------------------------------------------------------------


@pytest.mark.slow
def test_private_and_ask_memories_never_appear_on_another_node(net):
    homes = net.homes(3)
    nodes = line(net, homes, "--replicate", "all")
    net.wait_peers(nodes[1], {nodes[0].id, nodes[2].id})
    kept: dict[int, set[str]] = {i: set() for i in range(3)}

    def write(i: int, label: str) -> str:
        """A private and an ask memory, then a public marker, in that order."""
        private, ask, marker = remember_batch(homes[i], [
            {"text": f"private of {i} {label}", "visibility": "private"},
            {"text": f"ask only of {i} {label}", "visibility": "ask"},
            {"text": f"public marker of {i} {label}"},
        ])
        kept[i] |= {private, ask}
        return marker

    # 1. eager push: public markers written after the others arrive everywhere,
    # so whatever was pushed before them has had its chance to leak
    net.wait_has(homes, {write(i, "while serving") for i in range(3)})
    # 2. reconciliation: the ends stop, write while stopped (their nodes never
    # see these as new, so only reconciliation can move them), and restart
    for i in (0, 2):
        nodes[i].stop()
    markers = {write(i, "while stopped") for i in (0, 2)}
    for i in (0, 2):
        nodes[i] = net.start(homes[i], "--replicate", "all", "--peer", nodes[1].address)
    net.wait_has(homes, markers)
    for i, home in enumerate(homes):
        exported = exported_ids(home)
        assert kept[i] <= exported
        for j in kept:
            if j != i:
                assert not (kept[j] & exported), f"home {i} holds node {j}'s private or ask memory"
        assert not any(m["visibility"] != "public" and m["author"] != nodes[i].id
                       for m in cli_json(home, "recall", "", "--limit", "1000"))


@pytest.mark.slow
def test_a_memory_remembered_while_serving_reaches_connected_peers_within_2_s(net):
    a, b, c = net.homes(3)
    na = net.start(a)
    nb = net.start(b, "--replicate", "all", "--peer", na.address)
    nc = net.start(c, "--peer", na.address)  # replicates only whom it follows
    net.wait_peers(na, {nb.id, nc.id})
    follow = cli_json(c, "follow", na.id)["id"]
    # C's node tells its peers its new interest before it pushes the follow
    # record, so once A holds the follow, A knows C wants A's memories
    wait_until(lambda: not net.missing(a, {follow}), what="the follow to reach A")
    for i in range(3):
        memory = remember(a, f"fresh news number {i}")
        # the deadline runs from remember's return; the stores are read
        # directly, every 10 ms, so the measure is the network's, not the
        # start-up time of a polling command
        took = net.wait_has([b, c], {memory}, timeout=2.0, interval=0.01)
        assert took < 2.0


# --- commands and signals -------------------------------------------------------------


@pytest.mark.slow
def test_peers_and_status_json_and_clean_stops(net):
    a, b = net.homes(2)
    na = net.start(a)
    nb = net.start(b, "--peer", na.address)
    net.wait_peers(na, {nb.id})
    peers = cli_json(b, "peers")
    assert isinstance(peers, list) and len(peers) == 1
    assert peers[0]["id"] == na.id and peers[0]["address"] == na.address
    assert set(peers[0]) >= {"id", "address"}
    peers_a = cli_json(a, "peers")
    assert [p["id"] for p in peers_a] == [nb.id] and isinstance(peers_a[0]["address"], str)
    status = cli_json(a, "status")
    assert status["id"] == na.id and status["addresses"] == [na.address]
    assert status["peers"] == 1 and status["replicate"] == "follows"
    assert isinstance(status["records"], int) and status["records"] >= 1  # its own profile at least
    assert isinstance(status["connections"], int) and isinstance(status["stats"], dict)
    human = run_cli(a, "status")
    assert human.returncode == 0 and na.id in human.stdout
    human = run_cli(a, "peers")
    assert human.returncode == 0 and nb.id in human.stdout
    # SIGINT and SIGTERM: exit 0, control socket gone, then a clear error
    nb.stop(signal.SIGINT)
    na.stop(signal.SIGTERM)
    for home in (a, b):
        assert not (home / "node.sock").exists()
        for command in ("peers", "status"):
            result = run_cli(home, command)
            assert result.returncode == 1 and "p2pmem serve" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1


def test_ask_without_a_serving_node_fails_with_one_line(net):
    (home,) = net.homes(1)
    result = run_cli(home, "ask", "anything at all", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "p2pmem serve" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_serve_on_the_same_home_is_refused(net):
    (home,) = net.homes(1)
    first = net.start(home)
    records = exported_ids(home)
    result = run_cli(home, "serve", "--listen", "127.0.0.1:0", timeout=DEADLINE_S)
    assert result.returncode == 1 and "already serves" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # the running node is untouched: it still answers, and no profile
    # announcing the refused node's address was signed
    assert first.alive() and cli_json(home, "status")["id"] == first.id
    assert exported_ids(home) == records
    # the same for a port that is taken: one line, exit 1
    (other,) = net.homes(1)
    result = run_cli(other, "serve", "--listen", first.address, timeout=DEADLINE_S)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def _os_port() -> int:
    """A port the OS just handed out (free for the moment: both nodes need
    each other's address before either starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_listing_each_other_keep_one_connection_without_churn(net):
    """Issue 16: two `serve` processes, each with `--peer` the other, logged
    "duplicate connection" forever (the loser of the tie-break redialled at
    every back-off period: 1, 2, 4, 8 ... 30 s). Now: after the start (where
    one simultaneous dial may be closed as a duplicate), a quiet log and one
    connection over a window longer than the first back-off periods."""
    a, b = net.homes(2)
    port_a, port_b = _os_port(), _os_port()
    na = net.start(a, "--peer", f"127.0.0.1:{port_b}", listen=f"127.0.0.1:{port_a}")
    nb = net.start(b, "--peer", f"127.0.0.1:{port_a}", listen=f"127.0.0.1:{port_b}")
    net.wait_peers(na, {nb.id})
    net.wait_peers(nb, {na.id})

    def duplicates() -> int:
        return sum(1 for node in (na, nb) for line in node.log_path.read_text(errors="replace").splitlines()
                   if "duplicate connection" in line)

    # the start settles: at most the first redial of the early back-off, then quiet for 5 s
    seen, quiet_since, deadline = duplicates(), time.monotonic(), time.monotonic() + 30
    while time.monotonic() - quiet_since < 5:
        assert time.monotonic() < deadline, f"still closing duplicates after 30 s\n{net.logs()}"
        time.sleep(0.2)
        if (now := duplicates()) != seen:
            seen, quiet_since = now, time.monotonic()
    assert seen <= 2, f"{seen} duplicate connections at the start\n{net.logs()}"
    window_end = time.monotonic() + 15
    while time.monotonic() < window_end:
        for node, other in ((na, nb), (nb, na)):
            assert node.peer_ids() == {other.id}
            assert request(node.home, "status")["status"]["connections"] == 1
        time.sleep(0.5)
    assert duplicates() == seen, f"duplicate connections while connected\n{net.logs()}"
