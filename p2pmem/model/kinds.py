"""The record-kind registry: one place per kind for everything a kind decides.

Each kind of record (memory, retract, profile, follow, endorse, message, and
the knowledge graph's entity, observation, relation, unlink) is described by
one :class:`RecordKind` in :data:`REGISTRY`:

- ``check_body``: the schema of its body (raises :class:`RecordError`),
  used by :mod:`p2pmem.model.record` when signing and decoding;
- ``scope``: who gets it by gossip (:mod:`p2pmem.model.scope`):
  :data:`EVERYWHERE` (the directory and sealed messages) or
  :data:`AUTHOR_SCOPED` (public ones only, to the author's own nodes, its
  followers and ``--replicate all`` nodes);
- ``visible``: whether its records may be ``ask`` or ``private`` (else
  ``public`` only); ``refs``: whether it names other records (``"none"``,
  ``"optional"``, ``"required"``); ``timed``: whether it may carry the ``at``
  time and a lineage root (memories);
- ``quota``: (max records, max bytes or None) per author, for kinds that
  replicate everywhere (:mod:`p2pmem.model.quota`), or None;
- ``view``: the name of the store's view hook that maintains its derived
  state on insert (``Store._VIEWS`` in p2pmem/storage/store.py: ``"memory"``
  lineage and supersede, ``"retract"`` tombstones and purges, ``"graph"``
  the knowledge graph's tables, ``"row"`` the record row alone); a name, not
  a callable, because the store's hooks run SQL and this module is pure;
- ``target``: the body key whose value the store indexes as the record's
  target (follow/endorse ``target``, a message's ``to``), or None.

The built-in kinds register in :mod:`p2pmem.model.record`, beside their body
schemas; the graph's kinds register in :mod:`p2pmem.graph.records`. Whoever
reads the registry imports :mod:`p2pmem.model.record` first (it imports the
graph's module), so every built-in kind is there.

How to add a kind: write one module that defines its body check and calls
:func:`register` with its :class:`RecordKind` (choose a view hook the store
has, or add one there), import that module from ``p2pmem/model/record.py``
next to the graph's import so every node knows it, add its name to
``KINDS``' construction there, document its body in docs/protocol.md's CDDL,
and add its tests (sign/decode round trip, scope, view). Nothing else
branches on the kind's name: validation, scope and quotas read this entry.

This module imports nothing of p2pmem but errors (tests/test_layout.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from p2pmem.errors import RecordError

Scope = Literal["everywhere", "author"]
SCOPE_EVERYWHERE: Scope = "everywhere"
SCOPE_AUTHOR: Scope = "author"
VIEW_HOOKS = ("memory", "retract", "graph", "row")


@dataclass(frozen=True, slots=True)
class RecordKind:
    """Everything p2pmem knows about one kind of record."""

    name: str
    check_body: Callable[[Any], Any]
    scope: Scope
    view: str = "row"
    visible: bool = False
    refs: Literal["none", "optional", "required"] = "none"
    timed: bool = False
    quota: tuple[int, int | None] | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a record kind needs a name")
        if self.scope not in (SCOPE_EVERYWHERE, SCOPE_AUTHOR):
            raise ValueError(f"kind {self.name!r}: unknown scope {self.scope!r}")
        if self.view not in VIEW_HOOKS:
            raise ValueError(f"kind {self.name!r}: unknown view hook {self.view!r} (one of {VIEW_HOOKS})")
        if self.refs not in ("none", "optional", "required"):
            raise ValueError(f"kind {self.name!r}: refs must be none, optional or required")


REGISTRY: dict[str, RecordKind] = {}


def register(kind: RecordKind) -> RecordKind:
    """Add ``kind`` to the registry (registering the same entry again is a
    no-op, a different entry under a taken name an error)."""
    old = REGISTRY.get(kind.name)
    if old is not None and old != kind:
        raise ValueError(f"record kind {kind.name!r} is already registered")
    REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (for tests that register a toy one)."""
    REGISTRY.pop(name, None)


def kind_of(name: str) -> RecordKind:
    """The registry entry of ``name``, or :class:`RecordError`."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise RecordError(f"unknown kind {name!r}"[:120]) from None


class KindSet:
    """The names of the registered kinds with one scope, read live from the
    registry (so a kind registered later is in it): supports ``in``,
    iteration and ``len`` like the frozensets it replaces."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def __contains__(self, name: object) -> bool:
        kind = REGISTRY.get(name) if isinstance(name, str) else None
        return kind is not None and kind.scope == self._scope

    def __iter__(self) -> Iterator[str]:
        return iter([k.name for k in REGISTRY.values() if k.scope == self._scope])

    def __len__(self) -> int:
        return sum(1 for k in REGISTRY.values() if k.scope == self._scope)

    def __repr__(self) -> str:
        return f"KindSet({self._scope!r}: {sorted(self)})"


EVERYWHERE = KindSet(SCOPE_EVERYWHERE)
AUTHOR_SCOPED = KindSet(SCOPE_AUTHOR)
