"""The Python API: ``from p2pmem import Memory`` (docs/python.md).

A thin, typed facade over :class:`p2pmem.agent.home.Agent` (the same code
the CLI and the MCP server run) and the serving node's control client. It
takes plain Python values, checks them (a ``str`` where a list of topics is
wanted is a :class:`TypeError`, not four one-letter topics), and returns
frozen dataclasses, never internal records or stores.

Errors: :class:`TypeError` / :class:`ValueError` for arguments of the wrong
type or value; :class:`p2pmem.errors.P2pmemError` (its subclasses
``StoreError`` for an unknown id, ``UsageError``, ``HomeError``) for what the
CLI reports with exit 1 or 2.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmem import limits
from p2pmem.agent.home import Agent, check_query, init_home
from p2pmem.model.clock import physical_ms
from p2pmem.model.identity import agent_id
from p2pmem.model.record import VISIBILITIES, Record, decode_record

__all__ = ["AgentInfo", "MemoryHit", "Message", "Memory", "Written"]


@dataclass(frozen=True)
class Written:
    """A record this agent signed: its id (hex), author (agent id) and time (ms)."""

    id: str
    author: str
    ts_ms: int


@dataclass(frozen=True)
class MemoryHit:
    """A memory found by :meth:`Memory.recall` or :meth:`Memory.ask`."""

    id: str
    author: str
    text: str
    topics: tuple[str, ...]
    session: str
    ts_ms: int  # when it was recorded
    at_ms: int  # when it happened
    visibility: str
    conflicts: tuple[str, ...] = ()  # ids of concurrent versions
    hops: int | None = None  # ask only: links to the node that answered
    via: str | None = None  # ask only: the agent id that answered


@dataclass(frozen=True)
class AgentInfo:
    id: str
    name: str
    skills: tuple[str, ...]
    description: str
    memories: int
    is_self: bool


@dataclass(frozen=True)
class Message:
    id: str
    sender: str
    recipient: str
    text: str
    ts: str  # ISO 8601 UTC


# -- argument checks ----------------------------------------------------------
def _str(value: Any, name: str, *, max_bytes: int | None = None) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if max_bytes is not None and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ValueError(f"{name} is over the limit of {max_bytes} bytes")
    return value


def _strs(value: Any, name: str, *, most: int, max_bytes: int) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list of str, not {type(value).__name__}")
    if len(value) > most:
        raise ValueError(f"{name}: at most {most} items")
    return [_str(v, f"each of {name}", max_bytes=max_bytes) for v in value]


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}")
    return value


def _opt_ms(value: Any, name: str) -> int | None:
    return None if value is None else _int(value, name, 0, (1 << 63) - 1)


def _written(record: Record) -> Written:
    return Written(record.id.hex(), agent_id(record.author), physical_ms(record.ts))


def _hit(record: Record, **extra: Any) -> MemoryHit:
    return MemoryHit(
        id=record.id.hex(), author=agent_id(record.author), text=record.text,
        topics=tuple(record.topics), session=record.session, ts_ms=physical_ms(record.ts),
        at_ms=record.at_ms, visibility=record.visibility, **extra,
    )


class Memory:
    """One agent's home: open it with :meth:`open` or create it with
    :meth:`init`; use it as a context manager (it closes the store)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    @classmethod
    def init(cls, home: str | Path, *, name: str = "", skills: Sequence[str] = ()) -> Memory:
        """Create the home (identity and store) if it is new, then open it."""
        path = Path(home)
        init_home(path, name=_str(name, "name", max_bytes=limits.MAX_NAME),
                  skills=_strs(skills, "skills", most=limits.MAX_SKILLS, max_bytes=limits.MAX_SKILL))
        return cls.open(path)

    @classmethod
    def open(cls, home: str | Path, *, model: str | Path | None = None) -> Memory:
        """Open an existing home; ``model``: a local embedding model folder."""
        return cls(Agent.open(Path(home), model=None if model is None else Path(model)))

    def close(self) -> None:
        self._agent.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def id(self) -> str:
        """This agent's id (pm1...)."""
        return self._agent.identity.agent_id

    @property
    def home(self) -> Path:
        return self._agent.home

    def _notify(self, records: Sequence[Record]) -> None:
        from p2pmem.node.control import notify_new_records

        notify_new_records(self._agent.home, [r.id for r in records])

    # -- memories -------------------------------------------------------------
    def remember(self, text: str, *, topics: Sequence[str] = (), session: str = "",
                 at_ms: int | None = None, visibility: str = "public") -> Written:
        _str(text, "text", max_bytes=limits.MAX_BODY)
        topics = _strs(topics, "topics", most=limits.MAX_TOPICS, max_bytes=limits.MAX_TOPIC)
        _str(session, "session", max_bytes=limits.MAX_SESSION)
        if _str(visibility, "visibility") not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        record = self._agent.remember(text, topics=topics, session=session, at=_opt_ms(at_ms, "at_ms"),
                                      visibility=visibility)
        self._notify([record])
        return _written(record)

    def recall(self, query: str = "", *, limit: int = 10, since_ms: int | None = None,
               until_ms: int | None = None, topics: Sequence[str] = (), authors: Sequence[str] = (),
               session: str | None = None) -> list[MemoryHit]:
        """This node's memories, best first (newest first without a query)."""
        _str(query, "query", max_bytes=limits.MAX_QUERY_TEXT)
        check_query(query)
        keys = [self._agent.resolve_agent(a) for a in _strs(authors, "authors", most=64, max_bytes=64)]
        found = self._agent.recall(
            query, limit=_int(limit, "limit", 1, limits.MAX_RECALL_LIMIT),
            since=_opt_ms(since_ms, "since_ms"), until=_opt_ms(until_ms, "until_ms"),
            topics=_strs(topics, "topics", most=limits.MAX_TOPICS, max_bytes=limits.MAX_TOPIC),
            authors=keys, session=None if session is None else _str(session, "session"),
        )
        return [_hit(m.record, conflicts=tuple(c.hex() for c in m.conflicts)) for m in found]

    def update(self, id: str, text: str, *, topics: Sequence[str] | None = None) -> Written:
        _str(text, "text", max_bytes=limits.MAX_BODY)
        if topics is not None:
            topics = _strs(topics, "topics", most=limits.MAX_TOPICS, max_bytes=limits.MAX_TOPIC)
        record = self._agent.update(_str(id, "id"), text, topics=topics)
        self._notify([record])
        return _written(record)

    def forget(self, id: str) -> Written:
        record = self._agent.forget(_str(id, "id"))
        self._notify([record])
        return _written(record)

    def ask(self, query: str, *, ttl: int = limits.DEFAULT_TTL, timeout: float = 3.0, limit: int = 10,
            agent: str | None = None) -> list[MemoryHit]:
        """Ask the network through this home's serving node (``p2pmem serve``)."""
        from p2pmem.node.control import request

        _str(query, "query", max_bytes=limits.MAX_QUERY_TEXT)
        check_query(query)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds")
        if not 0 < timeout <= limits.MAX_QUERY_TIMEOUT_S:
            raise ValueError(f"timeout must be above 0 and at most {limits.MAX_QUERY_TIMEOUT_S:g}")
        target = None if agent is None else agent_id(self._agent.resolve_agent(_str(agent, "agent")))
        reply = request(self._agent.home, "ask", timeout=timeout + 5.0, text=query,
                        ttl=_int(ttl, "ttl", 1, limits.MAX_TTL), query_timeout=float(timeout),
                        limit=_int(limit, "limit", 1, limits.MAX_RECALL_LIMIT), agent=target)
        return [
            _hit(decode_record(base64.b64decode(item["record"]), verify=False),
                 hops=item["hops"], via=item["via"])
            for item in reply["results"]
        ]

    # -- social ---------------------------------------------------------------
    def follow(self, agent: str) -> Written | None:
        """Follow an agent (id or unique prefix); None when already followed."""
        return self._set_follow(agent, True)

    def unfollow(self, agent: str) -> Written | None:
        """Stop following; None when not followed."""
        return self._set_follow(agent, False)

    def _set_follow(self, agent: str, active: bool) -> Written | None:
        record = self._agent.set_follow(self._agent.resolve_agent(_str(agent, "agent")), active)
        if record is None:
            return None
        self._notify([record])
        return _written(record)

    def endorse(self, agent: str) -> Written:
        record = self._agent.endorse(self._agent.resolve_agent(_str(agent, "agent")), "agent")
        self._notify([record])
        return _written(record)

    def agents(self, skill: str | None = None) -> list[AgentInfo]:
        rows = self._agent.directory(None if skill is None else _str(skill, "skill"))
        return [
            AgentInfo(str(r["id"]), str(r["name"]), tuple(r["skills"]),  # type: ignore[arg-type]
                      str(r["description"]), int(r["memories"]), bool(r["self"]))  # type: ignore[call-overload]
            for r in rows
        ]

    def send(self, agent: str, text: str) -> Written:
        _str(text, "text", max_bytes=limits.MAX_BODY)
        record = self._agent.send_message(self._agent.resolve_agent(_str(agent, "agent")), text)
        self._notify([record])
        return _written(record)

    def inbox(self) -> list[Message]:
        return [Message(str(m["id"]), str(m["from"]), str(m["to"]), str(m["text"]), str(m["ts"]))
                for m in self._agent.inbox()]

    # -- the knowledge graph (the reference MCP memory server's operations) ----
    def _signer(self, visibility: str) -> Any:
        from p2pmem.graph.ops import Signer

        if _str(visibility, "visibility") not in VISIBILITIES:
            raise ValueError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        return Signer(self._agent, visibility=visibility)

    def _graph_write(self, op: str, items: list[dict[str, Any]], visibility: str) -> list[dict[str, Any]]:
        from p2pmem.graph import ops

        signer = self._signer(visibility)
        result = getattr(ops, op)(signer, items)
        self._notify(signer.done)
        return list(result)

    def create_entities(self, entities: Sequence[tuple[str, str, Sequence[str]]], *,
                        visibility: str = "public") -> list[str]:
        """(name, type, observations) triples; returns the names created."""
        items = []
        for entity in _seq(entities, "entities"):
            name, kind, observations = _triple(entity, "each entity")
            items.append({"name": _str(name, "name", max_bytes=limits.MAX_GRAPH_NAME),
                          "entityType": _str(kind, "entity type", max_bytes=limits.MAX_GRAPH_NAME),
                          "observations": _strs(observations, "observations", most=1000,
                                                max_bytes=limits.MAX_BODY)})
        return [e["name"] for e in self._graph_write("create_entities", items, visibility)]

    def create_relations(self, relations: Sequence[tuple[str, str, str]], *,
                         visibility: str = "public") -> int:
        """(from, relation type, to) triples; returns how many were new."""
        items = [{"from": _str(a, "from"), "relationType": _str(r, "relation type"), "to": _str(b, "to")}
                 for a, r, b in (_triple(t, "each relation") for t in _seq(relations, "relations"))]
        return len(self._graph_write("create_relations", items, visibility))

    def add_observations(self, entity: str, observations: Sequence[str], *, visibility: str = "public") -> list[str]:
        """Add observations to an existing entity; returns those that were new."""
        items = [{"entityName": _str(entity, "entity"),
                  "contents": _strs(observations, "observations", most=1000, max_bytes=limits.MAX_BODY)}]
        return list(self._graph_write("add_observations", items, visibility)[0]["addedObservations"])

    def search_graph(self, query: str, *, limit: int = 10) -> list[str]:
        """Entity names matching ``query`` (substring, then by meaning)."""
        from p2pmem.graph import ops

        return ops.search_names(ops.read_graph(self._agent), _str(query, "query"), _int(limit, "limit", 1, 1000))

    def read_graph(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """The graph (or the named entities) in the reference server's shape."""
        from p2pmem.graph import ops

        chosen = None if names is None else _strs(names, "names", most=10_000, max_bytes=limits.MAX_GRAPH_NAME)
        return ops.read_graph(self._agent).to_reference(chosen)


def _seq(value: Any, name: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list, not {type(value).__name__}")
    return value


def _triple(value: Any, name: str) -> tuple[Any, Any, Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise TypeError(f"{name} must be a 3-tuple")
    return value[0], value[1], value[2]

