"""Sealed direct messages: end-to-end encrypted ``message`` records.

A message travels as an ordinary signed record (kind ``message``, visibility
``public``) so it replicates, is stored and forwarded like any other record, and
relays can verify its signature without being able to read it. Its body is
``{"to": recipient Ed25519 key, "epk": ephemeral X25519 key, "ct": ciphertext}``.

Construction (docs/protocol.md, "Sealed messages"), composed only from
``cryptography`` primitives:

* ``eph`` = a fresh X25519 key pair, ``epk`` its public key;
* ``shared`` = X25519(eph, recipient's X25519 message key ``rx``);
* ``key`` = HKDF-SHA256(ikm = shared, salt = epk || rx,
  info = b"p2pmem-message-v1" || sender Ed25519 key || recipient Ed25519 key,
  length = 32);
* ``ct`` = ChaCha20-Poly1305(key, nonce = 12 zero bytes, plaintext,
  aad = sender Ed25519 key || recipient Ed25519 key || ts as 8 bytes big-endian);
* plaintext = canonical CBOR map ``{"text": str}`` (a map, so fields can be
  added later; a reader ignores keys it does not know).

Why the zero nonce is safe: ChaCha20-Poly1305 breaks only if one key encrypts
two messages under the same nonce. Here every message derives its key from a
fresh ephemeral X25519 key drawn from the OS CSPRNG, and the key is used for
exactly one encryption, so the (key, nonce) pair never repeats. The salt also
contains ``epk``, so even equal shared secrets would give distinct keys for
distinct ephemeral keys. (This is the same argument as in HPKE's single-shot
mode and libsodium's sealed boxes.)

Why the sender is bound: the record's outer Ed25519 signature proves who
published the record, but anyone can copy a body into a record they sign
themselves. Because the sender's key is in both the HKDF info and the AEAD's
associated data, a body opened under any author other than the one who sealed
it fails authentication, so Mallory cannot pass Alice's message off as her own
(or make Bob attribute Mallory's words to Alice: only Alice can sign as
Alice). The timestamp is in the AAD too, so a body cannot be re-dated either.

What this does not hide: the sender, the recipient, the time and the
approximate length are visible to every relay (they are the routing
information). There is no forward secrecy against a later theft of the
recipient's X25519 key; the sender cannot decrypt its own sent messages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2pmem import limits
from p2pmem.errors import P2pmemError, RecordError
from p2pmem.model.clock import MAX_HLC, physical_ms
from p2pmem.model.identity import Identity, agent_id
from p2pmem.model.record import Record, sign_record
from p2pmem.model.when import format_ms

__all__ = ["INFO_LABEL", "OpenedMessage", "SealedError", "open_message", "seal_message"]

INFO_LABEL = b"p2pmem-message-v1"
NONCE = bytes(12)  # safe: each key encrypts exactly one message (see module doc)
KEY_SIZE = 32
_RAW = serialization.Encoding.Raw
_PUB = serialization.PublicFormat.Raw


class SealedError(P2pmemError):
    """A sealed message cannot be opened (not ours, tampered, wrong key, wrong
    sender binding, malformed) or cannot be sealed to the given key."""


@dataclass(frozen=True, slots=True)
class OpenedMessage:
    """A decrypted message. ``id`` is the lowercase hex id of the record that
    carried it, the same id the store and the CLI show."""

    id: str
    sender: bytes
    recipient: bytes
    text: str
    ts: int
    session: str = ""

    @property
    def ms(self) -> int:
        """Wall-clock milliseconds of the message's HLC timestamp."""
        return physical_ms(self.ts)

    def to_json(self) -> dict[str, Any]:
        """The contract's ``inbox --json`` object for this message."""
        return {
            "id": self.id,
            "from": agent_id(self.sender),
            "to": agent_id(self.recipient),
            "text": self.text,
            "ts": format_ms(self.ms),
        }


def _aad(sender: bytes, recipient: bytes, ts: int) -> bytes:
    return sender + recipient + ts.to_bytes(8, "big")


def _derive_key(
    shared: bytes, epk: bytes, recipient_xkey: bytes, sender: bytes, recipient: bytes
) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_SIZE,
        salt=epk + recipient_xkey,
        info=INFO_LABEL + sender + recipient,
    ).derive(shared)


def _check_key(value: Any, what: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise RecordError(f"{what} must be 32 bytes")
    return value


def seal_message(
    sender: Identity,
    recipient_key: bytes,
    recipient_xkey: bytes,
    text: str,
    ts: int,
    *,
    session: str = "",
    ephemeral: X25519PrivateKey | None = None,
) -> Record:
    """Seal ``text`` to a recipient and sign it as a ``message`` record.

    ``recipient_key`` is the recipient's Ed25519 identity key (the address),
    ``recipient_xkey`` the X25519 message key from its signed profile.
    ``ephemeral`` exists only so test vectors can be reproduced; leave it unset
    (a reused ephemeral key to the same recipient would reuse a key and nonce).

    Raises :class:`RecordError` for bad input (text over ``limits.MAX_BODY``
    UTF-8 bytes, malformed keys or timestamp, anything :func:`sign_record`
    refuses) and :class:`SealedError` if the recipient's X25519 key is a
    low-order point no shared secret can be agreed with.
    """
    if type(text) is not str:
        raise RecordError("message text must be a text string")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise RecordError("message text is not valid Unicode (lone surrogate)") from None
    if size > limits.MAX_BODY:
        raise RecordError(f"message text is {size} bytes, over the limit of {limits.MAX_BODY}")
    if type(ts) is not int or not 0 < ts <= MAX_HLC:
        raise RecordError("timestamp must be an unsigned 64-bit integer other than zero")
    _check_key(recipient_key, "recipient key")
    _check_key(recipient_xkey, "recipient message key")
    eph = ephemeral if ephemeral is not None else X25519PrivateKey.generate()
    epk = eph.public_key().public_bytes(_RAW, _PUB)
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_xkey))
    except ValueError:  # all-zero shared secret: a low-order (malicious) key
        raise SealedError("the recipient's message key is invalid (low-order point)") from None
    sender_key = sender.public_key
    key = _derive_key(shared, epk, recipient_xkey, sender_key, recipient_key)
    plaintext = cbor2.dumps({"text": text}, canonical=True)
    ct = ChaCha20Poly1305(key).encrypt(NONCE, plaintext, _aad(sender_key, recipient_key, ts))
    body = {"to": recipient_key, "epk": epk, "ct": ct}
    return sign_record(sender, "message", ts, body, session=session, visibility="public")


def _decode_plaintext(plaintext: bytes) -> str:
    """The text of a decrypted plaintext; unknown keys are ignored so that
    later versions can add fields, but trailing bytes are refused."""
    try:
        stream = io.BytesIO(plaintext)
        obj = cbor2.CBORDecoder(stream).decode()
        trailing = stream.tell() != len(plaintext)
    except Exception:  # cbor2 raises several types, and RecursionError on deep nesting
        raise SealedError("message plaintext is not valid CBOR") from None
    if trailing:
        raise SealedError("message plaintext has trailing bytes")
    if type(obj) is not dict or type(obj.get("text")) is not str:
        raise SealedError("message plaintext must be a map with a text 'text'")
    text: str = obj["text"]
    if len(text.encode("utf-8", "surrogatepass")) > limits.MAX_BODY:
        raise SealedError(f"message text is over the limit of {limits.MAX_BODY} bytes")
    return text


def open_message(recipient: Identity, record: Record) -> OpenedMessage:
    """Decrypt a ``message`` record addressed to ``recipient``.

    The record is assumed verified (only :func:`p2pmem.model.record.decode_record`
    and :func:`sign_record` make :class:`Record` objects), but its body is
    still checked here so that any malformed input raises :class:`SealedError`
    and nothing else.
    """
    try:
        kind, body, author, ts = record.kind, record.body, record.author, record.ts
        record_id, session = record.id, record.session
    except AttributeError:
        raise SealedError("not a record") from None
    if kind != "message":
        raise SealedError(f"not a message record (kind {kind!r})"[:120])
    if type(body) is not dict:
        raise SealedError("message body must be a map")
    to, epk, ct = body.get("to"), body.get("epk"), body.get("ct")
    if type(to) is not bytes or type(epk) is not bytes or type(ct) is not bytes:
        raise SealedError("message body must hold byte strings 'to', 'epk' and 'ct'")
    if len(to) != 32 or len(epk) != 32:
        raise SealedError("message 'to' and 'epk' must be 32 bytes")
    if type(author) is not bytes or len(author) != 32:
        raise SealedError("message author must be 32 bytes")
    if type(ts) is not int or not 0 < ts <= MAX_HLC:
        raise SealedError("message timestamp is out of range")
    if type(record_id) is not bytes or type(session) is not str:
        raise SealedError("malformed record")
    if to != recipient.public_key:
        raise SealedError("message is not addressed to this identity")
    try:
        shared = recipient.message_key.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError:
        raise SealedError("message ephemeral key is invalid (low-order point)") from None
    key = _derive_key(shared, epk, recipient.message_public_key, author, to)
    try:
        plaintext = ChaCha20Poly1305(key).decrypt(NONCE, ct, _aad(author, to, ts))
    except InvalidTag:
        raise SealedError(
            "message does not decrypt (tampered, sealed to another key, or re-signed by someone else)"
        ) from None
    text = _decode_plaintext(plaintext)
    return OpenedMessage(
        id=record_id.hex(), sender=author, recipient=to, text=text, ts=ts, session=session
    )
