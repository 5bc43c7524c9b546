"""The graph across processes and nodes: entities created through MCP on one
serving node appear in read_graph on another; an MCP server, CLI commands and
`serve` writing one home's graph at the same time lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from netutil import Net, network_fixture, wait_until

from p2pmem.graph import tables
from tests.test_mcp import PROJECT_ROOT, mcp_session

net = network_fixture()
pytestmark = pytest.mark.slow


async def tool(session: Any, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    return dict(result.structured_content or {})


def graph_of(net: Net, home: Path) -> dict[str, Any]:
    """The graph ``home``'s store holds now (read directly, as the nodes write it)."""
    return tables.read_graph(net.store(home).connection).to_reference()


def test_entities_created_through_mcp_on_one_node_appear_on_the_other(net: Net) -> None:
    a, b = net.homes(2)
    na = net.start(a)
    nb = net.start(b, "--replicate", "all", "--peer", na.address)
    net.wait_peers(na, {nb.id})

    async def body() -> None:
        async with mcp_session(a) as sa:
            await tool(sa, "create_entities", entities=[
                {"name": "payments", "entityType": "service", "observations": ["owned by team red"]},
                {"name": "Dana", "entityType": "person", "observations": ["on call this week"]},
            ])
            await tool(sa, "create_relations", relations=[{"from": "Dana", "to": "payments", "relationType": "maintains"}])
            await tool(sa, "create_entities", entities=[{"name": "secret", "entityType": "x", "observations": []}],
                       visibility="private")
            wanted = await tool(sa, "read_graph")
        public = {**wanted, "entities": [e for e in wanted["entities"] if e["name"] != "secret"]}
        wait_until(lambda: graph_of(net, b) == public, what="A's graph to reach B",
                   describe=lambda: json.dumps(graph_of(net, b))[:300])
        async with mcp_session(b) as sb:
            assert await tool(sb, "read_graph") == public
            found = await tool(sb, "search_nodes", query="who maintains payments")
            assert found["entities"][0]["name"] == "Dana"
            sources = await tool(sb, "graph_sources", names=["Dana"])
            assert sources["entities"][0]["observations"][0]["sources"][0]["author"] == na.id
            # B's own additions merge in; B cannot remove A's
            await tool(sb, "add_observations", observations=[{"entityName": "Dana", "contents": ["likes tea"]}])
            await tool(sb, "delete_entities", entityNames=["Dana"])
            after = await tool(sb, "open_nodes", names=["Dana"])
            assert after["entities"] == [{"name": "Dana", "entityType": "person", "observations": ["on call this week"]}]
            assert after["relations"] == public["relations"]

    anyio.run(body)


def _import_file(path: Path, prefix: str, count: int) -> None:
    lines = [json.dumps({"type": "entity", "name": f"{prefix}-{i}", "entityType": prefix,
                         "observations": [f"{prefix} fact {i}"]}) for i in range(count)]
    lines += [json.dumps({"type": "relation", "from": f"{prefix}-{i}", "to": f"{prefix}-{i + 1}",
                          "relationType": "next"}) for i in range(count - 1)]
    path.write_text("\n".join(lines) + "\n")


def test_mcp_cli_and_serve_writing_one_home_at_once_lose_nothing(net: Net, tmp_path: Path) -> None:
    a, b = net.homes(2)
    na = net.start(a, "--replicate", "all")
    nb = net.start(b, "--replicate", "all", "--peer", na.address)
    net.wait_peers(na, {nb.id})
    files = []
    for prefix in ("cli1", "cli2", "cli3", "peer"):
        files.append(tmp_path / f"{prefix}.jsonl")
        _import_file(files[-1], prefix, 40)
    cli = [sys.executable, "-m", "p2pmem", "--home"]
    started = [subprocess.Popen([*cli, str(a), "graph", "import", str(f)], cwd=PROJECT_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for f in files[:3]]
    # B's records reach A through A's serving node, which stores them meanwhile
    started.append(subprocess.Popen([*cli, str(b), "graph", "import", str(files[3])], cwd=PROJECT_ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))

    async def through_mcp() -> None:
        async with mcp_session(a) as sa:
            for i in range(20):
                await tool(sa, "create_entities", entities=[
                    {"name": f"mcp-{i}", "entityType": "mcp", "observations": [f"mcp fact {i}"]}])
                if i:
                    await tool(sa, "create_relations", relations=[
                        {"from": f"mcp-{i - 1}", "to": f"mcp-{i}", "relationType": "next"}])

    anyio.run(through_mcp)
    for proc in started:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()

    def complete() -> bool:
        graph = graph_of(net, a)
        return len(graph["entities"]) == 4 * 40 + 20 and len(graph["relations"]) == 4 * 39 + 19

    wait_until(complete, what="every entity and relation in A's graph",
               describe=lambda: f"{len(graph_of(net, a)['entities'])} entities")
    graph = graph_of(net, a)
    for entity in graph["entities"]:
        prefix, number = entity["name"].rsplit("-", 1)
        assert entity["observations"] == [f"{prefix} fact {number}"]
    assert net.store(a).integrity_check() == "ok"


def test_graph_ask_searches_other_nodes_graphs(net: Net, tmp_path: Path) -> None:
    from netutil import cli_json, run_cli

    a, b = net.homes(2)
    na = net.start(a)
    nb = net.start(b, "--peer", na.address)  # B follows nobody: A's graph does not replicate to it
    net.wait_peers(na, {nb.id})
    source = tmp_path / "a.jsonl"
    source.write_text(
        '{"type":"entity","name":"ledger","entityType":"service","observations":["writes to postgres"]}\n'
        '{"type":"entity","name":"Eve","entityType":"person","observations":["prefers green tea"]}\n'
        '{"type":"relation","from":"Eve","to":"ledger","relationType":"maintains"}\n')
    cli_json(a, "graph", "import", str(source))
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"type":"entity","name":"vault","entityType":"service","observations":["maintains secrets"]}\n')
    cli_json(a, "graph", "import", "--visibility", "private", str(secret))
    assert graph_of(net, b) == {"entities": [], "relations": []}

    found = cli_json(b, "graph", "ask", "who maintains the ledger", "--timeout", "1.5")
    names = [e["name"] for e in found["entities"]]
    assert names[0] == "Eve" and "ledger" in names and "vault" not in names
    eve = found["entities"][0]
    assert eve["observations"][0]["sources"][0]["author"] == na.id
    assert found["relations"] == [{"from": "Eve", "to": "ledger", "relationType": "maintains",
                                   "sources": found["relations"][0]["sources"]}]
    assert all(v["via"] == na.id and v["hops"] == 1 for v in found["answered"].values())
    assert graph_of(net, b) == {"entities": [], "relations": []}  # asking stores nothing
    human = run_cli(b, "graph", "ask", "green tea", "--timeout", "1")
    assert "Eve (person)" in human.stdout
    # memories' ask is unchanged by the graph
    assert cli_json(b, "ask", "who maintains the ledger", "--timeout", "1") == []
