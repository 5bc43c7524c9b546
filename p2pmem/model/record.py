"""The signed record: schema, canonical CBOR, signing, strict decoding, id.

A record is a COSE_Sign1 object (RFC 9052, tag 18) whose protected header is
``{1: -8}`` (alg EdDSA), whose unprotected header is empty, and whose payload
is a CBOR map with small unsigned-integer keys in RFC 8949 deterministic
encoding (see :mod:`p2pmem.model.canonical`). Its id is SHA-256 of the whole
encoding. The CDDL is in docs/protocol.md.

Decoding is strict: anything that is not exactly the bytes :func:`sign_record`
would have produced for the same content is rejected with a reason, so no
second encoding of a record can exist and every node computes the same id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p2pmem import limits
from p2pmem.errors import RecordError
from p2pmem.graph.records import GRAPH_KINDS  # also registers the graph's kinds
from p2pmem.model.canonical import keys_order_agree
from p2pmem.model.clock import physical_ms
from p2pmem.model.identity import Identity
from p2pmem.model.kinds import REGISTRY, SCOPE_AUTHOR, SCOPE_EVERYWHERE, RecordKind, register
from p2pmem.model.strict import Fields

VERSION = 1
VISIBILITIES = ("public", "ask", "private")
COSE_SIGN1_TAG = 18
PROTECTED = b"\xa1\x01\x27"  # {1: -8}: alg = EdDSA
_SIG_CONTEXT = "Signature1"

# Payload map keys (docs/protocol.md).
K_VERSION, K_AUTHOR, K_KIND, K_TS, K_SESSION, K_TOPICS = 0, 1, 2, 3, 4, 5
K_BODY, K_VISIBILITY, K_REFS, K_META, K_AT, K_ROOT = 6, 7, 8, 9, 10, 11
_REQUIRED = frozenset(range(10))
_OPTIONAL = frozenset((K_AT, K_ROOT))

# Body maps of the structured kinds: every key required, exact types.
PROFILE_KEYS = ("name", "description", "skills", "addresses", "xkey")
FOLLOW_KEYS = ("target", "active")
ENDORSE_KEYS = ("target", "what")
MESSAGE_KEYS = ("to", "epk", "ct")
ENDORSE_WHAT = ("agent", "memory")

MetaValue = str | int
Body = str | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    """A verified record. Only :func:`decode_record` and :func:`sign_record`
    make these, so holding one means its signature and schema were checked."""

    id: bytes
    raw: bytes
    author: bytes
    kind: str
    ts: int
    session: str
    topics: tuple[str, ...]
    body: Body = field(hash=False)  # a dict for structured kinds; the id identifies anyway
    visibility: str
    refs: tuple[bytes, ...]
    meta: dict[str, MetaValue] = field(hash=False, compare=False)
    at: int | None = None
    root: bytes | None = None

    @property
    def at_ms(self) -> int:
        """When the remembered thing happened (ms); the record time unless given."""
        return self.at if self.at is not None else physical_ms(self.ts)

    @property
    def lineage(self) -> bytes:
        """The id of the first version of this memory."""
        return self.root if self.root is not None else self.id

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else ""


# ts and at are stored and indexed as SQLite INTEGER, a signed 64-bit number:
# larger values would make a valid record impossible to store.
MAX_TIME = (1 << 63) - 1

_fields = Fields(RecordError)  # the typed-field reader of every record check (p2pmem/model/strict.py)


def _check_memory_body(body: Any) -> Body:
    return _fields.text(body, "memory text", max_bytes=limits.MAX_BODY, allow_empty=False)


def _check_retract_body(body: Any) -> Body:
    if body != "" or type(body) is not str:
        raise RecordError("a retract record has an empty text body")
    return body


def _check_profile_body(body: Any) -> Body:
    m = _fields.map(body, "profile body", PROFILE_KEYS)
    _fields.text(m["name"], "profile name", max_bytes=limits.MAX_NAME)
    _fields.text(m["description"], "profile description", max_bytes=limits.MAX_DESCRIPTION)
    _fields.text_list(m["skills"], "profile skills", limits.MAX_SKILLS, limits.MAX_SKILL)
    _fields.text_list(m["addresses"], "profile addresses", limits.MAX_ADDRESSES, limits.MAX_ADDRESS)
    _fields.bytes_(m["xkey"], "profile message key", size=32)
    return m


def _check_follow_body(body: Any) -> Body:
    m = _fields.map(body, "follow body", FOLLOW_KEYS)
    _fields.bytes_(m["target"], "follow target", size=32)
    if type(m["active"]) is not bool:
        raise RecordError("follow 'active' must be a boolean")
    return m


def _check_endorse_body(body: Any) -> Body:
    m = _fields.map(body, "endorse body", ENDORSE_KEYS)
    _fields.bytes_(m["target"], "endorse target", size=32)
    if m["what"] not in ENDORSE_WHAT or type(m["what"]) is not str:
        raise RecordError("endorse 'what' must be 'agent' or 'memory'")
    return m


def _check_message_body(body: Any) -> Body:
    m = _fields.map(body, "message body", MESSAGE_KEYS)
    _fields.bytes_(m["to"], "message recipient", size=32)
    _fields.bytes_(m["epk"], "message ephemeral key", size=32)
    _fields.bytes_(m["ct"], "message ciphertext", max_size=limits.MAX_MESSAGE_CIPHERTEXT)
    return m


# The built-in kinds (p2pmem/model/kinds.py); the graph's register in
# p2pmem/graph/records.py, imported above. Quotas: p2pmem/model/quota.py.
for _kind in (
    RecordKind("memory", _check_memory_body, SCOPE_AUTHOR, view="memory", visible=True,
               refs="optional", timed=True),
    RecordKind("retract", _check_retract_body, SCOPE_AUTHOR, view="retract", refs="required"),
    RecordKind("profile", _check_profile_body, SCOPE_EVERYWHERE,
               quota=(limits.MAX_PROFILES_PER_AUTHOR, None)),
    RecordKind("follow", _check_follow_body, SCOPE_EVERYWHERE, target="target",
               quota=(limits.MAX_FOLLOWS_PER_AUTHOR, None)),
    RecordKind("endorse", _check_endorse_body, SCOPE_EVERYWHERE, target="target",
               quota=(limits.MAX_ENDORSEMENTS_PER_AUTHOR, None)),
    RecordKind("message", _check_message_body, SCOPE_EVERYWHERE, target="to",
               quota=(limits.MAX_MESSAGES_PER_SENDER, limits.MAX_MESSAGE_BYTES_PER_SENDER)),
):
    register(_kind)
del _kind

KINDS = ("memory", "retract", "profile", "follow", "endorse", "message", *GRAPH_KINDS)
# Kinds whose records may be public, ask or private (the others are public).
VISIBLE_KINDS = tuple(k for k in KINDS if REGISTRY[k].visible)


def _check_payload(obj: Any) -> dict[int, Any]:
    """Schema check of a decoded payload map; returns it unchanged."""
    if type(obj) is not dict:
        raise RecordError("payload must be a map")
    keys = set(obj)
    if not all(type(k) is int for k in keys):
        raise RecordError("payload keys must be unsigned integers")
    missing = _REQUIRED - keys
    if missing:
        raise RecordError(f"payload lacks field(s) {sorted(missing)}")
    unknown = keys - _REQUIRED - _OPTIONAL
    if unknown:
        raise RecordError(f"payload has unknown field(s) {sorted(unknown)}")
    if obj[K_VERSION] != VERSION or type(obj[K_VERSION]) is not int:
        raise RecordError(f"unsupported record version {obj[K_VERSION]!r}")
    _fields.bytes_(obj[K_AUTHOR], "author", size=32)
    kind = obj[K_KIND]
    if type(kind) is not str or kind not in REGISTRY:
        raise RecordError(f"unknown kind {kind!r}"[:120])
    spec = REGISTRY[kind]
    ts = _fields.uint(obj[K_TS], "timestamp", high=MAX_TIME)
    if ts == 0:
        raise RecordError("timestamp must not be zero")
    _fields.text(obj[K_SESSION], "session", max_bytes=limits.MAX_SESSION)
    _fields.text_list(obj[K_TOPICS], "topics", limits.MAX_TOPICS, limits.MAX_TOPIC)
    spec.check_body(obj[K_BODY])
    visibility = obj[K_VISIBILITY]
    if type(visibility) is not str or visibility not in VISIBILITIES:
        raise RecordError(f"unknown visibility {visibility!r}"[:120])
    if not spec.visible and visibility != "public":
        raise RecordError(f"a {kind} record must have visibility 'public'")
    refs = _fields.array(obj[K_REFS], "refs", limits.MAX_REFS)
    for ref in refs:
        _fields.bytes_(ref, "each ref", size=32)
    if len(set(refs)) != len(refs) or refs != sorted(refs):
        raise RecordError("refs must be sorted and without duplicates")
    if spec.refs == "required" and not refs:
        raise RecordError(f"a {kind} record must name what it {kind}s" if kind == "retract"
                          else f"a {kind} record must name the records it refers to")
    if spec.refs == "none" and refs:
        raise RecordError(f"a {kind} record has no refs")
    meta = obj[K_META]
    if type(meta) is not dict:
        raise RecordError("meta must be a map")
    if len(meta) > limits.MAX_META:
        raise RecordError(f"meta has {len(meta)} entries, over the limit of {limits.MAX_META}")
    for key, value in meta.items():
        _fields.text(key, "meta key", max_bytes=limits.MAX_META_KEY, allow_empty=False)
        if type(value) is int:
            _fields.uint(value, "meta integer")
        else:
            _fields.text(value, "meta value", max_bytes=limits.MAX_META_VALUE)
    if K_AT in obj:
        if not spec.timed:
            raise RecordError("only a memory has an 'at' time")
        _fields.uint(obj[K_AT], "at", high=MAX_TIME)
    if K_ROOT in obj:
        if not spec.timed:
            raise RecordError("only a memory has a lineage root")
        _fields.bytes_(obj[K_ROOT], "root", size=32)
        if not refs:
            raise RecordError("a memory with a lineage root must supersede something")
    return obj


_SIG_HEAD = cbor2.dumps([_SIG_CONTEXT, PROTECTED, b""])[1:]  # the array's first three items


def _sig_structure(payload: bytes) -> bytes:
    """COSE's Sig_structure ["Signature1", protected, external_aad, payload],
    built by concatenation: only the payload's byte-string head varies."""
    return b"\x84" + _SIG_HEAD + cbor2.dumps(payload)


def _envelope(payload: bytes, signature: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [PROTECTED, {}, payload, signature]), canonical=True)


def record_id(raw: bytes) -> bytes:
    """A record's id: the SHA-256 of its encoded bytes (docs/protocol.md)."""
    return hashlib.sha256(raw).digest()


def _to_record(raw: bytes, obj: dict[int, Any]) -> Record:
    return Record(
        id=record_id(raw),
        raw=raw,
        author=obj[K_AUTHOR],
        kind=obj[K_KIND],
        ts=obj[K_TS],
        session=obj[K_SESSION],
        topics=tuple(obj[K_TOPICS]),
        body=obj[K_BODY],
        visibility=obj[K_VISIBILITY],
        refs=tuple(obj[K_REFS]),
        meta=dict(obj[K_META]),
        at=obj.get(K_AT),
        root=obj.get(K_ROOT),
    )


def sign_record(
    identity: Identity,
    kind: str,
    ts: int,
    body: Body,
    *,
    session: str = "",
    topics: list[str] | tuple[str, ...] = (),
    visibility: str = "public",
    refs: list[bytes] | tuple[bytes, ...] = (),
    meta: dict[str, MetaValue] | None = None,
    at: int | None = None,
    root: bytes | None = None,
) -> Record:
    """Build, check and sign a record. Topics and refs are sorted and
    de-duplicated here so callers need not care; every other rule of the
    schema raises :class:`RecordError` exactly as a decoder would."""
    payload_obj: dict[int, Any] = {
        K_VERSION: VERSION,
        K_AUTHOR: identity.public_key,
        K_KIND: kind,
        K_TS: ts,
        K_SESSION: session,
        K_TOPICS: sorted(set(topics)),
        K_BODY: body,
        K_VISIBILITY: visibility,
        K_REFS: sorted(set(refs)),
        K_META: dict(meta or {}),
    }
    if at is not None:
        payload_obj[K_AT] = at
    if root is not None:
        payload_obj[K_ROOT] = root
    if isinstance(body, dict):
        body = dict(body)  # sorted below: never change the caller's map
        for key in ("skills", "addresses"):
            if key in body:
                body[key] = sorted(set(body[key]))
        payload_obj[K_BODY] = body
    _check_payload(payload_obj)
    if not keys_order_agree(payload_obj):
        raise RecordError("record maps must have keys all of one type")
    payload = cbor2.dumps(payload_obj, canonical=True)
    raw = _envelope(payload, identity.sign(_sig_structure(payload)))
    if len(raw) > limits.MAX_RECORD:
        raise RecordError(f"record is {len(raw)} bytes, over the limit of {limits.MAX_RECORD}")
    return _to_record(raw, payload_obj)


# The only encoding of the envelope up to the payload's length: tag 18,
# array of 4, protected header bstr {1: -8}, empty unprotected map.
_ENVELOPE_HEAD = b"\xd2\x84\x43\xa1\x01\x27\xa0"
_SIGNATURE_HEAD = b"\x58\x40"


def _split_envelope(raw: bytes) -> tuple[bytes, bytes]:
    """Payload and signature of a canonical COSE_Sign1 envelope.

    The envelope has exactly one canonical form, so instead of decoding and
    re-encoding it, the bytes are matched against that form directly: the
    fixed head, the payload's shortest-form length, the payload, and a
    64-byte signature ending the record."""
    if not raw.startswith(_ENVELOPE_HEAD):
        if raw[:1] != b"\xd2":
            raise RecordError("not a COSE_Sign1 record (tag 18 expected)")
        _fields.loads(raw, "record", canonical=False)  # a malformed one says so
        raise RecordError(
            "record envelope is not the canonical COSE_Sign1 form "
            "(array of protected {1: -8}, empty unprotected header, payload, 64-byte signature)"
        )
    pos = len(_ENVELOPE_HEAD)
    if len(raw) < pos + 1:
        raise RecordError("record is truncated")
    head = raw[pos]
    if head >> 5 != 2:
        raise RecordError("payload must be a byte string")
    info = head & 0x1F
    pos += 1
    if info < 24:
        length, minimum = info, 0
    elif info in (24, 25, 26):
        width = 1 << (info - 24)
        if len(raw) < pos + width:
            raise RecordError("record is truncated")
        length = int.from_bytes(raw[pos : pos + width], "big")
        minimum = 24 if info == 24 else 1 << (8 * (width // 2))
        pos += width
    else:
        raise RecordError("payload length is not in canonical form or too large")
    if length < minimum:
        raise RecordError("payload length is not in shortest (canonical) form")
    end = pos + length
    if len(raw) != end + 2 + 64:
        raise RecordError("record is truncated or has trailing bytes")
    if raw[end : end + 2] != _SIGNATURE_HEAD:
        raise RecordError("signature must be a 64-byte byte string")
    return raw[pos:end], raw[end + 2 :]


_KEY_CACHE: dict[bytes, Ed25519PublicKey] = {}
_KEY_CACHE_SIZE = limits.PUBLIC_KEY_CACHE


def _public_key(author: bytes) -> Ed25519PublicKey:
    """Parsed public keys, cached: parsing a point costs a fair share of a
    verification, and a node sees the same authors again and again."""
    key = _KEY_CACHE.get(author)
    if key is None:
        key = Ed25519PublicKey.from_public_bytes(author)
        if len(_KEY_CACHE) >= _KEY_CACHE_SIZE:
            _KEY_CACHE.pop(next(iter(_KEY_CACHE)))
        _KEY_CACHE[author] = key
    return key


def admission_error(record: Record, wall_ms: int) -> str | None:
    """Why a verified record arriving from outside this node (a peer, an
    imported file) is refused at this moment, or None to admit it.

    :func:`decode_record` checks what the bytes alone decide; this adds what
    depends on the local clock, for every edge alike: a timestamp further
    ahead of our wall clock than MAX_FUTURE_SKEW_MS. Such a record would sort
    first in every newest-first listing until that date, and drag the
    hybrid clock of every node that took it into the future."""
    ahead = physical_ms(record.ts) - wall_ms
    if ahead > limits.MAX_FUTURE_SKEW_MS:
        return (f"timestamp is {ahead / 60_000:,.0f} minutes ahead of this node's clock "
                f"(at most {limits.MAX_FUTURE_SKEW_MS // 60_000} allowed)")
    return None


def decode_record(raw: bytes, *, verify: bool = True) -> Record:
    """Decode and verify a record, or raise :class:`RecordError` with a reason.

    ``verify=False`` skips only the signature check, for bytes this node has
    already verified (its own store); every other check always runs.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    return _to_record(raw, _checked_payload(raw, verify))


def check_record(raw: bytes) -> None:
    """Every check of :func:`decode_record`, signature included, without
    building the record: what a verification worker process runs (the node
    rebuilds the record from the same bytes with :func:`load_stored`)."""
    _checked_payload(raw if type(raw) is bytes else bytes(raw), True)


def _checked_payload(raw: bytes, verify: bool) -> dict[int, Any]:
    if len(raw) > limits.MAX_RECORD:
        raise RecordError(f"record is {len(raw)} bytes, over the limit of {limits.MAX_RECORD}")
    payload, signature = _split_envelope(raw)
    obj = _fields.loads(payload, "payload", canonical=False)
    _check_payload(obj)  # the schema's reason first: it says more than "not canonical"
    _fields.canonical(obj, payload, "payload")
    if verify:
        try:
            _public_key(obj[K_AUTHOR]).verify(signature, _sig_structure(payload))
        except InvalidSignature:
            raise RecordError("bad signature") from None
        except ValueError:
            raise RecordError("author is not a valid Ed25519 public key") from None
    return obj


def load_stored(raw: bytes) -> Record:
    """A record from this node's own store, where only verified records are
    written: the envelope is split and the payload parsed, but the schema and
    signature checks that ran on the way in are not repeated."""
    payload, _signature = _split_envelope(raw)
    return _to_record(raw, cbor2.loads(payload))

