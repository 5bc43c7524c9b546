"""A full disk, for real: a home on a small tmpfs in a private mount
namespace (``unshare -m``), filled with a ballast file while a node serves
it. Acknowledged writes stay, a write that cannot be kept says so in one
line, reads and the node keep working, and everything recovers when the
space returns (docs/operations.md, "Disk states")."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import CLI_TIMEOUT_S, _env, cli_command, network_fixture, run_cli, wait_until

from p2pmem.protocol.timing import RESYNC_S

net = network_fixture()


def _can_mount_tmpfs() -> str | None:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        return "unshare/nsenter not installed"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs here: {probe.stderr.strip()}"


WHY_NOT = _can_mount_tmpfs()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no small disk to fill: {WHY_NOT}")


class SmallDisk:
    """A tmpfs of ``size`` at ``path``, seen only by processes started
    through :attr:`prefix`; the test reaches its files through /proc."""

    def __init__(self, path: Path, size: str) -> None:
        path.mkdir()
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs -o size={size},mode=0700 tmpfs "$0" && echo up && exec sleep 3600', str(path)],
            stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "up"
        self.path = path
        self.prefix = ["nsenter", "-t", str(self.proc.pid), "-m", "--"]
        self.view = Path(f"/proc/{self.proc.pid}/root{path}")
        self.ballast = self.view / "ballast"

    def run(self, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_command(home, *args, prefix=self.prefix), capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S, env=_env(), stdin=subprocess.DEVNULL)

    def json(self, home: Path, *args: str) -> object:
        result = self.run(home, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def fill(self) -> None:
        """Write the ballast until the disk refuses even 512 bytes."""
        with open(self.ballast, "ab", buffering=0) as out:
            for block in (1 << 20, 1 << 16, 4096, 512):
                try:
                    while True:
                        out.write(b"\0" * block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        assert os.statvfs(self.view).f_bavail == 0

    def free(self) -> None:
        self.ballast.unlink()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def disk(tmp_path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path / "small", "24m")
    try:
        yield small
    finally:
        small.close()


def recalled(disk: SmallDisk, home: Path) -> set[str]:
    return {m["id"] for m in disk.json(home, "recall", "--limit", "1000")}  # type: ignore[union-attr]


def test_a_full_disk_keeps_what_was_acknowledged_and_recovers(net, disk):
    home = disk.path / "home"
    assert disk.run(home, "init", "--name", "full").returncode == 0
    acked = {disk.run(home, "remember", f"apples number {i}").stdout.strip() for i in range(5)}
    assert len(acked) == 5 and disk.json(home, "recall", "apples")  # the search index exists
    node = net.start(home, "--replicate", "all", prefix=disk.prefix)
    (peer,) = net.homes(1)
    net.start(peer, "--peer", node.address)
    first = run_cli(peer, "remember", "the peer's first memory").stdout.strip()
    wait_until(lambda: first in recalled(disk, home), what="the peer's memory to reach the node")

    disk.fill()
    result = disk.run(home, "remember", "this one cannot be kept")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "full" in lines[0] and "Traceback" not in result.stderr, result.stderr
    # reads still work: recall (its index upkeep cannot write), the node's status
    assert recalled(disk, home) == acked | {first}
    assert {m["id"] for m in disk.json(home, "recall", "apples")} >= acked  # type: ignore[union-attr]
    # the peer's new memories cannot be stored yet: the node says so and keeps serving
    later = {run_cli(peer, "remember", f"written while the disk was full {i}").stdout.strip() for i in range(3)}
    log = node.log_path
    wait_until(lambda: "could not store received records" in log.read_text(), what="the ingest failure")
    assert disk.json(home, "status")["peers"] == 1  # type: ignore[index]
    assert node.alive() and "Traceback" not in log.read_text()

    disk.free()
    after = disk.run(home, "remember", "the disk has room again")
    assert after.returncode == 0, after.stderr
    everything = acked | {first, after.stdout.strip()} | later
    # the records the full disk refused come back with the next reconciliation
    # (at most RESYNC_S = 30 s after the refusal)
    wait_until(lambda: recalled(disk, home) == everything, timeout=RESYNC_S + 30,
               interval=0.5, what="the peer's memories after the space returned",
               describe=lambda: f"missing {everything - recalled(disk, home)}")
    assert node.alive()


def test_recall_on_a_full_disk_searches_a_copy_in_memory(disk):
    """Index upkeep that cannot write (the index is behind the store when the
    disk fills) falls back to an index built in memory: recall still finds
    the newest memory, and the next recall with room catches the disk's up."""
    home = disk.path / "home"
    assert disk.run(home, "init").returncode == 0
    old = {disk.run(home, "remember", f"pears number {i}").stdout.strip() for i in range(3)}
    assert {m["id"] for m in disk.json(home, "recall", "pears")} == old  # type: ignore[union-attr]
    newest = disk.run(home, "remember", "pears, the newest").stdout.strip()  # the index is now behind
    disk.fill()
    result = disk.run(home, "recall", "pears", "--json")
    assert result.returncode == 0, result.stderr
    assert {m["id"] for m in json.loads(result.stdout)} == old | {newest}
    assert "Traceback" not in result.stderr
    disk.free()
    assert {m["id"] for m in disk.json(home, "recall", "pears")} == old | {newest}  # type: ignore[union-attr]
    doctor = disk.run(home, "doctor")
    assert doctor.returncode == 0, doctor.stdout
