"""An agent's identity: an Ed25519 signing key, an X25519 message key, and the
textual agent id users copy and paste.

Agent id format (docs/protocol.md): ``"pm1"`` followed by the lowercase RFC 4648
base32 (no padding) of the 32-byte Ed25519 public key and a 4-byte checksum,
``SHA-256(b"p2pmem-agent-id" || key)[:4]``. 61 characters, all of
``[a-z2-7]`` after the prefix, so a double click selects the whole id and a
typo is caught by the checksum rather than naming another agent.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pmem.errors import HomeError, UsageError

AGENT_ID_PREFIX = "pm1"
_CHECKSUM_TAG = b"p2pmem-agent-id"
_RAW = serialization.Encoding.Raw
_PUB = serialization.PublicFormat.Raw
_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()


def agent_id(public_key: bytes) -> str:
    """The textual id of a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an agent key is 32 bytes")
    checksum = hashlib.sha256(_CHECKSUM_TAG + public_key).digest()[:4]
    text = base64.b32encode(public_key + checksum).decode("ascii").rstrip("=").lower()
    return AGENT_ID_PREFIX + text


def parse_agent_id(text: str) -> bytes:
    """The public key named by an agent id; :class:`UsageError` with a reason
    when ``text`` is not one."""
    text = text.strip()
    if not text.startswith(AGENT_ID_PREFIX):
        raise UsageError(f"not an agent id (expected it to start with {AGENT_ID_PREFIX!r}): {text[:80]!r}")
    body = text[len(AGENT_ID_PREFIX) :].upper()
    if len(body) != 58:
        raise UsageError(f"not an agent id (wrong length {len(text)}, expected 61): {text[:80]!r}")
    try:
        raw = base64.b32decode(body + "======")
    except ValueError:
        raise UsageError(f"not an agent id (invalid characters): {text[:80]!r}") from None
    key, checksum = raw[:32], raw[32:]
    if hashlib.sha256(_CHECKSUM_TAG + key).digest()[:4] != checksum:
        raise UsageError(f"not an agent id (checksum mismatch, a typo?): {text[:80]!r}")
    # The last character carries 2 unused bits: only the canonical spelling names the key.
    if agent_id(key) != AGENT_ID_PREFIX + body.lower():
        raise UsageError(f"not an agent id (checksum mismatch, a typo?): {text[:80]!r}")
    return key


def short_id(public_key: bytes) -> str:
    """A short form for human output (not accepted as input)."""
    return agent_id(public_key)[:14]


@dataclass(frozen=True)
class Identity:
    """The private keys of one agent."""

    signing_key: Ed25519PrivateKey
    message_key: X25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_seeds(cls, ed25519_seed: bytes, x25519_seed: bytes) -> Identity:
        return cls(
            Ed25519PrivateKey.from_private_bytes(ed25519_seed),
            X25519PrivateKey.from_private_bytes(x25519_seed),
        )

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key: the agent's identity on the wire."""
        return self.signing_key.public_key().public_bytes(_RAW, _PUB)

    @property
    def message_public_key(self) -> bytes:
        """The 32-byte X25519 public key that sealed messages are addressed to."""
        return self.message_key.public_key().public_bytes(_RAW, _PUB)

    @property
    def agent_id(self) -> str:
        return agent_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.signing_key.sign(data)

    def to_bytes(self) -> bytes:
        return cbor2.dumps(
            {
                "v": 1,
                "ed25519": self.signing_key.private_bytes(_RAW, _PRIV, _NOENC),
                "x25519": self.message_key.private_bytes(_RAW, _PRIV, _NOENC),
            },
            canonical=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        try:
            obj = cbor2.loads(data)
            return cls.from_seeds(obj["ed25519"], obj["x25519"])
        except Exception as exc:  # any damage to the file reads as one error
            raise HomeError(f"identity key file is damaged: {exc}") from None


def verify_key(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)
