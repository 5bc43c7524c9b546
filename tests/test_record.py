"""The signed record (p2pmem.model.record), agent ids, the HLC and WHEN parsing.

Records must round-trip exactly, and every other byte string -- a mutation of
a real record, a non-canonical re-encoding, a schema violation, malformed
CBOR, random bytes -- must be refused with RecordError and a reason. An
independent COSE implementation (pycose) verifies our records, and the CDDL
of docs/protocol.md (checked with pycddl) describes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pycddl
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pycose.keys.curves import Ed25519
from pycose.keys.okp import OKPKey
from pycose.messages import Sign1Message

from p2pmem import limits
from p2pmem.errors import RecordError, UsageError
from p2pmem.model.clock import COUNTER_BITS, HybridClock, from_ms, physical_ms
from p2pmem.model.identity import AGENT_ID_PREFIX, Identity, agent_id, parse_agent_id
from p2pmem.model.record import KINDS, MAX_TIME, PROTECTED, Record, decode_record, sign_record
from p2pmem.model.when import format_ms, parse_when
from p2pmem.storage.keyfile import load_identity, save_identity
from tests.strategies import BASE_MS, any_records, identity, memory_records

VECTORS = Path(__file__).parent / "vectors"
PROTOCOL = Path(__file__).parent.parent / "docs" / "protocol.md"
ALICE, BOB = identity(0), identity(1)
TS = from_ms(BASE_MS)


# --- helpers -------------------------------------------------------------------
def payload_bytes(record: Record) -> bytes:
    return cbor2.loads(record.raw).value[2]


def payload_map(record: Record) -> dict:
    return cbor2.loads(payload_bytes(record))


def envelope(
    payload: bytes,
    signer: Identity = ALICE,
    *,
    protected: bytes = PROTECTED,
    unprotected: dict | None = None,
) -> bytes:
    """A COSE_Sign1 record around ``payload`` with a *valid* signature, so the
    only fault in it is whatever the caller put in the payload or headers."""
    signature = signer.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    return cbor2.dumps(
        cbor2.CBORTag(18, [protected, unprotected or {}, payload, signature]), canonical=True
    )


def resigned(obj: dict, signer: Identity = ALICE) -> bytes:
    return envelope(cbor2.dumps(obj, canonical=True), signer)


def sample_records() -> list[Record]:
    """One record of every kind, with every optional field used somewhere."""
    return [
        sign_record(ALICE, "memory", TS, "the build needs python 3.11", session="s1",
                    topics=["build", "python"], visibility="ask", meta={"src": "cli", "n": 3},
                    at=BASE_MS - 5000, refs=[bytes(32)], root=bytes(32)),
        sign_record(ALICE, "memory", TS + 1, "plain"),
        sign_record(ALICE, "retract", TS + 2, "", refs=[bytes(32), b"\x01" * 32]),
        sign_record(ALICE, "profile", TS + 3, {"name": "alice", "description": "builds",
                    "skills": ["rust", "python"], "addresses": ["10.0.0.1:7000"],
                    "xkey": ALICE.message_public_key}),
        sign_record(ALICE, "follow", TS + 4, {"target": BOB.public_key, "active": False}),
        sign_record(ALICE, "endorse", TS + 5, {"target": BOB.public_key, "what": "agent"}),
        sign_record(ALICE, "message", TS + 6, {"to": BOB.public_key, "epk": b"\x02" * 32,
                    "ct": b"\x03" * 100}),
        # the knowledge graph (p2pmem/graph/records.py)
        sign_record(ALICE, "entity", TS + 7, {"name": "billing service", "type": "service"},
                    session="mcp-1", visibility="ask"),
        sign_record(ALICE, "observation", TS + 8, {"entity": "billing service", "text": "handles invoices"}),
        sign_record(ALICE, "relation", TS + 9, {"from": "alice", "type": "maintains", "to": "billing service"},
                    visibility="private"),
        sign_record(ALICE, "unlink", TS + 10, {"entity": "billing service"}),
    ]


# --- round trip ------------------------------------------------------------------
@given(any_records())
def test_every_valid_record_round_trips(record: Record) -> None:
    again = decode_record(record.raw)
    assert again == record
    assert again.id == record.id == hashlib.sha256(record.raw).digest()
    assert again.meta == record.meta
    assert again.raw == record.raw
    assert decode_record(record.raw, verify=False) == record


def test_sample_records_cover_every_kind_and_round_trip() -> None:
    records = sample_records()
    assert {r.kind for r in records} == set(KINDS)
    for record in records:
        assert decode_record(record.raw) == record


def test_signing_is_deterministic_and_sorts_topics_and_refs() -> None:
    a = sign_record(ALICE, "memory", TS, "x", topics=["b", "a", "b"], refs=[b"\x02" * 32, b"\x01" * 32])
    b = sign_record(ALICE, "memory", TS, "x", topics=["a", "b"], refs=[b"\x01" * 32, b"\x02" * 32])
    assert a.raw == b.raw and a.id == b.id
    assert a.topics == ("a", "b")
    assert a.refs == (b"\x01" * 32, b"\x02" * 32)


def test_record_fields_and_derived_properties() -> None:
    memory, plain = sample_records()[:2]
    assert memory.author == ALICE.public_key
    assert memory.at_ms == BASE_MS - 5000
    assert plain.at_ms == physical_ms(plain.ts) == BASE_MS
    assert memory.lineage == bytes(32)  # its root
    assert plain.lineage == plain.id
    assert plain.text == "plain"
    assert sample_records()[3].text == ""


# --- mutations ----------------------------------------------------------------------
@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes, str]:
    record = draw(any_records())
    raw = record.raw
    how = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "replace"]))
    if how == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        mask = draw(st.integers(1, 255))
        out = raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]
    elif how == "truncate":
        out = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "extend":
        out = raw + draw(st.binary(min_size=1, max_size=16))
    elif how == "insert":
        i = draw(st.integers(0, len(raw)))
        out = raw[:i] + draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    elif how == "delete":
        i = draw(st.integers(0, len(raw) - 1))
        out = raw[:i] + raw[i + draw(st.integers(1, 8)) :]
    else:  # overwrite a run of bytes
        i = draw(st.integers(0, len(raw) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        out = raw[:i] + chunk + raw[i + len(chunk) :]
    return raw, out, how


@given(mutations())
def test_any_mutation_of_a_signed_record_is_rejected(case: tuple[bytes, bytes, str]) -> None:
    raw, mutated, _how = case
    assume(mutated != raw)
    with pytest.raises(RecordError) as excinfo:
        decode_record(mutated)
    assert str(excinfo.value)  # always a reason


@given(any_records(), st.integers(0, 63), st.integers(1, 255))
def test_a_flipped_signature_bit_is_a_bad_signature(record: Record, i: int, mask: int) -> None:
    raw = bytearray(record.raw)
    raw[len(raw) - 64 + i] ^= mask
    with pytest.raises(RecordError, match="bad signature"):
        decode_record(bytes(raw))


# --- non-canonical encodings -----------------------------------------------------------
def _canonical_pairs(obj: dict) -> list[tuple[bytes, bytes]]:
    return sorted((cbor2.dumps(k, canonical=True), cbor2.dumps(v, canonical=True)) for k, v in obj.items())


def _map(pairs: list[tuple[bytes, bytes]], head: bytes | None = None) -> bytes:
    return (head if head is not None else bytes([0xA0 | len(pairs)])) + b"".join(k + v for k, v in pairs)


def test_the_reference_payload_builder_matches_sign_record() -> None:
    record = sample_records()[0]
    assert _map(_canonical_pairs(payload_map(record))) == payload_bytes(record)
    assert envelope(payload_bytes(record)) == record.raw


@pytest.mark.parametrize(
    "name",
    ["non-minimal integer head", "non-minimal length head", "indefinite-length map",
     "indefinite-length array", "indefinite-length text", "keys reordered", "duplicate key"],
)
def test_non_canonical_payload_is_rejected_even_when_signed(name: str) -> None:
    record = sample_records()[0]
    obj = payload_map(record)
    pairs = _canonical_pairs(obj)
    if name == "non-minimal integer head":  # version 1 as 0x18 0x01
        pairs[0] = (pairs[0][0], b"\x18\x01")
        payload = _map(pairs)
    elif name == "non-minimal length head":  # the author key's length in two bytes
        pairs[1] = (pairs[1][0], b"\x59\x00\x20" + obj[1])
        payload = _map(pairs)
    elif name == "indefinite-length map":
        payload = _map(pairs, head=b"\xbf") + b"\xff"
    elif name == "indefinite-length array":  # topics
        topics = b"".join(cbor2.dumps(t) for t in obj[5])
        pairs[5] = (pairs[5][0], b"\x9f" + topics + b"\xff")
        payload = _map(pairs)
    elif name == "indefinite-length text":  # the body in two chunks
        text = obj[6].encode()
        pairs[6] = (pairs[6][0], b"\x7f" + cbor2.dumps(text[:3].decode()) + cbor2.dumps(text[3:].decode()) + b"\xff")
        payload = _map(pairs)
    elif name == "keys reordered":
        pairs[2], pairs[3] = pairs[3], pairs[2]
        payload = _map(pairs)
    else:  # the session twice: last one wins in cbor2, so the map "decodes"
        payload = bytes([0xA0 | (len(pairs) + 1)]) + b"".join(k + v for k, v in pairs) + pairs[4][0] + pairs[4][1]
    assert cbor2.loads(payload) == obj  # same content...
    with pytest.raises(RecordError, match="canonical"):  # ...other bytes
        decode_record(envelope(payload))


def test_non_canonical_envelope_is_rejected() -> None:
    record = sample_records()[1]
    protected, _, payload, signature = cbor2.loads(record.raw).value
    body = cbor2.dumps(protected) + b"\xa0" + cbor2.dumps(payload)
    # the signature's length as a two-byte head
    raw = b"\xd2\x84" + body + b"\x59\x00\x40" + signature
    assert cbor2.loads(raw).value[3] == signature
    with pytest.raises(RecordError, match="canonical|signature|trailing"):
        decode_record(raw)
    # the payload's length in a longer head than needed
    payload_head = cbor2.dumps(payload)[:2]
    assert payload_head[0] == 0x58
    raw = (b"\xd2\x84" + cbor2.dumps(protected) + b"\xa0" + b"\x59\x00" + payload_head[1:]
           + payload + cbor2.dumps(signature))
    assert cbor2.loads(raw).value[2] == payload
    with pytest.raises(RecordError, match="canonical|shortest"):
        decode_record(raw)
    # an indefinite-length array
    raw = b"\xd2\x9f" + body + cbor2.dumps(signature) + b"\xff"
    with pytest.raises(RecordError, match="canonical"):
        decode_record(raw)
    # tag 18 in two bytes
    with pytest.raises(RecordError, match="tag 18"):
        decode_record(b"\xd8\x12" + record.raw[1:])
    # untagged
    with pytest.raises(RecordError, match="tag 18"):
        decode_record(record.raw[1:])
    # trailing bytes after the record
    with pytest.raises(RecordError):
        decode_record(record.raw + b"\x00")


def test_headers_must_be_exactly_eddsa_and_empty() -> None:
    payload = payload_bytes(sample_records()[1])
    with pytest.raises(RecordError, match="unprotected"):
        decode_record(envelope(payload, unprotected={4: b"kid"}))
    with pytest.raises(RecordError, match="protected"):
        decode_record(envelope(payload, protected=cbor2.dumps({1: -7})))
    with pytest.raises(RecordError, match="protected"):
        decode_record(envelope(payload, protected=cbor2.dumps({1: -8, 3: 0})))
    with pytest.raises(RecordError, match="protected"):
        decode_record(envelope(payload, protected=b""))
    raw = cbor2.dumps(cbor2.CBORTag(18, [PROTECTED, {}, payload]))
    with pytest.raises(RecordError, match="COSE_Sign1"):
        decode_record(raw)


# --- schema ------------------------------------------------------------------------------
def _memory() -> dict:
    return payload_map(sample_records()[0])


def _kind(index: int) -> dict:
    return payload_map(sample_records()[index])


def _set(obj: dict, key: int, value: object) -> dict:
    obj[key] = value
    return obj


def _del(obj: dict, key: int) -> dict:
    del obj[key]
    return obj


def _body(obj: dict, key: str, value: object) -> dict:
    obj[6][key] = value
    return obj


SCHEMA_CASES = [
    ("version 2", lambda: _set(_memory(), 0, 2), "version"),
    ("version as text", lambda: _set(_memory(), 0, "1"), "version"),
    ("author 31 bytes", lambda: _set(_memory(), 1, b"a" * 31), "author"),
    ("author as text", lambda: _set(_memory(), 1, "alice"), "author"),
    ("unknown kind", lambda: _set(_memory(), 2, "poem"), "kind"),
    ("kind as int", lambda: _set(_memory(), 2, 1), "kind"),
    ("ts as text", lambda: _set(_memory(), 3, "now"), "timestamp"),
    ("ts zero", lambda: _set(_memory(), 3, 0), "timestamp"),
    ("ts negative", lambda: _set(_memory(), 3, -1), "timestamp"),
    ("ts over 64 bits", lambda: _set(_memory(), 3, 2**64), "timestamp"),
    ("ts of 64 bits", lambda: _set(_memory(), 3, 2**63), "timestamp"),
    ("ts float", lambda: _set(_memory(), 3, 1.5), "timestamp"),
    ("session bytes", lambda: _set(_memory(), 4, b"s"), "session"),
    ("session too long", lambda: _set(_memory(), 4, "s" * (limits.MAX_SESSION + 1)), "session"),
    ("topics text", lambda: _set(_memory(), 5, "topic"), "topics"),
    ("topics unsorted", lambda: _set(_memory(), 5, ["b", "a"]), "sorted"),
    ("topics duplicated", lambda: _set(_memory(), 5, ["a", "a"]), "duplicates"),
    ("topic empty", lambda: _set(_memory(), 5, [""]), "empty"),
    ("topic too long", lambda: _set(_memory(), 5, ["t" * (limits.MAX_TOPIC + 1)]), "limit"),
    ("too many topics", lambda: _set(_memory(), 5, sorted(f"t{i:02d}" for i in range(limits.MAX_TOPICS + 1))), "limit"),
    ("body bytes", lambda: _set(_memory(), 6, b"text"), "text"),
    ("body empty", lambda: _set(_memory(), 6, ""), "empty"),
    ("body too big", lambda: _set(_memory(), 6, "x" * (limits.MAX_BODY + 1)), "limit"),
    ("unknown visibility", lambda: _set(_memory(), 7, "secret"), "visibility"),
    ("refs as bytes", lambda: _set(_memory(), 8, b"r" * 32), "refs"),
    ("ref 31 bytes", lambda: _set(_memory(), 8, [b"r" * 31]), "ref"),
    ("refs unsorted", lambda: _set(_memory(), 8, [b"\x02" * 32, b"\x01" * 32]), "sorted"),
    ("too many refs", lambda: _set(_memory(), 8, [i.to_bytes(32, "big") for i in range(limits.MAX_REFS + 1)]), "limit"),
    ("meta as array", lambda: _set(_memory(), 9, []), "meta"),
    ("meta int key", lambda: _set(_memory(), 9, {1: "x"}), "meta key"),
    ("meta negative", lambda: _set(_memory(), 9, {"k": -1}), "meta"),
    ("meta float", lambda: _set(_memory(), 9, {"k": 1.5}), "meta"),
    ("meta too many", lambda: _set(_memory(), 9, {f"k{i:02d}": i for i in range(limits.MAX_META + 1)}), "limit"),
    ("meta value too long", lambda: _set(_memory(), 9, {"k": "v" * (limits.MAX_META_VALUE + 1)}), "limit"),
    ("unknown field", lambda: _set(_memory(), 12, "x"), "unknown field"),
    ("negative field", lambda: _set(_memory(), -1, "x"), "unknown field"),
    ("missing body", lambda: _del(_memory(), 6), "lacks"),
    ("missing meta", lambda: _del(_memory(), 9), "lacks"),
    ("at as text", lambda: _set(_memory(), 10, "yesterday"), "at"),
    ("at of 64 bits", lambda: _set(_memory(), 10, 2**64 - 1), "at"),
    ("root without refs", lambda: _set(_set(_memory(), 8, []), 11, b"r" * 32), "root"),
    ("root 31 bytes", lambda: _set(_memory(), 11, b"r" * 31), "root"),
    ("retract with text", lambda: _set(_kind(2), 6, "oops"), "retract"),
    ("retract without refs", lambda: _set(_kind(2), 8, []), "retract"),
    ("retract private", lambda: _set(_kind(2), 7, "private"), "visibility"),
    ("profile with at", lambda: _set(_kind(3), 10, 5), "at"),
    ("profile with refs", lambda: _set(_kind(3), 8, [b"r" * 32]), "refs"),
    ("profile missing xkey", lambda: _kind(3) | {6: {k: v for k, v in _kind(3)[6].items() if k != "xkey"}}, "keys"),
    ("profile extra key", lambda: _body(_kind(3), "age", 3), "keys"),
    ("profile skills unsorted", lambda: _body(_kind(3), "skills", ["b", "a"]), "sorted"),
    ("profile name too long", lambda: _body(_kind(3), "name", "n" * (limits.MAX_NAME + 1)), "limit"),
    ("profile body text", lambda: _set(_kind(3), 6, "alice"), "map"),
    ("follow active int", lambda: _body(_kind(4), "active", 1), "boolean"),
    ("follow target short", lambda: _body(_kind(4), "target", b"t"), "target"),
    ("endorse what", lambda: _body(_kind(5), "what", "cat"), "endorse"),
    ("message ct text", lambda: _body(_kind(6), "ct", "hello"), "ciphertext"),
    ("message ct too big", lambda: _body(_kind(6), "ct", b"c" * (limits.MAX_MESSAGE_CIPHERTEXT + 1)), "limit"),
    ("message private", lambda: _set(_kind(6), 7, "private"), "visibility"),
]


@pytest.mark.parametrize(("make", "word"), [(m, w) for _, m, w in SCHEMA_CASES],
                         ids=[n for n, _, _ in SCHEMA_CASES])
def test_schema_violations_are_rejected_with_a_reason(make, word: str) -> None:
    raw = resigned(make())
    with pytest.raises(RecordError, match=word):
        decode_record(raw)


def test_the_payload_must_be_a_map_with_integer_keys() -> None:
    with pytest.raises(RecordError, match="map"):
        decode_record(envelope(cbor2.dumps([1, 2, 3])))
    with pytest.raises(RecordError, match="unsigned integers"):
        decode_record(envelope(cbor2.dumps({"version": 1})))
    with pytest.raises(RecordError, match="malformed payload"):
        decode_record(envelope(b"\x1c"))
    with pytest.raises(RecordError, match="payload"):
        decode_record(cbor2.dumps(cbor2.CBORTag(18, [PROTECTED, {}, "text", b"s" * 64])))


def test_sign_record_enforces_the_same_rules() -> None:
    with pytest.raises(RecordError, match="limit"):
        sign_record(ALICE, "memory", TS, "x" * (limits.MAX_BODY + 1))
    with pytest.raises(RecordError, match="limit"):
        sign_record(ALICE, "memory", TS, "x", topics=[f"t{i}" for i in range(limits.MAX_TOPICS + 1)])
    with pytest.raises(RecordError, match="kind"):
        sign_record(ALICE, "poem", TS, "x")
    with pytest.raises(RecordError, match="visibility"):
        sign_record(ALICE, "memory", TS, "x", visibility="secret")
    with pytest.raises(RecordError, match="empty"):
        sign_record(ALICE, "memory", TS, "")
    # the limits themselves are allowed
    big = sign_record(ALICE, "memory", TS, "é" * (limits.MAX_BODY // 2),
                      topics=[f"t{i:02d}" for i in range(limits.MAX_TOPICS)],
                      meta={f"k{i:02d}": "v" * limits.MAX_META_VALUE for i in range(limits.MAX_META)})
    assert decode_record(big.raw) == big


def test_oversized_record_is_rejected_before_parsing() -> None:
    raw = b"\xd2" + bytes(limits.MAX_RECORD)
    with pytest.raises(RecordError, match="over the limit"):
        decode_record(raw)


def test_a_record_signed_by_another_key_is_rejected() -> None:
    obj = payload_map(sample_records()[1])  # author: ALICE
    with pytest.raises(RecordError, match="bad signature"):
        decode_record(resigned(obj, signer=BOB))
    # a real signature of another record
    a, b = sample_records()[1], sample_records()[2]
    parts = list(cbor2.loads(a.raw).value)
    parts[3] = cbor2.loads(b.raw).value[3]
    with pytest.raises(RecordError, match="bad signature"):
        decode_record(cbor2.dumps(cbor2.CBORTag(18, parts), canonical=True))
    # claiming someone else's authorship
    obj[1] = BOB.public_key
    with pytest.raises(RecordError, match="bad signature"):
        decode_record(resigned(obj, signer=ALICE))


# --- malformed and random input -------------------------------------------------------
MALFORMED = [bytes.fromhex(e["hex"]) for e in json.loads((VECTORS / "cbor-malformed.json").read_text())]


def test_malformed_cbor_vectors_are_record_errors() -> None:
    """Each not-well-formed item, as the whole input, after tag 18, and as a
    signed payload: RecordError every time, never another exception."""
    assert len(MALFORMED) > 500
    for data in MALFORMED:
        for raw in (data, b"\xd2" + data, b"\xd2\x84" + data, envelope(data)):
            with pytest.raises(RecordError):
                decode_record(raw)


@given(st.binary(max_size=400))
def test_random_bytes_are_only_ever_record_errors(data: bytes) -> None:
    for raw in (data, b"\xd2" + data, b"\xd2\x84\x43\xa1\x01\x27\xa0" + data):
        with pytest.raises(RecordError):
            decode_record(raw)


@given(st.binary(max_size=200))
def test_random_signed_payloads_are_only_ever_record_errors(data: bytes) -> None:
    with pytest.raises(RecordError):
        decode_record(envelope(data))


@pytest.mark.parametrize(
    "payload",
    [b"\x9b" + b"\xff" * 8, b"\xbb\x7f" + b"\xff" * 7, b"\x5b\x7f" + b"\xff" * 7, b"\x81" * 60000,
     b"\xa1\x00" * 30000 + b"\x00", b"\x9f" * 60000, b"\xd9\xd9\xf7" * 20000 + b"\x00"],
    ids=["huge array", "huge map", "huge bytes", "deep arrays", "deep maps", "deep indefinite", "deep tags"],
)
def test_hostile_payloads_cost_nothing_and_are_record_errors(payload: bytes) -> None:
    with pytest.raises(RecordError, match="malformed"):
        decode_record(envelope(payload))


def test_decode_accepts_any_bytes_like() -> None:
    record = sample_records()[1]
    assert decode_record(bytearray(record.raw)) == record
    assert decode_record(memoryview(record.raw)) == record


# --- interoperability: pycose --------------------------------------------------------------
def _pycose_message(raw: bytes) -> Sign1Message:
    # cbor2 6 decodes the array inside a tag as a tuple and its maps as
    # frozendicts; pycose 1.1 wants a list and dicts.
    value = cbor2.loads(raw)
    assert value.tag == Sign1Message.cbor_tag
    parts = [dict(p) if not isinstance(p, bytes) else p for p in value.value]
    return Sign1Message.from_cose_obj(parts, allow_unknown_attributes=False)


@pytest.mark.parametrize("index", range(len(KINDS) + 1))
def test_pycose_verifies_p2pmem_records(index: int) -> None:
    record = sample_records()[index]
    message = _pycose_message(record.raw)
    message.key = OKPKey(crv=Ed25519, x=record.author)
    assert message.verify_signature()
    assert message.payload == payload_bytes(record)


def test_pycose_rejects_tampered_records_and_wrong_keys() -> None:
    record = sample_records()[0]
    tampered = bytearray(record.raw)
    tampered[tampered.index(b"the build") + 4] ^= 0x20  # "the Build"
    message = _pycose_message(bytes(tampered))
    message.key = OKPKey(crv=Ed25519, x=record.author)
    assert not message.verify_signature()
    message = _pycose_message(record.raw)
    message.key = OKPKey(crv=Ed25519, x=BOB.public_key)
    assert not message.verify_signature()


def test_pycose_signs_the_same_bytes_as_p2pmem() -> None:
    """Ed25519 is deterministic: an independent COSE signer given our
    payload produces our record byte for byte."""
    record = sample_records()[0]
    message = Sign1Message(phdr={1: -8}, payload=payload_bytes(record))
    message.key = OKPKey(crv=Ed25519, d=ALICE.signing_key.private_bytes_raw(), x=ALICE.public_key)
    assert message.encode() == record.raw
    assert decode_record(message.encode()).id == record.id


# --- the CDDL of docs/protocol.md -------------------------------------------------------------
def _cddl() -> str:
    match = re.search(r"```cddl\n(.*?)```", PROTOCOL.read_text(), re.S)
    assert match, "docs/protocol.md has no ```cddl block"
    return match.group(1)


CDDL = _cddl()
# pycddl 0.6 applies a `.cbor` control inside an array to the wrong element,
# so the envelope is checked with the embedded-CBOR controls removed and the
# two embedded items are checked on their own against their rules.
ENVELOPE_SCHEMA = pycddl.Schema(re.sub(r"\s\.cbor\s+[\w-]+", "", CDDL))
PAYLOAD_SCHEMA = pycddl.Schema("start = payload\n" + CDDL)
PROTECTED_SCHEMA = pycddl.Schema("start = protected-header\n" + CDDL)


def _validates_against_cddl(raw: bytes) -> None:
    ENVELOPE_SCHEMA.validate_cbor(raw)
    protected, _, payload, _ = cbor2.loads(raw).value
    PROTECTED_SCHEMA.validate_cbor(protected)
    PAYLOAD_SCHEMA.validate_cbor(payload)


def test_the_cddl_keeps_the_embedded_cbor_controls() -> None:
    assert "bstr .cbor payload" in CDDL and "bstr .cbor protected-header" in CDDL
    assert "#6.18(COSE_Sign1)" in CDDL


@pytest.mark.parametrize("index", range(len(KINDS) + 1))
def test_sample_records_match_the_cddl(index: int) -> None:
    _validates_against_cddl(sample_records()[index].raw)


@given(any_records())
def test_every_valid_record_matches_the_cddl(record: Record) -> None:
    _validates_against_cddl(record.raw)


def test_records_at_the_limits_match_the_cddl() -> None:
    record = sign_record(ALICE, "memory", MAX_TIME, "x" * limits.MAX_BODY,
                         meta={"k": 2**64 - 1}, at=MAX_TIME)
    _validates_against_cddl(record.raw)


@pytest.mark.parametrize(
    "name",
    ["unknown visibility", "unknown kind", "body too big", "unknown field", "ts zero", "ts of 64 bits",
     "at of 64 bits",
     "missing body", "too many topics", "author 31 bytes", "retract without refs",
     "profile missing xkey", "follow active int", "meta negative"],
)
def test_invalid_payloads_fail_the_cddl(name: str) -> None:
    make = next(m for n, m, _ in SCHEMA_CASES if n == name)
    with pytest.raises(pycddl.ValidationError):
        PAYLOAD_SCHEMA.validate_cbor(cbor2.dumps(make(), canonical=True))


def test_invalid_headers_fail_the_cddl() -> None:
    with pytest.raises(pycddl.ValidationError):
        PROTECTED_SCHEMA.validate_cbor(cbor2.dumps({1: -7}))
    protected, unprotected, payload, signature = cbor2.loads(sample_records()[1].raw).value
    for bad in (
        cbor2.CBORTag(17, [protected, {}, payload, signature]),  # not tag 18
        [protected, {}, payload, signature],  # untagged
        cbor2.CBORTag(18, [protected, {}, payload, signature[:63]]),  # short signature
        cbor2.CBORTag(18, [protected, {}, payload]),  # three elements
    ):
        with pytest.raises(pycddl.ValidationError):
            ENVELOPE_SCHEMA.validate_cbor(cbor2.dumps(bad))
    # (pycddl 0.6 accepts any map for `{}`, so a non-empty unprotected header
    # is left to the decoder: test_headers_must_be_exactly_eddsa_and_empty.)


# --- agent ids ------------------------------------------------------------------------------
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
keys = st.binary(min_size=32, max_size=32)


@given(keys)
def test_agent_id_round_trips(key: bytes) -> None:
    text = agent_id(key)
    assert len(text) == 61 and text.startswith(AGENT_ID_PREFIX)
    assert set(text[3:]) <= set(_B32)
    assert parse_agent_id(text) == key
    assert parse_agent_id(f"  {text}\n") == key
    assert parse_agent_id(text.upper().replace("PM1", "pm1", 1)) == key


@given(keys, st.integers(0, 57), st.sampled_from(_B32))
def test_agent_id_checksum_catches_every_single_character_change(key: bytes, i: int, c: str) -> None:
    text = agent_id(key)
    position = 3 + i
    assume(text[position] != c)
    changed = text[:position] + c + text[position + 1 :]
    with pytest.raises(UsageError, match="checksum"):
        parse_agent_id(changed)


def test_agent_id_errors_say_what_is_wrong() -> None:
    text = ALICE.agent_id
    with pytest.raises(UsageError, match="start with 'pm1'"):
        parse_agent_id("xx" + text[2:])
    with pytest.raises(UsageError, match="wrong length"):
        parse_agent_id(text[:-1])
    with pytest.raises(UsageError, match="invalid characters"):
        parse_agent_id(text[:-1] + "1")
    with pytest.raises(UsageError, match="checksum"):
        parse_agent_id(text[:10] + ("a" if text[10] != "a" else "b") + text[11:])
    for bad in ("", "pm1", "pm1" + "0" * 58, text + "a"):
        with pytest.raises(UsageError):
            parse_agent_id(bad)


def test_identity_keys_and_files(tmp_path: Path) -> None:
    ident = Identity.generate()
    assert parse_agent_id(ident.agent_id) == ident.public_key
    save_identity(ident, tmp_path)
    assert (tmp_path / "identity.key").stat().st_mode & 0o777 == 0o600
    loaded = load_identity(tmp_path)
    assert loaded.public_key == ident.public_key
    assert loaded.message_public_key == ident.message_public_key
    with pytest.raises(FileExistsError):
        save_identity(ident, tmp_path)  # never overwrites a key


# --- hybrid logical clock -------------------------------------------------------------------
WALL = st.integers(0, 2**47)


class ClockMachine(RuleBasedStateMachine):
    """Any interleaving of now() and observe() with arbitrary wall times:
    timestamps strictly increase, never fall behind what was observed, and
    follow the wall clock when it moves ahead."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = HybridClock()
        self.issued: list[int] = []
        self.highest = 0  # greatest timestamp issued or accepted

    @rule(wall=WALL)
    def now(self, wall: int) -> None:
        ts = self.clock.now(wall)
        assert ts > self.highest
        assert physical_ms(ts) >= wall  # at or ahead of the wall clock
        if wall > physical_ms(self.highest):
            assert ts == from_ms(wall)  # follows the wall clock with counter 0
        self.highest = ts
        self.issued.append(ts)

    @rule(wall=WALL, remote=st.integers(1, 2**63), skew=st.integers(0, 10**6))
    def observe(self, wall: int, remote: int, skew: int) -> None:
        accepted = self.clock.observe(remote, wall, skew)
        assert accepted == (physical_ms(remote) <= wall + skew)
        if accepted:
            self.highest = max(self.highest, remote)

    @rule(wall=WALL, delta=st.integers(0, 1000))
    def observe_near(self, wall: int, delta: int) -> None:
        """A remote timestamp just ahead of ours, as a live peer sends."""
        remote = self.highest + delta + 1
        if self.clock.observe(remote, max(wall, physical_ms(remote)), 0):
            self.highest = remote

    @precondition(lambda self: self.highest > 0)
    @rule(n=st.integers(1, 3))
    def burst_in_one_millisecond(self, n: int) -> None:
        wall = physical_ms(self.highest)
        for _ in range(n):
            ts = self.clock.now(wall)
            assert ts > self.highest
            self.highest = ts
            self.issued.append(ts)

    @invariant()
    def never_behind(self) -> None:
        assert self.clock.last == self.highest
        assert self.issued == sorted(set(self.issued))


TestClock = ClockMachine.TestCase


def test_clock_counter_exhaustion_borrows_the_next_millisecond() -> None:
    clock = HybridClock(from_ms(1000, (1 << COUNTER_BITS) - 1))
    assert clock.now(1000) == from_ms(1001)
    assert clock.now(5) == from_ms(1001, 1)
    assert not clock.observe(from_ms(10**9), 1000, 1000)
    assert clock.last == from_ms(1001, 1)


# --- WHEN --------------------------------------------------------------------------------------
NOW = 1_700_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - 30 * 60_000),
        ("2h", NOW - 2 * 3_600_000),
        ("7d", NOW - 7 * 86_400_000),
        ("1w", NOW - 604_800_000),
        ("45s", NOW - 45_000),
        (" 3 d ", NOW - 3 * 86_400_000),
        ("0m", NOW),
        ("2024-01-02", 1704153600000),
        ("2024-01-02T03:04:05", 1704164645000),
        ("2024-01-02T03:04:05Z", 1704164645000),
        ("2024-01-02T03:04:05.250Z", 1704164645250),
        ("2024-01-02T05:04:05+02:00", 1704164645000),
        ("2024-01-02 03:04", 1704164640000),
        ("1970-01-01", 0),
    ],
)
def test_parse_when_ages_and_iso_forms(text: str, expected: int) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "yesterday", "5x", "-3d", "3.5h", "2024-13-01", "2024-01-02T25:00", "1969-12-31", "d7", "1 2h",
             "99999999d"]
)
def test_parse_when_rejects_bad_input_with_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match=r"time"):
        parse_when(text, NOW)


@given(st.integers(0, 253402300799999))  # up to 9999-12-31
def test_format_and_parse_when_round_trip(ms: int) -> None:
    text = format_ms(ms)
    assert text.endswith("Z") and len(text) == 24
    assert parse_when(text, NOW) == ms
    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == datetime.fromtimestamp(ms / 1000, UTC).replace(
        microsecond=(ms % 1000) * 1000
    )


def test_format_ms_shows_any_64_bit_time() -> None:
    # a record may carry any uint64 `at`; showing it must not fail
    assert format_ms(2**64 - 1) == "9999-12-31T23:59:59.999Z"
    assert format_ms(0) == "1970-01-01T00:00:00.000Z"


@given(memory_records())
def test_memory_records_strategy_is_valid(record: Record) -> None:
    assert record.kind == "memory" and record.text
