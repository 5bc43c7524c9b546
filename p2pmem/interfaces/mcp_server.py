"""``p2pmem mcp``: an MCP server on standard input and output (docs/mcp.md).

One server process is one session of one agent: it opens the home's store
once, stamps a session id (``$P2PMEM_SESSION``, else ``mcp-`` and 8 random
hex digits) on the memories it writes, and offers the contract's tools
(../shared/CONTRACT.md, "MCP tools") through the official MCP SDK.

Threads: SQLite connections belong to the thread that opened them, and the
SDK runs synchronous tools on arbitrary worker threads. So the tools here are
coroutines that hand every store operation to one dedicated thread, which
opened the :class:`~p2pmem.agent.home.Agent` and runs operations one at a time.
Queries of the network (``ask_network``) only talk to the serving node's
control socket and run on an ordinary worker thread, so a slow query does
not hold the store.

Nothing but the protocol reaches standard output: the SDK points file
descriptor 1 at standard error while it serves, and logs go to standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import logging
import os
import secrets
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field, ValidationError

from p2pmem import __version__, limits
from p2pmem.agent.home import Agent, check_query, default_home, wall_ms
from p2pmem.errors import P2pmemError, StoreError, UsageError
from p2pmem.interfaces.output import ack_json, memory_json
from p2pmem.logevents import LogEvent, log_event
from p2pmem.model.identity import agent_id, parse_agent_id
from p2pmem.model.when import parse_when
from p2pmem.storage.diskerrors import explain
from p2pmem.storage.keyfile import load_identity
from p2pmem.storage.store import DB_FILE

log = logging.getLogger("p2pmem.mcp")
T = TypeVar("T")

SERVER_NAME = "p2pmem"


def new_session_id() -> str:
    """This process's session: ``$P2PMEM_SESSION`` when set, else a fresh id."""
    return os.environ.get("P2PMEM_SESSION") or "mcp-" + secrets.token_hex(4)


class StoreThread:
    """The one thread that owns the agent's SQLite store.

    A home that cannot be opened (a damaged or missing store, a bad key
    file) does not stop the server: every tool call answers with the reason
    in one line, and the next call tries again, so the server recovers once
    the home is repaired (docs/operations.md, "Disk states")."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pmem-store")
        self.agent: Agent | None = None
        self.broken: str | None = None
        self._pool.submit(self._open).result()

    def _open(self) -> None:
        try:
            self.agent = Agent.open(self.home)
            self.broken = None
        except P2pmemError as exc:
            self.broken = str(exc)
        except (OSError, sqlite3.Error) as exc:
            self.broken = str(explain(exc, self.home / DB_FILE))

    def _call(self, fn: Callable[[Agent], T]) -> T:
        if self.agent is None:
            self._open()
            if self.agent is None:
                raise ToolFailure(self.broken or "the home cannot be opened")
        try:
            return fn(self.agent)
        except (OSError, sqlite3.Error) as exc:  # the disk refused: one line for the client
            raise explain(exc, self.home / DB_FILE) from None

    async def run(self, fn: Callable[[Agent], T]) -> T:
        future = self._pool.submit(self._call, fn)
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def agent_id(self) -> str:
        """This home's agent id, read from the key file even when the store
        cannot be opened."""
        if self.agent is not None:
            return agent_id(self.agent.key)
        try:
            return load_identity(self.home).agent_id
        except P2pmemError:
            return "(unknown: the key file cannot be read)"

    def close(self) -> None:
        try:
            if self.agent is not None:
                self._pool.submit(self.agent.close).result()
        finally:
            self._pool.shutdown()


class ToolFailure(Exception):
    """A tool's one-line error for the client."""


def _ok(value: Any) -> CallToolResult:
    text = json.dumps(value, ensure_ascii=False)
    structured = value if isinstance(value, dict) else {"result": value}
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _error(message: str) -> CallToolResult:
    line = " ".join(message.split()) or "the operation failed"
    return CallToolResult(content=[TextContent(type="text", text=line)], is_error=True)


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[CallToolResult]]:
    """Turn a tool's value into a result and its failures into one-line
    error results: the server never dies of a bad call."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> CallToolResult:
        try:
            return _ok(await fn(*args, **kwargs))
        except (P2pmemError, ToolFailure) as exc:
            return _error(str(exc))
        except Exception as exc:  # a bug: keep serving, tell the client, log the trace
            log_event(log, logging.ERROR, LogEvent.TOOL_FAILED, f"tool {fn.__name__} failed: {type(exc).__name__}",
                      tool=fn.__name__, error=str(exc), exc_info=True)
            return _error(f"internal error in {fn.__name__}: {type(exc).__name__}: {exc}")

    return wrapper


class _Server(MCPServer):
    """MCPServer whose argument errors are one line a model can act on
    (the SDK's are pydantic's multi-line reports)."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if not isinstance(cause, ValidationError):
                raise
            problems = []
            for err in cause.errors():
                where = ".".join(str(part) for part in err["loc"]) or "arguments"
                problems.append(f"{where}: {err['msg']}")
            raise ToolError(f"invalid arguments for {name}: " + "; ".join(problems)) from cause


# -- argument helpers -------------------------------------------------------
def _when(text: str | None, name: str) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        return parse_when(text, wall_ms())
    except UsageError as exc:
        raise ToolFailure(f"{name}: {exc}") from None


def _agent_key(text: str, name: str, agent: Agent | None = None) -> bytes:
    """An agent id argument; with ``agent``, a unique prefix of an agent
    known to its store also works."""
    try:
        return parse_agent_id(text) if agent is None else agent.resolve_agent(text)
    except P2pmemError as exc:
        raise ToolFailure(f"{name}: {exc}") from None


def _topics(topics: list[str] | None) -> list[str]:
    return [t for t in (topics or []) if t.strip()]


def _notify(agent: Agent, ids: list[bytes]) -> None:
    from p2pmem.node.control import notify_new_records

    notify_new_records(agent.home, ids)


# -- argument types (their descriptions reach the client's model) -----------
MemoryId = Annotated[str, Field(description="A memory id (hex) as returned by remember or recall; a unique prefix of at least 8 hex digits also works.")]
AgentId = Annotated[str, Field(description="An agent id: 'pm1' followed by 58 base32 characters, as shown by find_agents, status or a memory's 'author'; a unique prefix of a known agent's id (at least 8 characters) also works.")]
When = Annotated[str | None, Field(description="An ISO 8601 date or date-time (UTC unless it has an offset), e.g. '2025-03-01' or '2025-03-01T14:00:00Z', or an age before now such as '30m', '2h', '7d', '2w', '1y'.")]
Topics = Annotated[list[str] | None, Field(description="Short topic tags, e.g. ['python', 'deploy']. At most 16, each at most 64 bytes.")]
Limit = Annotated[int, Field(ge=1, le=limits.MAX_RECALL_LIMIT, description="The most memories to return (default 10).")]


INSTRUCTIONS = """\
p2pmem gives you a durable, signed memory that outlives this conversation and is \
shared with other AI agents over a peer-to-peer network.

- Store facts, decisions, lessons and results worth keeping with `remember` \
(short, self-contained text, with topics).
- Before solving something, `recall` what you (or agents you follow) learned \
before; use `ask_network` to ask other agents' nodes when local memory has nothing.
- Correct a memory with `update_memory`, withdraw it with `forget`.
- `find_agents` lists known agents and their skills; `follow_agent` makes their \
public memories replicate to this node; `send_message` / `read_inbox` are \
encrypted direct messages.

Agent: {agent}. This conversation's session id is {session}: memories you store \
carry it, and `recall(query, session=...)` finds one session's memories.
"""


def build_server(home: Path, store: StoreThread, session: str) -> MCPServer:
    """The MCP server of one agent's home for one session."""
    me = store.agent_id()
    server = _Server(
        SERVER_NAME,
        version=__version__,
        title="p2pmem: peer-to-peer memory for agents",
        instructions=INSTRUCTIONS.format(agent=me, session=session),
        log_level="WARNING",
    )

    default_session = session

    def tool(
        *, title: str, read_only: bool = False, destructive: bool = False,
        idempotent: bool = False, open_world: bool = False,
    ) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        def register(fn: Callable[..., Awaitable[Any]]) -> Any:
            wrapped = _guarded(fn)
            server.add_tool(
                wrapped, name=fn.__name__, title=title, description=inspect.cleandoc(fn.__doc__ or ""),
                annotations=ToolAnnotations(
                    title=title, read_only_hint=read_only, destructive_hint=destructive,
                    idempotent_hint=idempotent, open_world_hint=open_world,
                ),
                structured_output=False,
            )
            return wrapped

        return register

    # -- memories ----------------------------------------------------------
    @tool(title="Remember", open_world=True)
    async def remember(
        text: Annotated[str, Field(description="The memory: one self-contained fact, decision, lesson or result, in plain text (at most 64 KiB).")],
        topics: Topics = None,
        session: Annotated[str | None, Field(description="The session to file it under (default: this server's session id).")] = None,
        at: When = None,
        visibility: Annotated[Literal["public", "ask", "private"], Field(description="'public' (default): replicates to peers that follow this agent; 'ask': stays on this node but answers other agents' ask_network queries; 'private': never leaves this node.")] = "public",
    ) -> dict[str, Any]:
        """Store a signed memory in this agent's durable store, so it can be recalled in later
        sessions and (unless private) found by other agents. Use it for facts, decisions,
        lessons learned and results worth keeping; write each memory so it makes sense on its
        own. `at` says when the remembered thing happened (default: now). Returns
        {"id", "author", "ts"}; keep the id to update or forget the memory later."""
        at_ms = _when(at, "at")
        chosen = session if session is not None else default_session

        def op(agent: Agent) -> dict[str, Any]:
            record = agent.remember(
                text, topics=_topics(topics), session=chosen, at=at_ms, visibility=visibility,
            )
            _notify(agent, [record.id])
            return ack_json(record)

        return await store.run(op)

    @tool(title="Recall memories", read_only=True, idempotent=True)
    async def recall(
        query: Annotated[str, Field(description="What to look for, in words or as a question (ranked retrieval: stemmed words, conversational context, time words such as 'last week' or 'in May 2023' as a soft preference). An empty string lists the newest memories that pass the filters.")],
        limit: Limit = 10,
        since: When = None,
        until: When = None,
        topics: Annotated[list[str] | None, Field(description="Only memories with at least one of these topics.")] = None,
        author: Annotated[str | list[str] | None, Field(description="Only memories by this agent id (or any of these agent ids).")] = None,
        session: Annotated[str | None, Field(description="Only memories of this session id.")] = None,
        explain: Annotated[bool, Field(description="Add to each result how it was ranked (lexical and semantic ranks, context, time preference).")] = False,
    ) -> list[dict[str, Any]]:
        """Search the memories stored on this node: this agent's own (from every past session)
        and those replicated from agents it follows. Fast and works offline. `since`/`until`
        filter on when the remembered thing happened. Returns memory objects, best first, each
        with id, author, text, topics, session, ts (when recorded), at (when it happened),
        visibility, and 'conflicts' (ids of concurrent versions, usually empty)."""
        since_ms, until_ms = _when(since, "since"), _when(until, "until")
        names = [author] if isinstance(author, str) else list(author or [])
        check_query(query)  # "?" alone is an error, not a listing of everything

        def op(agent: Agent) -> list[dict[str, Any]]:
            authors = [_agent_key(a, "author", agent) for a in names if a.strip()]
            search = getattr(agent, "recall", None) or agent.store.recall
            found = search(
                query, since=since_ms, until=until_ms, topics=_topics(topics), authors=authors,
                session=session, limit=limit,
            )
            out = []
            for m in found:
                extra: dict[str, Any] = {"conflicts": [c.hex() for c in m.conflicts]}
                if explain:
                    extra["explain"] = m.ranked.explain() if m.ranked is not None else {"order": "newest first"}
                out.append(memory_json(m.record, **extra))
            return out

        return await store.run(op)

    @tool(title="Ask the network", read_only=True, idempotent=True, open_world=True)
    async def ask_network(
        query: Annotated[str, Field(description="What to look for, in words (at most 1024 characters).")],
        ttl: Annotated[int, Field(ge=1, le=limits.MAX_TTL, description=f"How many links the query may cross: 1 reaches direct neighbours only (default {limits.DEFAULT_TTL}).")] = limits.DEFAULT_TTL,
        timeout: Annotated[float, Field(gt=0, le=limits.MAX_QUERY_TIMEOUT_S, description="Seconds to wait for answers (default 3).")] = 3.0,
        agent: Annotated[str | None, Field(description="Ask only this agent (an agent id).")] = None,
        since: When = None,
        until: When = None,
        topics: Annotated[list[str] | None, Field(description="Only memories with at least one of these topics.")] = None,
        limit: Annotated[int, Field(ge=1, le=limits.MAX_RECALL_LIMIT, description="The most answers to return (default 10).")] = 10,
        ctx: Context | None = None,
    ) -> list[dict[str, Any]]:
        """Ask other agents' nodes on the peer-to-peer network for memories matching a query
        (public and 'ask'-visibility memories), when local recall is not enough. Needs this
        agent's node to be running (`p2pmem serve`). Returns as soon as every node within reach
        answered, at the latest after `timeout` seconds; a client that asks for progress gets a
        notification for each answer as it arrives. Returns memory objects, best first, each
        also with 'hops' (links to the node that answered; a direct neighbour is 1) and 'via'
        (the agent id of the node that answered). Every answer's signature was checked; treat
        the text as another agent's claim."""
        from p2pmem.node.control import NotServing, request

        check_query(query)
        target = None
        if agent:
            target = await store.run(lambda a: _agent_key(agent, "agent", a))
        fields: dict[str, Any] = {
            "text": query, "ttl": ttl, "query_timeout": timeout,
            "since": _when(since, "since"), "until": _when(until, "until"),
            "topics": _topics(topics), "limit": limit,
            "agent": agent_id(target) if target else None,
        }
        arrived = 0

        def progress(hit: dict[str, Any]) -> None:
            """A streamed answer (on the request's worker thread): one MCP
            progress notification, sent from the event loop."""
            nonlocal arrived
            arrived += 1
            if ctx is not None:
                note = f"{arrived} answer(s) so far; latest {hit.get('hops')} hop(s) away: {str(hit.get('text'))[:80]}"
                with contextlib.suppress(Exception):  # a gone client must not fail the ask
                    anyio.from_thread.run(ctx.report_progress, arrived, None, note)

        try:
            reply = await anyio.to_thread.run_sync(
                functools.partial(request, home, "ask", timeout=timeout + limits.ASK_RANK_GRACE_S, on_line=progress,
                                  stream=True, **fields),
                abandon_on_cancel=True,
            )
        except NotServing:
            raise ToolFailure(
                f"no p2pmem node is serving {home}, so the network cannot be asked; start one "
                f"with `p2pmem serve` (here: `p2pmem --home {home} serve`); recall still "
                "searches this node's memories"
            ) from None
        results = list(reply.get("results", []))
        for item in results:
            item.pop("record", None)
        return results

    @tool(title="Update a memory", destructive=True)
    async def update_memory(
        id: MemoryId,
        text: Annotated[str, Field(description="The new text, replacing the old one (topics, session and visibility are kept).")],
    ) -> dict[str, Any]:
        """Replace the text of one of this agent's own memories with a corrected version. The
        new version supersedes the old one everywhere the memory travelled. Returns
        {"id", "author", "ts"} of the new version (use the new id from now on)."""

        def op(agent: Agent) -> dict[str, Any]:
            record = agent.update(id, text)
            _notify(agent, [record.id])
            return ack_json(record)

        return await store.run(op)

    @tool(title="Forget a memory", destructive=True)
    async def forget(id: MemoryId) -> dict[str, Any]:
        """Retract one of this agent's own memories (every version of it): it stops showing up
        in recall and its text is purged on every node it reached. Returns
        {"id", "author", "ts"} of the retraction."""

        def op(agent: Agent) -> dict[str, Any]:
            record = agent.forget(id)
            _notify(agent, [record.id])
            return ack_json(record)

        return await store.run(op)

    # -- messages ------------------------------------------------------------
    @tool(title="Send a direct message", open_world=True)
    async def send_message(
        to: AgentId,
        text: Annotated[str, Field(description="The message text (at most 64 KiB).")],
    ) -> dict[str, Any]:
        """Send an end-to-end encrypted direct message to another agent; the network carries
        it until it arrives. The recipient's profile must be known here (see find_agents).
        Returns {"id", "author", "ts", "to"}."""

        def op(agent: Agent) -> dict[str, Any]:
            recipient = _agent_key(to, "to", agent)
            send = getattr(agent, "send_message", None)
            if send is None:
                raise ToolFailure("direct messages are not available in this version of p2pmem")
            record = send(recipient, text)
            _notify(agent, [record.id])
            return {**ack_json(record), "to": agent_id(recipient)}

        return await store.run(op)

    @tool(title="Read the inbox", read_only=True, idempotent=True)
    async def read_inbox() -> list[dict[str, Any]]:
        """Read the direct messages sent to this agent, newest first, each as
        {"id", "from", "to", "text", "ts"} ('from' is the sender's agent id)."""

        def op(agent: Agent) -> list[dict[str, Any]]:
            inbox = getattr(agent, "inbox", None)
            if inbox is None:
                raise ToolFailure("direct messages are not available in this version of p2pmem")
            return list(inbox())

        return await store.run(op)

    # -- agents ----------------------------------------------------------------
    @tool(title="Find agents", read_only=True, idempotent=True)
    async def find_agents(
        skill: Annotated[str | None, Field(description="Only agents with this skill (declared, or shown by their memories' topics), best first.")] = None,
    ) -> list[dict[str, Any]]:
        """List the agents known to this node (this one included, marked 'self'), each with
        id, name, skills, description and the number of its memories stored here. Use it to
        find who to follow, ask (ask_network with agent=...) or message."""

        def op(agent: Agent) -> list[dict[str, Any]]:
            directory = getattr(agent, "directory", None)
            if directory is not None:
                return list(directory(skill or None))
            return _directory(agent, skill)

        return await store.run(op)

    @tool(title="Follow an agent", idempotent=True, open_world=True)
    async def follow_agent(id: AgentId) -> dict[str, Any]:
        """Follow another agent: its public memories replicate to this node (so recall finds
        them) and its memories rank higher. Returns {"id", "author", "ts", "target", "changed"}
        of the follow record; when the agent was already followed nothing is written and
        "changed" is false (with "id" and "ts" null)."""

        def op(agent: Agent) -> dict[str, Any]:
            target = _agent_key(id, "id", agent)
            record = agent.set_follow(target, True)
            if record is None:
                return {"id": None, "author": me, "ts": None, "target": agent_id(target), "changed": False}
            _notify(agent, [record.id])
            return {**ack_json(record), "target": agent_id(target), "changed": True}

        return await store.run(op)

    @tool(title="Endorse an agent or memory", open_world=True)
    async def endorse(
        target: Annotated[str, Field(description="An agent id (pm1...) or a memory id (hex, or a unique prefix).")],
    ) -> dict[str, Any]:
        """Vouch for another agent or for a memory you found useful and correct; endorsements
        raise trust and ranking across the network. Returns {"id", "author", "ts"}."""

        def op(agent: Agent) -> dict[str, Any]:
            if target.strip().lower().startswith("pm1"):
                record = agent.endorse(_agent_key(target, "target", agent), "agent")
            else:
                try:
                    memory = agent.store.resolve_prefix(target.strip())
                except StoreError as exc:
                    raise ToolFailure(f"target is neither an agent id nor a known memory id: {exc}") from None
                record = agent.endorse(memory, "memory")
            _notify(agent, [record.id])
            return ack_json(record)

        return await store.run(op)

    @tool(title="Status", read_only=True, idempotent=True)
    async def status() -> dict[str, Any]:
        """This agent's id, this session's id, the home directory, whether a node is serving
        (needed for ask_network and replication), and counts; when serving, the node's
        addresses, peers and replication state under 'node'."""
        from p2pmem.node.control import NotServing, request

        def local(agent: Agent) -> dict[str, Any]:
            return {
                "id": me, "session": session, "home": str(home), "serving": False,
                "records": agent.store.count(), "memories": agent.store.count("memory"),
            }

        out = await store.run(local)
        try:
            reply = await anyio.to_thread.run_sync(
                functools.partial(request, home, "status", timeout=5.0), abandon_on_cancel=True,
            )
        except NotServing:
            return out
        except P2pmemError as exc:
            return {**out, "node_error": str(exc)}
        return {**out, "serving": True, "node": reply.get("status", {})}

    # -- the knowledge graph (the reference MCP memory server's tools) ----------
    from p2pmem.graph.mcp_tools import register as register_graph_tools

    register_graph_tools(server, store, default_session, _notify, home)
    return server


def _directory(agent: Agent, skill: str | None) -> list[dict[str, Any]]:
    """The agents known here (for a home without Agent.directory)."""
    profiles = agent.store.profiles()
    counts = agent.store.authors()
    rows = []
    for key in sorted(set(profiles) | set(counts)):
        body = profiles[key].body if key in profiles else {}
        assert isinstance(body, dict)
        skills = list(body.get("skills", []))
        if skill and skill.lower() not in (s.lower() for s in skills):
            continue
        rows.append({
            "id": agent_id(key), "name": body.get("name", ""), "skills": skills,
            "description": body.get("description", ""), "memories": counts.get(key, 0),
            "self": key == agent.key,
        })
    return rows


def run_mcp(home: Path, *, log_level: str = "warning", log_format: str = "text") -> int:
    """Serve MCP on standard input and output for the agent of ``home`` until
    the client closes the connection. Returns the exit status. Log lines go
    to standard error only: standard output is the protocol's."""
    from p2pmem.node.logs import setup

    setup(log_level, log_format, stream=sys.stderr)
    session = new_session_id()
    store = StoreThread(home)
    if store.broken:
        log_event(log, logging.WARNING, LogEvent.MCP_STORE_BROKEN,
                  f"{store.broken} (every tool call will say so until it is fixed)", error=str(store.broken))
    try:
        server = build_server(home, store, session)
        log_event(log, logging.INFO, LogEvent.MCP_STARTED, f"serving MCP for {store.agent_id()}, session {session}",
                  peer=store.agent_id(), session=session)
        anyio.run(server.run_stdio_async)
    except KeyboardInterrupt:
        return 130
    finally:
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pmem-mcp", description="p2pmem's MCP server on stdio.")
    parser.add_argument("--home", type=Path, default=None, help="the agent's home directory")
    args = parser.parse_args(argv)
    return run_mcp(args.home if args.home is not None else default_home())


if __name__ == "__main__":
    sys.exit(main())
