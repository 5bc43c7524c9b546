"""Noise XX handshake and the p2pmem secure channel, sans-IO.

Two layers live here.

1. The Noise Protocol Framework (revision 34), pattern XX only, with DH 25519,
   cipher ChaChaPoly and any of the hashes SHA256, SHA512, BLAKE2b, BLAKE2s:
   :class:`CipherState`, :class:`SymmetricState`, :class:`HandshakeState`.
   They are written from the specification; every primitive (X25519,
   ChaCha20-Poly1305, the hashes, HMAC) comes from ``cryptography``, so nothing
   cryptographic is hand-rolled here, only the protocol's bookkeeping. The
   published cacophony and snow vectors pin them byte for byte.

2. :class:`SecureChannel`, the p2pmem transport. It runs
   ``Noise_XX_25519_ChaChaPoly_SHA256`` with a fresh X25519 static key per
   channel, and each side proves in its encrypted handshake payload that its
   long-term Ed25519 identity owns that Noise static key in *this* handshake.
   Then it carries length-prefixed encrypted frames, splitting application
   messages larger than one frame. Like h11 and wsproto it never touches a
   socket or a clock: bytes in (:meth:`SecureChannel.receive_data`), events out
   (:meth:`SecureChannel.next_event`), bytes to write out
   (:meth:`SecureChannel.data_to_send`).

Why SHA256 and not BLAKE2b: SHA-256 is already p2pmem's hash (record ids), so
the trust base holds one hash function instead of two; it is the hash of the
most deployed Noise-XX transport (libp2p), which eases review and interop
tests; it is hardware-accelerated on current x86 and ARM CPUs; and its 32-byte
handshake hash keeps the signed identity proof short. BLAKE2b's extra margin
buys nothing here: the handshake's security rests on X25519 (~128 bits).

Randomness: keys come from the operating system's CSPRNG (through
``cryptography``), not from a seeded ``random.Random``, on purpose: a seeded
generator is not a key generator. A simulation that wants byte-identical runs
injects ``static_key`` and ``ephemeral_key``; Ed25519 signatures are
deterministic, so nothing else varies.

Wire format of the channel (every integer big-endian)::

    frame           = length:u16 || body[length]          ; 1 <= length <= max_frame
    handshake msg 1 = e (32)                                ; initiator -> responder, empty payload
    handshake msg 2 = e (32) || enc(s) (48) || enc(proof)   ; responder -> initiator
    handshake msg 3 = enc(s) (48) || enc(proof)             ; initiator -> responder
    transport body  = ChaCha20-Poly1305(flag:u8 || chunk)   ; flag 0 = last chunk, 1 = more follow

    proof = { "id": bstr .size 32,    ; sender's Ed25519 public key
              "sig": bstr .size 64 }  ; Ed25519 over PROOF_CONTEXT || sender's Noise static
                                      ;   public key || h, where h is the Noise handshake hash
                                      ;   just before the proof is encrypted (after the
                                      ;   message's tokens); canonical CBOR (cbor2 canonical=True)

Binding the signature to ``h`` is what stops replay: ``h`` commits to the
prologue, both ephemeral keys and everything said so far, so a proof lifted
from one handshake verifies in no other one, nor in the other direction of
the same handshake (messages 2 and 3 see different ``h``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pmem.errors import P2pmemError
from p2pmem.limits import MAX_FRAME, MAX_HANDSHAKE_PROOF, MAX_MESSAGE
from p2pmem.model.strict import Fields

__all__ = [
    "DHLEN",
    "MAX_NOISE_MESSAGE",
    "MIN_FRAME",
    "PROOF_CONTEXT",
    "PROTOCOL_NAME",
    "CipherState",
    "Event",
    "HandshakeComplete",
    "HandshakeState",
    "LocalProtocolError",
    "MessageReceived",
    "ProtocolError",
    "SecureChannel",
    "SymmetricState",
]

PROTOCOL_NAME = "Noise_XX_25519_ChaChaPoly_SHA256"
PROOF_CONTEXT = b"p2pmem-noise-v1"
DEFAULT_PROLOGUE = b"p2pmem/1"

MAX_NOISE_MESSAGE = 65535  # Noise spec section 3: no message may be longer
DHLEN = 32
TAGLEN = 16
_KEYLEN = 32
_MAX_NONCE = 2**64 - 1  # reserved by the spec (rekey); reaching it ends the channel
_ED25519_KEY = 32
_ED25519_SIG = 64

# The identity proof is canonical CBOR of a fixed shape: 108 bytes today. The
# bound below only guards the handshake frames before they are decrypted.
_MAX_PROOF = MAX_HANDSHAKE_PROOF
_MAX_HANDSHAKE_MSG = DHLEN + (DHLEN + TAGLEN) + _MAX_PROOF + TAGLEN
_MSG2_MIN = DHLEN + DHLEN + TAGLEN + TAGLEN
# A channel must at least fit the handshake; smaller frames would only add overhead.
MIN_FRAME = 256
_FLAG_LAST = 0
_FLAG_MORE = 1
_TRANSPORT_OVERHEAD = TAGLEN + 1  # AEAD tag + continuation flag


class ProtocolError(P2pmemError):
    """The peer broke the protocol (or the channel is already closed because it did).

    Every malformed, tampered, replayed, oversized or unauthenticated input
    surfaces as this one type, so a node can catch it, log ``reason`` and drop
    the connection without knowing the crypto library's exception zoo.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_fields = Fields(ProtocolError)  # the one typed-field reader (p2pmem/model/strict.py)


class LocalProtocolError(P2pmemError):
    """Our own code asked for something the protocol state forbids.

    Kept apart from :class:`ProtocolError` (as h11 does) because it is a bug on
    this side, not hostile input, and it does not close the channel.
    """


# --------------------------------------------------------------------------
# Primitives: thin adapters over `cryptography`
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _HashFunction:
    """One of Noise's HASH choices, with the HMAC and HKDF the spec builds on it."""

    name: str
    algorithm: Callable[[], hashes.HashAlgorithm]
    hashlen: int

    def digest(self, data: bytes) -> bytes:
        h = hashes.Hash(self.algorithm())
        h.update(data)
        return h.finalize()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        # cryptography's HMAC pads with the algorithm's own block size, which
        # is the BLOCKLEN Noise specifies (64 for SHA256/BLAKE2s, 128 otherwise).
        mac = hmac.HMAC(key, self.algorithm())
        mac.update(data)
        return mac.finalize()

    def hkdf2(self, chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
        """Noise's HKDF(chaining_key, ikm, 2) (spec section 4.3), not RFC 5869's API."""
        temp_key = self.hmac(chaining_key, ikm)
        out1 = self.hmac(temp_key, b"\x01")
        out2 = self.hmac(temp_key, out1 + b"\x02")
        return out1, out2


_HASHES: dict[str, _HashFunction] = {
    "SHA256": _HashFunction("SHA256", hashes.SHA256, 32),
    "SHA512": _HashFunction("SHA512", hashes.SHA512, 64),
    "BLAKE2b": _HashFunction("BLAKE2b", lambda: hashes.BLAKE2b(64), 64),
    "BLAKE2s": _HashFunction("BLAKE2s", lambda: hashes.BLAKE2s(32), 32),
}


def _parse_protocol_name(name: str) -> _HashFunction:
    """Accept exactly the protocols this module implements, so a typo fails loudly."""
    parts = name.split("_")
    if (
        len(parts) != 5
        or parts[0] != "Noise"
        or parts[1] != "XX"
        or parts[2] != "25519"
        or parts[3] != "ChaChaPoly"
        or parts[4] not in _HASHES
    ):
        raise ValueError(f"unsupported Noise protocol {name!r}")
    return _HASHES[parts[4]]


def _public_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; a low-order peer key (all-zero result) is hostile input, not a crash."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise ProtocolError("peer sent a low-order X25519 public key") from exc


# --------------------------------------------------------------------------
# Noise state objects (spec section 5)
# --------------------------------------------------------------------------


class CipherState:
    """A key and a counter nonce: ChaCha20-Poly1305 with Noise's nonce layout.

    The nonce is never sent; both sides count. A replayed, dropped or reordered
    message therefore fails authentication, which is how the transport detects
    them without sequence numbers on the wire.
    """

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != _KEYLEN:
            raise ValueError("a Noise cipher key is 32 bytes")
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def _nonce(self) -> bytes:
        # ChaChaPoly: 32 bits of zeros, then the 64-bit counter little-endian.
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= _MAX_NONCE:
            raise ProtocolError("nonce space exhausted; the channel must be re-established")
        if len(plaintext) + TAGLEN > MAX_NOISE_MESSAGE:
            raise LocalProtocolError("plaintext too large for one Noise message")
        ciphertext = self._aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n >= _MAX_NONCE:
            raise ProtocolError("nonce space exhausted; the channel must be re-established")
        if len(ciphertext) < TAGLEN:
            raise ProtocolError("ciphertext shorter than the authentication tag")
        if len(ciphertext) > MAX_NOISE_MESSAGE:
            raise ProtocolError("ciphertext longer than a Noise message")
        try:
            plaintext = self._aead.decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag as exc:
            raise ProtocolError(
                "decryption failed: the frame was tampered with, replayed or reordered"
            ) from exc
        self.n += 1
        return plaintext


class SymmetricState:
    """The chaining key ``ck`` and handshake hash ``h`` (spec section 5.2)."""

    __slots__ = ("_hash", "ck", "cipher", "h")

    def __init__(self, protocol_name: bytes, hash_function: _HashFunction) -> None:
        self._hash = hash_function
        if len(protocol_name) <= hash_function.hashlen:
            h = protocol_name.ljust(hash_function.hashlen, b"\x00")
        else:
            h = hash_function.digest(protocol_name)
        self.h = h
        self.ck = h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self._hash.hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k[:_KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = self._hash.digest(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = self._hash.hkdf2(self.ck, b"")
        return CipherState(k1[:_KEYLEN]), CipherState(k2[:_KEYLEN])


# Pattern XX (spec section 7.5):  -> e   <- e, ee, s, es   -> s, se
_XX: tuple[tuple[str, ...], ...] = (("e",), ("e", "ee", "s", "es"), ("s", "se"))


class HandshakeState:
    """One side of a Noise XX handshake (spec section 5.3).

    ``s`` defaults to a fresh key; ``e`` may be injected (test vectors) and
    is otherwise generated when the ``e`` token is written. Fresh keys come
    from ``key_source`` (default: ``X25519PrivateKey.generate``, the OS's
    randomness); a simulation passes a seeded one to replay byte for byte.

    A payload may be given as a function of ``h``: it is called after the
    message's tokens are processed and just before the payload is encrypted,
    which is the moment an identity proof must bind to. The matching value on
    the receiving side is :attr:`payload_binding` after :meth:`read_message`.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: X25519PrivateKey | None = None,
        e: X25519PrivateKey | None = None,
        key_source: Callable[[], X25519PrivateKey] | None = None,
    ) -> None:
        hash_function = _parse_protocol_name(protocol_name)
        self.initiator = initiator
        self.protocol_name = protocol_name
        self._symmetric = SymmetricState(protocol_name.encode("ascii"), hash_function)
        self._symmetric.mix_hash(prologue)
        self._key_source = key_source if key_source is not None else X25519PrivateKey.generate
        self._s = s if s is not None else self._key_source()
        self._e = e
        self._rs: bytes | None = None
        self._re: bytes | None = None
        self._index = 0
        self._ciphers: tuple[CipherState, CipherState] | None = None
        self.payload_binding = b""

    # -- state -------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._ciphers is not None

    @property
    def handshake_hash(self) -> bytes:
        """``h``: after completion, a unique id of the handshake (channel binding)."""
        return self._symmetric.h

    @property
    def local_static(self) -> bytes:
        return _public_bytes(self._s)

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    def is_my_turn(self) -> bool:
        return not self.complete and (self._index % 2 == 0) == self.initiator

    def transport(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` cipher states for this side, after the handshake."""
        if self._ciphers is None:
            raise LocalProtocolError("the handshake is not complete")
        c1, c2 = self._ciphers
        return (c1, c2) if self.initiator else (c2, c1)

    # -- tokens ------------------------------------------------------------

    def _mix_dh(self, token: str) -> None:
        # es: initiator's e with responder's s; se: initiator's s with responder's e.
        assert self._e is not None and self._re is not None
        if token == "ee":
            shared = _dh(self._e, self._re)
        elif token == "es":
            if self.initiator:
                assert self._rs is not None
                shared = _dh(self._e, self._rs)
            else:
                shared = _dh(self._s, self._re)
        else:  # "se"
            if self.initiator:
                shared = _dh(self._s, self._re)
            else:
                assert self._rs is not None
                shared = _dh(self._e, self._rs)
        self._symmetric.mix_key(shared)

    def write_message(self, payload: bytes | Callable[[bytes], bytes] = b"") -> bytes:
        """Write the next handshake message; ``payload`` may be a function of ``h``."""
        if not self.is_my_turn():
            raise LocalProtocolError("it is not this side's turn to write a handshake message")
        out = bytearray()
        for token in _XX[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = self._key_source()
                e_pub = _public_bytes(self._e)
                out += e_pub
                self._symmetric.mix_hash(e_pub)
            elif token == "s":
                out += self._symmetric.encrypt_and_hash(_public_bytes(self._s))
            else:
                self._mix_dh(token)
        self.payload_binding = self._symmetric.h
        body = payload(self.payload_binding) if callable(payload) else payload
        if len(out) + len(body) + TAGLEN > MAX_NOISE_MESSAGE:
            raise LocalProtocolError("handshake payload too large for one Noise message")
        out += self._symmetric.encrypt_and_hash(body)
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Read the peer's next handshake message and return its payload."""
        if self.complete or self.is_my_turn():
            raise LocalProtocolError("it is not this side's turn to read a handshake message")
        if len(message) > MAX_NOISE_MESSAGE:
            raise ProtocolError("handshake message longer than a Noise message")
        offset = 0
        for token in _XX[self._index]:
            if token == "e":
                if len(message) - offset < DHLEN:
                    raise ProtocolError("handshake message too short for an ephemeral key")
                self._re = bytes(message[offset : offset + DHLEN])
                offset += DHLEN
                self._symmetric.mix_hash(self._re)
            elif token == "s":
                size = DHLEN + (TAGLEN if self._symmetric.cipher.has_key() else 0)
                if len(message) - offset < size:
                    raise ProtocolError("handshake message too short for a static key")
                self._rs = self._symmetric.decrypt_and_hash(bytes(message[offset : offset + size]))
                offset += size
            else:
                self._mix_dh(token)
        self.payload_binding = self._symmetric.h
        payload = self._symmetric.decrypt_and_hash(bytes(message[offset:]))
        self._advance()
        return payload

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(_XX):
            self._ciphers = self._symmetric.split()


# --------------------------------------------------------------------------
# The p2pmem secure channel
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeComplete:
    """The peer proved it holds ``remote_identity`` (its Ed25519 public key)."""

    remote_identity: bytes


@dataclass(frozen=True)
class MessageReceived:
    """One whole, authenticated application message, in order."""

    data: bytes


Event = HandshakeComplete | MessageReceived


class _State(enum.Enum):
    START = "start"  # initiator before initiate()
    AWAIT_MSG1 = "awaiting handshake message 1"
    AWAIT_MSG2 = "awaiting handshake message 2"
    AWAIT_MSG3 = "awaiting handshake message 3"
    ESTABLISHED = "established"
    CLOSED = "closed"


class SecureChannel:
    """A sans-IO encrypted, mutually authenticated p2pmem connection.

    Feed it the socket's bytes with :meth:`receive_data`, write out whatever
    :meth:`data_to_send` returns, and read :meth:`next_event` until it returns
    ``None``. Any hostile input raises :class:`ProtocolError` and closes the
    channel: later calls raise it again, except that :meth:`next_event` first
    hands out the events that were fully authenticated before the failure (so
    a good message followed by a bad frame in the same read is not lost).

    ``max_frame`` bounds one frame body and ``max_message`` one reassembled
    application message; both ends must use the same ``max_frame`` (a sender
    splits at its own, a receiver enforces its own). The protocol default is
    ``p2pmem.limits.MAX_FRAME``.
    """

    def __init__(
        self,
        initiator: bool,
        identity: Ed25519PrivateKey,
        expected_peer: bytes | None = None,
        prologue: bytes = DEFAULT_PROLOGUE,
        *,
        static_key: X25519PrivateKey | None = None,
        ephemeral_key: X25519PrivateKey | None = None,
        key_source: Callable[[], X25519PrivateKey] | None = None,
        max_message: int = MAX_MESSAGE,
        max_frame: int = MAX_FRAME,
    ) -> None:
        if not isinstance(identity, Ed25519PrivateKey):
            raise TypeError("identity must be an Ed25519PrivateKey")
        if expected_peer is not None and len(expected_peer) != _ED25519_KEY:
            raise ValueError("expected_peer must be a 32-byte Ed25519 public key")
        if not MIN_FRAME <= max_frame <= MAX_NOISE_MESSAGE:
            raise ValueError(f"max_frame must be within {MIN_FRAME}..{MAX_NOISE_MESSAGE}")
        if max_message < 0:
            raise ValueError("max_message must not be negative")
        self.initiator = initiator
        self.max_message = max_message
        self.max_frame = max_frame
        self._identity = identity
        self._identity_public = _public_bytes(identity)
        self._expected_peer = bytes(expected_peer) if expected_peer is not None else None
        self._handshake = HandshakeState(
            PROTOCOL_NAME, initiator, prologue=prologue, s=static_key, e=ephemeral_key,
            key_source=key_source,
        )
        self._state = _State.START if initiator else _State.AWAIT_MSG1
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._remote_identity: bytes | None = None
        self._handshake_hash: bytes | None = None
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._events: deque[Event] = deque()
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._close_reason: str | None = None

    # -- read-only state ---------------------------------------------------

    @property
    def identity(self) -> bytes:
        """Our Ed25519 public key."""
        return self._identity_public

    @property
    def remote_identity(self) -> bytes | None:
        """The peer's proven Ed25519 public key, once the handshake is complete."""
        return self._remote_identity

    @property
    def handshake_hash(self) -> bytes | None:
        """The Noise handshake hash: equal on both ends, unique per handshake."""
        return self._handshake_hash

    @property
    def is_established(self) -> bool:
        return self._state is _State.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    # -- API ---------------------------------------------------------------

    def initiate(self) -> bytes:
        """Start the handshake (initiator only); returns the bytes to send first."""
        self._check_open()
        if not self.initiator or self._state is not _State.START:
            raise LocalProtocolError("initiate() is called once, by the initiator only")
        message = self._handshake.write_message(b"")
        self._state = _State.AWAIT_MSG2
        return _frame(message)

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the socket, in any fragmentation, and process whole frames."""
        self._check_open()
        if not data:
            return
        try:
            if self._state is _State.START:
                raise ProtocolError("peer sent data before the handshake began")
            self._inbuf += data
            self._process_frames()
        except ProtocolError as exc:
            self._close(exc.reason)
            raise

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more bytes are needed."""
        if self._events:
            return self._events.popleft()
        self._check_open()
        return None

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket; the buffer is cleared by reading it."""
        self._check_open()
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def send_message(self, data: bytes) -> None:
        """Encrypt and queue one application message, split into frames if needed."""
        self._check_open()
        if self._state is not _State.ESTABLISHED or self._send is None:
            raise LocalProtocolError("the handshake is not complete")
        if len(data) > self.max_message:
            raise LocalProtocolError(
                f"message of {len(data)} bytes exceeds max_message ({self.max_message})"
            )
        chunk_size = self.max_frame - _TRANSPORT_OVERHEAD
        view = memoryview(data)
        start = 0
        while True:
            end = min(start + chunk_size, len(data))
            flag = _FLAG_LAST if end == len(data) else _FLAG_MORE
            plaintext = bytes([flag]) + view[start:end]
            self._outbuf += _frame(self._send.encrypt_with_ad(b"", plaintext))
            if flag == _FLAG_LAST:
                return
            start = end

    # -- internals ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ProtocolError(f"channel closed: {self._close_reason}")

    def _close(self, reason: str) -> None:
        self._state = _State.CLOSED
        self._close_reason = reason
        self._inbuf.clear()
        self._outbuf.clear()
        self._partial.clear()
        self._send = self._recv = None

    def _process_frames(self) -> None:
        buf = self._inbuf
        offset = 0
        try:
            while len(buf) - offset >= 2:
                length = int.from_bytes(buf[offset : offset + 2], "big")
                self._check_frame_length(length)
                if len(buf) - offset - 2 < length:
                    break
                body = bytes(buf[offset + 2 : offset + 2 + length])
                offset += 2 + length
                self._handle_frame(body)
        finally:
            del buf[:offset]

    def _check_frame_length(self, length: int) -> None:
        """Reject a bad length from the header alone, before buffering its body."""
        if length == 0:
            raise ProtocolError("empty frame")
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        state = self._state
        if state is _State.AWAIT_MSG1 and length != DHLEN:
            raise ProtocolError(f"handshake message 1 must be {DHLEN} bytes, got {length}")
        if state in (_State.AWAIT_MSG2, _State.AWAIT_MSG3) and length > _MAX_HANDSHAKE_MSG:
            raise ProtocolError(f"handshake message of {length} bytes is too long")
        if state is _State.AWAIT_MSG2 and length < _MSG2_MIN:
            raise ProtocolError(f"handshake message 2 of {length} bytes is too short")
        if state is _State.ESTABLISHED and length < _TRANSPORT_OVERHEAD:
            raise ProtocolError(f"transport frame of {length} bytes is too short")

    def _handle_frame(self, body: bytes) -> None:
        state = self._state
        hs = self._handshake
        if state is _State.AWAIT_MSG1:
            hs.read_message(body)  # the length check left no room for a payload
            self._outbuf += _frame(hs.write_message(self._proof))
            self._state = _State.AWAIT_MSG3
        elif state is _State.AWAIT_MSG2:
            payload = hs.read_message(body)
            identity = self._verify_proof(payload)
            self._outbuf += _frame(hs.write_message(self._proof))
            self._establish(identity)
        elif state is _State.AWAIT_MSG3:
            payload = hs.read_message(body)
            self._establish(self._verify_proof(payload))
        elif state is _State.ESTABLISHED:
            self._handle_transport(body)
        else:  # pragma: no cover - START and CLOSED never reach here
            raise ProtocolError(f"unexpected frame in state {state.value}")

    def _establish(self, remote_identity: bytes) -> None:
        self._send, self._recv = self._handshake.transport()
        self._remote_identity = remote_identity
        self._handshake_hash = self._handshake.handshake_hash
        self._state = _State.ESTABLISHED
        self._events.append(HandshakeComplete(remote_identity))

    def _handle_transport(self, body: bytes) -> None:
        assert self._recv is not None
        plaintext = self._recv.decrypt_with_ad(b"", body)
        flag, chunk = plaintext[0], plaintext[1:]
        if flag not in (_FLAG_LAST, _FLAG_MORE):
            raise ProtocolError(f"unknown continuation flag {flag}")
        if flag == _FLAG_MORE and not chunk:
            raise ProtocolError("empty continuation frame")
        size = self._partial_size + len(chunk)
        if size > self.max_message:
            raise ProtocolError(f"message exceeds max_message ({self.max_message} bytes)")
        if flag == _FLAG_MORE:
            self._partial.append(chunk)
            self._partial_size = size
            return
        if self._partial:
            self._partial.append(chunk)
            data = b"".join(self._partial)
            self._partial.clear()
            self._partial_size = 0
        else:
            data = chunk
        self._events.append(MessageReceived(data))

    def _proof(self, binding: bytes) -> bytes:
        """Our identity proof for the handshake payload whose ``h`` is ``binding``."""
        signed = PROOF_CONTEXT + self._handshake.local_static + binding
        proof = {"id": self._identity_public, "sig": self._identity.sign(signed)}
        return cbor2.dumps(proof, canonical=True)

    def _verify_proof(self, payload: bytes) -> bytes:
        """Check the peer's proof against this handshake; return its Ed25519 key."""
        remote_static = self._handshake.remote_static
        assert remote_static is not None
        proof = _fields.map(_fields.loads(payload, "identity proof", max_size=_MAX_PROOF, canonical=False),
                            "identity proof", ("id", "sig"))
        identity = _fields.bytes_(proof["id"], "identity proof 'id'", size=_ED25519_KEY)
        signature = _fields.bytes_(proof["sig"], "identity proof 'sig'", size=_ED25519_SIG)
        _fields.canonical(proof, payload, "identity proof")
        signed = PROOF_CONTEXT + remote_static + self._handshake.payload_binding
        try:
            Ed25519PublicKey.from_public_bytes(identity).verify(signature, signed)
        except (InvalidSignature, ValueError) as exc:
            raise ProtocolError("identity proof signature is invalid") from exc
        if self._expected_peer is not None and identity != self._expected_peer:
            raise ProtocolError("peer identity does not match the expected key")
        return identity


def _frame(body: bytes) -> bytes:
    """Prefix a Noise message with its 2-byte big-endian length."""
    if not 0 < len(body) <= MAX_NOISE_MESSAGE:
        raise LocalProtocolError("frame body out of range")
    return len(body).to_bytes(2, "big") + body
