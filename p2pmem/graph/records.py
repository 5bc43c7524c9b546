"""The graph's record kinds and their bodies (docs/protocol.md, "Graph bodies").

- ``entity``: ``{"name", "type"}`` — this author says the entity exists.
- ``observation``: ``{"entity", "text"}`` — this author observes ``text`` of it.
- ``relation``: ``{"from", "type", "to"}`` — this author relates two entities.
- ``unlink``: a removal by its author, one of three shapes told apart by their
  keys: ``{"entity"}`` (the entity, and with it this author's observations of
  it and relations touching it), ``{"entity", "text"}`` (an observation),
  ``{"from", "type", "to"}`` (a relation).

Graph records may be ``public``, ``ask`` or ``private``, like memories, and
carry no refs: a removal names what it removes by value, so it needs no ids
and applies to additions it has not seen yet if they are older.

The four kinds register themselves in the record-kind registry
(:mod:`p2pmem.model.kinds`) at the end of this module: their body schema,
their scope (like memories: public ones travel to the author's nodes and
followers) and the store's ``graph`` view hook (p2pmem/graph/tables.py).

This module imports nothing of p2pmem but errors, limits and the pure kind
registry, so the record schema (:mod:`p2pmem.model.record`) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pmem import limits
from p2pmem.errors import RecordError
from p2pmem.model.kinds import SCOPE_AUTHOR, RecordKind, register

ENTITY, OBSERVATION, RELATION, UNLINK = "entity", "observation", "relation", "unlink"
ADD_KINDS = (ENTITY, OBSERVATION, RELATION)
GRAPH_KINDS = (*ADD_KINDS, UNLINK)

_SHAPES: dict[frozenset[str], str] = {
    frozenset(("name", "type")): ENTITY,
    frozenset(("entity", "text")): OBSERVATION,
    frozenset(("from", "type", "to")): RELATION,
}
_UNLINK_SHAPES: dict[frozenset[str], str] = {
    frozenset(("entity",)): ENTITY,
    frozenset(("entity", "text")): OBSERVATION,
    frozenset(("from", "type", "to")): RELATION,
}
_SIZES = {
    "name": limits.MAX_GRAPH_NAME, "entity": limits.MAX_GRAPH_NAME, "from": limits.MAX_GRAPH_NAME,
    "to": limits.MAX_GRAPH_NAME, "type": limits.MAX_GRAPH_NAME, "text": limits.MAX_BODY,
}


def _check_fields(body: dict[str, Any], what: str) -> None:
    for key, value in body.items():
        if type(value) is not str:
            raise RecordError(f"{what} '{key}' must be a text string")
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > _SIZES[key]:
            raise RecordError(f"{what} '{key}' is {size} bytes, over the limit of {_SIZES[key]}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError(f"{what} '{key}' is not valid UTF-8 text") from None


def check_graph_body(kind: str, body: Any) -> dict[str, Any]:
    """Schema check of a graph record's body; returns it unchanged."""
    if type(body) is not dict or not all(type(k) is str for k in body):
        raise RecordError(f"a {kind} body must be a map with text keys")
    keys = frozenset(body)
    if kind == UNLINK:
        if keys not in _UNLINK_SHAPES:
            raise RecordError(
                "an unlink body must have exactly the keys entity; or entity, text; or from, type, to"
            )
    elif _SHAPES.get(keys) != kind:
        wanted = next(k for k, v in _SHAPES.items() if v == kind)
        raise RecordError(f"a {kind} body must have exactly the keys {', '.join(sorted(wanted))}")
    _check_fields(body, kind)
    return body


@dataclass(frozen=True, slots=True)
class Item:
    """One graph record as the view folds it. ``what`` is the kind of thing
    added or removed (entity, observation, relation); ``a, b, c`` are its
    key: (name, type, "") of an entity, (entity, text, "") of an observation,
    (from, type, to) of a relation. An entity's identity is its name alone,
    so its removal's key is (name, "", "")."""

    removal: bool
    what: str
    a: str
    b: str
    c: str
    author: bytes
    ts: int
    id: bytes
    visibility: str
    session: str

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.ts, self.id)


def item_of(record: Any) -> Item:
    """The graph item of a verified graph record."""
    body = record.body
    what = _UNLINK_SHAPES[frozenset(body)] if record.kind == UNLINK else record.kind
    if what == ENTITY:
        a = body["entity"] if record.kind == UNLINK else body["name"]
        b = "" if record.kind == UNLINK else body["type"]
        c = ""
    elif what == OBSERVATION:
        a, b, c = body["entity"], body["text"], ""
    else:
        a, b, c = body["from"], body["type"], body["to"]
    return Item(record.kind == UNLINK, what, a, b, c, record.author, record.ts, record.id,
                record.visibility, record.session)


def entity_body(name: str, entity_type: str) -> dict[str, str]:
    return {"name": name, "type": entity_type}


def observation_body(entity: str, text: str) -> dict[str, str]:
    return {"entity": entity, "text": text}


def relation_body(source: str, relation_type: str, target: str) -> dict[str, str]:
    return {"from": source, "type": relation_type, "to": target}


def unlink_body(what: str, a: str, b: str = "", c: str = "") -> dict[str, str]:
    if what == ENTITY:
        return {"entity": a}
    if what == OBSERVATION:
        return {"entity": a, "text": b}
    return {"from": a, "type": b, "to": c}


def _body_check(kind: str) -> Any:
    def check(body: Any) -> dict[str, Any]:
        return check_graph_body(kind, body)

    check.__name__ = f"check_{kind}_body"
    return check


for _kind in GRAPH_KINDS:
    register(RecordKind(_kind, _body_check(_kind), SCOPE_AUTHOR, view="graph", visible=True))
del _kind
