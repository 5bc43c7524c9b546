"""Quotas for the records that replicate everywhere (issue #11).

Profiles, follows, endorsements and sealed messages travel to every node
(p2pmem/model/scope.py). Without a bound, a fresh identity could make every node
store whatever it sends. Each group below holds at most a fixed number of
records and bytes; past that the oldest by ``(ts, id)`` are evicted:

========================  ==============================================
group                     limit (p2pmem/limits.py)
========================  ==============================================
profiles of one author    MAX_PROFILES_PER_AUTHOR (the winner of the LWW)
follows of one author     MAX_FOLLOWS_PER_AUTHOR
endorsements of one       MAX_ENDORSEMENTS_PER_AUTHOR
messages of one sender    MAX_MESSAGES_PER_SENDER, MAX_MESSAGE_BYTES_PER_SENDER
========================  ==============================================

Each kind's limit is the ``quota`` of its entry in the record-kind registry
(p2pmem/model/kinds.py).

Why deterministic and viewer-independent: which records survive is a
function of the record set alone (the newest ``(ts, id)`` of each group), so
two honest nodes that saw the same records keep the same ones, whatever the
arrival order and whoever they follow. A record older than its group's
cut-off is dropped on arrival, so a peer that still holds it cannot make us
keep it again. The groups partition the records (by kind and author) and
each keeps a prefix of its newest-first order, so applying the rule batch
by batch ends in the same set as applying it once to everything: the rule is
confluent, and every node converges whatever order records came in.

There is no local exception, not even for messages to a node's own agent
(an exception would make nodes disagree, and reconciliation would carry the
same records back and forth forever): a sender's older messages are dropped
everywhere once it has MAX_MESSAGES_PER_SENDER newer ones (`inbox
--maildir` keeps a copy). Messages to one recipient are not stored within
a quota of their own: a recipient flooded by many fresh identities costs each
node one sender quota per identity (docs/threat-model.md, known limits). How
fast they are relayed is bounded per recipient instead, by a local rate that
nodes need not agree on (``MESSAGE_RELAY_BYTES_PER_S``, NodeCore._relay_allows):
it delays sending, never what is stored, so this rule stays confluent.

The store applies this rule in every ingest transaction (Store.ingest), from
peers, the CLI and imports alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pmem.model.kinds import REGISTRY
from p2pmem.model.record import Record


def group_limit(kind: str) -> tuple[int, int | None] | None:
    """(max records, max bytes or None) per author for ``kind``, or None if
    its records are not under a quota: the ``quota`` of its registry entry
    (p2pmem/model/kinds.py; the built-in kinds' are in p2pmem/model/record.py)."""
    spec = REGISTRY.get(kind)
    return spec.quota if spec is not None else None


def over_quota(rows: list[tuple[bytes, int, int]], count: int, size: int | None) -> list[bytes]:
    """Ids past the quota; ``rows`` are (id, ts, bytes), newest (ts, id) first."""
    out: list[bytes] = []
    total = 0
    for n, (record_id, _ts, length) in enumerate(rows):
        total += length
        if n >= count or (size is not None and total > size):
            out.append(record_id)
    return out


def kept(records: Iterable[Record]) -> list[Record]:
    """The records a store keeps of ``records`` (the rule above, applied at
    once): for tests and reference models, which must agree with the store."""
    records = list(records)
    groups: dict[tuple[str, bytes], list[Record]] = {}
    for record in {r.id: r for r in records}.values():
        if group_limit(record.kind) is not None:
            groups.setdefault((record.kind, record.author), []).append(record)
    victims: set[bytes] = set()
    for (kind, _), members in groups.items():
        members.sort(key=lambda r: (r.ts, r.id), reverse=True)
        count, size = group_limit(kind) or (len(members), None)
        victims.update(over_quota([(r.id, r.ts, len(r.raw)) for r in members], count, size))
    return [r for r in records if r.id not in victims]
