"""The control socket of a real `p2pmem serve` process, spoken to raw.

A local client may send anything: every request is validated (size, nesting
depth, operation, each field's type and range) and a bad one gets a one-line
JSON error; nothing ends the node. One node serves the whole module.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from netutil import cli_json, network_fixture, run_cli

from p2pmem import limits
from p2pmem.agent.home import CONTROL_SOCKET
from p2pmem.errors import UsageError
from p2pmem.node.control import check_depth, parse_request

ctl_net = network_fixture("ctl_net", scope="module")


@pytest.fixture(scope="module")
def served(ctl_net):
    (home,) = ctl_net.homes(1)
    node = ctl_net.start(home)
    return home, node


def raw_request(home: Path, data: bytes, *, shut: bool = True, timeout: float = 10.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(home / CONTROL_SOCKET))
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # the node answered and closed before reading it all
            pass
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def error_of(home: Path, data: bytes) -> str:
    reply = raw_request(home, data)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply[:200]
    obj = json.loads(reply)
    assert obj["ok"] is False, obj
    assert "\n" not in obj["error"] and obj["error"], obj
    return obj["error"]


BAD = [
    (b'{"op":"ask","agent":5}\n', "agent"),
    (b'{"op":"ask","agent":"pm1nope"}\n', "agent"),
    (b"[" * 100_000 + b"\n", "nested"),
    (b'{"op":"ask","topics":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "nested"),
    (b"not json\n", "not JSON"),
    (b"\xff\xfe\n", "not JSON"),
    (b'["op","ping"]\n', "JSON object"),
    (b'{"op":5}\n', "operation"),
    (b'{"op":"shutdown"}\n', "operation"),
    (b'{"op":"ping","x":1}\n', "unknown field"),
    (b'{"op":"ask","ttl":"4"}\n', "ttl"),
    (b'{"op":"ask","ttl":true}\n', "ttl"),
    (b'{"op":"ask","ttl":99}\n', "ttl"),
    (b'{"op":"ask","ttl":0}\n', "ttl"),
    (b'{"op":"ask","limit":1e9}\n', "limit"),
    (b'{"op":"ask","limit":-1}\n', "limit"),
    (b'{"op":"ask","query_timeout":NaN}\n', "query_timeout"),
    (b'{"op":"ask","query_timeout":Infinity}\n', "query_timeout"),
    (b'{"op":"ask","query_timeout":"3"}\n', "query_timeout"),
    (b'{"op":"ask","query_timeout":0}\n', "query_timeout"),
    (b'{"op":"ask","text":["a"]}\n', "text"),
    (b'{"op":"ask","text":"' + b"a" * 2000 + b'"}\n', "text"),
    (b'{"op":"ask","topics":"ops"}\n', "topics"),
    (b'{"op":"ask","topics":[1]}\n', "topic"),
    (b'{"op":"ask","topics":["' + b"t" * 100 + b'"]}\n', "topic"),
    (b'{"op":"ask","since":"yesterday"}\n', "since"),
    (b'{"op":"ask","since":5,"until":4}\n', "since"),
    (b'{"op":"ask","since":' + b"9" * 5000 + b"}\n", "not JSON"),
    (b'{"op":"ask","since":1e400}\n', "since"),
    (b"\n", "not JSON"),
    (b"x" * (limits.MAX_CONTROL_REQUEST + 10), "too large"),
]


def test_every_bad_request_gets_a_one_line_error_and_the_node_survives(served) -> None:
    home, node = served
    for data, words in BAD:
        error = error_of(home, data)
        assert words.lower() in error.lower(), (data[:60], error)
        assert node.alive(), data[:60]
    # the node serves on: a good request, the CLI, and the refusals were counted
    assert json.loads(raw_request(home, b'{"op":"ping"}\n')) == {"ok": True}
    status = cli_json(home, "status")
    assert status["local"]["control_refused"] >= len(BAD)
    assert "started" in status["queries"] and status["queries"]["in_flight"] == []
    assert "in flight" in run_cli(home, "status").stdout


def test_a_silent_client_does_not_block_others(served) -> None:
    home, node = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(home / CONTROL_SOCKET))
        idle.sendall(b'{"op":')  # half a request, then silence
        assert json.loads(raw_request(home, b'{"op":"ping"}\n', timeout=3.0)) == {"ok": True}
    assert node.alive()


def test_a_good_ask_request_still_works(served) -> None:
    home, _ = served
    reply = json.loads(raw_request(
        home, b'{"op":"ask","text":"anything","ttl":2,"query_timeout":0.2,"topics":["a"],"limit":5,'
              b'"since":1,"until":2,"agent":null}\n'))
    # a node without peers is done at once: nobody to wait for
    assert reply["ok"] is True and reply["results"] == [] and reply["reached"] == 0 and reply["complete"] is True
    assert reply["elapsed_s"] == 0
    assert run_cli(home, "ask", "anything", "--timeout", "0.2").returncode == 0
    for bad in (b'"yes"', b'1', b'null'):
        refused = json.loads(raw_request(home, b'{"op":"ask","text":"x","stream":' + bad + b'}\n'))
        assert refused["ok"] is False and ("stream" in refused["error"] or bad == b"null")


def test_depth_scan_ignores_brackets_in_strings() -> None:
    check_depth(b'{"op":"ask","text":"' + b"[" * 1000 + b'\\"[[[["}')
    with pytest.raises(UsageError):
        check_depth(b"{" * 9)
    check_depth(b"[" * 8)
    assert parse_request(b'{"op":"ask","text":"[[[[[[[[[[[[[["}')["text"] == "[" * 14
