"""Hypothesis strategies for p2pmem: identities, single records, and record
sets with lineages ("histories").

These are shared by the unit, property, simulation and network tests, so they
follow three rules:

* **Deterministic and fast to shrink.** Identities come from a small fixed
  pool (:func:`identity`), derived from their index, so a failing example
  names "agent 0" and "agent 1" rather than 32 random bytes, and no key is
  generated per example. Ed25519 signatures are deterministic, so the same
  draw always gives byte-identical records.
* **Always valid.** Every record a strategy returns was made by
  :func:`p2pmem.model.record.sign_record` and is within every limit of
  :mod:`p2pmem.limits`; tests that want invalid input mutate valid records.
* **Realistic histories.** :func:`histories` draws a sequence of operations
  (remember, update, concurrent update, stale edit, retract a lineage or one
  version, cross-author edits and retracts, profile, follow/unfollow, endorse,
  message) and signs a record for each with strictly increasing hybrid
  logical clock timestamps (:func:`p2pmem.model.clock.from_ms`), except that the two
  sides of a concurrent update may share a timestamp, as two nodes editing at
  the same millisecond would. The result is a :class:`History`: the records
  in creation order plus a readable log of what each operation did.

Typical use::

    from tests.strategies import histories

    @given(histories())
    def test_something(history):
        views = build_views(history.records)
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.graph.records import GRAPH_KINDS
from p2pmem.model.clock import MAX_HLC, from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import KINDS, MAX_TIME, VISIBILITIES, Record, sign_record

__all__ = [
    "BASE_MS",
    "OPERATIONS",
    "POOL_SIZE",
    "History",
    "any_records",
    "histories",
    "identities",
    "identity",
    "memory_records",
    "memory_texts",
    "metas",
    "profile_bodies",
    "record_ids",
    "sessions",
    "timestamps",
    "topic_lists",
]

#: Wall-clock milliseconds histories start at (2023-11-14), so that `at`,
#: `since` and `until` look like real dates.
BASE_MS = 1_700_000_000_000
#: How many identities the pool holds.
POOL_SIZE = 6


@functools.cache
def identity(index: int) -> Identity:
    """The pool's identity number ``index``: the same keys in every run."""
    ed = hashlib.sha256(b"p2pmem test identity ed25519 %d" % index).digest()
    x = hashlib.sha256(b"p2pmem test identity x25519 %d" % index).digest()
    return Identity.from_seeds(ed, x)


def identities(pool: int = POOL_SIZE) -> st.SearchStrategy[Identity]:
    """One identity of the first ``pool`` of the pool (shrinks to identity 0)."""
    return st.integers(0, pool - 1).map(identity)


# --- fields ---------------------------------------------------------------
#: Memory text: any non-empty Unicode (no surrogates), short so examples stay small.
memory_texts = st.text(min_size=1, max_size=80)
#: One topic: 1..16 characters, so at most 64 UTF-8 bytes (limits.MAX_TOPIC).
topics = st.text(min_size=1, max_size=limits.MAX_TOPIC // 4)
topic_lists = st.lists(topics, max_size=4)
#: A session name: at most 32 characters, 128 bytes (limits.MAX_SESSION).
sessions = st.text(max_size=limits.MAX_SESSION // 4)
visibilities = st.sampled_from(VISIBILITIES)
#: A valid record timestamp (any non-zero integer below 2**63, record.MAX_TIME).
timestamps = st.integers(1, MAX_TIME)
#: An `at` time in milliseconds (any integer of 0..2**63-1), or none.
ats = st.none() | st.integers(0, MAX_TIME)
record_ids = st.binary(min_size=32, max_size=32)
metas = st.dictionaries(
    st.text(min_size=1, max_size=limits.MAX_META_KEY // 4),
    st.integers(0, MAX_HLC) | st.text(max_size=40),
    max_size=3,
)
_short_texts = st.text(max_size=24)


@st.composite
def profile_bodies(draw: st.DrawFn) -> dict:
    return {
        "name": draw(st.text(max_size=limits.MAX_NAME // 4)),
        "description": draw(_short_texts),
        "skills": draw(st.lists(st.text(min_size=1, max_size=16), max_size=4)),
        "addresses": draw(st.lists(st.text(min_size=1, max_size=30), max_size=3)),
        "xkey": draw(st.binary(min_size=32, max_size=32)),
    }


# --- single records -----------------------------------------------------------
@st.composite
def memory_records(
    draw: st.DrawFn, texts: st.SearchStrategy[str] = memory_texts
) -> Record:
    """A valid signed memory with arbitrary fields. Its refs name random ids,
    so it is a record on its own, not part of a consistent history."""
    refs = draw(st.lists(record_ids, max_size=3))
    return sign_record(
        draw(identities()),
        "memory",
        draw(timestamps),
        draw(texts),
        session=draw(sessions),
        topics=draw(topic_lists),
        visibility=draw(visibilities),
        refs=refs,
        meta=draw(metas),
        at=draw(ats),
        root=draw(st.none() | record_ids) if refs else None,
    )


_graph_texts = st.text(max_size=20)


def graph_bodies(kind: str) -> st.SearchStrategy[dict]:
    """A valid body of a graph record kind (p2pmem/graph/records.py)."""
    entity = st.fixed_dictionaries({"name": _graph_texts, "type": _graph_texts})
    observation = st.fixed_dictionaries({"entity": _graph_texts, "text": _graph_texts})
    relation = st.fixed_dictionaries({"from": _graph_texts, "type": _graph_texts, "to": _graph_texts})
    return {
        "entity": entity, "observation": observation, "relation": relation,
        "unlink": st.fixed_dictionaries({"entity": _graph_texts}) | observation | relation,
    }[kind]


@st.composite
def any_records(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> Record:
    """A valid signed record of any of ``kinds``."""
    kind = draw(st.sampled_from(kinds))
    if kind == "memory":
        return draw(memory_records())
    author = draw(identities())
    common = {
        "session": draw(sessions),
        "topics": draw(topic_lists),
        "meta": draw(metas),
    }
    ts = draw(timestamps)
    if kind == "retract":
        refs = draw(st.lists(record_ids, min_size=1, max_size=3))
        return sign_record(author, kind, ts, "", refs=refs, **common)
    if kind == "profile":
        body: dict = draw(profile_bodies())
    elif kind == "follow":
        body = {"target": draw(record_ids), "active": draw(st.booleans())}
    elif kind == "endorse":
        body = {"target": draw(record_ids), "what": draw(st.sampled_from(("agent", "memory")))}
    elif kind in GRAPH_KINDS:
        return sign_record(author, kind, ts, draw(graph_bodies(kind)), visibility=draw(visibilities), **common)
    else:
        body = {
            "to": draw(record_ids),
            "epk": draw(record_ids),
            "ct": draw(st.binary(min_size=16, max_size=80)),
        }
    return sign_record(author, kind, ts, body, **common)


# --- histories ----------------------------------------------------------------
@dataclass
class _Lineage:
    author: int
    root: bytes
    versions: list[Record] = field(default_factory=list)

    def tips(self) -> list[Record]:
        """Versions no other version of this lineage supersedes: what its
        author's node sees as current (ignoring retractions)."""
        named = {ref for v in self.versions for ref in v.refs}
        return [v for v in self.versions if v.id not in named]


@dataclass
class History:
    """A record set produced by a sequence of operations.

    ``records`` are in creation order (timestamps never decrease along it);
    ``log`` has one readable line per record, for failure messages; ``ops``
    maps each record id to the operation that made it (a name of
    :data:`OPERATIONS`); ``marks`` maps each memory id to its unique marker
    word when the history was drawn with ``marked=True``.
    """

    records: list[Record] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    ops: dict[bytes, str] = field(default_factory=dict)
    marks: dict[bytes, str] = field(default_factory=dict)

    @property
    def raws(self) -> list[bytes]:
        return [r.raw for r in self.records]

    @property
    def memories(self) -> list[Record]:
        return [r for r in self.records if r.kind == "memory"]

    def __repr__(self) -> str:
        return "History(\n  " + "\n  ".join(self.log) + "\n)"

    def _repr_pretty_(self, printer, cycle) -> None:  # what hypothesis prints for a failing example
        printer.text(repr(self))


OPERATIONS = (
    "remember",
    "update",
    "concurrent_update",
    "stale_edit",
    "retract_lineage",
    "retract_version",
    "foreign_edit",
    "foreign_retract",
    "profile",
    "follow",
    "endorse",
    "message",
)
_STEPS = st.integers(0, 2)  # seconds between operations (0: same ms, next counter)
_HISTORY_SESSIONS = st.sampled_from(("", "s1", "s2"))
_HISTORY_TOPICS = st.lists(st.sampled_from(("alpha", "beta", "gamma")), max_size=2)
_NEEDS_LINEAGE = frozenset(
    ("update", "concurrent_update", "stale_edit", "retract_lineage", "retract_version",
     "foreign_edit", "foreign_retract")
)


@st.composite
def histories(
    draw: st.DrawFn,
    *,
    min_ops: int = 1,
    max_ops: int = 24,
    authors: int = 3,
    operations: tuple[str, ...] = OPERATIONS,
    texts: st.SearchStrategy[str] = memory_texts,
    marked: bool = False,
    start_ms: int = BASE_MS,
) -> History:
    """A history of ``min_ops``..``max_ops`` operations by ``authors`` agents
    of the pool (``authors`` >= 2 for the cross-author operations).

    Operations (a lineage is a memory and its versions):

    - ``remember``: a new memory (a new lineage);
    - ``update``: supersede every tip of a lineage, with the lineage root
      (what ``Agent.update`` does);
    - ``concurrent_update``: two versions that supersede the same tips, made
      independently (on two nodes of the same agent), sometimes with the same
      timestamp: a conflict;
    - ``stale_edit``: supersede one random earlier version only (an edit made
      from an out-of-date copy);
    - ``retract_lineage``: retract a lineage by its root (``Agent.forget``);
    - ``retract_version``: retract one version only (the version it
      superseded comes back);
    - ``foreign_edit`` / ``foreign_retract``: another agent names this
      lineage's records in refs; neither may affect it;
    - ``profile``, ``follow`` (follow or unfollow), ``endorse`` (an agent or a
      memory), ``message`` (an opaque sealed message).

    With ``marked=True`` each memory's text ends with a unique marker word
    (``History.marks``), so a test can look for it in raw storage.
    """
    history = History()
    lineages: list[_Lineage] = []
    clock = {"ms": start_ms, "counter": 0}
    salt = draw(st.binary(min_size=4, max_size=4)).hex()

    # strategies built once per history: building them per draw is slow
    author_ids = st.integers(0, authors - 1)
    other_ids = st.integers(0, max(authors - 2, 0))
    at_times = st.none() | st.integers(start_ms - 10**9, start_ms + 10**9)

    def pick(items):
        """One of ``items`` (a cached integer strategy: cheap to build and shrink)."""
        return items[draw(st.integers(0, len(items) - 1))]

    def tick() -> int:
        step = draw(_STEPS)
        if step:
            clock["ms"] += step * 1000
            clock["counter"] = 0
        else:
            clock["counter"] += 1
        return from_ms(clock["ms"], clock["counter"])

    def text() -> str:
        body = draw(texts)
        if marked:
            n = len(history.marks)
            mark = hashlib.sha256(f"{salt}/{n}".encode()).hexdigest()[:16] + "7"
            body = f"{body} {mark}"
        return body

    def memory(author: int, ts: int, *, refs=(), root=None) -> Record:
        record = sign_record(
            identity(author),
            "memory",
            ts,
            text(),
            session=draw(_HISTORY_SESSIONS),
            topics=draw(_HISTORY_TOPICS),
            visibility=draw(visibilities),
            refs=list(refs),
            root=root,
            at=draw(at_times),
        )
        if marked:
            history.marks[record.id] = record.text.rsplit(" ", 1)[1]
        return record

    def add(record: Record, line: str) -> None:
        history.records.append(record)
        history.ops[record.id] = op
        history.log.append(f"{record.id.hex()[:8]} {line}")

    def other_author(author: int) -> int:
        other = draw(other_ids)
        return other if other < author else other + 1

    n_ops = draw(st.integers(min_ops, max_ops))
    for _ in range(n_ops):
        choices = [
            op for op in operations
            if (lineages or op not in _NEEDS_LINEAGE)
            and (authors > 1 or op not in ("foreign_edit", "foreign_retract", "follow"))
        ]
        op = pick(choices)
        if op in _NEEDS_LINEAGE:
            lin = pick(lineages)
            short = lin.root.hex()[:8]
        if op == "remember":
            author = draw(author_ids)
            record = memory(author, tick())
            lineages.append(_Lineage(author, record.id, [record]))
            add(record, f"agent {author} remembers {record.text!r}")
        elif op == "update":
            tips = lin.tips()
            record = memory(lin.author, tick(), refs=[t.id for t in tips], root=lin.root)
            lin.versions.append(record)
            add(record, f"agent {lin.author} updates lineage {short}")
        elif op == "concurrent_update":
            tips = lin.tips()
            ts = tick()
            first = memory(lin.author, ts, refs=[t.id for t in tips], root=lin.root)
            ts2 = ts if draw(st.booleans()) else tick()
            second = memory(lin.author, ts2, refs=[t.id for t in tips], root=lin.root)
            lin.versions += [first, second]
            add(first, f"agent {lin.author} updates lineage {short} on one node")
            add(second, f"agent {lin.author} updates lineage {short} on another node")
        elif op == "stale_edit":
            base = pick(lin.versions)
            record = memory(lin.author, tick(), refs=[base.id], root=lin.root)
            lin.versions.append(record)
            add(record, f"agent {lin.author} edits old version {base.id.hex()[:8]}")
        elif op == "retract_lineage":
            record = sign_record(identity(lin.author), "retract", tick(), "", refs=[lin.root])
            add(record, f"agent {lin.author} retracts lineage {short}")
        elif op == "retract_version":
            victim = pick(lin.versions)
            record = sign_record(identity(lin.author), "retract", tick(), "", refs=[victim.id])
            add(record, f"agent {lin.author} retracts version {victim.id.hex()[:8]}")
        elif op == "foreign_edit":
            other = other_author(lin.author)
            refs = [t.id for t in lin.tips()]
            record = memory(other, tick(), refs=refs, root=lin.root)
            lineages.append(_Lineage(other, lin.root, [record]))
            add(record, f"agent {other} 'updates' agent {lin.author}'s lineage {short}")
        elif op == "foreign_retract":
            other = other_author(lin.author)
            victim = pick([lin.root, *[v.id for v in lin.versions]])
            record = sign_record(identity(other), "retract", tick(), "", refs=[victim])
            add(record, f"agent {other} 'retracts' agent {lin.author}'s {victim.hex()[:8]}")
        elif op == "profile":
            author = draw(author_ids)
            body = draw(profile_bodies())
            body["xkey"] = identity(author).message_public_key
            record = sign_record(identity(author), "profile", tick(), body)
            add(record, f"agent {author} sets profile name={body['name']!r}")
        elif op == "follow":
            author = draw(author_ids)
            target = other_author(author)
            active = draw(st.booleans())
            body = {"target": identity(target).public_key, "active": active}
            record = sign_record(identity(author), "follow", tick(), body)
            add(record, f"agent {author} {'follows' if active else 'unfollows'} agent {target}")
        elif op == "endorse":
            author = draw(author_ids)
            memories = [r for r in history.records if r.kind == "memory"]
            if memories and draw(st.booleans()):
                target = pick(memories).id
                what = "memory"
            else:
                target = identity(draw(author_ids)).public_key
                what = "agent"
            body = {"target": target, "what": what}
            record = sign_record(identity(author), "endorse", tick(), body)
            add(record, f"agent {author} endorses {what} {target.hex()[:8]}")
        else:  # message
            author = draw(author_ids)
            to = draw(author_ids)
            body = {
                "to": identity(to).public_key,
                "epk": draw(record_ids),
                "ct": draw(st.binary(min_size=16, max_size=48)),
            }
            record = sign_record(identity(author), "message", tick(), body)
            add(record, f"agent {author} messages agent {to}")
    return history
