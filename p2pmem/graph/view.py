"""The graph view: a pure function of a set of graph records (a CRDT).

Rules (docs/graph.md, "Semantics"):

1. Every addition (an ``entity``, ``observation`` or ``relation`` record) is
   *effective* unless its own author signed an ``unlink`` that covers it and
   is later by ``(ts, id)``. An unlink of an entity covers that author's
   additions of the entity, of observations of it and of relations with it at
   either end; an unlink of an observation or relation covers that author's
   additions of exactly it. Another author's unlink never covers anything.
2. An entity is present while it has an effective addition. Its type is the
   one of its earliest effective addition by ``(ts, id)``, and entities are
   listed in that order.
3. An observation is present while it has an effective addition and its
   entity is present; a relation while it has an effective addition (as in
   the reference server, relations need not have present ends). Each is
   listed once, in the order of its earliest effective addition, with every
   effective addition kept as provenance (who said it, when).

Everything is decided per author by ``(ts, id)``, a total order the record
set fixes, so the same records give the same graph in any delivery order.
:mod:`p2pmem.graph.tables` keeps the same view in SQLite; property tests
check the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pmem.graph.records import ENTITY, GRAPH_KINDS, OBSERVATION, RELATION, Item, item_of


@dataclass
class EntityView:
    name: str
    type: str
    added: list[Item] = field(default_factory=list)  # effective entity additions, oldest first
    observations: dict[str, list[Item]] = field(default_factory=dict)  # text -> its additions


@dataclass
class Graph:
    entities: dict[str, EntityView] = field(default_factory=dict)  # in order of appearance
    relations: dict[tuple[str, str, str], list[Item]] = field(default_factory=dict)  # (from, type, to)

    def to_reference(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The reference server's shape: ``{"entities": [...], "relations": [...]}``.
        With ``names``: those entities (in graph order) and the relations with
        either end among them (open_nodes)."""
        if names is None:
            entities = list(self.entities.values())
            relations = list(self.relations)
        else:
            wanted = set(names)
            entities = [e for e in self.entities.values() if e.name in wanted]
            found = {e.name for e in entities}
            relations = [k for k in self.relations if k[0] in found or k[2] in found]
        return {
            "entities": [
                {"name": e.name, "entityType": e.type, "observations": list(e.observations)}
                for e in entities
            ],
            "relations": [{"from": f, "to": t, "relationType": r} for f, r, t in relations],
        }

    def comparable(self) -> tuple[object, ...]:
        """Equal for equal views, provenance included (for tests)."""
        return (
            [(e.name, e.type, [i.id for i in e.added],
              [(text, [i.id for i in items]) for text, items in e.observations.items()])
             for e in self.entities.values()],
            [(key, [i.id for i in items]) for key, items in self.relations.items()],
        )


def covers(removal: Item, addition: Item) -> bool:
    """Whether an unlink covers an addition (same author, later, matching)."""
    if removal.author != addition.author or removal.order <= addition.order:
        return False
    if removal.what == ENTITY:
        if addition.what == RELATION:
            return removal.a in (addition.a, addition.c)
        return removal.a == addition.a
    return removal.what == addition.what and (removal.a, removal.b, removal.c) == (
        addition.a, addition.b, addition.c,
    )


def assemble(effective: Iterable[Item]) -> Graph:
    """The graph of the effective additions, given oldest first by (ts, id)."""
    graph = Graph()
    observations: list[Item] = []
    for item in effective:
        if item.what == ENTITY:
            entity = graph.entities.get(item.a)
            if entity is None:
                entity = graph.entities[item.a] = EntityView(item.a, item.b)
            entity.added.append(item)
        elif item.what == OBSERVATION:
            observations.append(item)
        else:
            graph.relations.setdefault((item.a, item.b, item.c), []).append(item)
    for item in observations:
        entity = graph.entities.get(item.a)
        if entity is not None:
            entity.observations.setdefault(item.b, []).append(item)
    return graph


def build_graph(records: Iterable[Any]) -> Graph:
    """The graph view of a record set (other kinds and duplicates are ignored)."""
    items = {r.id: item_of(r) for r in records if r.kind in GRAPH_KINDS}
    removals: dict[bytes, list[Item]] = {}
    for item in items.values():
        if item.removal:
            removals.setdefault(item.author, []).append(item)
    effective = [
        item for item in items.values()
        if not item.removal and not any(covers(r, item) for r in removals.get(item.author, ()))
    ]
    effective.sort(key=lambda i: i.order)
    return assemble(effective)
