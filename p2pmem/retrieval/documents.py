"""What the search index holds of a memory, and how it is derived.

A memory is indexed with its conversational context: the memories just
before and after it in the same work session of the same author (by HLC
time), because the turn that answers a question often shares few words with
it while its neighbours share many. Text of the form ``"Name: ..."`` names
a speaker, kept in a field of its own. The date the memory is about (``at``)
is added in words ("8 May 2023"), so "in May 2023" meets it lexically.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from p2pmem.retrieval.text import stems

_SPEAKER = re.compile(r"^\s*([^:\n]{1,40}):\s")
_LAST_DATETIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
NO_NEIGHBOUR = -1


@dataclass(frozen=True)
class Neighbour:
    """What a document keeps of a session neighbour, so one search returns
    everything the re-scoring needs without a second lookup."""

    rid: int = NO_NEIGHBOUR
    at: int = 0
    ts: int = 0
    speaker: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class IndexDoc:
    """One current memory as the lexical index holds it."""

    rid: int  # SQLite rowid of the record: the document's key
    text: str  # the whole text with its date words: candidate generation
    body: str  # the text without a "Name:" prefix, with date words: the turn's own score
    window: str  # previous + this + next memory of the session
    speaker: tuple[int, int]  # term keys of a "Name: text" memory's speaker (0: none)
    prev: Neighbour
    next: Neighbour
    session_key: int  # one number per (author, session); 0 when there is no session
    at: int
    ts: int
    author: bytes
    session: str
    topics: tuple[str, ...]
    visibility: str


def term_key(term: str) -> int:
    """A stable signed 63-bit number for an analysed term (never 0)."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "big") >> 1 or 1


def speaker_keys(speaker: str) -> tuple[int, int]:
    keys = [term_key(t) for t in dict.fromkeys(stems(speaker))][:2]
    return (keys + [0, 0])[0], (keys + [0, 0])[1]


def split_speaker(text: str) -> tuple[str, str]:
    """("Caroline", "rest") for "Caroline: rest"; ("", text) otherwise."""
    match = _SPEAKER.match(text)
    return (match.group(1), text[match.end():]) if match else ("", text)


def date_words(at_ms: int) -> str:
    day = datetime.fromtimestamp(min(max(at_ms, 0), _LAST_DATETIME_MS) / 1000, tz=UTC)
    return f"{day.day} {day.strftime('%B')} {day.year}"


def session_key(author: bytes, session: str) -> int:
    """A signed 63-bit key of (author, session); 0 for no session."""
    if not session:
        return 0
    digest = hashlib.sha256(author + b"\0" + session.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


@dataclass(frozen=True)
class Entry:  # frozen, yet cached_property works: it writes the instance __dict__
    """The fields of a stored memory a document is made from."""

    rid: int
    text: str
    at: int
    ts: int
    author: bytes
    session: str
    topics: tuple[str, ...]
    visibility: str

    @functools.cached_property
    def speaker(self) -> tuple[int, int]:
        return speaker_keys(split_speaker(self.text)[0])


def _neighbour(entry: Entry | None) -> Neighbour:
    if entry is None:
        return Neighbour()
    return Neighbour(entry.rid, entry.at, entry.ts, entry.speaker)


def make_doc(entry: Entry, prev: Entry | None, following: Entry | None) -> IndexDoc:
    _speaker, body = split_speaker(entry.text)
    dates = date_words(entry.at)
    window = " ".join(e.text for e in (prev, entry, following) if e is not None)
    return IndexDoc(
        rid=entry.rid, text=f"{entry.text} {dates}", body=f"{body} {dates}", window=window,
        speaker=entry.speaker, prev=_neighbour(prev), next=_neighbour(following),
        session_key=session_key(entry.author, entry.session), at=entry.at, ts=entry.ts,
        author=entry.author, session=entry.session, topics=entry.topics, visibility=entry.visibility,
    )
