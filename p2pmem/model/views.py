"""The CRDT views: pure functions of a set of records.

A node's state is a grow-only set of signed records; everything a user sees is
computed from that set by the rules below, so two nodes holding the same set
show the same thing whatever order the records arrived in. The SQLite store
maintains these views incrementally for speed; this module is the reference
definition, and property tests check that the store agrees with it.

Rules (docs/architecture.md, "Views"):

- *Retraction*: a ``retract`` record R hides every memory X by R's author with
  ``X.id`` or ``X.lineage`` in ``R.refs``, for good: X's body is purged and X
  is never shown again, whatever is replayed later.
- *Supersede*: a memory S supersedes each memory of the same author named in
  ``S.refs``, unless S itself is retracted (retracting an update brings the
  version it replaced back).
- *Heads*: memories neither retracted nor superseded. Within one lineage the
  head with the greatest ``(ts, id)`` is the current text; the other heads are
  concurrent edits, shown as conflicts.
- *Profile*: last writer wins per author, by ``(ts, id)``.
- *Follow*: last writer wins per (follower, followee) by ``(ts, id)``; the
  winner's ``active`` flag says whether the follow holds.
- *Endorse*: a set of (endorser, target, what).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pmem.model.record import Record


@dataclass
class ViewSnapshot:
    """Everything a user can see, computed from one record set."""

    heads: dict[bytes, Record] = field(default_factory=dict)  # id -> visible memory
    # (author, lineage) -> current head id / the other heads
    current: dict[tuple[bytes, bytes], bytes] = field(default_factory=dict)
    conflicts: dict[tuple[bytes, bytes], tuple[bytes, ...]] = field(default_factory=dict)
    retracted: frozenset[bytes] = frozenset()  # memory ids hidden for good
    profiles: dict[bytes, bytes] = field(default_factory=dict)  # author -> profile record id
    follows: frozenset[tuple[bytes, bytes]] = frozenset()  # (follower, followee), active only
    endorsements: frozenset[tuple[bytes, bytes, str]] = frozenset()
    messages: frozenset[bytes] = frozenset()  # message record ids

    def comparable(self) -> tuple[object, ...]:
        """A value equal for equal views (for tests)."""
        return (
            sorted(self.heads),
            sorted(self.current.items()),
            sorted(self.conflicts.items()),
            sorted(self.retracted),
            sorted(self.profiles.items()),
            sorted(self.follows),
            sorted(self.endorsements),
            sorted(self.messages),
        )


def _order(record: Record) -> tuple[int, bytes]:
    return (record.ts, record.id)


def build_views(records: Iterable[Record]) -> ViewSnapshot:
    """The views of a record set (duplicates are harmless: it is a set)."""
    by_id: dict[bytes, Record] = {}
    for record in records:
        by_id[record.id] = record
    memories = [r for r in by_id.values() if r.kind == "memory"]

    tombstones = {(ref, r.author) for r in by_id.values() if r.kind == "retract" for ref in r.refs}
    retracted = {
        m.id
        for m in memories
        if (m.id, m.author) in tombstones or (m.lineage, m.author) in tombstones
    }
    superseded = {
        (ref, s.author) for s in memories if s.id not in retracted for ref in s.refs
    }
    heads = {
        m.id: m
        for m in memories
        if m.id not in retracted and (m.id, m.author) not in superseded
    }
    # A lineage belongs to one author: a record naming another author's root
    # starts a lineage of its own rather than joining theirs.
    lineages: dict[tuple[bytes, bytes], list[Record]] = {}
    for head in heads.values():
        lineages.setdefault((head.author, head.lineage), []).append(head)
    current: dict[tuple[bytes, bytes], bytes] = {}
    conflicts: dict[tuple[bytes, bytes], tuple[bytes, ...]] = {}
    for lineage, members in lineages.items():
        members.sort(key=_order, reverse=True)
        current[lineage] = members[0].id
        if len(members) > 1:
            conflicts[lineage] = tuple(m.id for m in members[1:])

    profiles: dict[bytes, Record] = {}
    follow_latest: dict[tuple[bytes, bytes], Record] = {}
    endorsements: set[tuple[bytes, bytes, str]] = set()
    messages: set[bytes] = set()
    for record in by_id.values():
        if record.kind == "profile":
            best = profiles.get(record.author)
            if best is None or _order(record) > _order(best):
                profiles[record.author] = record
        elif record.kind == "follow":
            assert isinstance(record.body, dict)
            key = (record.author, record.body["target"])
            best = follow_latest.get(key)
            if best is None or _order(record) > _order(best):
                follow_latest[key] = record
        elif record.kind == "endorse":
            assert isinstance(record.body, dict)
            endorsements.add((record.author, record.body["target"], record.body["what"]))
        elif record.kind == "message":
            messages.add(record.id)
    follows = frozenset(
        key for key, rec in follow_latest.items() if isinstance(rec.body, dict) and rec.body["active"]
    )
    return ViewSnapshot(
        heads=heads,
        current=current,
        conflicts=conflicts,
        retracted=frozenset(retracted),
        profiles={a: r.id for a, r in profiles.items()},
        follows=follows,
        endorsements=frozenset(endorsements),
        messages=frozenset(messages),
    )
