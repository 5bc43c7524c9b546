"""Every wire structure in docs/protocol.md's "Wire protocol" section is
checked against real messages from the code, with an independent CDDL
validator (pycddl). A message that breaks its rule must fail too, so the
schema is not vacuous."""

from __future__ import annotations

import random
import re
import typing
from pathlib import Path

import cbor2
import pycddl
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import sign_record
from p2pmem.protocol import wire
from p2pmem.protocol.noise import SecureChannel
from p2pmem.protocol.query import QueryHits, QueryRouter, decode_query, encode_hits, encode_query
from p2pmem.protocol.reconcile import ItemIndex, Reconciler
from p2pmem.protocol.wave import Echo, Status, encode_echo

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def wire_cddl() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Wire protocol") :]
    return "\n".join(re.findall(r"```cddl\n(.*?)```", section, re.S))


def schema(rule: str) -> pycddl.Schema:
    # pycddl validates against the first rule: put the wanted one first.
    return pycddl.Schema(f"root = {rule}\n" + wire_cddl())


def valid(rule: str, data: bytes) -> bool:
    try:
        schema(rule).validate_cbor(data)
        return True
    except pycddl.ValidationError:
        return False


ALICE = Identity.from_seeds(bytes(32), bytes([1]) * 32)
BOB = Identity.from_seeds(bytes([2]) * 32, bytes([3]) * 32)


def sample_messages() -> list[wire.Message]:
    record = sign_record(ALICE, "memory", from_ms(1_700_000_000_000), "hello", topics=["t"])
    key = ALICE.public_key
    return [
        wire.Hello(1, wire.FEATURES, key, ("127.0.0.1:7400",), False, (key,)),
        wire.Interest(True, ()),
        wire.Recon(3, b"\x81\x01"),
        wire.Records((record.raw,)),
        wire.PeerExchange(((key, "10.0.0.1:7400"),)),
        wire.Ping(7),
        wire.Pong(7),
        wire.QueryMsg(b"q"),
        wire.HitsMsg(b"h"),
        wire.Bye("stopping"),
        wire.EchoMsg(b"e"),
    ]


# pycddl 0.6 mis-validates a type choice of arrays whose members nest
# arrays (it reports errors at shifted locations), so each message is checked
# against its own rule of the `wire-message` choice.
RULES = {
    wire.Hello: "hello", wire.Interest: "interest", wire.Recon: "recon", wire.Records: "records",
    wire.PeerExchange: "peer-exchange", wire.Ping: "ping", wire.Pong: "pong",
    wire.QueryMsg: "query-msg", wire.HitsMsg: "hits-msg", wire.Bye: "bye", wire.EchoMsg: "echo-msg",
}


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_wire_message_matches_its_cddl(message: wire.Message) -> None:
    data = wire.encode(message)
    rule = RULES[type(message)]
    assert valid(rule, data)
    assert rule in wire_cddl().split("wire-message =")[1].split("\n\n")[0]
    assert wire.decode(data) == message


def test_every_wire_message_type_has_a_sample_and_a_rule() -> None:
    """The samples above cover every message type the code knows, and the
    documented `wire-message` choice lists exactly their rules."""
    types = set(typing.get_args(wire.Message))
    assert {type(m) for m in sample_messages()} == types
    assert set(RULES) == types
    choice = wire_cddl().split("wire-message =")[1].split("\n\n")[0]
    assert set(re.findall(r"[a-z][a-z-]*", choice)) == set(RULES.values())


def test_the_reserved_type_4_is_no_wire_message() -> None:
    """Type 4 (`want`, removed) is neither in the schema nor decoded: a peer
    that sends it gets the connection closed as for any unknown type."""
    assert not re.search(r"=\s*\[\s*4\s*,", wire_cddl())  # no rule of type 4
    data = cbor2.dumps([4, [bytes(32)]], canonical=True)
    with pytest.raises(wire.WireError, match="unknown message type 4"):
        wire.decode(data)
    # and the other types keep their numbers
    assert sorted(cbor2.loads(wire.encode(m))[0] for m in sample_messages()) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]


def test_wire_cddl_rejects_a_wrong_message() -> None:
    hello = wire.encode(sample_messages()[0])
    assert not valid("hello", hello.replace(b"\xf4", b"\x01"))  # bool -> int
    assert not valid("ping", bytes.fromhex("820620"))  # negative nonce
    assert not valid("records", wire.encode(wire.Bye("x")))


def test_identity_proof_matches_its_cddl() -> None:
    channel = SecureChannel(True, Ed25519PrivateKey.generate())
    proof = channel._proof(b"\x07" * 32)
    assert valid("identity-proof", proof)
    assert not valid("identity-proof", proof[:-1] + b"")  # truncated


def test_reconcile_messages_match_their_cddl() -> None:
    rng = random.Random(1)
    items = [(rng.randrange(1, 1 << 40), rng.randbytes(32)) for _ in range(3000)]
    a, b = ItemIndex(items[:2900]), ItemIndex(items[100:])
    left, right = Reconciler(a), Reconciler(b)
    message: bytes | None = left.start()
    seen = 0
    while message is not None:
        assert valid("reconcile-message", message)
        seen += 1
        message = right.receive(message)
        left, right = right, left
    assert seen >= 3
    assert not valid("reconcile-message", bytes.fromhex("8102"))  # version 2


def test_query_messages_match_their_cddl() -> None:
    router = QueryRouter(ALICE.public_key, random.Random(2))
    router.start_query(
        "who knows", now=0.0, neighbours=["peer"], ttl=3, since=1, until=2, topics=["ops"],
        authors=[ALICE.public_key], target=ALICE.public_key, limit=5,
    )
    (_peer, _kind, data), = router.take_outbox()
    assert valid("query", data)
    query = decode_query(data)
    record = sign_record(ALICE, "memory", from_ms(1_700_000_000_000), "hello")
    answer = QueryHits(query.qid, 2, ALICE.public_key, (record.raw,)).signed(ALICE.sign)
    hits = encode_hits(answer)
    assert valid("query-hits", hits)
    assert valid("hits-to-sign", answer.to_sign())
    assert valid("query", encode_query(query))
    assert not valid("query-hits", hits.replace(b"\xa5", b"\xa4", 1))


def test_echo_wave_messages_match_their_cddl() -> None:
    """A query with an echo budget (field 12, to an echoing peer) and the
    echoes a relay sends: covered at once, then its subtree's."""
    router = QueryRouter(ALICE.public_key, random.Random(3))
    router.start_query("who knows", now=0.0, neighbours=["new", "old"], echo_peers={"new"}, ttl=3, timeout=3.0)
    copies = dict((peer, data) for peer, _kind, data in router.take_outbox())
    assert valid("query", copies["new"]) and decode_query(copies["new"]).echo_ms == 2350
    assert valid("query", copies["old"]) and decode_query(copies["old"]).echo_ms is None
    relay = QueryRouter(BOB.public_key, random.Random(4))
    relay.receive_query("alice", copies["new"], 0.0, ["alice", "carol"], lambda q: [], {"alice", "carol"})
    relay.receive_query("carol", copies["new"], 0.0, ["alice", "carol"], lambda q: [], {"alice", "carol"})
    echoes = [data for _peer, kind, data in relay.take_outbox() if kind == "echo"]
    assert echoes and all(valid("query-echo", e) for e in echoes)
    relay.handle_timer(10.0)  # carol never echoed: the relay gives up and echoes partial
    (late,) = [data for _peer, kind, data in relay.take_outbox() if kind == "echo"]
    assert valid("query-echo", late) and cbor2.loads(late)[1] == 1
    assert not valid("query-echo", late.replace(b"\x01", b"\x07", 1))  # no status 7
    assert not valid("query-echo", cbor2.dumps({0: bytes(16), 1: 0, 2: 1}, canonical=True))
    full = encode_echo(Echo(bytes(16), Status.DONE, 3, 2, 40, (7, 0, 40)))
    assert valid("query-echo", full)
    assert not valid("query-echo", full.replace(b"\x83\x07\x00\x18\x28", b"\x83\x07\x00\x60\x60"))


def test_hits_with_context_match_their_cddl() -> None:
    record = sign_record(ALICE, "memory", from_ms(1_700_000_000_000), "hello")
    before = sign_record(ALICE, "memory", from_ms(1_699_999_999_000), "just before")
    answer = QueryHits(bytes(16), 1, ALICE.public_key, (record.raw,), context=(before.raw,)).signed(ALICE.sign)
    data = encode_hits(answer)
    assert valid("query-hits", data) and valid("hits-to-sign-context", answer.to_sign())
    assert not valid("hits-to-sign", answer.to_sign())
    assert not valid("query-hits", cbor2.dumps({**cbor2.loads(data), 5: []}, canonical=True))  # [+ bstr]
