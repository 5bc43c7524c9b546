"""The MCP server (p2pmem/interfaces/mcp_server.py) through the official SDK's own stdio
client, against real server processes."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from p2pmem.agent.home import Agent

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONTRACT_TOOLS = {
    "remember": ["text", "topics?", "session?", "at?", "visibility?"],
    "recall": ["query", "limit?", "since?", "until?", "topics?", "author?", "session?"],
    "ask_network": ["query", "ttl?", "timeout?", "agent?", "since?", "until?", "topics?", "limit?"],
    "update_memory": ["id", "text"],
    "forget": ["id"],
    "send_message": ["to", "text"],
    "read_inbox": [],
    "find_agents": ["skill?"],
    "follow_agent": ["id"],
}
HAS_MESSAGES = hasattr(Agent, "send_message") and hasattr(Agent, "inbox")


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pmem", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, check=check, cwd=PROJECT_ROOT,
    )


def init(home: Path, name: str, *skills: str) -> str:
    args = ["init", "--name", name]
    for skill in skills:
        args += ["--skill", skill]
    return cli(home, *args).stdout.strip()


@asynccontextmanager
async def mcp_session(home: Path, env: dict[str, str] | None = None) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "p2pmem.interfaces.mcp_server", "--home", str(home)],
        env=env, cwd=PROJECT_ROOT,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(client: ClientSession, tool: str, /, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool} failed: {text}"
    return json.loads(text)


async def call_error(client: ClientSession, tool: str, /, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert result.is_error, f"{tool} unexpectedly succeeded: {text}"
    assert text and "\n" not in text, f"error should be one line: {text!r}"
    return text


def run(fn: Any, limit: float = 90.0) -> None:
    async def guarded() -> None:
        with anyio.fail_after(limit):
            await fn()

    anyio.run(guarded)


# -- tests ---------------------------------------------------------------------
def test_tools_have_the_contract_arguments(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home, "alice")

    async def body() -> None:
        async with mcp_session(home) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            for name, spec in CONTRACT_TOOLS.items():
                assert name in tools, f"missing tool {name}"
                schema = tools[name].input_schema
                properties = set(schema.get("properties", {}))
                required = set(schema.get("required", []))
                for arg in spec:
                    bare = arg.rstrip("?")
                    assert bare in properties, f"{name} lacks argument {bare}"
                    assert (bare in required) == (not arg.endswith("?")), f"{name}.{bare} required?"
                extra = properties - {a.rstrip("?") for a in spec}
                assert not extra & required, f"{name} has extra required arguments"  # optional extras are fine
                assert len(tools[name].description or "") > 60, f"{name} needs a real description"
            assert {"endorse", "status"} <= set(tools)

    run(body)


def test_remember_recall_update_forget_and_sessions(tmp_path: Path) -> None:
    home = tmp_path / "a"
    me = init(home, "alice")

    async def body() -> None:
        async with mcp_session(home) as session:
            status = await call(session, "status")
            assert status["id"] == me and status["serving"] is False
            sid = status["session"]
            assert sid.startswith("mcp-") and len(sid) == 12

            ack = await call(session, "remember", text="the deploy key rotates every Monday",
                             topics=["ops", "deploy"], at="2h")
            assert set(ack) == {"id", "author", "ts"} and ack["author"] == me
            found = await call(session, "recall", query="deploy key")
            assert [m["id"] for m in found] == [ack["id"]]
            memory = found[0]
            assert memory["session"] == sid
            assert sorted(memory["topics"]) == ["deploy", "ops"]
            assert memory["at"] < memory["ts"]
            assert memory["visibility"] == "public"

            # filters
            assert await call(session, "recall", query="deploy", session="other") == []
            assert len(await call(session, "recall", query="deploy", session=sid)) == 1
            assert len(await call(session, "recall", query="", author=me, topics=["ops"])) == 1
            assert len(await call(session, "recall", query="", author=[me])) == 1
            assert await call(session, "recall", query="deploy", since="1h") == []
            private = await call(session, "remember", text="secret note", visibility="private",
                                 session="explicit")
            got = await call(session, "recall", query="secret")
            assert got[0]["id"] == private["id"] and got[0]["session"] == "explicit"
            assert got[0]["visibility"] == "private"

            new = await call(session, "update_memory", id=ack["id"], text="the deploy key rotates every Friday")
            assert new["id"] != ack["id"]
            found = await call(session, "recall", query="deploy key")
            assert [m["text"] for m in found] == ["the deploy key rotates every Friday"]
            assert found[0]["session"] == sid and ack["id"] in found[0]["supersedes"]

            gone = await call(session, "forget", id=new["id"][:16])
            assert gone["author"] == me
            assert await call(session, "recall", query="deploy key") == []

        # a second server process is another session
        async with mcp_session(home) as session:
            other = (await call(session, "status"))["session"]
            assert other != sid
            ack = await call(session, "remember", text="second session memory")
            assert (await call(session, "recall", query="second session"))[0]["session"] == other
            assert (await call(session, "status"))["memories"] == 2
            assert ack["author"] == me

        # $P2PMEM_SESSION names the session
        async with mcp_session(home, env={"P2PMEM_SESSION": "named-run"}) as session:
            assert (await call(session, "status"))["session"] == "named-run"
            await call(session, "remember", text="named session memory")
            assert (await call(session, "recall", query="named"))[0]["session"] == "named-run"

    run(body)


def test_find_agents_follow_and_endorse(tmp_path: Path) -> None:
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    me = init(home_a, "alice", "python", "ops")
    other = init(home_b, "bob", "rust")

    async def body() -> None:
        async with mcp_session(home_a) as session:
            agents = await call(session, "find_agents")
            mine = [a for a in agents if a["id"] == me]
            assert len(mine) == 1
            assert mine[0]["name"] == "alice" and sorted(mine[0]["skills"]) == ["ops", "python"]
            assert {"id", "name", "skills", "description", "memories"} <= set(mine[0])
            assert [a["id"] for a in await call(session, "find_agents", skill="python")] == [me]
            assert await call(session, "find_agents", skill="cobol") == []

            ack = await call(session, "follow_agent", id=other)
            assert ack["author"] == me and set(ack) == {"id", "author", "ts", "target", "changed"}
            assert ack["changed"] is True and ack["target"] == other
            again = await call(session, "follow_agent", id=other[:12])  # a prefix; already followed
            assert again["changed"] is False and again["id"] is None and again["target"] == other
            assert "follow itself" in await call_error(session, "follow_agent", id=me)

            memory = await call(session, "remember", text="endorse me")
            assert (await call(session, "endorse", target=other))["author"] == me
            assert (await call(session, "endorse", target=memory["id"]))["author"] == me

    run(body)
    with Agent.open(home_a) as agent:
        follows = agent.store.follows()
    from p2pmem.model.identity import parse_agent_id

    assert (parse_agent_id(me), parse_agent_id(other)) in follows


def test_bad_input_is_an_error_result_and_the_server_survives(tmp_path: Path) -> None:
    home = tmp_path / "a"
    init(home, "alice")

    async def body() -> None:
        async with mcp_session(home) as session:
            assert "not a time" in await call_error(session, "remember", text="x", at="yesterday-ish")
            assert "not a time" in await call_error(session, "recall", query="x", since="soon")
            assert "agent id" in await call_error(session, "recall", query="x", author="pm1nope")
            assert "agent id" in await call_error(session, "follow_agent", id="bob")
            assert "limit" in await call_error(session, "remember", text="x" * (64 * 1024 + 1))
            assert "some text" in await call_error(session, "remember", text="   ")
            assert await call_error(session, "forget", id="00" * 32)
            assert await call_error(session, "update_memory", id="deadbeef", text="new")
            assert "text" in await call_error(session, "remember")  # missing argument
            assert "visibility" in await call_error(session, "remember", text="x", visibility="secret")
            assert "ttl" in await call_error(session, "ask_network", query="x", ttl=99)
            assert "p2pmem serve" in await call_error(session, "ask_network", query="anything")
            # still serving
            ack = await call(session, "remember", text="still alive")
            assert (await call(session, "recall", query="alive"))[0]["id"] == ack["id"]

    run(body)


@pytest.mark.skipif(not HAS_MESSAGES, reason="Agent.send_message / Agent.inbox are not in p2pmem.agent.home yet")
def test_send_message_and_read_inbox(tmp_path: Path) -> None:
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    alice = init(home_a, "alice")
    bob = init(home_b, "bob")
    # carry bob's profile (his message key) to alice without a network
    cli(home_b, "export", str(tmp_path / "b.jsonl"))
    cli(home_a, "import", str(tmp_path / "b.jsonl"))

    async def send() -> None:
        async with mcp_session(home_a) as session:
            ack = await call(session, "send_message", to=bob, text="lunch at noon?")
            assert ack["author"] == alice and ack["to"] == bob
            assert "agent id" in await call_error(session, "send_message", to="nobody", text="hi")

    run(send)
    cli(home_a, "export", str(tmp_path / "a.jsonl"))
    cli(home_b, "import", str(tmp_path / "a.jsonl"), check=False)

    async def read() -> None:
        async with mcp_session(home_b) as session:
            inbox = await call(session, "read_inbox")
            assert [(m["from"], m["to"], m["text"]) for m in inbox] == [(alice, bob, "lunch at noon?")]
            assert {"id", "from", "to", "text", "ts"} <= set(inbox[0])

    run(read)


# -- across the network --------------------------------------------------------
def _start_serve(home: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    with log.open("w") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pmem", "--home", str(home), "serve", "--json",
             "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=errors, text=True, cwd=PROJECT_ROOT,
        )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=30):
            _stop(proc)
            raise AssertionError(f"serve did not start: {log.read_text()}")
    line = proc.stdout.readline()
    if not line:
        _stop(proc)
        raise AssertionError(f"serve exited: {log.read_text()}")
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_ask_network_across_two_serving_nodes(tmp_path: Path) -> None:
    home1, home2 = tmp_path / "n1", tmp_path / "n2"
    id1 = init(home1, "one")
    init(home2, "two")
    procs: list[subprocess.Popen[str]] = []
    try:
        proc1, ready1 = _start_serve(home1, tmp_path / "n1.log")
        procs.append(proc1)
        assert ready1["id"] == id1
        proc2, _ = _start_serve(home2, tmp_path / "n2.log", "--peer", ready1["address"])
        procs.append(proc2)

        memory_id = cli(home1, "remember", "the staging database lives on port 6543",
                        "--visibility", "ask", "--topic", "infra").stdout.strip()

        deadline = time.monotonic() + 30
        while True:
            peers = json.loads(cli(home2, "peers", "--json").stdout)
            if any(p["id"] == id1 for p in peers):
                break
            assert time.monotonic() < deadline, "the nodes did not connect"
            time.sleep(0.2)

        async def body() -> None:
            async with mcp_session(home2, env={"P2PMEM_HOME": str(home2)}) as session:
                status = await call(session, "status")
                assert status["serving"] is True and status["node"]["id"] != id1
                results = await call(session, "ask_network", query="staging database port", timeout=3)
                hit = [r for r in results if r["id"] == memory_id]
                assert hit, f"node 1's memory not found: {results}"
                assert hit[0]["hops"] == 1 and hit[0]["via"] == id1
                assert hit[0]["author"] == id1 and hit[0]["visibility"] == "ask"
                assert "record" not in hit[0]
                # progress: one notification per answer as it arrives; done long before the timeout
                notes: list[tuple[float, float | None, str | None]] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    notes.append((progress, total, message))

                started = time.monotonic()
                result = await session.call_tool("ask_network", {"query": "staging database port", "timeout": 20},
                                                 progress_callback=on_progress)
                assert time.monotonic() - started < 10, "ask_network waited for its timeout"
                assert not result.is_error
                assert [r["id"] for r in json.loads(result.content[0].text)] == [memory_id]
                assert [n[0] for n in notes] == [1] and "staging database lives on port 6543" in notes[0][2]
                assert await call(session, "ask_network", query="staging", topics=["nothing"],
                                  timeout=1) == []
                # an ask-visibility memory does not replicate: local recall has nothing
                assert await call(session, "recall", query="staging database") == []

        run(body)
    finally:
        for proc in procs:
            _stop(proc)
