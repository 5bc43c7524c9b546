"""Who gets which record: the replication scope (docs/architecture.md).

- Directory records (profile, follow, endorse) and sealed messages go to every
  node: the directory must be complete everywhere, and a message travels
  until its recipient has it.
- A public memory, and a retraction, go to the author's own nodes, to nodes
  that follow the author, and to nodes run with ``--replicate all``.
- Public graph records (entity, observation, relation, unlink) travel like
  public memories.
- ``ask`` and ``private`` memories and graph records never travel by gossip.

Which kind has which scope is in the record-kind registry
(:mod:`p2pmem.model.kinds`); this module applies it.

Reconciliation between two nodes runs over the records *both* interests
admit, so both sides compute their fingerprints over the same filter and a
sync that is complete stays complete.
"""

from __future__ import annotations

from dataclasses import dataclass

# The registry is filled by p2pmem.model.record (and the graph's kinds it imports).
import p2pmem.model.record  # noqa: F401
from p2pmem.model.kinds import AUTHOR_SCOPED, EVERYWHERE, REGISTRY, SCOPE_AUTHOR, SCOPE_EVERYWHERE

__all__ = ["AUTHOR_SCOPED", "EVERYWHERE", "ReplicationInterest", "shared", "travels"]


@dataclass(frozen=True)
class ReplicationInterest:
    """What one node wants of public memories (not the wire message that
    announces it, :class:`p2pmem.protocol.wire.Interest`)."""

    replicate_all: bool
    authors: frozenset[bytes]

    def wants(self, kind: str, author: bytes, visibility: str) -> bool:
        spec = REGISTRY.get(kind)
        if spec is None:
            return False
        if spec.scope == SCOPE_EVERYWHERE:
            return True
        if spec.scope != SCOPE_AUTHOR or visibility != "public":
            return False
        return self.replicate_all or author in self.authors




def shared(a: ReplicationInterest, b: ReplicationInterest) -> ReplicationInterest:
    """The records both interests admit, itself an interest."""
    if a.replicate_all and b.replicate_all:
        return ReplicationInterest(True, frozenset())
    if a.replicate_all:
        return ReplicationInterest(False, b.authors)
    if b.replicate_all:
        return ReplicationInterest(False, a.authors)
    return ReplicationInterest(False, a.authors & b.authors)


def travels(kind: str, visibility: str) -> bool:
    """Whether a record may ever leave its node by gossip."""
    spec = REGISTRY.get(kind)
    if spec is None:
        return False
    return spec.scope == SCOPE_EVERYWHERE or (spec.scope == SCOPE_AUTHOR and visibility == "public")
