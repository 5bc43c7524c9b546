"""``p2pmem doctor``, ``backup``, ``restore`` and schema upgrades, on real
homes and real processes (docs/operations.md)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from netutil import cli_json, exported_ids, memory_ids, network_fixture, run_cli, wait_until

from p2pmem.storage.schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "home-v3"
net = network_fixture()


def make_home(tmp_path: Path, n: int = 4, name: str = "h") -> tuple[Path, set[str]]:
    home = tmp_path / name
    assert run_cli(home, "init", "--name", name).returncode == 0
    ids = {run_cli(home, "remember", f"plums number {i}").stdout.strip() for i in range(n)}
    return home, ids


def doctor(home: Path, *args: str) -> tuple[int, dict]:
    result = run_cli(home, "doctor", "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def problems(report: dict) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}


# -- doctor ------------------------------------------------------------------------

def test_doctor_passes_a_healthy_home(tmp_path):
    home, _ids = make_home(tmp_path)
    memory_ids(home, "plums")  # builds the search index
    code, report = doctor(home)
    assert code == 0 and report["healthy"], report
    assert {c["name"] for c in report["checks"]} == {"modes", "key file", "store", "owner", "search index"}


def test_doctor_repairs_modes_and_a_stale_index(tmp_path):
    home, ids = make_home(tmp_path)
    memory_ids(home, "plums")
    os.chmod(home, 0o755)
    os.chmod(home / "identity.key", 0o644)
    # the index loses its documents behind the store's back: an index of another home
    other, _ = make_home(tmp_path, 2, "other")
    memory_ids(other, "plums")
    shutil.rmtree(home / "store.index")
    shutil.copytree(other / "store.index", home / "store.index")
    code, report = doctor(home)
    assert code == 1
    found = problems(report)
    assert set(found) == {"modes", "key file", "search index"}, found
    assert "chmod 600" in found["key file"]
    code, report = doctor(home, "--repair")
    assert code == 0, report
    assert {c["name"] for c in report["checks"] if c["repaired"]} >= {"modes", "search index"}
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    assert memory_ids(home, "plums") == ids
    assert doctor(home)[0] == 0


def test_doctor_reports_what_it_cannot_repair(tmp_path):
    home, _ids = make_home(tmp_path)
    other, _ = make_home(tmp_path, 1, "other")
    shutil.copy(other / "identity.key", home / "identity.key")  # another agent's key
    code, report = doctor(home, "--repair")
    assert code == 1 and "another home" in problems(report)["owner"]
    db = home / "store.db"
    data = db.read_bytes()
    db.write_bytes(data[:4096] + bytes(b ^ 0xFF for b in data[4096:8192]) + data[8192:])
    code, report = doctor(home, "--repair")
    assert code == 1 and "store" in problems(report), report
    db.unlink()
    code, report = doctor(home)
    assert code == 1 and "missing" in problems(report)["store"]
    text = run_cli(home, "doctor")
    assert text.returncode == 1 and "PROBLEM" in text.stdout and text.stderr.count("\n") == 1


# -- backup and restore ------------------------------------------------------------

def test_backup_restore_round_trip(tmp_path):
    home, ids = make_home(tmp_path)
    (home / "p2pmem.toml").write_text('listen = "127.0.0.1:0"\n')
    backup = tmp_path / "home.p2pmem"
    out = cli_json(home, "backup", str(backup))
    assert out["records"] == 5 and set(out["members"]) == {"store.db", "identity.key", "p2pmem.toml"}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with tarfile.open(backup) as tar:
        assert sorted(tar.getnames()) == ["identity.key", "p2pmem-backup.json", "p2pmem.toml", "store.db"]
    restored = tmp_path / "new" / "home"
    out = cli_json(restored, "restore", str(backup))
    assert out["records"] == 5
    assert run_cli(restored, "id").stdout == run_cli(home, "id").stdout
    assert memory_ids(restored, "plums") == ids  # the search index was rebuilt
    assert exported_ids(restored) == exported_ids(home)
    assert (restored / "p2pmem.toml").read_text() == (home / "p2pmem.toml").read_text()
    assert doctor(restored)[0] == 0


def test_restore_refuses_a_non_empty_home_and_a_damaged_backup(tmp_path):
    home, _ids = make_home(tmp_path)
    backup = tmp_path / "b.tar"
    assert run_cli(home, "backup", str(backup)).returncode == 0
    result = run_cli(home, "restore", str(backup))
    assert result.returncode == 2 and "not an empty directory" in result.stderr
    data = bytearray(backup.read_bytes())
    at = data.find(b"SQLite format 3")
    data[at + 5000] ^= 0xFF
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bytes(data))
    target = tmp_path / "t"
    result = run_cli(target, "restore", str(broken))
    assert result.returncode == 1 and "checksum" in result.stderr and result.stderr.count("\n") == 1
    assert not target.exists()  # never half restored
    (tmp_path / "junk").write_bytes(b"not a tar")
    result = run_cli(target, "restore", str(tmp_path / "junk"))
    assert result.returncode == 1 and "not a p2pmem backup" in result.stderr


def test_backup_under_write_load_restores_a_consistent_prefix(net, tmp_path):
    """A serving node, a writer remembering in a loop in another process, and
    backups taken meanwhile: each restores to exactly the memories the
    writer had acknowledged up to some point (a prefix of its sequence),
    never fewer than were acknowledged before the backup started."""
    (home,) = net.homes(1)
    net.start(home)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(home), str(stop)], stdout=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    acked: list[str] = []
    reader = threading.Thread(target=lambda: acked.extend(line.strip() for line in writer.stdout), daemon=True)
    reader.start()
    taken: list[tuple[Path, int]] = []
    try:
        wait_until(lambda: len(acked) >= 20, what="the writer's first memories")
        for round_ in range(2):
            before = len(acked)
            backup = tmp_path / f"b{round_}.tar"
            result = run_cli(home, "backup", str(backup))
            assert result.returncode == 0, result.stderr
            taken.append((backup, before))
    finally:
        stop.touch()  # the writer ends after its current memory, so every commit is printed
        writer.wait(timeout=30)
        reader.join(timeout=30)
    assert writer.returncode == 0
    for round_, (backup, before) in enumerate(taken):
        target = tmp_path / f"r{round_}"
        result = run_cli(target, "restore", str(backup))
        assert result.returncode == 0, result.stderr
        got = {m["id"] for m in cli_json(target, "recall", "--limit", "1000")}
        k = len(got)
        assert before <= k <= len(acked), (before, k, len(acked))
        assert got == set(acked[:k]), "the snapshot is not a prefix of what was acknowledged"


WRITER = """
import sys
from pathlib import Path
from p2pmem.agent.home import Agent
stop = Path(sys.argv[2])
with Agent.open(Path(sys.argv[1])) as agent:
    i = 0
    while not stop.exists() and i < 900:
        print(agent.remember(f"load memory {i}").id.hex(), flush=True)
        i += 1
"""


# -- upgrade -----------------------------------------------------------------------

def fixture_home(tmp_path: Path) -> tuple[Path, dict]:
    home = tmp_path / "v3"
    shutil.copytree(FIXTURE, home)
    (home / "expected.json").unlink()
    os.chmod(home, 0o700)
    os.chmod(home / "identity.key", 0o600)
    return home, json.loads((FIXTURE / "expected.json").read_text())


def test_a_schema_3_store_is_migrated_with_every_record(tmp_path):
    home, expected = fixture_home(tmp_path)
    assert expected["schema"] == 3
    db = sqlite3.connect(home / "store.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0  # as the old release left it
    db.close()
    assert exported_ids(home) == set(expected["records"])
    assert {m["id"] for m in cli_json(home, "recall", "--limit", "100")} == set(expected["current_memories"])
    db = sqlite3.connect(home / "store.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == SCHEMA_VERSION
    db.close()
    found = cli_json(home, "recall", "apples")  # the search index, rebuilt from the old store
    assert sum("apples" in m["text"] for m in found) == 3  # 5 written, one corrected, one forgotten
    assert {m["id"] for m in found} <= set(expected["current_memories"])
    assert run_cli(home, "inbox").returncode == 0
    assert doctor(home)[0] == 0


def test_a_backup_of_a_schema_3_home_restores_into_this_release(tmp_path):
    home, expected = fixture_home(tmp_path)
    backup = tmp_path / "old.tar"
    out = cli_json(home, "backup", str(backup))
    assert out["records"] == len(expected["records"])
    target = tmp_path / "restored"
    assert run_cli(target, "restore", str(backup)).returncode == 0
    assert exported_ids(target) == set(expected["records"])


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99])
def test_a_newer_store_is_refused_in_one_line(tmp_path, version):
    home, _ids = make_home(tmp_path, 1)
    db = sqlite3.connect(home / "store.db")
    db.execute(f"PRAGMA user_version = {version}")
    db.close()
    for args in (["recall"], ["remember", "x"], ["backup", str(tmp_path / "b")]):
        result = run_cli(home, *args)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "newer p2pmem" in result.stderr
