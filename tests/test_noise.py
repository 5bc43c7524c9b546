"""Tests of p2pmem.protocol.noise: published Noise vectors, then the secure channel.

The vectors pin the Noise state machine byte for byte against two independent
implementations (cacophony, snow); the channel tests attack everything a peer
controls: framing, ciphertext, ordering, identity proofs and sizes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmem.errors import P2pmemError
from p2pmem.protocol.noise import (
    PROTOCOL_NAME,
    HandshakeComplete,
    HandshakeState,
    LocalProtocolError,
    MessageReceived,
    ProtocolError,
    SecureChannel,
)

VECTOR_DIR = Path(__file__).parent / "vectors" / "noise"
_SUPPORTED_PREFIX = "Noise_XX_25519_ChaChaPoly_"
_SUPPORTED_HASHES = {"SHA256", "SHA512", "BLAKE2b", "BLAKE2s"}


def _load_vectors() -> list[Any]:
    params = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        for index, vector in enumerate(json.loads(path.read_text())["vectors"]):
            name = vector["protocol_name"]
            supported = (
                name.startswith(_SUPPORTED_PREFIX)
                and name.removeprefix(_SUPPORTED_PREFIX) in _SUPPORTED_HASHES
                and not vector.get("init_psks")
                and not vector.get("resp_psks")
            )
            marks = [] if supported else [pytest.mark.skip(reason=f"unsupported {name}")]
            params.append(pytest.param(vector, id=f"{path.stem}-{index}-{name}", marks=marks))
    return params


VECTORS = _load_vectors()


def test_vectors_cover_every_hash() -> None:
    """The vector files are present and exercise all four hashes."""
    names = {p.values[0]["protocol_name"] for p in VECTORS}
    assert {_SUPPORTED_PREFIX + h for h in _SUPPORTED_HASHES} <= names
    assert len(VECTORS) >= 8


def _x25519(hex_key: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key))


@pytest.mark.parametrize("vector", VECTORS)
def test_noise_vector(vector: dict[str, Any]) -> None:
    """Every handshake and transport ciphertext and the handshake hash match."""
    name = vector["protocol_name"]
    initiator = HandshakeState(
        name,
        True,
        prologue=bytes.fromhex(vector["init_prologue"]),
        s=_x25519(vector["init_static"]),
        e=_x25519(vector["init_ephemeral"]),
    )
    responder = HandshakeState(
        name,
        False,
        prologue=bytes.fromhex(vector["resp_prologue"]),
        s=_x25519(vector["resp_static"]),
        e=_x25519(vector["resp_ephemeral"]),
    )
    messages = vector["messages"]
    assert len(messages) > 3
    for i, message in enumerate(messages):
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        # Messages alternate initiator -> responder, responder -> initiator,
        # through the handshake and on into transport.
        sender, receiver = (initiator, responder) if i % 2 == 0 else (responder, initiator)
        if i < 3:
            assert sender.write_message(payload) == expected, f"handshake message {i}"
            assert receiver.read_message(expected) == payload
        else:
            assert initiator.complete and responder.complete
            send, _ = sender.transport()
            _, recv = receiver.transport()
            assert send.encrypt_with_ad(b"", payload) == expected, f"transport message {i}"
            assert recv.decrypt_with_ad(b"", expected) == payload
    assert initiator.handshake_hash == responder.handshake_hash
    if "handshake_hash" in vector:
        assert initiator.handshake_hash == bytes.fromhex(vector["handshake_hash"])
    assert initiator.remote_static == responder.local_static
    assert responder.remote_static == initiator.local_static


def test_unsupported_protocol_name() -> None:
    with pytest.raises(ValueError):
        HandshakeState("Noise_NN_25519_ChaChaPoly_SHA256", True)
    with pytest.raises(ValueError):
        HandshakeState("Noise_XX_448_ChaChaPoly_SHA256", True)


# --------------------------------------------------------------------------
# Secure channel helpers
# --------------------------------------------------------------------------

ALICE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
BOB = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
MALLORY = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))


def _pub(key: Ed25519PrivateKey) -> bytes:
    return SecureChannel(True, key).identity


def _events(channel: SecureChannel) -> list[Any]:
    out = []
    while (event := channel.next_event()) is not None:
        out.append(event)
    return out


def _pair(**kwargs: Any) -> tuple[SecureChannel, SecureChannel]:
    """An established (initiator, responder) pair, with events drained."""
    a = SecureChannel(True, ALICE, expected_peer=_pub(BOB), **kwargs)
    b = SecureChannel(False, BOB, expected_peer=_pub(ALICE), **kwargs)
    b.receive_data(a.initiate())
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    assert _events(a) == [HandshakeComplete(_pub(BOB))]
    assert _events(b) == [HandshakeComplete(_pub(ALICE))]
    return a, b


def _feed(channel: SecureChannel, data: bytes, cuts: list[int]) -> None:
    """Deliver ``data`` in pieces split at the (relative) positions in ``cuts``."""
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in zip(positions, positions[1:], strict=False):
        channel.receive_data(data[start:end])


def _messages(channel: SecureChannel) -> list[bytes]:
    out = []
    for event in _events(channel):
        assert isinstance(event, MessageReceived)
        out.append(event.data)
    return out


# --------------------------------------------------------------------------
# Happy paths
# --------------------------------------------------------------------------


@given(
    a_msgs=st.lists(st.binary(max_size=600), max_size=5),
    b_msgs=st.lists(st.binary(max_size=600), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_handshake_and_messages_with_fragmentation(
    a_msgs: list[bytes], b_msgs: list[bytes], cuts: list[int]
) -> None:
    """Any fragmentation of either byte stream yields the same events, in order."""
    a = SecureChannel(True, ALICE, expected_peer=_pub(BOB), max_frame=256)
    b = SecureChannel(False, BOB, max_frame=256)
    _feed(b, a.initiate(), cuts)
    assert a.next_event() is None and b.next_event() is None
    _feed(a, b.data_to_send(), cuts)
    assert _events(a) == [HandshakeComplete(_pub(BOB))]
    for m in a_msgs:  # the initiator may talk right after message 3
        a.send_message(m)
    _feed(b, a.data_to_send(), cuts)
    events = _events(b)
    assert events[0] == HandshakeComplete(_pub(ALICE))
    assert [e.data for e in events[1:]] == a_msgs
    for m in b_msgs:
        b.send_message(m)
    _feed(a, b.data_to_send(), cuts)
    assert _messages(a) == b_msgs
    assert a.handshake_hash == b.handshake_hash is not None
    assert a.remote_identity == _pub(BOB) and b.remote_identity == _pub(ALICE)


def test_large_message_split_and_reassembled() -> None:
    a, b = _pair()
    big = random.Random(7).randbytes(300_000)
    a.send_message(big)
    wire = a.data_to_send()
    frames = 0
    offset = 0
    while offset < len(wire):
        length = int.from_bytes(wire[offset : offset + 2], "big")
        assert length <= 65535
        offset += 2 + length
        frames += 1
    assert frames == 5  # ceil(300000 / (65535 - 17))
    b.receive_data(wire)
    assert _messages(b) == [big]


def test_empty_message_and_exact_frame_boundaries() -> None:
    a, b = _pair(max_frame=256)
    chunk = 256 - 17
    sent = [b"", b"x" * chunk, b"y" * (chunk + 1), b"z" * (2 * chunk)]
    for m in sent:
        a.send_message(m)
    b.receive_data(a.data_to_send())
    assert _messages(b) == sent


def test_deterministic_with_injected_keys() -> None:
    """With every key injected, the whole byte stream is reproducible."""

    def run() -> bytes:
        keys = [X25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(1, 5)]
        a = SecureChannel(True, ALICE, static_key=keys[0], ephemeral_key=keys[1])
        b = SecureChannel(False, BOB, static_key=keys[2], ephemeral_key=keys[3])
        first = a.initiate()
        b.receive_data(first)
        second = b.data_to_send()
        a.receive_data(second)
        a.send_message(b"hello")
        third = a.data_to_send()
        return first + second + third

    assert run() == run()


# --------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------


def test_wrong_expected_identity_rejected_by_initiator() -> None:
    a = SecureChannel(True, ALICE, expected_peer=_pub(MALLORY))
    b = SecureChannel(False, BOB)
    b.receive_data(a.initiate())
    with pytest.raises(ProtocolError, match="expected"):
        a.receive_data(b.data_to_send())
    assert a.closed and a.remote_identity is None
    with pytest.raises(ProtocolError):
        a.next_event()
    with pytest.raises(ProtocolError):
        a.data_to_send()


def test_wrong_expected_identity_rejected_by_responder() -> None:
    a = SecureChannel(True, ALICE)
    b = SecureChannel(False, BOB, expected_peer=_pub(MALLORY))
    b.receive_data(a.initiate())
    a.receive_data(b.data_to_send())
    with pytest.raises(ProtocolError, match="expected"):
        b.receive_data(a.data_to_send())
    assert b.closed and b.remote_identity is None


class _ForgingChannel(SecureChannel):
    """A peer whose identity proof is produced by ``forge(binding, honest_proof)``."""

    def __init__(self, forge: Callable[[bytes, bytes], bytes], *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._forge = forge

    def _proof(self, binding: bytes) -> bytes:
        return self._forge(binding, super()._proof(binding))


def _sig_over(key: Ed25519PrivateKey, static: bytes, binding: bytes) -> bytes:
    return key.sign(b"p2pmem-noise-v1" + static + binding)


def _bad_proofs() -> dict[str, Callable[[SecureChannel, bytes, bytes], bytes]]:
    """Forgeries, as functions of (forging channel, binding, honest proof)."""

    def proof(ident: bytes, sig: bytes) -> bytes:
        return cbor2.dumps({"id": ident, "sig": sig}, canonical=True)

    return {
        "wrong binding (replay from another session)": lambda ch, h, _p: proof(
            ch.identity, _sig_over(ALICE, ch._handshake.local_static, bytes(len(h)))
        ),
        "other noise static key": lambda ch, h, _p: proof(
            ch.identity, _sig_over(ALICE, bytes(32), h)
        ),
        "claims another identity": lambda ch, h, _p: proof(
            _pub(BOB), _sig_over(ALICE, ch._handshake.local_static, h)
        ),
        "not cbor": lambda ch, h, p: b"\xff" + p[1:],
        "truncated": lambda ch, h, p: p[:-1],
        "trailing bytes": lambda ch, h, p: p + b"\x00",
        "extra key": lambda ch, h, p: cbor2.dumps({**cbor2.loads(p), "x": 1}, canonical=True),
        "short key": lambda ch, h, p: proof(ch.identity[:31], cbor2.loads(p)["sig"]),
        "text sig": lambda ch, h, p: cbor2.dumps(
            {"id": ch.identity, "sig": "s" * 64}, canonical=True
        ),
        "not a map": lambda ch, h, p: cbor2.dumps([ch.identity, b"\x00" * 64]),
        "non-canonical": lambda ch, h, p: b"\xbf" + p[1:] + b"\xff",
        "empty": lambda ch, h, p: b"",
        "deep nesting": lambda ch, h, p: b"\x81" * 400 + b"\x00",
    }


@pytest.mark.parametrize("forger_is_initiator", [True, False])
@pytest.mark.parametrize("kind", sorted(_bad_proofs()))
def test_bad_identity_proof_rejected(kind: str, forger_is_initiator: bool) -> None:
    bad = _bad_proofs()[kind]
    holder: list[SecureChannel] = []
    forger = _ForgingChannel(lambda h, p: bad(holder[0], h, p), forger_is_initiator, ALICE)
    holder.append(forger)
    victim = SecureChannel(not forger_is_initiator, BOB)
    initiator, responder = (forger, victim) if forger_is_initiator else (victim, forger)
    responder.receive_data(initiator.initiate())
    if forger_is_initiator:
        initiator.receive_data(responder.data_to_send())
        with pytest.raises(ProtocolError):
            responder.receive_data(initiator.data_to_send())
    else:
        with pytest.raises(ProtocolError):
            initiator.receive_data(responder.data_to_send())
    assert victim.closed and victim.remote_identity is None


def test_handshakes_have_distinct_handshake_hashes() -> None:
    """Same identities, fresh ephemerals: a different binding, so proofs cannot move."""
    a1, b1 = _pair()
    a2, b2 = _pair()
    assert a1.handshake_hash != a2.handshake_hash


# --------------------------------------------------------------------------
# Hostile transport input
# --------------------------------------------------------------------------


@given(
    message=st.binary(min_size=0, max_size=300),
    position=st.integers(min_value=0),
    xor=st.integers(min_value=1, max_value=255),
)
def test_tampered_transport_byte_rejected(message: bytes, position: int, xor: int) -> None:
    """Flipping any bits of a frame, length prefix included, never delivers it."""
    a, b = _pair()
    a.send_message(message)
    frame = bytearray(a.data_to_send())
    frame[position % len(frame)] ^= xor
    # Trailing stream bytes make a lengthened prefix complete, so it is judged now.
    with pytest.raises(ProtocolError):
        b.receive_data(bytes(frame) + bytes(65_537))
    assert b.closed
    with pytest.raises(ProtocolError):
        b.next_event()


def test_replayed_frame_rejected() -> None:
    a, b = _pair()
    a.send_message(b"once")
    frame = a.data_to_send()
    b.receive_data(frame)
    with pytest.raises(ProtocolError, match="replayed"):
        b.receive_data(frame)
    assert b.next_event() == MessageReceived(b"once")  # authenticated before the replay
    with pytest.raises(ProtocolError, match="closed"):
        b.next_event()


def test_reordered_frames_rejected() -> None:
    a, b = _pair()
    a.send_message(b"first")
    first = a.data_to_send()
    a.send_message(b"second")
    second = a.data_to_send()
    with pytest.raises(ProtocolError):
        b.receive_data(second + first)


def test_reflected_frame_rejected() -> None:
    """A frame sent back to its author fails: each direction has its own key."""
    a, b = _pair()
    a.send_message(b"echo")
    with pytest.raises(ProtocolError):
        a.receive_data(a.data_to_send())


def test_frame_length_over_limit_rejected_from_header() -> None:
    a, b = _pair(max_frame=1024)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        b.receive_data((1025).to_bytes(2, "big"))  # no body needed to judge it


def test_empty_and_short_frames_rejected() -> None:
    _, b = _pair()
    with pytest.raises(ProtocolError, match="empty frame"):
        b.receive_data(b"\x00\x00")
    _, b = _pair()
    with pytest.raises(ProtocolError, match="too short"):
        b.receive_data(b"\x00\x10" + bytes(16))


def test_handshake_message_1_of_wrong_length_rejected() -> None:
    b = SecureChannel(False, BOB)
    with pytest.raises(ProtocolError, match="message 1"):
        b.receive_data(b"\x00\x21")


def test_low_order_ephemeral_rejected() -> None:
    b = SecureChannel(False, BOB)
    with pytest.raises(ProtocolError, match="low-order"):
        b.receive_data(b"\x00\x20" + bytes(32))  # the responder's ee fails
    a = SecureChannel(True, ALICE)
    a.initiate()
    with pytest.raises(ProtocolError, match="low-order"):
        a.receive_data(b"\x00\xcc" + bytes(204))


@given(garbage=st.binary(max_size=400), cuts=st.lists(st.integers(0, 500), max_size=5))
def test_garbage_at_responder_start_only_protocol_error(garbage: bytes, cuts: list[int]) -> None:
    b = SecureChannel(False, BOB)
    try:
        _feed(b, garbage, cuts)
        b.data_to_send()
        b.next_event()
    except ProtocolError:
        assert b.closed


@given(garbage=st.binary(max_size=400), cuts=st.lists(st.integers(0, 500), max_size=5))
def test_garbage_at_initiator_only_protocol_error(garbage: bytes, cuts: list[int]) -> None:
    a = SecureChannel(True, ALICE)
    a.initiate()
    try:
        _feed(a, garbage, cuts)
        a.next_event()
    except ProtocolError:
        assert a.closed


@given(data=st.data())
def test_garbage_after_valid_message_1_only_protocol_error(data: st.DataObject) -> None:
    """Garbage shaped like a plausible message 2 or 3 still only yields ProtocolError."""
    a = SecureChannel(True, ALICE)
    b = SecureChannel(False, BOB)
    b.receive_data(a.initiate())
    msg2 = b.data_to_send()
    target, size = data.draw(st.sampled_from([(a, len(msg2) - 2), (b, 170)]))
    body = data.draw(st.binary(min_size=size - 40, max_size=size + 40))
    try:
        target.receive_data(len(body).to_bytes(2, "big") + body)
    except ProtocolError:
        assert target.closed


@given(payload=st.binary(max_size=200))
def test_arbitrary_proof_payload_only_protocol_error(payload: bytes) -> None:
    forger = _ForgingChannel(lambda h, p: payload, False, BOB)
    victim = SecureChannel(True, ALICE)
    forger.receive_data(victim.initiate())
    with pytest.raises(ProtocolError):
        victim.receive_data(forger.data_to_send())


def test_oversized_reassembled_message_rejected() -> None:
    a, b = _pair(max_frame=256)
    b.max_message = 1000  # the receiver's own, stricter limit
    a.send_message(b"x" * 1001)
    with pytest.raises(ProtocolError, match="max_message"):
        b.receive_data(a.data_to_send())


def test_oversized_single_frame_message_rejected() -> None:
    a, b = _pair()
    b.max_message = 10
    a.send_message(b"x" * 11)
    with pytest.raises(ProtocolError, match="max_message"):
        b.receive_data(a.data_to_send())


def test_limit_exact_message_accepted() -> None:
    a, b = _pair(max_frame=256, max_message=1000)
    a.send_message(b"x" * 1000)
    b.receive_data(a.data_to_send())
    assert _messages(b) == [b"x" * 1000]


# --------------------------------------------------------------------------
# Local misuse
# --------------------------------------------------------------------------


def test_local_misuse() -> None:
    a = SecureChannel(True, ALICE)
    b = SecureChannel(False, BOB)
    with pytest.raises(LocalProtocolError):
        b.initiate()
    with pytest.raises(LocalProtocolError):
        a.send_message(b"too early")
    a.initiate()
    with pytest.raises(LocalProtocolError):
        a.initiate()
    a2, _ = _pair(max_message=10)
    with pytest.raises(LocalProtocolError):
        a2.send_message(b"x" * 11)
    a2.send_message(b"x" * 10)  # the channel is still usable
    assert not a2.closed
    with pytest.raises(ValueError):
        SecureChannel(True, ALICE, expected_peer=b"short")
    with pytest.raises(ValueError):
        SecureChannel(True, ALICE, max_frame=70_000)


def test_data_before_initiate_is_protocol_error() -> None:
    a = SecureChannel(True, ALICE)
    with pytest.raises(ProtocolError, match="before the handshake"):
        a.receive_data(b"\x00")
    assert a.closed


def test_error_types() -> None:
    assert issubclass(ProtocolError, P2pmemError)
    assert ProtocolError("why").reason == "why"
    assert PROTOCOL_NAME == "Noise_XX_25519_ChaChaPoly_SHA256"


# --------------------------------------------------------------------------
# Random interleavings
# --------------------------------------------------------------------------


class ChannelMachine(RuleBasedStateMachine):
    """Both sides send at will; bytes move in arbitrary pieces; delivery stays in order."""

    def __init__(self) -> None:
        super().__init__()
        self.a = SecureChannel(True, ALICE, max_frame=256, max_message=2000)
        self.b = SecureChannel(False, BOB, max_frame=256, max_message=2000)
        self.wire = {"a": bytearray(self.a.initiate()), "b": bytearray()}
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self.complete = {"a": False, "b": False}

    def _channel(self, side: str) -> SecureChannel:
        return self.a if side == "a" else self.b

    def _collect(self, side: str) -> None:
        channel = self._channel(side)
        for event in _events(channel):
            if isinstance(event, HandshakeComplete):
                assert not self.complete[side]
                self.complete[side] = True
            else:
                assert self.complete[side]
                self.got[side].append(event.data)
        self.wire[side] += channel.data_to_send()

    @rule(side=st.sampled_from(["a", "b"]), data=st.binary(max_size=1200))
    def send(self, side: str, data: bytes) -> None:
        if not self.complete[side]:
            return
        self._channel(side).send_message(data)
        self.sent[side].append(data)
        self._collect(side)

    @rule(side=st.sampled_from(["a", "b"]), size=st.integers(min_value=1, max_value=700))
    def deliver(self, side: str, size: int) -> None:
        other = "b" if side == "a" else "a"
        chunk = bytes(self.wire[side][:size])
        del self.wire[side][:size]
        self._channel(other).receive_data(chunk)
        self._collect(other)

    @invariant()
    def delivered_in_order(self) -> None:
        for side, other in (("a", "b"), ("b", "a")):
            got = self.got[other]
            assert got == self.sent[side][: len(got)]

    def teardown(self) -> None:
        for _ in range(4):
            for side, other in (("a", "b"), ("b", "a")):
                chunk = bytes(self.wire[side])
                self.wire[side].clear()
                self._channel(other).receive_data(chunk)
                self._collect(other)
        assert self.complete == {"a": True, "b": True}
        assert self.got["b"] == self.sent["a"]
        assert self.got["a"] == self.sent["b"]


ChannelMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
TestChannelMachine = ChannelMachine.TestCase
