"""The smaller contract fixes of issue #16, through the real CLI: in process
(``main(argv)`` with capsys, the same code the ``p2pmem`` script runs) where
a subprocess adds nothing, and as a subprocess where the process matters
(no command at all). The MCP side goes through the official SDK client.
docs/deprecations.md lists each change with its old and new behaviour.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.agent.home import Agent, init_home
from p2pmem.errors import UsageError
from p2pmem.interfaces.cli import build_parser, main
from p2pmem.model.identity import agent_id
from p2pmem.storage.store import Store
from tests.test_cli import p2pmem

NO_JSON = {"mcp"}  # prints no data: the MCP protocol only


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("P2PMEM_HOME", "P2PMEM_SESSION", "P2PMEM_MODEL"):
        monkeypatch.delenv(name, raising=False)


def cli(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in process: (exit status, stdout, stderr)."""
    try:
        code = main(["--home", str(home), *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path, str]:
    """alice's home, holding bob's profile (imported); and bob's id."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    init_home(alice, name="alice")
    identity, _ = init_home(bob, name="bob")
    with Agent.open(bob) as b, Agent.open(alice) as a:
        a.import_raw(list(b.store.raw_records()))
    return alice, bob, identity.agent_id


def records(home: Path) -> int:
    with Store(home / "store.db") as store:
        return store.count()


# --- no command ------------------------------------------------------------------
def test_no_command_prints_one_usage_line_and_exits_2(tmp_path: Path) -> None:
    proc = p2pmem(home=None, expect=2)
    line = one_line(proc.stderr)
    assert line.startswith("usage: p2pmem") and "COMMAND" in line
    assert proc.stdout == ""


# --- --json ------------------------------------------------------------------------
def _subcommands(parser: object) -> dict[str, object]:
    for action in parser._actions:  # type: ignore[attr-defined]
        if action.choices and isinstance(action.choices, dict):
            return dict(action.choices)
    return {}


def test_every_command_that_prints_data_takes_json() -> None:
    seen = []
    for name, sub in _subcommands(build_parser()).items():
        nested = _subcommands(sub)
        for full, parser in ({f"{name} {k}": v for k, v in nested.items()} if nested else {name: sub}).items():
            flags = {flag for action in parser._actions for flag in action.option_strings}  # type: ignore[attr-defined]
            if full in NO_JSON:
                continue
            seen.append(full)
            assert "--json" in flags, f"`p2pmem {full}` does not take --json"
    assert {"export", "recall", "follow", "graph export"} <= set(seen)


def test_export_json_summarises_a_file_and_leaves_json_lines_alone(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str], tmp_path: Path
) -> None:
    alice, _, _ = homes
    code, out, _ = cli(capsys, alice, "export", "--json")
    lines = out.splitlines()
    assert code == 0 and len(lines) == records(alice)
    assert all({"id", "kind", "record"} <= set(json.loads(line)) for line in lines)
    target = tmp_path / "out.jsonl"
    code, out, err = cli(capsys, alice, "export", str(target), "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {"exported": len(lines), "file": str(target)}
    assert target.read_text().splitlines() == lines


# --- a query with no searchable words ------------------------------------------------
def test_a_query_without_words_is_refused_not_a_listing(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str]
) -> None:
    alice, _, _ = homes
    cli(capsys, alice, "remember", "alpha beta")
    for query in ("?", "... !!", " - ", "¿?"):
        code, out, err = cli(capsys, alice, "recall", query, "--json")
        assert (code, out) == (2, "")
        assert "no searchable words" in one_line(err)
    # ask refuses the same way, before it looks for a serving node
    code, _, err = cli(capsys, alice, "ask", "?!")
    assert code == 2 and "no searchable words" in one_line(err)
    # an empty query still lists the newest; common words alone are still searched
    code, out, _ = cli(capsys, alice, "recall", "--json")
    assert code == 0 and [m["text"] for m in json.loads(out)] == ["alpha beta"]
    code, out, err = cli(capsys, alice, "recall", "the of")
    assert (code, out) == (0, "") and "only common words" in one_line(err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=" ?!.,;:-_()[]{}'\"/\\|*&^%$#@~`+=<>¿¡…—", min_size=1, max_size=30))
def test_punctuation_alone_never_lists_memories(tmp_path_factory: pytest.TempPathFactory, query: str) -> None:
    home = _shared_home(tmp_path_factory)
    with Agent.open(home) as agent:
        if not query.strip():
            assert len(agent.recall(query)) == 1  # blank: the newest, as documented
            return
        with pytest.raises(UsageError, match="no searchable words"):
            agent.recall(query)


_SHARED: dict[str, Path] = {}


def _shared_home(factory: pytest.TempPathFactory) -> Path:
    if "home" not in _SHARED:
        home = factory.mktemp("words") / "home"
        init_home(home)
        with Agent.open(home) as agent:
            agent.remember("one memory")
        _SHARED["home"] = home
    return _SHARED["home"]


def test_mcp_recall_and_ask_refuse_a_query_without_words(homes: tuple[Path, Path, str]) -> None:
    from tests.test_mcp import call_error, mcp_session, run

    alice, _, _ = homes

    async def scenario() -> None:
        async with mcp_session(alice) as session:
            assert "no searchable words" in await call_error(session, "recall", query="???")
            assert "no searchable words" in await call_error(session, "ask_network", query="!")

    run(scenario)


# --- unknown ids: exit 1 everywhere; malformed ones are usage errors -------------------
def test_an_unknown_id_is_exit_1_with_one_line_in_every_command(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str]
) -> None:
    alice, _, _ = homes
    unknown_memory = "deadbeefdeadbeef"
    unknown_agent = "pm1aaaaaaaaa"  # well formed, names no agent known here
    for argv in (
        ("update", unknown_memory, "new text"),
        ("forget", unknown_memory),
        ("endorse", unknown_memory),
        ("endorse", unknown_agent),
        ("follow", unknown_agent),
        ("unfollow", unknown_agent),
        ("send", unknown_agent, "hello"),
        ("recall", "x", "--author", unknown_agent),
        ("ask", "x", "--agent", unknown_agent),
        ("graph", "ask", "x", "--agent", unknown_agent),
    ):
        before = records(alice)
        code, out, err = cli(capsys, alice, *argv)
        assert (code, out) == (1, ""), argv
        assert one_line(err).startswith("p2pmem: no "), (argv, err)
        assert records(alice) == before
    for argv in (("update", "xyz", "t"), ("forget", "12"), ("endorse", "zzz"), ("follow", "pm1a"),
                 ("send", "bob", "hi"), ("recall", "x", "--author", "pm1-1")):
        code, _, err = cli(capsys, alice, *argv)
        assert code == 2, argv
        one_line(err)


# --- agent ids by unique prefix, shown with the name -------------------------------------
def test_agent_ids_work_by_unique_prefix_and_show_the_name(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str]
) -> None:
    alice, bob, bob_id = homes
    prefix = bob_id[:10]
    code, out, err = cli(capsys, alice, "follow", prefix, "--json")
    ack = json.loads(out)
    assert code == 0 and ack["target"] == bob_id and ack["changed"] is True
    code, out, err = cli(capsys, alice, "endorse", prefix)
    assert code == 0 and one_line(err) == f"endorsed bob ({bob_id})"
    code, out, err = cli(capsys, alice, "send", prefix.upper(), "hi bob")
    assert code == 0 and one_line(err) == f"sent to bob ({bob_id})"
    with Agent.open(bob) as b, Agent.open(alice) as a:
        b.import_raw(list(a.store.raw_records()))
        b.remember("bob's own note on the deploy")
        a.import_raw(list(b.store.raw_records()))
    code, out, _ = cli(capsys, alice, "recall", "deploy", "--author", prefix, "--json")
    assert [m["author"] for m in json.loads(out)] == [bob_id]
    code, out, _ = cli(capsys, alice, "recall", "deploy", "--author", prefix)
    assert f"by bob ({bob_id[:14]})" in out


def test_an_ambiguous_agent_prefix_is_refused(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str]
) -> None:
    alice, _, _ = homes
    twins = [bytes(4) + os.urandom(28), bytes(4) + os.urandom(28)]  # ids share "pm1aaaaaa"
    with Agent.open(alice) as agent:
        for key in twins:
            agent.follow(key)
    shared = agent_id(twins[0])[:9]
    assert agent_id(twins[1]).startswith(shared)
    before = records(alice)
    code, _, err = cli(capsys, alice, "unfollow", shared)
    assert code == 1 and "ambiguous" in one_line(err) and records(alice) == before
    code, out, _ = cli(capsys, alice, "unfollow", agent_id(twins[1])[:20], "--json")
    assert code == 0 and json.loads(out)["target"] == agent_id(twins[1])


# --- a no-op follow or unfollow ---------------------------------------------------------
def test_a_no_op_follow_or_unfollow_says_so_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str]
) -> None:
    alice, _, bob_id = homes
    code, out, err = cli(capsys, alice, "unfollow", bob_id)
    assert (code, out) == (0, "") and one_line(err) == f"p2pmem: not following bob ({bob_id}); nothing changed"
    code, out, err = cli(capsys, alice, "follow", bob_id)
    assert code == 0 and len(out.strip()) == 64 and one_line(err) == f"following bob ({bob_id})"
    before = records(alice)
    code, out, err = cli(capsys, alice, "follow", bob_id, "--json")
    assert code == 0 and "already following" in one_line(err)
    assert json.loads(out) == {"id": None, "author": json.loads(out)["author"], "ts": None,
                               "target": bob_id, "changed": False}
    assert records(alice) == before
    assert cli(capsys, alice, "unfollow", bob_id)[0] == 0
    assert records(alice) == before + 1
    with Agent.open(alice) as agent:
        assert not agent.follows(agent.resolve_agent(bob_id))


# --- remember --batch with an over-long line ---------------------------------------------
def test_batch_rejects_an_over_long_line_by_number_and_imports_the_rest(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str], tmp_path: Path
) -> None:
    alice, _, _ = homes
    long_line = json.dumps({"text": "x" * (limits.MAX_BATCH_LINE + 10)})
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join([json.dumps({"text": "before the long line"}), long_line,
                                json.dumps({"text": "after the long line"})]) + "\n")
    code, out, err = cli(capsys, alice, "remember", "--batch", str(batch), "--json")
    assert code == 1
    assert one_line(err) == f"p2pmem: line 2: line is longer than {limits.MAX_BATCH_LINE} characters"
    assert len(json.loads(out)) == 2
    code, out, _ = cli(capsys, alice, "recall", "long line", "--json")
    assert sorted(m["text"] for m in json.loads(out)) == ["after the long line", "before the long line"]


# --- --since 1y and 2w -------------------------------------------------------------------------
def test_since_takes_weeks_and_years(capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str]) -> None:
    alice, _, _ = homes
    for text, at in (("ten days ago", "10d"), ("two hundred days ago", "200d"), ("two years ago", "730d")):
        assert cli(capsys, alice, "remember", text, "--at", at)[0] == 0
    found = {}
    for since in ("2w", "1y", "3y", "1 y"):
        code, out, _ = cli(capsys, alice, "recall", "ago", "--since", since, "--json")
        assert code == 0
        found[since] = sorted(m["text"] for m in json.loads(out))
    assert found["2w"] == ["ten days ago"]
    assert found["1y"] == found["1 y"] == ["ten days ago", "two hundred days ago"]
    assert len(found["3y"]) == 3
    code, _, err = cli(capsys, alice, "recall", "ago", "--since", "1yr")
    assert code == 2 and "not a time" in one_line(err)


# --- a bad --model path -------------------------------------------------------------------
def test_a_bad_model_path_is_one_line_at_once(
    capsys: pytest.CaptureFixture[str], homes: tuple[Path, Path, str], tmp_path: Path
) -> None:
    alice, _, _ = homes
    (tmp_path / "empty-model").mkdir()
    # the query matches nothing, so recall never reaches its semantic stage:
    # the model is checked anyway, before anything is searched
    for model, reason in ((tmp_path / "missing", "model folder not found"),
                          (tmp_path / "empty-model", "no tokenizer.json")):
        code, out, err = cli(capsys, alice, "recall", "nothing matches this", "--model", str(model))
        assert (code, out) == (2, "") and reason in one_line(err)
