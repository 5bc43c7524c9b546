"""The reference MCP memory server's nine operations on this agent's signed
graph, plus the provenance only p2pmem has (docs/mcp.md).

Each write signs records with the agent's key and stores them in one
transaction. What one agent sees is exactly what the reference server would
show for the same calls (tests/test_graph_reference.py checks it against the
real server); across agents the view merges (p2pmem/graph/view.py), and an
agent removes only its own additions.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from p2pmem.errors import P2pmemError, UsageError
from p2pmem.graph import search, tables
from p2pmem.graph.records import (
    ENTITY,
    OBSERVATION,
    RELATION,
    UNLINK,
    Item,
    entity_body,
    observation_body,
    relation_body,
    unlink_body,
)
from p2pmem.graph.view import Graph
from p2pmem.model.identity import agent_id
from p2pmem.model.record import VISIBILITIES, Record

_WIDTH = {"private": 0, "ask": 1, "public": 2}


class GraphError(P2pmemError):
    """A graph operation that cannot be done (e.g. an unknown entity)."""


class Signer:
    """Signs a run of records with strictly increasing timestamps, reading
    the store's last timestamp once (another process of the home may have
    signed just before)."""

    def __init__(self, agent: Any, session: str = "", visibility: str = "public") -> None:
        if visibility not in VISIBILITIES:
            raise UsageError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        self.agent = agent
        self.session = session
        self.visibility = visibility
        self.first = True
        self.records: list[Record] = []
        self.done: list[Record] = []  # every record committed so far
        self.unlinked: set[tuple[str, str, str, str]] = set()  # this run's removals

    def sign(self, kind: str, body: dict[str, str], visibility: str | None = None) -> Record:
        if self.first:
            ts = self.agent.next_ts()
            self.first = False
        else:
            ts = self.agent.tick()  # the agent's clock, not the wall clock behind its back
        record = self.agent.sign(kind, body, ts=ts, session=self.session,
                                 visibility=visibility or self.visibility)
        self.records.append(record)
        return record

    def commit(self) -> list[Record]:
        if self.records:
            self.agent.commit(self.records)
        done, self.records = self.records, []
        self.done.extend(done)
        return done


def _db(agent: Any) -> Any:
    return agent.store.connection


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string")
    return value


# -- the nine tools -----------------------------------------------------------
def create_entities(signer: Signer, entities: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create the entities whose names are not in the graph yet, with their
    observations; returns those created (existing names are skipped)."""
    db = _db(signer.agent)
    wanted = [_text(e.get("name"), "name") for e in entities]
    existing = tables.present_entities(db, wanted)
    created: list[dict[str, Any]] = []
    for entity in entities:
        name = entity["name"]
        if name in existing:
            continue
        existing.add(name)
        entity_type = _text(entity.get("entityType"), "entityType")
        observations = list(dict.fromkeys(_text(o, "each observation") for o in entity.get("observations", [])))
        signer.sign(ENTITY, entity_body(name, entity_type))
        for text in observations:
            signer.sign(OBSERVATION, observation_body(name, text))
        created.append({"name": name, "entityType": entity_type, "observations": observations})
    signer.commit()
    return created


def create_relations(signer: Signer, relations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create the relations not in the graph yet; returns those created."""
    db = _db(signer.agent)
    seen: set[tuple[str, str, str]] = set()
    created = []
    for relation in relations:
        key = (_text(relation.get("from"), "from"), _text(relation.get("relationType"), "relationType"),
               _text(relation.get("to"), "to"))
        if key in seen or tables.relation_present(db, key):
            continue
        seen.add(key)
        signer.sign(RELATION, relation_body(*key))
        created.append({"from": key[0], "to": key[2], "relationType": key[1]})
    signer.commit()
    return created


def add_observations(signer: Signer, observations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add observations to existing entities; an unknown entity fails the
    whole call, naming it, and nothing is added."""
    db = _db(signer.agent)
    names = [_text(o.get("entityName"), "entityName") for o in observations]
    present = tables.present_entities(db, names)
    for name in names:
        if name not in present:
            raise GraphError(f"Entity with name {name} not found")
    known: dict[str, set[str]] = {}
    results = []
    for item in observations:
        name = item["entityName"]
        have = known.setdefault(name, tables.present_observations(db, name))
        added = []
        for text in item.get("contents", []):
            text = _text(text, "each of contents")
            if text in have:
                continue
            have.add(text)
            signer.sign(OBSERVATION, observation_body(name, text))
            added.append(text)
        results.append({"entityName": name, "addedObservations": added})
    signer.commit()
    return results


def _unlink(signer: Signer, what: str, a: str, b: str = "", c: str = "") -> None:
    """Remove this agent's own additions of a thing, if it has any: the
    removal is as visible as the widest of them."""
    if (what, a, b, c) in signer.unlinked:
        return
    visibilities = tables.own_live(_db(signer.agent), signer.agent.key, what, a, b, c)
    if visibilities:
        signer.unlinked.add((what, a, b, c))
        widest = max(visibilities, key=_WIDTH.__getitem__)
        signer.sign(UNLINK, unlink_body(what, a, b, c), visibility=widest)


def delete_entities(signer: Signer, names: Iterable[str]) -> None:
    """Remove this agent's entities, and its observations of them and
    relations touching them. Unknown names are no error."""
    for name in dict.fromkeys(_text(n, "each entity name") for n in names):
        _unlink(signer, ENTITY, name)
    signer.commit()


def delete_observations(signer: Signer, deletions: Sequence[dict[str, Any]]) -> None:
    for deletion in deletions:
        name = _text(deletion.get("entityName"), "entityName")
        for text in dict.fromkeys(deletion.get("observations", [])):
            _unlink(signer, OBSERVATION, name, _text(text, "each observation"))
    signer.commit()


def delete_relations(signer: Signer, relations: Sequence[dict[str, Any]]) -> None:
    for relation in relations:
        key = (_text(relation.get("from"), "from"), _text(relation.get("relationType"), "relationType"),
               _text(relation.get("to"), "to"))
        _unlink(signer, RELATION, *key)
    signer.commit()


_cache: weakref.WeakKeyDictionary[Any, dict[Any, tuple[tuple[int, int], Graph]]] = weakref.WeakKeyDictionary()


def view_of(store: Any, visibilities: Sequence[str] | None = None) -> Graph:
    """The graph view of a store (optionally of additions with these
    visibilities only). Views are cached per store until a graph record
    arrives (from this process or another): the counts of additions and
    removals grow with every one, and only they change the view. Callers
    must not change the graph they get."""
    db = store.connection
    key = tables.version(db)
    chosen = None if visibilities is None else tuple(visibilities)
    views = _cache.setdefault(store, {})
    cached = views.get(chosen)
    if cached is not None and cached[0] == key:
        return cached[1]
    graph = tables.read_graph(db, visibilities=chosen)
    views[chosen] = (key, graph)
    return graph


def read_graph(agent: Any, *, visibilities: Sequence[str] | None = None) -> Graph:
    return view_of(agent.store, visibilities)


def search_names(graph: Graph, query: str, limit: int = 10) -> list[str]:
    """Entities matching ``query``: every one the reference's substring match
    finds (in graph order), then up to ``limit`` more ranked by meaning."""
    needle = query.lower()
    found = [
        name for name, e in graph.entities.items()
        if needle in name.lower() or needle in e.type.lower()
        or any(needle in o.lower() for o in e.observations)
    ]
    chosen = set(found)
    docs = graph.__dict__.get("_documents")
    if docs is None:  # a cached graph keeps its documents (and so its search index)
        docs = graph.__dict__["_documents"] = search.entity_documents(graph)
    ranked = search.rank(docs, query, limit + len(found))
    found.extend([name for name in ranked if name not in chosen][:limit])
    return found


def search_nodes(graph: Graph, query: str, limit: int = 10) -> dict[str, Any]:
    names = search_names(graph, query, limit)
    out = graph.to_reference(names)
    order = {name: i for i, name in enumerate(names)}
    out["entities"].sort(key=lambda e: order[e["name"]])
    return out


# -- provenance (p2pmem only) -----------------------------------------------
def _source(item: Item) -> dict[str, Any]:
    from p2pmem.model.clock import physical_ms
    from p2pmem.model.when import format_ms

    return {"author": agent_id(item.author), "ts": format_ms(physical_ms(item.ts)),
            "session": item.session, "visibility": item.visibility, "id": item.id.hex()}


def answer_records(store: Any, text: str, *, authors: Sequence[bytes] = (), limit: int = 10,
                   max_records: int = 100) -> list[bytes]:
    """Another node asks (``ask``): the signed additions behind the public
    and ``ask`` entities best matching ``text`` (the entity, its observations,
    the relations touching it), by ``authors`` only when given."""
    graph = view_of(store, ("public", "ask"))
    wanted = set(authors)
    ids: list[bytes] = []
    names = search_names(graph, text, limit)[:limit]
    chosen = set(names)
    for name in names:
        entity = graph.entities[name]
        items = list(entity.added)
        for sources in entity.observations.values():
            items.extend(sources)
        for (f, _r, t), sources in graph.relations.items():
            if f == name or (t == name and f not in chosen):
                items.extend(sources)
        ids.extend(i.id for i in items if not wanted or i.author in wanted)
    out = []
    for record_id in dict.fromkeys(ids):
        raw = store.get_raw(record_id)
        if raw is not None:
            out.append(raw)
        if len(out) >= max_records:
            break
    return out


def describe(graph: Graph, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Entities and relations with who said what, and when."""
    wanted = None if names is None else set(names)
    entities = [e for e in graph.entities.values() if wanted is None or e.name in wanted]
    found = {e.name for e in entities}
    return {
        "entities": [
            {
                "name": e.name, "entityType": e.type,
                "createdBy": [_source(i) for i in e.added],
                "observations": [
                    {"text": text, "sources": [_source(i) for i in items]}
                    for text, items in e.observations.items()
                ],
            }
            for e in entities
        ],
        "relations": [
            {"from": f, "to": t, "relationType": r, "sources": [_source(i) for i in items]}
            for (f, r, t), items in graph.relations.items()
            if wanted is None or f in found or t in found
        ],
    }
