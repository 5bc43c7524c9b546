"""The ``p2pmem`` command, run as a real subprocess (``python -m p2pmem``)
against homes in a temporary directory, checked against CONTRACT.md: output
shapes, exit statuses, one-line errors, never a traceback.

Each launch costs a fraction of a second, so tests share a home per module
where they can and check several things per launch.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from p2pmem.model.identity import parse_agent_id
from p2pmem.model.record import decode_record
from p2pmem.storage.store import Store
from tests.strategies import identity

MEMORY_KEYS = {"id", "author", "text", "topics", "session", "ts", "at", "visibility"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2PMEM_HOME", "P2PMEM_SESSION")}
    env.update(extra)
    return env


def p2pmem(*args: str, home: Path | None, input: str | None = None, env: dict | None = None,
           expect: int | None = 0) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "p2pmem"]
    if home is not None:
        argv += ["--home", str(home)]
    proc = subprocess.run(
        argv + list(args), input=input, capture_output=True, text=True,
        env=env or _env(), timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    if expect is not None:
        assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def as_json(proc: subprocess.CompletedProcess):
    return json.loads(proc.stdout)


def iso(text: str) -> datetime:
    assert text.endswith("Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "home"
    p2pmem("init", "--name", "tester", "--skill", "python", "--skill", "ops", home=path)
    return path


# --- init / id ---------------------------------------------------------------------------
def test_init_prints_the_id_and_a_second_init_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    first = as_json(p2pmem("init", "--json", home=home))
    agent = first["id"]
    assert parse_agent_id(agent)
    key_file = (home / "identity.key").read_bytes()
    with Store(home / "store.db") as store:
        records = store.count()

    again = p2pmem("init", "--name", "other", home=home)
    assert again.stdout.strip() == agent
    assert (home / "identity.key").read_bytes() == key_file
    with Store(home / "store.db") as store:
        assert store.count() == records  # no new profile record
    assert p2pmem("id", home=home).stdout.strip() == agent
    assert as_json(p2pmem("id", "--json", home=home)) == {"id": agent}
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600


# --- remember / recall -----------------------------------------------------------------------
def test_remember_forms_and_the_json_memory_shape(home: Path) -> None:
    agent = p2pmem("id", home=home).stdout.strip()
    ack = as_json(p2pmem("remember", "the deploy key rotates monthly", "--topic", "ops", "--topic",
                         "security", "--session", "s-explicit", "--json", home=home))
    assert set(ack) == {"id", "author", "ts"}
    assert ack["author"] == agent and len(ack["id"]) == 64
    iso(ack["ts"])

    stdin_id = p2pmem("remember", "-", "--topic", "stdin", home=home,
                      input="a memory read from standard input\nwith two lines\n").stdout.strip()
    env_id = p2pmem("remember", "remembered with the session from the environment", home=home,
                    env=_env(P2PMEM_SESSION="s-env")).stdout.strip()
    iso_id = p2pmem("remember", "the office moved in spring", "--at", "2024-03-01T10:00:00Z",
                    "--visibility", "private", home=home).stdout.strip()
    age_id = p2pmem("remember", "lunch was two hours ago", "--at", "2h", "--visibility", "ask",
                    home=home).stdout.strip()

    found = {m["id"]: m for m in as_json(p2pmem("recall", "--json", "--limit", "100", home=home))}
    for memory in found.values():
        assert set(memory) >= MEMORY_KEYS
        assert memory["author"] == agent
    explicit = found[ack["id"]]
    assert explicit["text"] == "the deploy key rotates monthly"
    assert explicit["topics"] == ["ops", "security"]
    assert explicit["session"] == "s-explicit"
    assert explicit["visibility"] == "public"
    assert explicit["ts"] == ack["ts"] == explicit["at"]  # at defaults to ts
    assert found[stdin_id]["text"] == "a memory read from standard input\nwith two lines\n"
    assert found[env_id]["session"] == "s-env"
    assert found[iso_id]["at"] == "2024-03-01T10:00:00.000Z"
    assert found[iso_id]["visibility"] == "private"
    assert iso(found[iso_id]["ts"]) > iso(found[iso_id]["at"])
    hours = (iso(found[age_id]["ts"]) - iso(found[age_id]["at"])).total_seconds() / 3600
    assert 1.99 < hours < 2.01
    assert found[age_id]["visibility"] == "ask"

    # human output: one entry per memory, no JSON
    human = p2pmem("recall", "deploy", home=home).stdout
    assert "the deploy key rotates monthly" in human and not human.startswith("[")


def test_recall_filters(tmp_path: Path) -> None:
    home = tmp_path / "h"
    p2pmem("init", home=home)
    agent = p2pmem("id", home=home).stdout.strip()
    batch = "\n".join(json.dumps(m) for m in [
        {"text": "old kubernetes upgrade notes", "topics": ["k8s"], "session": "s1", "at": "2023-01-10"},
        {"text": "new kubernetes upgrade notes", "topics": ["k8s", "ops"], "session": "s2", "at": "2024-06-01"},
        {"text": "recent coffee machine fix", "topics": ["office"], "session": "s2", "at": "30m"},
    ])
    acks = as_json(p2pmem("remember", "--batch", "-", "--json", home=home, input=batch))
    old, new, recent = (a["id"] for a in acks)

    def recall(*args: str) -> list[str]:
        return [m["id"] for m in as_json(p2pmem("recall", *args, "--json", home=home))]

    # the two matches first; a memory of the same session may follow as context
    found = recall("kubernetes")
    assert set(found[:2]) == {old, new} and set(found[2:]) <= {recent}
    assert recall("", "--since", "2024-01-01", "--until", "2024-12-31") == [new]
    assert set(recall("", "--since", "2h")) == {recent}
    assert set(recall("", "--until", "2023-12-31T23:59:59")) == {old}
    assert set(recall("", "--topic", "ops", "--topic", "office")) == {new, recent}
    assert set(recall("", "--session", "s2")) == {new, recent}
    assert set(recall("", "--author", agent)) == {old, new, recent}
    assert recall("", "--author", identity(3).agent_id) == []
    assert recall("", "--limit", "1") == [recent]  # the newest
    assert recall("nothing like this anywhere") == []


def test_update_and_forget(home: Path) -> None:
    first = p2pmem("remember", "the staging database lives on host alpha", home=home).stdout.strip()
    updated = as_json(p2pmem("update", first[:12], "the staging database lives on host beta", "--json",
                             home=home))
    assert set(updated) == {"id", "author", "ts"}
    texts = [m["text"] for m in as_json(p2pmem("recall", "staging database", "--json", home=home))]
    assert texts == ["the staging database lives on host beta"]

    forgot = as_json(p2pmem("forget", first, "--json", home=home))
    assert set(forgot) == {"id", "author", "ts"}
    assert as_json(p2pmem("recall", "staging database", "--json", home=home)) == []
    again = p2pmem("update", first, "resurrect?", home=home, expect=None)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1


def test_agents_lists_the_directory(home: Path) -> None:
    agent = p2pmem("id", home=home).stdout.strip()
    rows = as_json(p2pmem("agents", "--json", home=home))
    me = next(r for r in rows if r["id"] == agent)
    assert me["name"] == "tester" and sorted(me["skills"]) == ["ops", "python"]
    assert {r["id"] for r in as_json(p2pmem("agents", "--skill", "python", "--json", home=home))} == {agent}
    assert as_json(p2pmem("agents", "--skill", "cooking", "--json", home=home)) == []


# --- export / import -------------------------------------------------------------------------
def test_export_import_between_homes_keeps_provenance(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    author = p2pmem("init", home=one).stdout.strip()
    p2pmem("init", home=two)
    kept = p2pmem("remember", "shared knowledge about the build cache", home=one).stdout.strip()
    gone = p2pmem("remember", "a mistaken note about the build cache", home=one).stdout.strip()
    p2pmem("forget", gone, home=one)
    export = tmp_path / "export.jsonl"
    p2pmem("export", str(export), home=one)
    lines = export.read_text().splitlines()
    assert lines and all({"id", "record"} <= set(json.loads(line)) for line in lines)

    summary = as_json(p2pmem("import", str(export), "--json", home=two))
    assert summary["imported"] == len(lines) and summary["rejected"] == []
    found = as_json(p2pmem("recall", "build cache", "--json", home=two))
    assert [(m["id"], m["author"]) for m in found] == [(kept, author)]
    again = p2pmem("import", str(export), home=two)  # idempotent
    assert "imported 0" in again.stdout


def test_import_reports_each_bad_line_and_imports_the_rest(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    p2pmem("init", home=source)
    p2pmem("init", home=target)
    for text in ("first good memory", "second good memory", "third good memory"):
        p2pmem("remember", text, home=source)
    export = p2pmem("export", home=source).stdout.splitlines()
    memories = [json.loads(line) for line in export if json.loads(line)["kind"] == "memory"]
    tampered = bytearray(base64.b64decode(memories[1]["record"]))
    tampered[tampered.index(b"second") + 1] ^= 0x01
    wrong_id = dict(memories[2], id="00" * 32)
    lines = [
        json.dumps(memories[0]),                                      # 1 ok
        '{"record": "AAAA", "id": tru',                               # 2 not JSON
        json.dumps({"record": "!!not base64!!"}),                     # 3 bad base64
        json.dumps({"record": base64.b64encode(bytes(tampered)).decode()}),  # 4 tampered
        json.dumps(wrong_id),                                         # 5 id mismatch
        "",                                                           # 6 blank: skipped
        json.dumps(memories[1]),                                      # 7 ok
        json.dumps({"record": base64.b64encode(b"\xd2\x84garbage").decode()}),  # 8 not a record
        "[1, 2, 3]",                                                  # 9 not an object
    ]
    data = "\n".join(lines).encode() + b'\n{"record": "\xff\xfe"}\n'   # 10 not UTF-8
    data += json.dumps(dict(memories[2])).encode() + b"\n"               # 11 ok
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(data)
    proc = p2pmem("import", str(bad), home=target, expect=1)
    errors = proc.stderr.strip().splitlines()
    assert [e.split(":")[1].strip() for e in errors] == [f"line {n}" for n in (2, 3, 4, 5, 8, 9, 10)]
    assert "JSON" in errors[0] and "base64" in errors[1] and "signature" in errors[2]
    assert "id" in errors[3] and "UTF-8" in errors[6]
    texts = {m["text"] for m in as_json(p2pmem("recall", "good memory", "--json", home=target))}
    assert texts == {"first good memory", "second good memory", "third good memory"}


# --- batch ------------------------------------------------------------------------------------
def test_remember_batch_of_two_thousand_with_bad_lines(tmp_path: Path) -> None:
    home = tmp_path / "batch"
    p2pmem("init", home=home)
    lines = [json.dumps({"text": f"batch memory number {i}", "topics": ["batch"]}) for i in range(2000)]
    lines[2] = "{not json"
    lines[6] = json.dumps({"topics": ["no text"]})
    lines[8] = json.dumps({"text": "bad time", "at": "yesterday"})
    lines[10] = json.dumps({"text": "bad field", "colour": "red"})
    lines[12] = json.dumps({"text": "bad visibility", "visibility": "everyone"})
    batch = tmp_path / "batch.jsonl"
    data = [line.encode() for line in lines]
    data[14] = b'{"text": "not utf-8 \xff"}'
    batch.write_bytes(b"\n".join(data) + b"\n")
    proc = p2pmem("remember", "--batch", str(batch), home=home, expect=1)
    errors = proc.stderr.strip().splitlines()
    assert [e.split(":")[1].strip() for e in errors] == [f"line {n}" for n in (3, 7, 9, 11, 13, 15)]
    assert "1994" in proc.stdout
    with Store(home / "store.db") as store:
        memories = store.records_by_kind("memory")
    assert len(memories) == 1994
    assert len({m.ts for m in memories}) == 1994  # every one its own HLC timestamp
    assert all(decode_record(m.raw).topics == ("batch",) for m in memories[:50])

    # all good: exit 0, and a JSON acknowledgement per memory
    good = "\n".join(json.dumps({"text": f"more {i}"}) for i in range(5))
    acks = as_json(p2pmem("remember", "--batch", "-", "--json", home=home, input=good))
    assert len(acks) == 5 and all(set(a) == {"id", "author", "ts"} for a in acks)


# --- errors and exit statuses --------------------------------------------------------------------
def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_usage_errors_exit_2_with_one_line(home: Path) -> None:
    assert "invalid choice" in _one_line(p2pmem("frobnicate", home=home, expect=2))
    assert "--colour" in _one_line(p2pmem("recall", "x", "--colour", "red", home=home, expect=2))
    assert "not a time" in _one_line(p2pmem("recall", "x", "--since", "yesterday", home=home, expect=2))
    assert "not a time" in _one_line(p2pmem("remember", "x", "--at", "2024-13-45", home=home, expect=2))
    _one_line(p2pmem("recall", "x", "--limit", "many", home=home, expect=2))
    _one_line(p2pmem("recall", "x", "--author", "pm1no-body", home=home, expect=2))  # malformed: usage
    _one_line(p2pmem("recall", "x", "--author", "pm1nobody", home=home, expect=1))  # unknown prefix: 1
    _one_line(p2pmem("remember", home=home, expect=2))  # no TEXT
    _one_line(p2pmem("remember", "x", "--visibility", "everyone", home=home, expect=2))
    _one_line(p2pmem("remember", "x", "--topic", "t" * 100, home=home, expect=2))


def test_other_errors_exit_1_with_one_line(tmp_path: Path, home: Path) -> None:
    missing = tmp_path / "does-not-exist"
    assert "init" in _one_line(p2pmem("recall", "x", home=missing, expect=1))
    _one_line(p2pmem("id", home=missing, expect=1))
    _one_line(p2pmem("import", str(tmp_path / "no-such-file.jsonl"), home=home, expect=1))
    proc = p2pmem("update", "0123456789abcdef", "x", home=home, expect=None)
    assert proc.returncode in (1, 2)
    _one_line(proc)


def test_imported_records_with_extreme_times_display(tmp_path: Path, home: Path) -> None:
    """A peer's record may carry any 64-bit `at` (when the remembered thing
    happened): recall shows it rather than failing. (Its timestamp, when it
    was recorded, may not be far ahead: see the next test.)"""
    import time

    from p2pmem.interfaces.output import export_line
    from p2pmem.model.clock import from_ms
    from p2pmem.model.record import sign_record

    record = sign_record(identity(4), "memory", from_ms(int(time.time() * 1000)), "a memory from the far future",
                         at=2**63 - 1)
    line = tmp_path / "future.jsonl"
    line.write_text(export_line(record) + "\n")
    p2pmem("import", str(line), home=home)
    found = as_json(p2pmem("recall", "far future", "--json", home=home))
    assert [(m["id"], m["at"]) for m in found] == [(record.id.hex(), "9999-12-31T23:59:59.999Z")]
    assert "far future" in p2pmem("recall", "far future", home=home).stdout


def test_import_refuses_a_timestamp_far_ahead_as_a_peer_would(tmp_path: Path, home: Path) -> None:
    """A validly signed record dated 2100 would top every newest-first listing
    until then: `import` refuses it as the network path does (clock skew)."""
    import time

    from p2pmem import limits
    from p2pmem.interfaces.output import export_line
    from p2pmem.model.clock import from_ms
    from p2pmem.model.record import sign_record

    now_ms = int(time.time() * 1000)
    year_2100 = sign_record(identity(5), "memory", from_ms(4_102_444_800_000), "skewclock from 2100")
    too_far = sign_record(identity(5), "memory", from_ms(now_ms + limits.MAX_FUTURE_SKEW_MS + 120_000),
                          "skewclock just too far ahead")
    near = sign_record(identity(5), "memory", from_ms(now_ms + 60_000), "skewclock a minute ahead")
    source = tmp_path / "skew.jsonl"
    source.write_text("".join(export_line(r) + "\n" for r in (year_2100, too_far, near)))
    proc = p2pmem("import", str(source), "--json", home=home, expect=1)
    summary = json.loads(proc.stdout)
    assert summary["imported"] == 1
    assert [r["line"] for r in summary["rejected"]] == [1, 2]
    assert all("ahead" in r["reason"] for r in summary["rejected"])
    assert [e.split(":")[1].strip() for e in proc.stderr.strip().splitlines()] == ["line 1", "line 2"]
    found = as_json(p2pmem("recall", "skewclock", "--json", home=home))
    assert [m["id"] for m in found] == [near.id.hex()]


def test_maildir_errors_are_one_line(tmp_path: Path, home: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for target, words in ((a_file, "not a directory"), (a_file / "box", "Not a directory")):
        proc = p2pmem("inbox", "--maildir", str(target), home=home, expect=1)
        assert words in _one_line(proc)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        proc = p2pmem("inbox", "--maildir", str(locked / "missing" / "box"), home=home, expect=1)
        assert "Permission denied" in _one_line(proc)
    # a missing parent that can be created is created, as for Mail/p2pmem
    p2pmem("inbox", "--maildir", str(tmp_path / "Mail" / "p2pmem"), home=home)
    assert (tmp_path / "Mail" / "p2pmem" / "new").is_dir()


def test_update_and_forget_of_an_unknown_id_exit_1_a_malformed_one_2(home: Path) -> None:
    for args in (("update", "0123456789abcdef", "new text"), ("forget", "0123456789abcdef")):
        proc = p2pmem(*args, home=home, expect=1)
        assert "no record" in _one_line(proc)
    for args in (("update", "zz", "new text"), ("forget", "0123")):
        proc = p2pmem(*args, home=home, expect=2)
        assert "not a record id" in _one_line(proc)
