"""The ``p2pmem`` command (docs: ../shared/CONTRACT.md).

Exit status 0 on success, 2 for a usage error, 1 for any other error, always
with one line on standard error and never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from p2pmem import __version__, limits
from p2pmem.agent.home import Agent, check_query, default_home, init_home, wall_ms
from p2pmem.errors import P2pmemError, RecordError, UsageError
from p2pmem.interfaces.output import (
    ack_json,
    explain_line,
    export_line,
    memory_json,
    memory_lines,
    parse_json_object,
    print_json,
)
from p2pmem.model.identity import agent_id, parse_agent_id
from p2pmem.model.record import VISIBILITIES, load_stored
from p2pmem.model.when import parse_when
from p2pmem.retrieval.text import analyse_query
from p2pmem.storage.diskerrors import explain

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"p2pmem: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    # SUPPRESS keeps a value given before the command from being reset here.
    parser.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="the agent's home directory")
    if json_flag:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def _when(text: str) -> int:
    try:
        return parse_when(text, wall_ms())
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= limits.MAX_QUERY_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {limits.MAX_QUERY_TIMEOUT_S:g}")
    return value


def _agent(text: str) -> bytes:
    try:
        return parse_agent_id(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="p2pmem", description="A peer-to-peer memory network for AI agents.")
    parser.add_argument("--home", type=Path, default=None, help="the agent's home directory")
    parser.add_argument("--json", action="store_true", default=False, help="print JSON")
    parser.add_argument("--version", action="version", version=f"p2pmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("init", help="create the identity and store")
    p.add_argument("--name", help="the agent's display name")
    p.add_argument("--skill", action="append", default=[], help="a declared skill (repeatable)")
    p.add_argument("--new-store", action="store_true",
                   help="give an identity whose store is lost a new, empty store")
    _common(p)

    _common(sub.add_parser("id", help="print the agent id"))

    p = sub.add_parser("remember", help="store a signed memory")
    p.add_argument("text", nargs="?", help="the memory; - reads standard input")
    p.add_argument("--topic", action="append", default=[], help="a topic (repeatable)")
    p.add_argument("--session", default=None, help="the session (default $P2PMEM_SESSION)")
    p.add_argument("--at", type=_when, default=None, help="when it happened: ISO 8601 or an age like 2h")
    p.add_argument("--visibility", choices=VISIBILITIES, default="public")
    p.add_argument("--batch", metavar="FILE", help="one JSON memory per line (- for standard input)")
    _common(p)

    p = sub.add_parser("update", help="supersede a memory of this agent")
    p.add_argument("id")
    p.add_argument("text", help="the new text; - reads standard input")
    p.add_argument("--topic", action="append", default=None, help="replace the topics (repeatable)")
    _common(p)

    p = sub.add_parser("forget", help="retract a memory of this agent")
    p.add_argument("id")
    _common(p)

    p = sub.add_parser("recall", help="search this node's store")
    p.add_argument("query", nargs="?", default="")
    _filters(p)
    p.add_argument("--author", action="append", default=[],
                   help="an agent id or a unique prefix of a known one (repeatable)")
    p.add_argument("--session", default=None)
    p.add_argument("--explain", action="store_true", help="show how each result was ranked")
    p.add_argument("--now", type=_when, default=None,
                   help="read time words in the query ('last week') relative to this time (default: now)")
    p.add_argument("--model", type=Path, default=None,
                   help="a local embedding model folder for the semantic stage (docs/models.md)")
    _common(p)

    p = sub.add_parser("reindex", help="rebuild the search indexes from the store (and re-embed with a model)")
    p.add_argument("--model", type=Path, default=None, help="a local embedding model folder (docs/models.md)")
    _common(p)

    p = sub.add_parser("agents", help="the directory of agents known here")
    p.add_argument("--skill", default=None)
    _common(p)

    p = sub.add_parser("profile", help="show or change this agent's profile")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--skill", action="append", default=None)
    p.add_argument("--address", action="append", default=None, help="an address peers can dial")
    _common(p)

    for name, text in (("follow", "follow an agent"), ("unfollow", "stop following an agent")):
        p = sub.add_parser(name, help=text)
        p.add_argument("agent", help="an agent id, or a unique prefix of a known one")
        _common(p)

    p = sub.add_parser("endorse", help="endorse an agent or a memory")
    p.add_argument("target", help="an agent id or a memory id")
    _common(p)

    p = sub.add_parser("export", help="signed records as JSON lines")
    p.add_argument("file", nargs="?", default="-")
    p.add_argument("--shareable", action="store_true",
                   help="leave out private and ask memories (for handing to another agent)")
    _common(p)  # --json: a summary object when writing FILE (standard output is JSON lines anyway)

    p = sub.add_parser("import", help="verify and import JSON lines of signed records")
    p.add_argument("file")
    _common(p)

    p = sub.add_parser("serve", help="run the node until SIGINT or SIGTERM")
    _serve_settings(p)
    _common(p)

    p = sub.add_parser("config", help="the serving node's configuration")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser, required=True)
    p = config_sub.add_parser("show", help="the effective configuration and where each value came from")
    _serve_settings(p)
    _common(p)

    _common(sub.add_parser("peers", help="connected peers of the serving node"))
    _common(sub.add_parser("status", help="the serving node's id, addresses, counts"))

    p = sub.add_parser("ask", help="ask the network through the serving node")
    p.add_argument("query")
    p.add_argument("--ttl", type=_positive, default=limits.DEFAULT_TTL,
                   help=f"links the query may cross (default {limits.DEFAULT_TTL}, at most {limits.MAX_TTL})")
    p.add_argument("--timeout", type=_seconds, default=3.0, help="seconds to wait for answers (default 3)")
    p.add_argument("--agent", default=None, help="ask one agent only (an id, or a unique prefix of a known one)")
    p.add_argument("--json-lines", action="store_true", default=False,
                   help="print each answer as one JSON line as it arrives, then a summary line")
    _filters(p)
    _common(p)

    p = sub.add_parser("send", help="send an encrypted direct message")
    p.add_argument("agent", help="an agent id, or a unique prefix of a known one")
    p.add_argument("text", help="the message; - reads standard input")
    _common(p)

    p = sub.add_parser("inbox", help="direct messages to this agent, newest first")
    p.add_argument("--maildir", type=Path, default=None, help="also write them as mails into this Maildir")
    _common(p)

    p = sub.add_parser("mcp", help="an MCP server on standard input and output")
    _common(p, json_flag=False)

    for extra in _EXTRA_PARSERS:
        extra(sub)
    return parser


def serve_options(p: argparse.ArgumentParser) -> None:
    """The options of ``serve``. Each is also a key of the configuration
    file and a P2PMEM_ variable (p2pmem/node/config.py reads them from here:
    a flag added here is configurable with no other change)."""
    p.add_argument("--listen", type=_address, default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where to accept peers (default 127.0.0.1 and a free port)")
    p.add_argument("--peer", action="append", type=_address, default=[], metavar="HOST:PORT",
                   help="a bootstrap peer (repeatable)")
    p.add_argument("--replicate", choices=("follows", "all"), default="follows",
                   help="whose public memories to keep: followed agents' (default) or everyone's")
    p.add_argument("--max-peers", type=_at_most(limits.MAX_ACTIVE_PEERS), default=limits.MAX_ACTIVE_PEERS,
                   help=f"most connections to keep (1 to {limits.MAX_ACTIVE_PEERS}, the default)")
    p.add_argument("--push-rate", type=_push_rate, default=limits.PUSH_BYTES_PER_S, metavar="BYTES",
                   help=f"bytes per second of records sent to one peer "
                        f"({limits.MIN_PUSH_BYTES_PER_S} to {limits.PUSH_BYTES_PER_S}, the default)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="the least important log lines to write (default info)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines as text (default) or one JSON object per line, on standard error")
    p.add_argument("--metrics", type=_address, default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")


def _serve_settings(p: argparse.ArgumentParser) -> None:
    """serve's options, which count as given only when given, and --config."""
    from p2pmem.node.config import suppress_defaults

    serve_options(p)
    suppress_defaults(p)
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="the configuration file (default p2pmem.toml in the home)")


def _address(text: str) -> str:
    from p2pmem.node.shell import parse_address

    try:
        parse_address(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _at_most(most: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = _positive(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}: {text!r}")
        return value

    return check


def _push_rate(text: str) -> int:
    value = _positive(text)
    if not limits.MIN_PUSH_BYTES_PER_S <= value <= limits.PUSH_BYTES_PER_S:
        raise argparse.ArgumentTypeError(
            f"must be {limits.MIN_PUSH_BYTES_PER_S} to {limits.PUSH_BYTES_PER_S} bytes per second: {text!r}")
    return value


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_when, default=None, help="ISO 8601 or an age like 7d")
    p.add_argument("--until", type=_when, default=None)
    p.add_argument("--topic", action="append", default=[])
    p.add_argument("--limit", type=_positive, default=10)


# Later modules (network, messages, MCP) register their commands here.
_EXTRA_PARSERS: list[Callable[[Any], None]] = []


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def _home(args: argparse.Namespace) -> Path:
    return args.home if args.home is not None else default_home()


def _open(args: argparse.Namespace) -> Agent:
    return Agent.open(_home(args))


def _read_text(text: str | None) -> str:
    if text is None:
        raise UsageError("missing TEXT (or use --batch FILE)")
    if text == "-":
        data = sys.stdin.buffer.read(limits.MAX_BODY + 1)
        if len(data) > limits.MAX_BODY:
            raise UsageError(f"memory text is over the limit of {limits.MAX_BODY} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("standard input is not UTF-8 text") from None
    return text


def _notify(agent: Agent, records: Sequence[Any]) -> None:
    """Tell a serving node of this home about new records (if one runs)."""
    from p2pmem.node.control import notify_new_records

    notify_new_records(agent.home, [r.id for r in records])


@command("init")
def cmd_init(args: argparse.Namespace) -> int:
    identity, created = init_home(_home(args), name=args.name, skills=args.skill,
                                  new_store=args.new_store)
    if args.json:
        print_json({"id": identity.agent_id, "created": created})
    else:
        print(identity.agent_id)
        if not created:
            print(f"(existing home {_home(args)}; nothing changed)", file=sys.stderr)
    return 0


@command("id")
def cmd_id(args: argparse.Namespace) -> int:
    from p2pmem.storage.keyfile import load_identity

    identity = load_identity(_home(args))
    print_json({"id": identity.agent_id}) if args.json else print(identity.agent_id)
    return 0


@command("remember")
def cmd_remember(args: argparse.Namespace) -> int:
    session = args.session if args.session is not None else os.environ.get("P2PMEM_SESSION", "")
    with _open(args) as agent:
        if args.batch is not None:
            if args.text is not None:
                raise UsageError("give TEXT or --batch FILE, not both")
            return _remember_batch(agent, args, session)
        record = agent.remember(
            _read_text(args.text), topics=args.topic, session=session, at=args.at,
            visibility=args.visibility,
        )
        _notify(agent, [record])
    print_json(ack_json(record)) if args.json else print(record.id.hex())
    return 0


def _open_input(name: str) -> TextIO:
    # surrogateescape: a line that is not UTF-8 is reported by _lines, and the
    # lines after it are still read (strict decoding fails a whole buffer)
    if name == "-":
        sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")  # type: ignore[union-attr]
        return sys.stdin
    try:
        return open(name, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115 - closed by caller
    except OSError as exc:
        raise P2pmemError(f"cannot read {name}: {exc.strerror}") from None


def _lines(stream: TextIO, max_len: int) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, line, error) for each line, tolerating bad encoding."""
    number = 0
    while True:
        number += 1
        try:
            line = stream.readline(max_len + 1)
        except UnicodeDecodeError:
            yield number, None, "not UTF-8 text"
            return
        if not line:
            return
        if len(line) > max_len and not line.endswith("\n"):
            # skip the rest of an overlong line
            while True:
                rest = stream.readline(max_len)
                if not rest or rest.endswith("\n"):
                    break
            yield number, None, f"line is longer than {max_len} characters"
            continue
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes, escaped as lone surrogates
            yield number, None, "not UTF-8 text"
            continue
        yield number, line, None


def _good_lines(
    stream: TextIO, max_len: int, rejected: list[tuple[int, str]]
) -> Iterator[tuple[int, str]]:
    """(line number, line) of each non-blank line; unreadable lines go to
    ``rejected`` with their number and reason."""
    for number, line, error in _lines(stream, max_len):
        if error is not None:
            rejected.append((number, error))
        elif line is not None and line.strip():
            yield number, line


def _progress(total_hint: str, enabled: bool) -> Any:
    """A rich progress bar on a terminal, nothing otherwise."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(total_hint), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=None, transient=True,
    )
    return progress


def _remember_batch(agent: Agent, args: argparse.Namespace, default_session: str) -> int:
    stream = _open_input(args.batch)
    records = []
    rejected: list[tuple[int, str]] = []
    progress = _progress("signing", sys.stderr.isatty())
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task("signing", total=None)
    try:
        for number, line in _good_lines(stream, limits.MAX_BATCH_LINE, rejected):
            try:
                records.append(_batch_record(agent, line, default_session))
            except (UsageError, RecordError, ValueError) as exc:
                rejected.append((number, str(exc)))
            if progress is not None and number % 100 == 0:
                progress.update(task, completed=len(records))
    finally:
        if progress is not None:
            progress.stop()
        if stream is not sys.stdin:
            stream.close()
    agent.commit(records)
    _notify(agent, records)
    for number, reason in rejected:
        print(f"p2pmem: line {number}: {reason}", file=sys.stderr)
    if args.json:
        print_json([ack_json(r) for r in records])
    else:
        print(f"stored {len(records)} memories" + (f", rejected {len(rejected)} lines" if rejected else ""))
    return 1 if rejected else 0


def _batch_record(agent: Agent, line: str, default_session: str) -> Any:
    obj = parse_json_object(line)
    unknown = set(obj) - {"text", "topics", "session", "at", "visibility"}
    if unknown:
        raise UsageError(f"unknown field(s): {', '.join(sorted(unknown))}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise UsageError("'text' must be a string")
    topics = obj.get("topics", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise UsageError("'topics' must be a list of strings")
    session = obj.get("session", default_session)
    if not isinstance(session, str):
        raise UsageError("'session' must be a string")
    visibility = obj.get("visibility", "public")
    if visibility not in VISIBILITIES:
        raise UsageError(f"'visibility' must be one of {', '.join(VISIBILITIES)}")
    at = obj.get("at")
    if at is not None:
        if not isinstance(at, str):
            raise UsageError("'at' must be an ISO 8601 string or an age like 2h")
        at = parse_when(at, wall_ms())
    return agent.make_memory(text, topics=topics, session=session, at=at, visibility=visibility)


@command("update")
def cmd_update(args: argparse.Namespace) -> int:
    return _sign_one(args, lambda a: a.update(args.id, _read_text(args.text), topics=args.topic))


@command("forget")
def cmd_forget(args: argparse.Namespace) -> int:
    return _sign_one(args, lambda a: a.forget(args.id))


@command("recall")
def cmd_recall(args: argparse.Namespace) -> int:
    check_query(args.query)
    with Agent.open(_home(args), model=args.model) as agent:
        found = agent.recall(
            args.query, since=args.since, until=args.until, topics=args.topic,
            authors=[agent.resolve_agent(a) for a in args.author], session=args.session,
            limit=min(args.limit, limits.MAX_RECALL_LIMIT), now_ms=args.now,
        )
        names = agent.agent_names() if not args.json else {}
    items = []
    for m in found:
        extra: dict[str, Any] = {"conflicts": [c.hex() for c in m.conflicts]}
        if args.explain:
            extra["explain"] = m.ranked.explain() if m.ranked is not None else {"order": "newest first"}
        items.append(memory_json(m.record, **extra))

    def lines() -> Iterable[str]:
        for i, m in enumerate(found, 1):
            line = memory_lines(i, m.record, conflicts=len(m.conflicts), names=names)
            if args.explain:
                line += "\n     " + explain_line(m.ranked)
            yield line

    empty = "no memories found"
    if analyse_query(args.query)[1]:
        empty += " (the query has only common words, searched as they are)"
    return _show_list(args, items, empty, lines())


@command("reindex")
def cmd_reindex(args: argparse.Namespace) -> int:
    with Agent.open(_home(args), model=args.model) as agent:
        total = agent.store.count_current()
        progress = _progress("indexing", sys.stderr.isatty())
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task("indexing", total=total * (2 if agent.store.search.model_path else 1))
        state = {"base": 0, "last": 0}

        def advance(done: int, _total: int) -> None:
            # the lexical pass and the embedding pass each count up to `total`
            if done < state["last"]:
                state["base"] += state["last"]
            state["last"] = done
            if progress is not None:
                progress.update(task, completed=state["base"] + done)

        try:
            agent.store.search.rebuild(advance)
        finally:
            if progress is not None:
                progress.stop()
        semantic = agent.store.search.semantic
    if args.json:
        print_json({"memories": total, "model": semantic.embedder.fingerprint.label() if semantic else None})
    else:
        model = f", embedded with {semantic.embedder.fingerprint.label()}" if semantic else ""
        print(f"reindexed {total} memories{model}")
    return 0


@command("agents")
def cmd_agents(args: argparse.Namespace) -> int:
    with _open(args) as agent:
        rows = agent.directory(args.skill)
    return _show_list(args, rows, "no agents found", (
        f"{row['id']}  {row['name'] or '(no name)'}{' (you)' if row['self'] else ''}  "
        f"skills: {', '.join(row['skills']) or '-'}  memories: {row['memories']}"  # type: ignore[arg-type]
        for row in rows
    ))


@command("profile")
def cmd_profile(args: argparse.Namespace) -> int:
    with _open(args) as agent:
        if any(v is not None for v in (args.name, args.description, args.skill, args.address)):
            record = agent.set_profile(
                name=args.name, description=args.description, skills=args.skill, addresses=args.address
            )
            _notify(agent, [record])
        record = agent.store.profiles()[agent.key]
    body = record.body
    assert isinstance(body, dict)
    out = {
        "id": agent_id(record.author), "name": body["name"], "description": body["description"],
        "skills": list(body["skills"]), "addresses": list(body["addresses"]),
    }
    if args.json:
        print_json(out)
    else:
        for key, value in out.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def _show_list(args: argparse.Namespace, items: list[Any], empty: str, lines: Iterable[str]) -> int:
    """A listing command's output: the JSON list, or the human lines, or a
    one-line notice on standard error when there is nothing to list."""
    if args.json:
        print_json(items)
    elif not items:
        print(empty, file=sys.stderr)
    else:
        for line in lines:
            print(line)
    return 0


def _sign_one(args: argparse.Namespace, make: Callable[[Agent], Any], done: str = "") -> int:
    """Sign and store one record, tell a serving node, print the ack. With
    ``done``, ``make`` returns (record, what it was about) and human output
    adds "<done> <what>" on standard error (an agent shown with its name)."""
    with _open(args) as agent:
        made = make(agent)
        record, about = made if done else (made, "")
        _notify(agent, [record])
    print_json(ack_json(record)) if args.json else print(record.id.hex())
    if done and not args.json:
        print(f"{done} {about}", file=sys.stderr)
    return 0


def _follow(args: argparse.Namespace, active: bool) -> int:
    """Follow or unfollow; a no-op (already so) says so and writes nothing."""
    with _open(args) as agent:
        target = agent.resolve_agent(args.agent)
        label = agent.agent_label(target)
        record = agent.set_follow(target, active)
        if record is not None:
            _notify(agent, [record])
        me = agent.identity.agent_id
    if record is None:
        if args.json:
            print_json({"id": None, "author": me, "ts": None, "target": agent_id(target), "changed": False})
        state = "already following" if active else "not following"
        print(f"p2pmem: {state} {label}; nothing changed", file=sys.stderr)
        return 0
    if args.json:
        print_json({**ack_json(record), "target": agent_id(target), "changed": True})
    else:
        print(record.id.hex())
        print(f"{'following' if active else 'stopped following'} {label}", file=sys.stderr)
    return 0


@command("follow")
def cmd_follow(args: argparse.Namespace) -> int:
    return _follow(args, True)


@command("unfollow")
def cmd_unfollow(args: argparse.Namespace) -> int:
    return _follow(args, False)


@command("endorse")
def cmd_endorse(args: argparse.Namespace) -> int:
    def make(agent: Agent) -> Any:
        text = args.target.strip()
        if text.lower().startswith("pm1"):
            key = agent.resolve_agent(text)
            return agent.endorse(key, "agent"), agent.agent_label(key)
        if not re.fullmatch(r"[0-9a-fA-F]{8,64}", text):
            raise UsageError(f"not an agent id (pm1...) nor a memory id (8 to 64 hex digits): {text[:80]!r}")
        target = agent.store.resolve_prefix(text)  # unknown: StoreError, exit 1 as for every id
        return agent.endorse(target, "memory"), f"memory {target.hex()[:12]}"

    return _sign_one(args, make, "endorsed")


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    with _open(args) as agent:
        out = sys.stdout if args.file == "-" else None
        try:
            stream = out or open(args.file, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise P2pmemError(f"cannot write {args.file}: {exc.strerror}") from None
        count = 0
        try:
            for raw in agent.store.raw_records():
                record = load_stored(raw)
                if args.shareable and record.kind == "memory" and record.visibility != "public":
                    continue
                stream.write(export_line(record) + "\n")
                count += 1
        finally:
            if stream is not sys.stdout:
                stream.close()
    if args.file != "-":
        if args.json:
            print_json({"exported": count, "file": args.file})
        else:
            print(f"exported {count} records to {args.file}", file=sys.stderr)
    return 0


@command("import")
def cmd_import(args: argparse.Namespace) -> int:
    stream = _open_input(args.file)
    raws: list[bytes] = []
    numbers: list[int] = []  # the line each raw came from
    rejected: list[tuple[int, str]] = []
    try:
        for number, line in _good_lines(stream, limits.MAX_IMPORT_LINE, rejected):
            try:
                raws.append(_import_line(line))
                numbers.append(number)
            except UsageError as exc:
                rejected.append((number, str(exc)))
    finally:
        if stream is not sys.stdin:
            stream.close()
    with _open(args) as agent:
        result = agent.import_raw(raws)
        for position, reason in result.rejected:
            rejected.append((numbers[position], reason))
        _notify(agent, result.added)
    rejected.sort()
    for number, reason in rejected:
        print(f"p2pmem: line {number}: {reason}", file=sys.stderr)
    summary = {
        "imported": len(result.added), "duplicates": result.duplicates,
        "retracted": result.retracted,
        "rejected": [{"line": n, "reason": r} for n, r in rejected],
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"imported {len(result.added)} records, {result.duplicates} already here, "
            f"{len(rejected)} rejected"
        )
    return 1 if rejected else 0


def _config(args: argparse.Namespace) -> Any:
    """The effective serve configuration of ``args`` (p2pmem/node/config.py)."""
    from p2pmem.node import config

    settings = config.settings_from_parser(_with(serve_options))
    given = {s.dest: getattr(args, s.dest) for s in settings if hasattr(args, s.dest)}
    path, explicit = config.config_path(_home(args), getattr(args, "config", None), os.environ)
    return config.resolve(settings, flags=given, environ=os.environ, file=path, explicit=explicit)


def _with(add: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parser = _Parser(add_help=False)
    add(parser)
    return parser


@command("config")
def cmd_config(args: argparse.Namespace) -> int:
    from p2pmem.node.config import render

    cfg = _config(args)
    if args.json:
        print_json(cfg.to_json())
    else:
        print(render(cfg))
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from p2pmem.node.shell import run_serve

    args = _config(args).namespace(args)
    try:
        with _open(args) as agent:
            return run_serve(agent, listen=args.listen, peers=args.peer,
                             replicate_all=args.replicate == "all", json_out=args.json,
                             max_peers=args.max_peers, push_rate=args.push_rate, metrics=args.metrics,
                             log_level=args.log_level, log_format=args.log_format)
    except P2pmemError as exc:
        if args.log_format != "json":
            raise
        # with JSON logs every line of standard error is an object, this one too
        import logging

        from p2pmem.logevents import LogEvent, log_event
        from p2pmem.node.logs import setup

        setup(args.log_level, "json")
        log_event(logging.getLogger("p2pmem.cli"), logging.ERROR, LogEvent.SERVE_FAILED, str(exc), error=str(exc))
        return 2 if isinstance(exc, UsageError) else 1


@command("peers")
def cmd_peers(args: argparse.Namespace) -> int:
    from p2pmem.node.control import request

    peers = request(_home(args), "peers")["peers"]
    return _show_list(args, peers, "no peers connected", (
        f"{peer['id']}  {peer['address'] or '-'}  ({peer['direction']})" for peer in peers
    ))


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    from p2pmem.node.control import request

    status = request(_home(args), "status")["status"]
    if args.json:
        print_json(status)
    else:
        print(f"id:         {status['id']}")
        print(f"addresses:  {', '.join(status['addresses'])}")
        print(f"peers:      {status['peers']} ({status['connections']} connections)")
        print(f"records:    {status['records']}")
        print(f"replicate:  {status['replicate']}")
        stats = status["stats"]
        print(f"traffic:    {stats['records_in']} records in, {stats['records_out']} out, "
              f"{stats['bytes_in']} bytes in, {stats['bytes_out']} out")
        queries = status.get("queries", {})
        if queries:
            print(f"queries:    {queries.get('started', 0)} asked, {len(queries.get('in_flight', []))} in flight, "
                  f"{queries.get('received', 0)} received; answers dropped: "
                  f"{queries.get('hits_forged', 0)} forged, {queries.get('records_invalid', 0)} invalid records, "
                  f"{queries.get('records_over_budget', 0)} over budget")
    return 0


@command("ask")
def cmd_ask(args: argparse.Namespace) -> int:
    from p2pmem.model.record import decode_record
    from p2pmem.node.control import request

    if args.ttl > limits.MAX_TTL:
        raise UsageError(f"--ttl is at most {limits.MAX_TTL}")
    if args.json_lines and args.json:
        raise UsageError("--json and --json-lines exclude each other")
    check_query(args.query)
    target = _agent_arg(args, args.agent) if args.agent is not None else None
    fields: dict[str, Any] = {
        "text": args.query, "ttl": args.ttl, "query_timeout": args.timeout, "since": args.since,
        "until": args.until, "topics": args.topic, "limit": args.limit,
        "agent": agent_id(target) if target else None,
    }
    if args.json_lines:
        return _ask_json_lines(_home(args), args.timeout, fields)
    reply = request(_home(args), "ask", timeout=args.timeout + limits.ASK_RANK_GRACE_S, **fields)
    results = reply["results"]
    if args.json:
        for item in results:
            item.pop("record", None)
        print_json(results)
    elif not results:
        print("no answers", file=sys.stderr)
    else:
        names = _names(args)
        for i, item in enumerate(results, 1):
            record = decode_record(base64.b64decode(item["record"]), verify=False)
            print(memory_lines(i, record, hops=item["hops"], via=parse_agent_id(item["via"]), names=names))
    return 0


def _ask_json_lines(home: Path, timeout: float, fields: dict[str, Any]) -> int:
    """Each verified answer as one JSON line as it arrives (the memory
    object of `ask --json`, unranked), then one summary line:
    {"summary": {"ranked": [ids, best first], "hits", "reached", "complete", "elapsed_s"}}."""
    from p2pmem.node.control import request

    streamed = 0

    def line(hit: dict[str, Any]) -> None:
        nonlocal streamed
        streamed += 1
        print(json.dumps(hit, ensure_ascii=False), flush=True)

    reply = request(home, "ask", timeout=timeout + limits.ASK_RANK_GRACE_S, on_line=line, stream=True, **fields)
    summary = {
        "ranked": [item["id"] for item in reply["results"]], "hits": streamed,
        **{key: reply.get(key) for key in ("reached", "complete", "elapsed_s")},
    }
    print(json.dumps({"summary": summary}), flush=True)
    return 0


def _agent_arg(args: argparse.Namespace, text: str) -> bytes:
    """An agent id argument: a full id as is, a prefix resolved in the home's store."""
    if len(text.strip()) >= 61 or not re.fullmatch(r"pm1[a-z2-7]{5,}", text.strip().lower()):
        return parse_agent_id(text)  # a full id, or a malformed one: a usage error before the home is read
    with _open(args) as agent:
        return agent.resolve_agent(text)


def _names(args: argparse.Namespace) -> dict[bytes, str]:
    """Agents' display names for human output; none when the store cannot be read."""
    try:
        with _open(args) as agent:
            return agent.agent_names()
    except P2pmemError:
        return {}


@command("send")
def cmd_send(args: argparse.Namespace) -> int:
    def make(agent: Agent) -> Any:
        key = agent.resolve_agent(args.agent)
        return agent.send_message(key, _read_text(args.text)), agent.agent_label(key)

    return _sign_one(args, make, "sent to")


@command("inbox")
def cmd_inbox(args: argparse.Namespace) -> int:
    from p2pmem.agent.maildir import write_maildir

    with _open(args) as agent:
        opened = agent.opened_messages()
        names = {
            key: str(rec.body.get("name", "")) for key, rec in agent.store.profiles().items()
            if isinstance(rec.body, dict)
        }
    if args.maildir is not None:
        try:
            written = write_maildir(args.maildir, opened, names=names)  # type: ignore[arg-type]
        except OSError as exc:  # e.g. a read-only or full disk, inside an existing Maildir
            raise P2pmemError(f"cannot write the Maildir {args.maildir}: {exc.strerror or exc}") from None
        print(f"wrote {written} new mails to {args.maildir}", file=sys.stderr)
    messages = [m.to_json() for m in opened]  # type: ignore[attr-defined]
    return _show_list(args, messages, "no messages", (
        f"{m['ts'][:16].replace('T', ' ')}  from {names.get(parse_agent_id(m['from'])) or m['from'][:14]}: "
        f"{m['text']}"
        for m in messages
    ))


@command("mcp")
def cmd_mcp(args: argparse.Namespace) -> int:
    from p2pmem.interfaces.mcp_server import run_mcp

    # the log settings of the configuration (p2pmem.toml, P2PMEM_LOG_*);
    # the MCP server logs warnings and errors unless told otherwise
    cfg = _config(args)
    level = cfg["log_level"] if cfg.source("log_level") != "default" else "warning"
    return run_mcp(_home(args), log_level=level, log_format=cfg["log_format"])


def _sha256(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()


def _import_line(line: str) -> bytes:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("record"), str):
        raise UsageError("each line must be an object with a base64 'record'")
    try:
        raw = base64.b64decode(obj["record"], validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("'record' is not valid base64") from None
    claimed = obj.get("id")
    if claimed is not None and not isinstance(claimed, str):
        raise UsageError("'id' must be a hex string")
    if claimed is not None and claimed.lower() != _sha256(raw):
        raise UsageError("the id does not match the record's bytes")
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        usage = " ".join(parser.format_usage().split())
        print(f"{usage} (a COMMAND is needed; see `p2pmem --help`)", file=sys.stderr)
        return 2
    os.umask(0o077)  # every file of a home is the agent's alone (docs/operations.md)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"p2pmem: {exc}", file=sys.stderr)
        return 2
    except P2pmemError as exc:
        print(f"p2pmem: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("p2pmem: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except (OSError, sqlite3.Error) as exc:  # the disk refused: one line, never a traceback
        where = _home(args) / "store.db" if isinstance(exc, sqlite3.Error) else _home(args)
        print(f"p2pmem: {explain(exc, where)}", file=sys.stderr)
        return 1


def _register_maintenance() -> None:
    """``p2pmem doctor``, ``backup`` and ``restore`` (p2pmem/interfaces/maintenance_cli.py)."""
    from p2pmem.interfaces import maintenance_cli as m

    _EXTRA_PARSERS.append(lambda sub: m.add_parsers(sub, _common))
    COMMANDS["doctor"] = lambda args: m.cmd_doctor(args, _home(args))
    COMMANDS["backup"] = lambda args: m.cmd_backup(args, _home(args))
    COMMANDS["restore"] = lambda args: m.cmd_restore(args, _home(args))


_register_maintenance()


def _register_service() -> None:
    """``p2pmem service install`` (p2pmem/interfaces/service.py)."""
    from p2pmem.interfaces import service

    def check_config(path: Path, explicit: bool) -> object:
        from p2pmem.node import config

        settings = config.settings_from_parser(_with(serve_options))
        return config.resolve(settings, flags={}, environ={}, file=path, explicit=explicit)

    _EXTRA_PARSERS.append(lambda sub: service.add_parser(sub, _common))
    COMMANDS["service"] = lambda args: service.cmd_service(args, _home(args), check_config)


_register_service()


def _register_graph() -> None:
    """``p2pmem graph`` (p2pmem/graph/cli.py)."""
    from p2pmem.graph.cli import add_parser, cmd_graph

    _EXTRA_PARSERS.append(add_parser)
    COMMANDS["graph"] = cmd_graph


_register_graph()


if __name__ == "__main__":
    sys.exit(main())
