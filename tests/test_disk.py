"""Every state a disk can be in, with real files and real processes: a long
home path, file modes, read-only homes, damaged and missing stores, full
disks (docs/operations.md, "Disk states and `p2pmem doctor`")."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from netutil import cli_command, cli_json, memory_ids, network_fixture, run_cli

net = network_fixture()


def one_line(result) -> str:
    """The single stderr line of a failed command (no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_control_socket_under_a_long_home(net, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    home = deep / "home"
    assert len(str(home / "node.sock")) > 110
    assert run_cli(home, "init").returncode == 0
    net._created.append(home)
    node = net.start(home)
    status = cli_json(home, "status")
    assert status["id"] == node.id
    assert cli_json(home, "peers") == []
    assert run_cli(home, "ask", "anything", "--timeout", "0.2").returncode == 0
    assert stat.S_ISSOCK(os.lstat(home / "node.sock").st_mode)  # in the home, not a symlink


def modes(home: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [home, *home.iterdir()]
            if p.is_file() or p == home}


def test_init_into_an_open_directory_closes_it(tmp_path):
    home = tmp_path / "open"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    assert run_cli(home, "init").returncode == 0
    assert run_cli(home, "remember", "a private thing", "--visibility", "private").returncode == 0
    found = modes(home)
    assert found.pop("open") == 0o700
    assert found and all(mode == 0o600 for mode in found.values()), found
    index = home / "store.index"
    assert stat.S_IMODE(index.stat().st_mode) == 0o700


def test_loose_store_modes_are_tightened_on_open(tmp_path):
    home = tmp_path / "h"
    assert run_cli(home, "init").returncode == 0
    os.chmod(home, 0o755)
    os.chmod(home / "store.db", 0o644)
    assert run_cli(home, "remember", "x").returncode == 0
    assert stat.S_IMODE((home / "store.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


# -- read-only homes -----------------------------------------------------------

def _ro_prefix_works() -> str | None:
    """How this machine makes a home read-only for a child process: as root
    chmod does not stop writes, so a read-only bind mount in a private mount
    namespace (unshare -m); None if neither is possible."""
    if os.geteuid() != 0:
        return "chmod"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / /mnt 2>/dev/null || "
                            "mount --bind -o ro /tmp /tmp"], capture_output=True)
    return "bind" if probe.returncode == 0 else None


RO_METHOD = _ro_prefix_works() if shutil.which("unshare") else ("chmod" if os.geteuid() else None)
needs_ro = pytest.mark.skipif(RO_METHOD is None, reason="running as root without mount namespaces: "
                              "no way to make a directory read-only for a child process here")


def run_read_only(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``p2pmem ARGS`` with ``home`` read-only for that one process."""
    argv = cli_command(home, *args)
    if RO_METHOD == "bind":
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(home), *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, input=input,
                              stdin=None if input else subprocess.DEVNULL)
    os.chmod(home, 0o500)
    try:
        return run_cli(home, *args, input=input)
    finally:
        os.chmod(home, 0o700)


@needs_ro
def test_read_only_home_reads_and_refuses_writes(tmp_path):
    home = tmp_path / "ro"
    assert run_cli(home, "init", "--name", "reader").returncode == 0
    ids = {run_cli(home, "remember", f"apples number {i}").stdout.strip() for i in range(3)}
    before = sorted(os.listdir(home))
    me = run_cli(home, "id").stdout.strip()
    # reading commands work as they do on a writable home
    assert run_read_only(home, "id").stdout.strip() == me
    found = run_read_only(home, "recall", "apples", "--json")
    assert found.returncode == 0, found.stderr
    assert {m["id"] for m in json.loads(found.stdout)} == ids
    agents = run_read_only(home, "agents", "--json")
    assert agents.returncode == 0 and json.loads(agents.stdout)[0]["name"] == "reader"
    export = run_read_only(home, "export")
    assert export.returncode == 0 and len(export.stdout.splitlines()) == 4
    assert run_read_only(home, "inbox").returncode == 0
    # a writing command: one line naming the home as read-only, exit 1
    for args in (["remember", "more"], ["profile", "--name", "x"], ["follow", me.replace("pm1a", "pm1b")]):
        result = run_read_only(home, *args)
        if args[0] == "follow" and result.returncode == 2:
            continue  # the mangled id did not parse: not what this checks
        assert result.returncode == 1, (args, result.stderr)
        assert "read-only" in one_line(result)
    assert sorted(os.listdir(home)) == before  # nothing was written
    assert memory_ids(home) == ids


# -- damaged, missing and foreign files ------------------------------------------

def home_with_memories(tmp_path: Path, n: int = 3) -> tuple[Path, set[str]]:
    home = tmp_path / "h"
    assert run_cli(home, "init").returncode == 0
    ids = {run_cli(home, "remember", f"pears number {i}").stdout.strip() for i in range(n)}
    return home, ids


COMMANDS = [["recall", "pears"], ["remember", "x"], ["agents"], ["export"], ["profile"], ["inbox"]]


@pytest.mark.parametrize("damage", ["truncated", "garbled header", "garbled pages", "empty"])
def test_a_damaged_store_is_one_line_naming_doctor(tmp_path, damage):
    home, _ids = home_with_memories(tmp_path)
    db = home / "store.db"
    data = db.read_bytes()
    assert len(data) > 8192
    if damage == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif damage == "garbled header":
        db.write_bytes(b"\x13" * 100 + data[100:])
    elif damage == "garbled pages":
        db.write_bytes(data[:4096] + bytes(b ^ 0x5A for b in data[4096:]))
    else:
        db.write_bytes(b"not a database at all")
    for args in COMMANDS:
        result = run_cli(home, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        line = one_line(result)
        assert "p2pmem doctor" in line and str(db) in line, line
    assert db.read_bytes() != data and db.exists()  # left as found, for doctor or a restore


def test_a_missing_store_beside_an_identity_is_refused_not_recreated(tmp_path):
    home, _ids = home_with_memories(tmp_path)
    for path in home.glob("store.db*"):
        path.unlink()
    for args in [*COMMANDS, ["init"]]:
        result = run_cli(home, *args)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line(result)
        assert "missing" in line and "p2pmem restore" in line, line
        assert not (home / "store.db").exists()
    result = run_cli(home, "init", "--new-store")
    assert result.returncode == 0, result.stderr
    assert (home / "store.db").exists() and memory_ids(home) == set()


@pytest.mark.parametrize("damage", ["mode", "content", "empty", "directory"])
def test_a_bad_key_file_names_the_file_and_the_fix(tmp_path, damage):
    home, ids = home_with_memories(tmp_path)
    key = home / "identity.key"
    if damage == "mode":
        os.chmod(key, 0o644)
        fix = "chmod 600"
    elif damage == "content":
        key.write_bytes(b"\xa2garbage" * 3)
        fix = "restore"
    elif damage == "empty":
        key.write_bytes(b"")
        fix = "restore"
    else:
        key.unlink()
        key.mkdir()
        fix = "restore"
    for args in [["id"], *COMMANDS]:
        result = run_cli(home, *args)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line(result)
        assert str(key) in line and fix in line, line
    if damage == "mode":
        os.chmod(key, 0o600)
        assert memory_ids(home) == ids


def test_a_store_from_a_newer_release_is_refused(tmp_path):
    home, ids = home_with_memories(tmp_path)
    db = sqlite3.connect(home / "store.db")
    db.execute("PRAGMA user_version = 999")
    db.close()
    result = run_cli(home, "recall")
    assert result.returncode == 1
    assert "newer p2pmem" in one_line(result)


def test_the_mcp_server_answers_a_damaged_store_with_one_line_and_recovers(tmp_path):
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    home, ids = home_with_memories(tmp_path)
    db = home / "store.db"
    good = db.read_bytes()
    db.write_bytes(b"\x13" * 100 + good[100:])
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "p2pmem", "--home", str(home), "mcp"])

    async def text_of(session, tool, **arguments):
        result = await session.call_tool(tool, arguments)
        return result.is_error, "".join(getattr(b, "text", "") for b in result.content)

    async def body() -> None:
        with anyio.fail_after(60):
            await session_body()

    async def session_body() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert "recall" in {t.name for t in (await session.list_tools()).tools}
            for tool, arguments in (("recall", {"query": "pears"}), ("remember", {"text": "y"})):
                is_error, text = await text_of(session, tool, **arguments)
                assert is_error and "\n" not in text and "p2pmem doctor" in text, text
            db.write_bytes(good)  # the operator restored the file: the next call works
            is_error, text = await text_of(session, "recall", query="pears")
            assert not is_error, text
            assert {m["id"] for m in json.loads(text)} == ids

    anyio.run(body)


def test_a_file_size_limit_fails_remember_in_one_line_and_keeps_the_rest(tmp_path):
    """EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored) is how a disk quota or a full
    disk looks where no small file system can be mounted."""
    import resource
    import signal

    home, ids = home_with_memories(tmp_path)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    for args in (["remember", "over the limit"], ["profile", "--name", "n"]):
        result = subprocess.run(cli_command(home, *args), capture_output=True, text=True, timeout=60,
                                preexec_fn=limited, stdin=subprocess.DEVNULL)
        assert result.returncode == 1 and result.stdout == "", result
        line = one_line(result)  # SQLite's -shm file cannot grow: an I/O error rather than "full"
        assert "full" in line or "free space" in line, line
    assert memory_ids(home) == ids
    assert run_cli(home, "remember", "fits again").returncode == 0
