"""The reference MCP memory server's nine tools on p2pmem's signed graph
(docs/mcp.md), plus ``graph_sources`` (who said what, and when).

Names, arguments, required fields, annotations, input and output schemas and
result shapes (the structured content and the JSON text) are those of
``@modelcontextprotocol/server-memory``, so a client can switch servers
without noticing; extra arguments are optional (``visibility``, ``limit``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field
from typing_extensions import TypedDict

from p2pmem import limits
from p2pmem.errors import P2pmemError
from p2pmem.graph import ops

# -- schemas (the reference's interface) ------------------------------------
_DRAFT7 = "http://json-schema.org/draft-07/schema#"
_STR = {"type": "string"}
_STRS = {"type": "array", "items": {"type": "string"}}


def _entity(closed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": {**_STR, "description": "The name of the entity"},
            "entityType": {**_STR, "description": "The type of the entity"},
            "observations": {**_STRS, "description": "An array of observation contents associated with the entity"},
        },
        "required": ["name", "entityType", "observations"],
    }
    if closed:
        out["additionalProperties"] = False
    return out


def _relation(closed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {
            "from": {**_STR, "description": "The name of the entity where the relation starts"},
            "to": {**_STR, "description": "The name of the entity where the relation ends"},
            "relationType": {**_STR, "description": "The type of the relation"},
        },
        "required": ["from", "to", "relationType"],
    }
    if closed:
        out["additionalProperties"] = False
    return out


def _object(properties: dict[str, Any], required: list[str], closed: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"$schema": _DRAFT7, "type": "object", "properties": properties}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


_VISIBILITY = {
    "type": "string", "enum": ["public", "ask", "private"],
    "description": "p2pmem only: 'public' (default) replicates to peers that follow this agent; "
                   "'ask' answers other agents' queries but does not replicate; 'private' never leaves this node.",
}
_GRAPH_OUT = _object({"entities": {"type": "array", "items": _entity(True)},
                      "relations": {"type": "array", "items": _relation(True)}},
                     ["entities", "relations"], closed=True)
_DONE_OUT = _object({"success": {"type": "boolean"}, "message": {"type": "string"}}, ["success", "message"], closed=True)

INPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "create_entities": _object({"entities": {"type": "array", "items": _entity(False)}, "visibility": _VISIBILITY},
                               ["entities"]),
    "create_relations": _object({"relations": {"type": "array", "items": _relation(False)}, "visibility": _VISIBILITY},
                                ["relations"]),
    "add_observations": _object({
        "observations": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "entityName": {**_STR, "description": "The name of the entity to add the observations to"},
                "contents": {**_STRS, "description": "An array of observation contents to add"},
            },
            "required": ["entityName", "contents"],
        }},
        "visibility": _VISIBILITY,
    }, ["observations"]),
    "delete_entities": _object({"entityNames": {**_STRS, "description": "An array of entity names to delete"}},
                               ["entityNames"]),
    "delete_observations": _object({"deletions": {"type": "array", "items": {
        "type": "object",
        "properties": {
            "entityName": {**_STR, "description": "The name of the entity containing the observations"},
            "observations": {**_STRS, "description": "An array of observations to delete"},
        },
        "required": ["entityName", "observations"],
    }}}, ["deletions"]),
    "delete_relations": _object({"relations": {"type": "array", "items": _relation(False),
                                               "description": "An array of relations to delete"}}, ["relations"]),
    "read_graph": _object({}, []),
    "search_nodes": _object({
        "query": {**_STR, "description": "The search query to match against entity names, types, and observation content"},
        "limit": {"type": "integer", "minimum": 1, "maximum": limits.MAX_RECALL_LIMIT,
                  "description": "p2pmem only: the most entities to add by ranked search beyond those "
                                 "containing the query as a substring (default 10)."},
    }, ["query"]),
    "open_nodes": _object({"names": {**_STRS, "description": "An array of entity names to retrieve"}}, ["names"]),
}
OUTPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "create_entities": _object({"entities": {"type": "array", "items": _entity(True)}}, ["entities"], closed=True),
    "create_relations": _object({"relations": {"type": "array", "items": _relation(True)}}, ["relations"], closed=True),
    "add_observations": _object({"results": {"type": "array", "items": {
        "type": "object",
        "properties": {"entityName": _STR, "addedObservations": _STRS},
        "required": ["entityName", "addedObservations"],
        "additionalProperties": False,
    }}}, ["results"], closed=True),
    "delete_entities": _DONE_OUT,
    "delete_observations": _DONE_OUT,
    "delete_relations": _DONE_OUT,
    "read_graph": _GRAPH_OUT,
    "search_nodes": _GRAPH_OUT,
    "open_nodes": _GRAPH_OUT,
}


# -- argument types (validated by pydantic; extra keys ignored, as zod does) ---
class EntityIn(TypedDict):
    name: str
    entityType: str
    observations: list[str]


RelationIn = TypedDict("RelationIn", {"from": str, "to": str, "relationType": str})  # "from" is a keyword


class ObservationIn(TypedDict):
    entityName: str
    contents: list[str]


class DeletionIn(TypedDict):
    entityName: str
    observations: list[str]


Visibility = Literal["public", "ask", "private"]


def _reply(structured: dict[str, Any], text: str | None = None) -> CallToolResult:
    body = text if text is not None else json.dumps(_only(structured), indent=2, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=body)], structured_content=structured)


def _only(structured: dict[str, Any]) -> Any:
    """The JSON text the reference prints: the list itself for the create
    tools and add_observations, the graph for the readers."""
    if set(structured) == {"entities", "relations"}:
        return structured
    return next(iter(structured.values()))


def _done(message: str) -> CallToolResult:
    return _reply({"success": True, "message": message}, message)


def register(server: Any, store: Any, session: str, notify: Callable[[Any, list[bytes]], None],
             home: Path | None = None) -> None:
    """Add the graph tools to p2pmem's MCP server."""
    from p2pmem.interfaces.mcp_server import ToolFailure, _error

    def tool(*, title: str, description: str, read_only: bool = False, destructive: bool = False,
             idempotent: bool = False) -> Callable[[Callable[..., Awaitable[CallToolResult]]], Any]:
        def add(fn: Callable[..., Awaitable[CallToolResult]]) -> Any:
            @functools.wraps(fn)
            async def guarded(**kwargs: Any) -> CallToolResult:
                try:
                    return await fn(**kwargs)
                except (P2pmemError, ToolFailure) as exc:
                    return _error(str(exc))
                except Exception as exc:  # a bug: keep serving, tell the client
                    return _error(f"internal error in {fn.__name__}: {type(exc).__name__}: {exc}")

            server.add_tool(
                guarded, name=fn.__name__, title=title, description=description,
                annotations=ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive,
                                            idempotent_hint=idempotent, open_world_hint=False),
                structured_output=False,
            )
            registered = server._tool_manager.get_tool(fn.__name__)
            if fn.__name__ in INPUT_SCHEMAS:
                registered.parameters = INPUT_SCHEMAS[fn.__name__]
                registered.fn_metadata.output_schema = OUTPUT_SCHEMAS[fn.__name__]
            return fn

        return add

    def write(fn: Callable[[ops.Signer], Any], visibility: str = "public") -> Awaitable[Any]:
        def op(agent: Any) -> Any:
            signer = ops.Signer(agent, session=session, visibility=visibility)
            out = fn(signer)
            ids = [r.id for r in signer.done]
            if ids:
                notify(agent, ids)
            return out

        return store.run(op)

    @tool(title="Create Entities", description="Create multiple new entities in the knowledge graph")
    async def create_entities(entities: list[EntityIn], visibility: Visibility = "public") -> CallToolResult:
        created = await write(lambda s: ops.create_entities(s, entities), visibility)
        return _reply({"entities": created})

    @tool(title="Create Relations", description="Create multiple new relations between entities in the "
          "knowledge graph. Relations should be in active voice")
    async def create_relations(relations: list[RelationIn], visibility: Visibility = "public") -> CallToolResult:
        created = await write(lambda s: ops.create_relations(s, relations), visibility)
        return _reply({"relations": created})

    @tool(title="Add Observations", description="Add new observations to existing entities in the knowledge graph")
    async def add_observations(observations: list[ObservationIn], visibility: Visibility = "public") -> CallToolResult:
        results = await write(lambda s: ops.add_observations(s, observations), visibility)
        return _reply({"results": results})

    @tool(title="Delete Entities", description="Delete multiple entities and their associated relations from "
          "the knowledge graph", destructive=True, idempotent=True)
    async def delete_entities(entityNames: list[str]) -> CallToolResult:  # noqa: N803 - the reference's name
        await write(lambda s: ops.delete_entities(s, entityNames))
        return _done("Entities deleted successfully")

    @tool(title="Delete Observations", description="Delete specific observations from entities in the "
          "knowledge graph", destructive=True, idempotent=True)
    async def delete_observations(deletions: list[DeletionIn]) -> CallToolResult:
        await write(lambda s: ops.delete_observations(s, deletions))
        return _done("Observations deleted successfully")

    @tool(title="Delete Relations", description="Delete multiple relations from the knowledge graph",
          destructive=True, idempotent=True)
    async def delete_relations(relations: list[RelationIn]) -> CallToolResult:
        await write(lambda s: ops.delete_relations(s, relations))
        return _done("Relations deleted successfully")

    @tool(title="Read Graph", description="Read the entire knowledge graph", read_only=True, idempotent=True)
    async def read_graph() -> CallToolResult:
        graph = await store.run(ops.read_graph)
        return _reply(graph.to_reference())

    @tool(title="Search Nodes", description="Search for nodes in the knowledge graph based on a query",
          read_only=True, idempotent=True)
    async def search_nodes(
        query: str,
        limit: Annotated[int, Field(ge=1, le=limits.MAX_RECALL_LIMIT)] = 10,
    ) -> CallToolResult:
        graph = await store.run(ops.read_graph)
        return _reply(ops.search_nodes(graph, query, limit))

    @tool(title="Open Nodes", description="Open specific nodes in the knowledge graph by their names",
          read_only=True, idempotent=True)
    async def open_nodes(names: list[str]) -> CallToolResult:
        graph = await store.run(ops.read_graph)
        return _reply(graph.to_reference(names))

    @tool(title="Ask the network's graphs", description=(
        "p2pmem only: search other agents' knowledge graphs over the peer-to-peer network (their public "
        "and 'ask' entities, observations and relations), when the local graph is not enough. Needs this "
        "agent's node to be running (`p2pmem serve`). Returns the merged graph of the answers, searched as "
        "search_nodes, with who said what (graph_sources' shape); 'answered' maps each record id to the "
        "node that answered ('via') and its distance in links ('hops')."), read_only=True, idempotent=True)
    async def ask_graph(
        query: Annotated[str, Field(description="What to look for, in words (at most 1024 characters).")],
        ttl: Annotated[int, Field(ge=1, le=limits.MAX_TTL)] = limits.DEFAULT_TTL,
        timeout: Annotated[float, Field(gt=0, le=limits.MAX_QUERY_TIMEOUT_S)] = 3.0,
        limit: Annotated[int, Field(ge=1, le=limits.MAX_RECALL_LIMIT)] = 10,
    ) -> CallToolResult:
        from p2pmem.node.control import NotServing, request

        try:
            reply = await anyio.to_thread.run_sync(
                functools.partial(request, home, "ask_graph", timeout=timeout + 5.0, text=query, ttl=ttl,
                                  query_timeout=timeout, topics=[], limit=limit),
                abandon_on_cancel=True,
            )
        except NotServing:
            raise ToolFailure(f"no p2pmem node is serving {home}, so the network cannot be asked; start one "
                              f"with `p2pmem --home {home} serve`") from None
        results = reply.get("results", {})
        return _reply(results, json.dumps(results, ensure_ascii=False))

    @tool(title="Graph sources", description=(
        "p2pmem only: entities with who said what and when. For each entity its type, who created it, "
        "and each observation with its sources (author agent id, ts, session); each relation touching "
        "them with its sources. Give `names` to open those entities, or `query` to search (as "
        "search_nodes), or neither for the whole graph. Observations and relations of other agents "
        "are their claims, signed by them."), read_only=True, idempotent=True)
    async def graph_sources(
        names: Annotated[list[str] | None, Field(description="Entity names to show.")] = None,
        query: Annotated[str | None, Field(description="Search the graph instead, as search_nodes.")] = None,
        limit: Annotated[int, Field(ge=1, le=limits.MAX_RECALL_LIMIT)] = 10,
    ) -> CallToolResult:
        graph = await store.run(ops.read_graph)
        chosen = names
        if query is not None and query.strip():
            chosen = ops.search_names(graph, query, limit)
        return _reply(ops.describe(graph, chosen), json.dumps(ops.describe(graph, chosen), ensure_ascii=False))
