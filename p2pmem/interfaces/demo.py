"""`make demo`: a live three-node network on loopback, narrated.

A, B and C each get a home in a temporary directory. B dials A, C dials B;
nobody dials across. A remembers something, C receives it through B, C asks
the network a question that only A's private-to-queries memory answers, a
memory kept private never leaves A, and a fourth agent that never joins the
network imports A's signed export and recalls it with provenance. Then all
three nodes stop on SIGTERM.
Every step runs the real `p2pmem` command, exactly as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_TIMEOUT_S = 20.0


def p2pmem(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "p2pmem", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60,
    )
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `p2pmem {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(result: subprocess.CompletedProcess[str]) -> None:
    for line in result.stdout.rstrip().splitlines():
        print(f"   {line}", flush=True)


def start(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pmem", "--home", str(home), "serve", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"demo: node of {home.name} did not start")
    return proc, json.loads(line)["address"]


def wait_for(what: str, check: object) -> float:
    started = time.monotonic()
    while time.monotonic() - started < STEP_TIMEOUT_S:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"demo: gave up waiting for {what}")


def main() -> int:
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="p2pmem-demo-") as tmp:
        homes = {name: Path(tmp) / name for name in "ABC"}
        try:
            say("Three agents create their identities")
            for name, home in homes.items():
                agent = p2pmem(home, "init", "--name", f"agent-{name}", "--skill", "demo").stdout.strip()
                print(f"   {name}: {agent}")

            say("They start serving on loopback: B dials A, C dials B (C never talks to A)")
            proc_a, addr_a = start(homes["A"])
            procs.append(proc_a)
            proc_b, addr_b = start(homes["B"], "--peer", addr_a, "--replicate", "all")
            procs.append(proc_b)
            proc_c, addr_c = start(homes["C"], "--peer", addr_b, "--replicate", "all", "--max-peers", "1")
            procs.append(proc_c)
            print(f"   A on {addr_a}\n   B on {addr_b} (peer A, replicates all)\n   C on {addr_c} (peer B, replicates all, keeps one connection)")
            wait_for("the links to come up", lambda: len(json.loads(p2pmem(homes["B"], "peers", "--json").stdout)) == 2)
            show(p2pmem(homes["B"], "peers"))

            say("A remembers something, signed with its key")
            memory_id = p2pmem(
                homes["A"], "remember", "The staging database moved to db-7; the old host is read-only.",
                "--topic", "ops", "--session", "demo",
            ).stdout.strip()
            print(f"   memory id {memory_id}")
            p2pmem(homes["A"], "remember", "My API token is hunter2", "--visibility", "private")
            p2pmem(homes["A"], "remember", "Rollbacks need the on-call's approval",
                   "--visibility", "ask", "--topic", "ops")
            print("   (plus one private memory and one answered only to queries)")

            say("C receives it through B (eager push, then range reconciliation)")
            elapsed = wait_for(
                "C to receive the memory",
                lambda: any(m["id"] == memory_id for m in json.loads(
                    p2pmem(homes["C"], "recall", "staging database", "--json").stdout)),
            )
            print(f"   arrived at C after {elapsed:.2f} s")
            show(p2pmem(homes["C"], "recall", "staging database"))

            say("C asks the network; A answers its 'ask' memory from two hops away")
            show(p2pmem(homes["C"], "ask", "rollbacks approval", "--timeout", "1.5"))

            say("The private memory never left A")
            found = json.loads(p2pmem(homes["C"], "recall", "token", "--json").stdout)
            asked = json.loads(p2pmem(homes["C"], "ask", "token", "--json", "--timeout", "1").stdout)
            print(f"   C's store: {len(found)} matches; network answers: {len(asked)}")
            if found or asked:
                raise SystemExit("demo: a private memory leaked")

            say("Offline too: D, never on the network, imports A's export and recalls it with provenance")
            export = p2pmem(homes["A"], "export", "--shareable").stdout
            home_d = Path(tmp) / "D"
            p2pmem(home_d, "init", "--name", "agent-D")
            (Path(tmp) / "a.jsonl").write_text(export)
            show(p2pmem(home_d, "import", str(Path(tmp) / "a.jsonl")))
            recalled = json.loads(p2pmem(home_d, "recall", "staging database", "--json").stdout)
            for memory in recalled:
                print(f"   {memory['text']!r} by {memory['author']} at {memory['ts']} (session {memory['session']!r})")

            say("Status of B")
            show(p2pmem(homes["B"], "status"))
        finally:
            say("Stopping all three nodes (SIGTERM)")
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    code = proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                print(f"   node {procs.index(proc) + 1} exited with status {code}")
    print("\ndemo finished: every step above ran the real p2pmem command.")
    return 0


if __name__ == "__main__":
    os.environ.pop("P2PMEM_HOME", None)
    sys.exit(main())
