"""The verification worker processes (p2pmem/storage/verify.py) do not
outlive the process that started them, even when it is killed with SIGKILL
(a node killed by the OOM killer used to leave its workers and their fork
server waiting forever)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import PROJECT_ROOT

OWNER = """
import json, os, sys, time
from p2pmem.storage.verify import check_part, verifier_pool

if __name__ == "__main__":
    pool = verifier_pool(2)
    assert list(pool.map(check_part, [[], []])) == [[], []]
    print(json.dumps(sorted(pool._processes)), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_exit_when_their_owner_is_killed(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    try:
        assert owner.stdout is not None
        workers = json.loads(owner.stdout.readline())
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 10.0
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "workers outlived their owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
