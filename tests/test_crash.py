"""Durability under SIGKILL: a memory whose id was printed is committed.

A child process opens an Agent and remembers in a loop, printing each id
once ``remember`` has returned. The test kills it with SIGKILL at random
moments (seeded, so the run is reproducible), restarts it, and at the end
every printed id must be in the store and SQLite's integrity check must pass.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from p2pmem.agent.home import init_home
from p2pmem.storage.store import Store

CHILD = r"""
import sys
from pathlib import Path

from p2pmem.agent.home import Agent

home, run = Path(sys.argv[1]), sys.argv[2]
with Agent.open(home) as agent:
    i = 0
    while True:
        record = agent.remember(f"crash test run {run} memory {i}", topics=["crash"])
        sys.stdout.write(record.id.hex() + "\n")
        sys.stdout.flush()
        i += 1
"""

KILLS = 20


def _reader(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


@pytest.mark.slow
def test_every_printed_id_survives_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20231114)
    home = tmp_path / "home"
    init_home(home)
    env = {k: v for k, v in os.environ.items() if k != "P2PMEM_HOME"}
    printed: list[str] = []
    procs: list[subprocess.Popen] = []
    try:
        for run in range(KILLS):
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(home), str(run)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )
            procs.append(proc)
            lines: queue.Queue = queue.Queue()
            reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
            reader.start()
            kill_at = time.monotonic() + rng.uniform(0.05, 0.4)
            seen_new = False
            deadline = time.monotonic() + 60
            while not (seen_new and time.monotonic() >= kill_at):
                assert time.monotonic() < deadline, "the child printed nothing"
                try:
                    line = lines.get(timeout=0.01)
                except queue.Empty:
                    continue
                assert line is not None, f"child exited early: {proc.stderr.read()}"
                if len(line) == 65 and line.endswith("\n"):
                    printed.append(line[:64])
                    seen_new = True
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            reader.join(timeout=30)
            # ids written before the kill are still in the pipe
            while True:
                line = lines.get(timeout=30)
                if line is None:
                    break
                if len(line) == 65 and line.endswith("\n"):
                    printed.append(line[:64])
            assert proc.returncode == -signal.SIGKILL
            assert "Traceback" not in proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert len(printed) >= KILLS
    with Store(home / "store.db") as store:
        assert store.integrity_check() == "ok"
        memories = store.records_by_kind("memory")
        stored = {m.id.hex() for m in memories}
        missing = [i for i in printed if i not in stored]
        assert not missing, f"{len(missing)} acknowledged memories lost"
        # at most one memory per kill was committed but not yet printed
        assert len(printed) <= len(stored) <= len(printed) + KILLS
        # the clock resumed after each crash: no timestamp was reused
        assert len({m.ts for m in memories}) == len(memories)
