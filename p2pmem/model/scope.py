"""Who gets which record: the replication scope (docs/architecture.md).

- Directory records (profile, follow, endorse) and sealed messages go to every
  node: the directory must be complete everywhere, and a message travels
  until its recipient has it.
- A public memory, and a retraction, go to the author's own nodes, to nodes
  that follow the author, and to nodes run with ``--replicate all``.
- Public graph records (entity, observation, relation, unlink) travel like
  public memories.
- ``ask`` and ``private`` memories and graph records never travel by gossip.

Reconciliation between two nodes runs over the records *both* interests
admit, so both sides compute their fingerprints over the same filter and a
sync that is complete stays complete.
"""

from __future__ import annotations

from dataclasses import dataclass

EVERYWHERE = frozenset(("profile", "follow", "endorse", "message"))
# Graph records (p2pmem/graph) replicate like memories: public ones only.
AUTHOR_SCOPED = frozenset(("memory", "retract", "entity", "observation", "relation", "unlink"))


@dataclass(frozen=True)
class Interest:
    """What one node wants of public memories."""

    replicate_all: bool
    authors: frozenset[bytes]

    def wants(self, kind: str, author: bytes, visibility: str) -> bool:
        if kind in EVERYWHERE:
            return True
        if kind not in AUTHOR_SCOPED or visibility != "public":
            return False
        return self.replicate_all or author in self.authors


def shared(a: Interest, b: Interest) -> Interest:
    """The records both interests admit, itself an interest."""
    if a.replicate_all and b.replicate_all:
        return Interest(True, frozenset())
    if a.replicate_all:
        return Interest(False, b.authors)
    if b.replicate_all:
        return Interest(False, a.authors)
    return Interest(False, a.authors & b.authors)


def travels(kind: str, visibility: str) -> bool:
    """Whether a record may ever leave its node by gossip."""
    return kind in EVERYWHERE or (kind in AUTHOR_SCOPED and visibility == "public")
