"""The reference MCP memory server's file format: JSON lines of
``{"type": "entity", "name", "entityType", "observations"}`` and
``{"type": "relation", "from", "to", "relationType"}``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from p2pmem.errors import UsageError
from p2pmem.graph import ops
from p2pmem.graph.records import (
    ENTITY,
    OBSERVATION,
    RELATION,
    entity_body,
    observation_body,
    relation_body,
)
from p2pmem.graph.view import Graph
from p2pmem.interfaces.output import parse_json_object


def parse_line(line: str) -> dict[str, Any]:
    """One line of the file, checked; raises UsageError with the reason."""
    obj = parse_json_object(line)
    kind = obj.get("type")
    if kind == "entity":
        fields = ("name", "entityType")
        if not isinstance(obj.get("observations", []), list) or not all(
                isinstance(o, str) for o in obj.get("observations", [])):
            raise UsageError("'observations' must be a list of strings")
    elif kind == "relation":
        fields = ("from", "to", "relationType")
    else:
        raise UsageError("'type' must be \"entity\" or \"relation\"")
    for name in fields:
        if not isinstance(obj.get(name), str):
            raise UsageError(f"'{name}' must be a string")
    return obj


def import_items(signer: ops.Signer, items: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Sign the file's entities, observations and relations into the graph,
    skipping what it already shows, in one transaction."""
    graph = ops.read_graph(signer.agent)
    entities = {name: set(e.observations) for name, e in graph.entities.items()}
    relations = set(graph.relations)
    counts = {"entities": 0, "observations": 0, "relations": 0, "skipped": 0}
    for item in items:
        if item["type"] == "entity":
            name = item["name"]
            have = entities.get(name)
            if have is None:
                have = entities[name] = set()
                signer.sign(ENTITY, entity_body(name, item["entityType"]))
                counts["entities"] += 1
            else:
                counts["skipped"] += 1
            for text in item.get("observations", []):
                if text not in have:
                    have.add(text)
                    signer.sign(OBSERVATION, observation_body(name, text))
                    counts["observations"] += 1
        else:
            key = (item["from"], item["relationType"], item["to"])
            if key in relations:
                counts["skipped"] += 1
                continue
            relations.add(key)
            signer.sign(RELATION, relation_body(*key))
            counts["relations"] += 1
    signer.commit()
    return counts


def export_lines(graph: Graph) -> Iterator[str]:
    """The graph as the reference server writes its file (one line each)."""
    shape = graph.to_reference()
    for e in shape["entities"]:
        yield json.dumps({"type": "entity", **e}, ensure_ascii=False, separators=(",", ":"))
    for r in shape["relations"]:
        yield json.dumps({"type": "relation", **r}, ensure_ascii=False, separators=(",", ":"))
