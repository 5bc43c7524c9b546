"""Direct messages end to end: real `p2pmem serve` processes on loopback,
driven through the `p2pmem` command (plus in-process checks of what a relay
can and cannot do with the record it forwarded).

Messages replicate to every node, so no `--replicate all` is needed; the
sender only needs the recipient's profile (its message key) first, which
the directory gossip brings. Every wait polls with a deadline, every port
comes from the OS, and the `net` fixture kills every node and removes every
home whatever happens.
"""

from __future__ import annotations

import base64
import json
import mailbox
import time
from datetime import datetime
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from netutil import Net, NodeProc, cli_json, line, network_fixture, run_cli, wait_until

from p2pmem.agent.home import Agent
from p2pmem.model.identity import parse_agent_id
from p2pmem.model.record import decode_record, sign_record
from p2pmem.model.sealed import SealedError, open_message
from p2pmem.storage.keyfile import load_identity

net = network_fixture()


# -- helpers ------------------------------------------------------------------
def _line3(net: Net) -> tuple[list[Path], list[NodeProc]]:
    """A–B–C: the ends keep one peer, the middle two, so peer exchange cannot
    join A and C directly and every record between them goes through B."""
    homes = net.homes(3)
    nodes = line(net, homes, max_peers=[1, 2, 1])
    a, b, c = nodes
    net.wait_peers(a, {b.id})
    net.wait_peers(b, {a.id, c.id})
    net.wait_peers(c, {b.id})
    return homes, nodes


def _assert_still_a_line(nodes: list[NodeProc]) -> None:
    a, b, c = nodes
    assert {p["id"] for p in a.peers()} == {b.id}
    assert {p["id"] for p in b.peers()} == {a.id, c.id}
    assert {p["id"] for p in c.peers()} == {b.id}


def _wait_profile(net: Net, home: Path, agent: str) -> None:
    key = parse_agent_id(agent)
    wait_until(lambda: key in net.store(home).profiles(), what=f"{home.name} to know the profile of {agent}",
               describe=net.logs)


def _wait_record(net: Net, home: Path, record_id: str) -> None:
    wait_until(lambda: not net.missing(home, {record_id}), what=f"{home.name} to hold record {record_id[:12]}",
               describe=net.logs)


def _send(home: Path, to: str, text: str) -> str:
    return cli_json(home, "send", to, text)["id"]


def _inbox(home: Path) -> list[dict[str, Any]]:
    return cli_json(home, "inbox")


def _export(home: Path) -> dict[str, dict[str, Any]]:
    result = run_cli(home, "export")
    assert result.returncode == 0, result.stderr
    return {obj["id"]: obj for obj in map(json.loads, result.stdout.splitlines())}


def _raw(export_line: dict[str, Any]) -> bytes:
    return base64.b64decode(export_line["record"])


def _import(home: Path, lines: list[dict[str, Any]], tmp: Path) -> Any:
    path = tmp / f"import-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    return run_cli(home, "import", str(path), "--json")


# -- tests ----------------------------------------------------------------------
def test_message_crosses_a_relay_that_cannot_read_it_and_tampering_fails(net, tmp_path):
    (ha, hb, hc), nodes = _line3(net)
    a, b, c = nodes
    _wait_profile(net, ha, c.id)
    text = "meet at the usual place at nine; the relay must not read this"
    sent = _send(ha, c.id, text)

    # the recipient reads it
    _wait_record(net, hc, sent)
    inbox = _inbox(hc)
    assert len(inbox) == 1
    msg = inbox[0]
    assert set(msg) >= {"id", "from", "to", "text", "ts"}
    assert msg["id"] == sent
    assert msg["from"] == a.id and msg["to"] == c.id and msg["text"] == text
    datetime.fromisoformat(msg["ts"].replace("Z", "+00:00"))
    assert _inbox(ha) == []  # the sender cannot open its own sealed message

    # the relay stored and forwarded it but cannot read it
    _assert_still_a_line(nodes)  # so B really was the only path
    exported = _export(hb)
    assert sent in exported and exported[sent]["kind"] == "message"
    assert _inbox(hb) == []
    relay_identity = load_identity(hb)
    held = net.store(hb).get(bytes.fromhex(sent))
    assert held is not None and text.encode() not in held.raw
    with pytest.raises(SealedError):
        open_message(relay_identity, held)
    assert open_message(load_identity(hc), held).text == text

    # (a) a flipped byte in the ciphertext of the raw record: import rejects it
    raw = _raw(exported[sent])
    ct = held.body["ct"]  # type: ignore[index]
    at = raw.find(ct) + len(ct) // 2
    flipped = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
    result = _import(hc, [{"record": base64.b64encode(flipped).decode()}], tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["imported"] == 0 and len(report["rejected"]) == 1
    assert report["rejected"][0]["line"] == 1 and "signature" in report["rejected"][0]["reason"]
    assert "line 1" in result.stderr and "signature" in result.stderr

    # (b) the relay re-signs Alice's ciphertext as its own record: the record
    # is valid, travels to C, but does not open and is not shown
    forged = sign_record(relay_identity, "message", held.ts, dict(held.body), session=held.session)  # type: ignore[arg-type]
    assert forged.body == held.body and forged.author != held.author
    result = _import(hb, [{"record": base64.b64encode(forged.raw).decode()}], tmp_path)
    assert result.returncode == 0, result.stderr
    _wait_record(net, hc, forged.id.hex())
    recipient = load_identity(hc)
    with pytest.raises(SealedError):
        open_message(recipient, decode_record(forged.raw))
    assert [m["id"] for m in _inbox(hc)] == [sent]


def test_message_sent_while_recipient_offline_arrives_after_sender_left(net):
    (ha, hb, hc), nodes = _line3(net)
    a, b, c = nodes
    _wait_profile(net, ha, c.id)
    c.stop()
    net.wait_peers(b, {a.id})
    text = "left for you while you were away"
    sent = _send(ha, c.id, text)
    _wait_record(net, hb, sent)  # B has it; C is down
    a.stop()
    assert not a.alive() and not c.alive()
    c2 = net.start(hc, "--max-peers", "1", "--peer", b.address)
    net.wait_peers(c2, {b.id})
    _wait_record(net, hc, sent)
    assert not a.alive()
    inbox = _inbox(hc)
    assert [(m["id"], m["from"], m["to"], m["text"]) for m in inbox] == [(sent, a.id, c.id, text)]


def test_inbox_maildir_is_a_readable_maildir_without_duplicates(net, tmp_path):
    """No network needed: the homes swap their records directly."""
    ha, hb = net.homes(2)
    alice, bob = net.id_of(ha), net.id_of(hb)

    def carry(src: Path, dst: Path) -> None:  # what gossip would do (in process: quicker)
        with Agent.open(src) as source, Agent.open(dst) as target:
            assert not target.store.ingest_raw(list(source.store.raw_records())).rejected

    cli_json(ha, "profile", "--name", "Alice Liddell")
    carry(hb, ha)  # Alice learns Bob's message key
    texts = ["first line of the first message\nand a second line", "second message, ünïcödé ✓"]
    sent = [_send(ha, bob, texts[0])]
    sent.append(_send(ha, bob, texts[1]))
    carry(ha, hb)  # Bob gets Alice's profile (her name) and the messages
    inbox = _inbox(hb)
    assert [m["id"] for m in inbox] == sent[::-1]

    box_dir = tmp_path / "Maildir"
    for _ in range(2):  # the second run adds nothing
        result = run_cli(hb, "inbox", "--maildir", str(box_dir), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == inbox
        box = mailbox.Maildir(str(box_dir), factory=None)
        assert len(box) == 2
    by_id = {m["id"]: m for m in inbox}
    seen = set()
    for mail in box:
        record_id = mail["Message-ID"].strip("<>").split("@")[0]
        msg = by_id[record_id]
        seen.add(record_id)
        assert parseaddr(mail["From"]) == ("Alice Liddell", f"{alice}@p2pmem.invalid")  # name from Alice's profile
        assert parseaddr(mail["To"])[1] == f"{bob}@p2pmem.invalid"
        date = parsedate_to_datetime(mail["Date"])
        ts = datetime.fromisoformat(msg["ts"].replace("Z", "+00:00"))
        assert int(date.timestamp()) == int(ts.timestamp())
        body = mail.get_payload(decode=True).decode(mail.get_content_charset() or "utf-8")
        assert body.rstrip("\n") == msg["text"]
    assert seen == set(sent)

    # a third message later: one more mail, still no duplicates
    sent.append(_send(ha, bob, "third"))
    carry(ha, hb)
    result = run_cli(hb, "inbox", "--maildir", str(box_dir))
    assert result.returncode == 0, result.stderr
    assert "wrote 1 new" in result.stderr
    assert len(mailbox.Maildir(str(box_dir), factory=None)) == 3
