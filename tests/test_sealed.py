"""Sealed direct messages and the Maildir export.

What must hold: only the addressee can read a message; any change to the
ciphertext, the ephemeral key or the outer record is detected; a third party
cannot re-sign someone else's sealed body as its own; malformed input only
ever raises SealedError; a Maildir export is readable by the standard library
and idempotent.
"""

from __future__ import annotations

import dataclasses
import email.header
import email.utils
import mailbox
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.agent.maildir import write_maildir
from p2pmem.errors import P2pmemError, RecordError
from p2pmem.model.clock import from_ms, physical_ms
from p2pmem.model.identity import Identity, agent_id
from p2pmem.model.record import decode_record, sign_record
from p2pmem.model.sealed import (
    NONCE,
    OpenedMessage,
    SealedError,
    _aad,
    _derive_key,
    open_message,
    seal_message,
)

ALICE = Identity.from_seeds(bytes([1]) * 32, bytes([2]) * 32)
BOB = Identity.from_seeds(bytes([3]) * 32, bytes([4]) * 32)
MALLORY = Identity.from_seeds(bytes([5]) * 32, bytes([6]) * 32)
TS = from_ms(1_700_000_000_123, 7)

texts = st.text(max_size=300)


def seal(text: str = "hello Bob", ts: int = TS, sender: Identity = ALICE, to: Identity = BOB):
    return seal_message(sender, to.public_key, to.message_public_key, text, ts)


def resign(body: dict, ts: int = TS, signer: Identity = ALICE):
    """A fully valid record (good outer signature) carrying ``body``."""
    return sign_record(signer, "message", ts, dict(body))


def flip(data: bytes, index: int, mask: int) -> bytes:
    i = index % len(data)
    return data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]


# --- sealing and opening --------------------------------------------------


@given(text=texts, ms=st.integers(1, 2**47 - 1), counter=st.integers(0, 2**16 - 1))
def test_seal_then_open_gives_text_sender_and_ts(text: str, ms: int, counter: int) -> None:
    ts = from_ms(ms, counter)
    record = seal_message(ALICE, BOB.public_key, BOB.message_public_key, text, ts, session="s1")
    assert record.kind == "message" and record.visibility == "public"
    assert record.body["to"] == BOB.public_key
    if len(text.encode()) >= 8:  # shorter strings may occur in random bytes by chance
        assert text.encode() not in record.raw  # the text never travels in clear
    opened = open_message(BOB, record)
    assert opened == OpenedMessage(
        id=record.id.hex(),
        sender=ALICE.public_key,
        recipient=BOB.public_key,
        text=text,
        ts=ts,
        session="s1",
    )


def test_each_seal_uses_a_fresh_ephemeral_key() -> None:
    a, b = seal("same"), seal("same")
    assert a.body["epk"] != b.body["epk"] and a.body["ct"] != b.body["ct"]


def test_json_form_follows_the_contract() -> None:
    opened = open_message(BOB, seal("hi"))
    assert opened.to_json() == {
        "id": opened.id,
        "from": ALICE.agent_id,
        "to": BOB.agent_id,
        "text": "hi",
        "ts": "2023-11-14T22:13:20.123Z",
    }


def test_round_trips_through_decode_record_then_opens() -> None:
    record = seal("over the wire ✉")
    decoded = decode_record(record.raw)
    assert decoded == record
    assert open_message(BOB, decoded).text == "over the wire ✉"


def test_a_third_identity_cannot_open() -> None:
    record = seal("for Bob only")
    with pytest.raises(SealedError, match="not addressed"):
        open_message(MALLORY, record)
    # Nor the sender: a sealed box is readable by its recipient alone.
    with pytest.raises(SealedError):
        open_message(ALICE, record)


def test_a_recipient_whose_message_key_differs_cannot_open() -> None:
    # Same Ed25519 identity, another X25519 key (e.g. a stale profile).
    bob2 = Identity(BOB.signing_key, X25519PrivateKey.from_private_bytes(bytes([9]) * 32))
    with pytest.raises(SealedError, match="does not decrypt"):
        open_message(bob2, seal())


@given(index=st.integers(0, 10_000), mask=st.integers(1, 255), field=st.sampled_from(["ct", "epk"]))
def test_any_byte_flip_in_ciphertext_or_ephemeral_key_fails(
    index: int, mask: int, field: str
) -> None:
    record = seal("tamper with me")
    body = dict(record.body)
    body[field] = flip(body[field], index, mask)
    with pytest.raises(SealedError):
        open_message(BOB, resign(body))


@given(index=st.integers(0, 10_000), mask=st.integers(1, 255))
def test_any_byte_flip_in_the_outer_record_is_rejected_by_decode(index: int, mask: int) -> None:
    raw = seal("signed envelope").raw
    with pytest.raises(RecordError):
        decode_record(flip(raw, index, mask))


def test_truncated_ciphertext_fails() -> None:
    record = seal("x")
    for n in (0, 1, 15, 16, len(record.body["ct"]) - 1):
        body = dict(record.body, ct=record.body["ct"][:n])
        with pytest.raises(SealedError):
            open_message(BOB, resign(body))


def test_re_signing_someone_elses_body_fails() -> None:
    original = seal("from Alice, to Bob")
    forged = resign(original.body, ts=original.ts, signer=MALLORY)
    assert decode_record(forged.raw).author == MALLORY.public_key  # a valid record...
    with pytest.raises(SealedError, match="re-signed"):
        open_message(BOB, forged)  # ...whose body does not open under Mallory's name


def test_re_dating_fails() -> None:
    original = seal("dated")
    with pytest.raises(SealedError):
        open_message(BOB, resign(original.body, ts=original.ts + 1))


def test_oversized_text_is_rejected() -> None:
    assert open_message(BOB, seal("a" * limits.MAX_BODY)).text == "a" * limits.MAX_BODY
    with pytest.raises(RecordError, match="over the limit"):
        seal("a" * (limits.MAX_BODY + 1))
    with pytest.raises(RecordError, match="over the limit"):
        seal("é" * (limits.MAX_BODY // 2 + 1))  # counted in UTF-8 bytes


def test_bad_seal_inputs() -> None:
    with pytest.raises(RecordError):
        seal_message(ALICE, b"short", BOB.message_public_key, "x", TS)
    with pytest.raises(RecordError):
        seal_message(ALICE, BOB.public_key, b"short", "x", TS)
    with pytest.raises(RecordError):
        seal_message(ALICE, BOB.public_key, BOB.message_public_key, "\ud800", TS)
    with pytest.raises(RecordError):
        seal_message(ALICE, BOB.public_key, BOB.message_public_key, "x", 0)
    with pytest.raises(SealedError, match="low-order"):
        seal_message(ALICE, BOB.public_key, bytes(32), "x", TS)


def test_a_non_message_record_is_refused() -> None:
    memory = sign_record(ALICE, "memory", TS, "just a memory")
    with pytest.raises(SealedError, match="not a message"):
        open_message(BOB, memory)


def test_a_low_order_ephemeral_key_is_refused() -> None:
    body = dict(seal().body, epk=bytes(32))
    with pytest.raises(SealedError, match="low-order"):
        open_message(BOB, resign(body))


body_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    body=body_values
    | st.fixed_dictionaries(
        {"to": st.just(BOB.public_key)},
        optional={"epk": body_values | st.binary(min_size=32, max_size=32), "ct": body_values},
    ),
    kind=st.sampled_from(["message", "memory"]),
    ts=st.integers(-5, 2**65) | st.just(TS),
)
def test_malformed_bodies_raise_only_sealed_error(body: object, kind: str, ts: int) -> None:
    # Bypass the schema on purpose: open_message must not trust its input.
    record = dataclasses.replace(seal(), body=body, kind=kind, ts=ts)
    with pytest.raises(SealedError):
        open_message(BOB, record)


def _seal_plaintext(plaintext: bytes, ts: int = TS):
    """A correctly sealed and signed record around arbitrary plaintext bytes,
    as a buggy or malicious (but key-holding) sender could make."""
    eph = X25519PrivateKey.from_private_bytes(bytes([8]) * 32)
    epk = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(BOB.message_public_key))
    key = _derive_key(shared, epk, BOB.message_public_key, ALICE.public_key, BOB.public_key)
    ct = ChaCha20Poly1305(key).encrypt(NONCE, plaintext, _aad(ALICE.public_key, BOB.public_key, ts))
    return resign({"to": BOB.public_key, "epk": epk, "ct": ct}, ts=ts)


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\xff",
        cbor2.dumps("just a string"),
        cbor2.dumps({"text": 5}),
        cbor2.dumps({"txt": "x"}),
        cbor2.dumps({"text": "x"}) + b"\x00",
        b"\x81" * 5000 + b"\x00",  # deeply nested arrays
        b"\x7b\x7f\xff\xff\xff\xff\xff\xff\xff",  # claims a huge string
    ],
)
def test_bad_plaintext_raises_sealed_error(plaintext: bytes) -> None:
    with pytest.raises(SealedError, match="plaintext"):
        open_message(BOB, _seal_plaintext(plaintext))


def test_unknown_plaintext_fields_are_ignored() -> None:
    record = _seal_plaintext(cbor2.dumps({"text": "hi", "reply_to": b"\x01" * 32}, canonical=True))
    assert open_message(BOB, record).text == "hi"


def test_sealed_error_is_a_p2pmem_error() -> None:
    assert issubclass(SealedError, P2pmemError)


# --- Maildir -------------------------------------------------------------


def _read(directory: Path) -> dict[str, mailbox.MaildirMessage]:
    box = mailbox.Maildir(directory, factory=None, create=False)
    return {str(m["X-P2pmem-Record-Id"]): m for m in box}


def test_maildir_export_reads_back_and_is_idempotent(tmp_path: Path) -> None:
    directory = tmp_path / "Mail" / "p2pmem"
    texts_ = [
        "plain ascii",
        "ünïcödé — 日本語 🎉\nsecond line",
        "  \n\n  leading blank lines\n" + "x" * 200,
    ]
    records = [seal(t, from_ms(1_700_000_000_000 + i * 61_000, i)) for i, t in enumerate(texts_)]
    opened = [open_message(BOB, r) for r in records]

    assert write_maildir(directory, opened, names={ALICE.public_key: "Alice Ä"}) == 3
    assert {p.name for p in directory.iterdir()} >= {"cur", "new", "tmp"}
    mails = _read(directory)
    assert len(mails) == 3
    for message in opened:
        mail = mails[message.id]
        assert agent_id(ALICE.public_key) in mail["From"]
        decoded_from = str(email.header.make_header(email.header.decode_header(mail["From"])))
        assert "Alice Ä" in decoded_from
        assert agent_id(BOB.public_key) in mail["To"]
        assert mail["Message-ID"] == f"<{message.id}@p2pmem.invalid>"
        when = email.utils.parsedate_to_datetime(mail["Date"])
        expected = datetime.fromtimestamp(physical_ms(message.ts) // 1000, tz=UTC)
        assert when == expected
        body = mail.get_payload(decode=True).decode(mail.get_content_charset())
        assert body.rstrip("\n") == message.text.rstrip("\n")
        assert mail.get_content_charset() == "utf-8"
    subject = str(mails[opened[2].id]["Subject"])
    assert subject == "leading blank lines"
    assert len(str(mails[opened[1].id]["Subject"])) <= 200  # encoded word, first line only

    # Writing again, alone or with a new message, never duplicates.
    assert write_maildir(directory, opened) == 0
    extra = open_message(BOB, seal("one more", from_ms(1_700_000_500_000)))
    assert write_maildir(directory, [*opened, extra, extra]) == 1
    assert len(_read(directory)) == 4


def test_maildir_subject_is_trimmed_and_names_cannot_inject_headers(tmp_path: Path) -> None:
    opened = open_message(BOB, seal("s" * 100 + "\nbody"))
    evil = {ALICE.public_key: "Eve\r\nBcc: victim@example.com"}
    assert write_maildir(tmp_path / "md", [opened], names=evil) == 1
    (mail,) = _read(tmp_path / "md").values()
    assert str(mail["Subject"]) == "s" * 78
    assert mail["Bcc"] is None
    assert agent_id(ALICE.public_key) in mail["From"]


def test_maildir_existing_directory_without_subdirs(tmp_path: Path) -> None:
    (tmp_path / "md").mkdir()
    opened = open_message(BOB, seal(""))
    assert write_maildir(tmp_path / "md", [opened]) == 1
    (mail,) = _read(tmp_path / "md").values()
    assert mail["Subject"] == "(no subject)"
