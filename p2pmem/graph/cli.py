"""``p2pmem graph``: import and export the reference MCP memory server's JSONL
file, show and search the graph with who said what (docs/graph.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from p2pmem import limits
from p2pmem.errors import P2pmemError, UsageError
from p2pmem.graph import jsonl, ops
from p2pmem.interfaces.output import print_json

MAX_LINE = 4 * limits.MAX_BODY + 16 * limits.MAX_GRAPH_NAME


def add_parser(sub: Any) -> None:
    from p2pmem.interfaces.cli import _common, _positive, _seconds

    p = sub.add_parser("graph", help="the knowledge graph: import, export, show, search")
    _common(p)
    gsub = p.add_subparsers(dest="graph_command", metavar="ACTION", parser_class=type(p))
    q = gsub.add_parser("import", help="sign a reference MCP memory server JSONL file into this agent's graph")
    q.add_argument("file", help="the JSONL file (- for standard input)")
    q.add_argument("--visibility", choices=("public", "ask", "private"), default="public")
    _common(q)
    q = gsub.add_parser("export", help="write the graph as the reference server's JSONL file")
    q.add_argument("file", nargs="?", default="-")
    _common(q)  # --json: a summary object when writing FILE (standard output is JSON lines anyway)
    q = gsub.add_parser("show", help="entities (all, or the named ones) with who said what")
    q.add_argument("names", nargs="*", metavar="NAME")
    _common(q)
    q = gsub.add_parser("search", help="search the graph by meaning and substring")
    q.add_argument("query")
    q.add_argument("--limit", type=_positive, default=10, help="ranked matches beyond substring ones (default 10)")
    _common(q)
    q = gsub.add_parser("ask", help="search other nodes' graphs through this home's serving node")
    q.add_argument("query")
    q.add_argument("--ttl", type=_positive, default=limits.DEFAULT_TTL,
                   help=f"links the query may cross (default {limits.DEFAULT_TTL}, at most {limits.MAX_TTL})")
    q.add_argument("--timeout", type=_seconds, default=3.0, help="seconds to wait for answers (default 3)")
    q.add_argument("--agent", default=None, help="ask one agent only (an id, or a unique prefix of a known one)")
    q.add_argument("--limit", type=_positive, default=10)
    _common(q)


def cmd_graph(args: argparse.Namespace) -> int:
    action = getattr(args, "graph_command", None)
    if action is None:
        raise UsageError("graph needs an action: import, export, show, search or ask")
    handlers = {"import": _import, "export": _export, "show": _show, "search": _search, "ask": _ask}
    return handlers[action](args)


def _import(args: argparse.Namespace) -> int:
    from p2pmem.interfaces.cli import _good_lines, _notify, _open, _open_input

    stream = _open_input(args.file)
    rejected: list[tuple[int, str]] = []
    items = []
    try:
        for number, line in _good_lines(stream, MAX_LINE, rejected):
            try:
                items.append(jsonl.parse_line(line))
            except UsageError as exc:
                rejected.append((number, str(exc)))
    finally:
        if stream is not sys.stdin:
            stream.close()
    session = os.environ.get("P2PMEM_SESSION", "")
    with _open(args) as agent:
        signer = ops.Signer(agent, session=session, visibility=args.visibility)
        counts = jsonl.import_items(signer, items)
        _notify(agent, signer.done)
    rejected.sort()
    for number, reason in rejected:
        print(f"p2pmem: line {number}: {reason}", file=sys.stderr)
    if args.json:
        print_json({**counts, "records": len(signer.done),
                    "rejected": [{"line": n, "reason": r} for n, r in rejected]})
    else:
        print(f"imported {counts['entities']} entities, {counts['observations']} observations, "
              f"{counts['relations']} relations ({len(signer.done)} signed records), "
              f"{counts['skipped']} already here, {len(rejected)} lines rejected")
    return 1 if rejected else 0


def _export(args: argparse.Namespace) -> int:
    from p2pmem.interfaces.cli import _open

    with _open(args) as agent:
        graph = ops.read_graph(agent)
    lines = list(jsonl.export_lines(graph))
    text = "\n".join(lines) + ("\n" if lines else "")
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.file, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise P2pmemError(f"cannot write {args.file}: {exc.strerror}") from None
    if args.json:
        print_json({"entities": len(graph.entities), "relations": len(graph.relations), "file": args.file})
    else:
        print(f"exported {len(graph.entities)} entities and {len(graph.relations)} relations to {args.file}",
              file=sys.stderr)
    return 0


def _lines(described: dict[str, Any]) -> list[str]:
    from p2pmem.model.identity import parse_agent_id, short_id

    def who(sources: list[dict[str, Any]]) -> str:
        return "; ".join(f"{short_id(parse_agent_id(s['author']))} {s['ts'][:16].replace('T', ' ')}" for s in sources)

    out = []
    for e in described["entities"]:
        out.append(f"{e['name']} ({e['entityType']})  [{who(e['createdBy'])}]")
        for o in e["observations"]:
            out.append(f"  - {o['text']}  [{who(o['sources'])}]")
    for r in described["relations"]:
        out.append(f"{r['from']} --{r['relationType']}--> {r['to']}  [{who(r['sources'])}]")
    return out


def _print(args: argparse.Namespace, described: dict[str, Any], empty: str) -> int:
    if args.json:
        print_json(described)
    elif not described["entities"] and not described["relations"]:
        print(empty, file=sys.stderr)
    else:
        for line in _lines(described):
            print(line)
    return 0


def _show(args: argparse.Namespace) -> int:
    from p2pmem.interfaces.cli import _open

    with _open(args) as agent:
        graph = ops.read_graph(agent)
    return _print(args, ops.describe(graph, args.names or None), "no entities found")


def _search(args: argparse.Namespace) -> int:
    from p2pmem.interfaces.cli import _open

    if len(args.query) > limits.MAX_QUERY_TEXT:
        raise UsageError(f"the query is over {limits.MAX_QUERY_TEXT} characters")
    with _open(args) as agent:
        graph = ops.read_graph(agent)
    names = ops.search_names(graph, args.query, min(args.limit, limits.MAX_RECALL_LIMIT))
    described = ops.describe(graph, names)
    order = {n: i for i, n in enumerate(names)}
    described["entities"].sort(key=lambda e: order[e["name"]])
    return _print(args, described, "no entities found")


def _ask(args: argparse.Namespace) -> int:
    from p2pmem.interfaces.cli import _agent_arg, _home
    from p2pmem.model.identity import agent_id
    from p2pmem.node.control import request

    if args.ttl > limits.MAX_TTL:
        raise UsageError(f"--ttl is at most {limits.MAX_TTL}")
    if len(args.query) > limits.MAX_QUERY_TEXT:
        raise UsageError(f"the query is over {limits.MAX_QUERY_TEXT} characters")
    target = _agent_arg(args, args.agent) if args.agent is not None else None
    reply = request(
        _home(args), "ask_graph", timeout=args.timeout + 5.0, text=args.query, ttl=args.ttl,
        query_timeout=args.timeout, topics=[], limit=min(args.limit, limits.MAX_RECALL_LIMIT),
        agent=agent_id(target) if target else None,
    )
    return _print(args, reply["results"], "no answers")
