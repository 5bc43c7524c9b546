"""A small harness for multi-process tests: real ``p2pmem`` commands and
real ``p2pmem serve`` nodes on loopback (or in network namespaces).

Rules it enforces, so that the tests built on it never flake:

* **No fixed ports.** A node listens on ``127.0.0.1:0`` unless told
  otherwise; :class:`NodeProc` reads the address the node actually bound from
  the one JSON line ``serve --json`` prints when it is ready.
* **No fixed sleeps.** :func:`wait_until` polls a condition every 50 ms up to
  a deadline and fails with a message that says what it was waiting for.
* **Cheap polling.** Waits read the homes' stores and ask the nodes'
  control sockets from the test process (the same store and the same
  requests the `p2pmem` command uses), so polling every 50 ms does not start
  a Python process each time and steal the CPU the nodes need; each wait
  ends with the real command (`recall --json`) confirming what it saw.
* **Nothing left behind.** :func:`network_fixture` yields a :class:`Net` that
  creates initialised homes, starts nodes and, in its ``finally``, resumes
  any stopped process, kills every node it started and removes every home,
  whatever the test did. No test depends on another's state or order.

Typical use::

    from netutil import network_fixture

    net = network_fixture()

    def test_two(net):
        a, b = net.homes(2)
        na = net.start(a)
        nb = net.start(b, "--peer", na.address)
        net.wait_peers(na, 1)
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from p2pmem.node.control import request
from p2pmem.storage.store import DB_FILE, Store

T = TypeVar("T")

#: Default deadline of every wait, in seconds: long enough for a loaded CI
#: machine, and a wait returns as soon as its condition holds.
DEADLINE_S = 20.0
POLL_S = 0.05
STARTUP_S = 20.0
STOP_S = 10.0
CLI_TIMEOUT_S = 60.0


def cli_command(home: Path | str, *args: str, prefix: Sequence[str] = ()) -> list[str]:
    """The argv of one ``p2pmem`` command for ``home`` (optionally run
    through ``prefix``, e.g. ``ip netns exec NS``)."""
    return [*prefix, sys.executable, "-m", "p2pmem", "--home", str(home), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("P2PMEM_HOME", None)
    env.pop("P2PMEM_SESSION", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    home: Path | str, *args: str, timeout: float = CLI_TIMEOUT_S, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one ``p2pmem`` command for ``home``; never raises on a non-zero exit."""
    return subprocess.run(
        cli_command(home, *args), capture_output=True, text=True, timeout=timeout,
        input=input, env=_env(), stdin=None if input is not None else subprocess.DEVNULL,
    )


def cli_json(home: Path | str, *args: str, timeout: float = CLI_TIMEOUT_S) -> Any:
    """Run ``p2pmem --json ...``, assert exit 0 and return the parsed output."""
    result = run_cli(home, *args, "--json", timeout=timeout)
    assert result.returncode == 0, (
        f"`p2pmem {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}"
    )
    return json.loads(result.stdout)


def wait_until(
    predicate: Callable[[], T], timeout: float = DEADLINE_S, what: str = "a condition",
    interval: float = POLL_S, describe: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a true
    value (which is returned) or ``timeout`` seconds pass (AssertionError
    naming ``what``, plus ``describe()`` when given, for the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"; last state: {describe()}" if describe is not None else ""
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def memory_ids(home: Path | str, query: str = "") -> set[str]:
    """Ids of the memories ``recall`` shows for ``home`` (every visibility)."""
    return {m["id"] for m in cli_json(home, "recall", query, "--limit", "1000")}


def exported_ids(home: Path | str) -> set[str]:
    """Ids of every record ``export`` writes for ``home``."""
    result = run_cli(home, "export")
    assert result.returncode == 0, result.stderr
    return {json.loads(line)["id"] for line in result.stdout.splitlines() if line.strip()}


class NodeProc:
    """One ``p2pmem serve --json`` process for a home.

    :meth:`start` returns once the node printed its ready line, so
    :attr:`address` and :attr:`id` are set and its control socket answers.
    Standard error goes to ``log_path`` (shown by :meth:`log_tail` when a
    test fails).
    """

    def __init__(
        self, home: Path, *args: str, listen: str = "127.0.0.1:0", log_path: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        self.home = Path(home)
        self.args = list(args)
        self.listen = listen
        self.prefix = list(prefix)
        self.log_path = log_path or self.home.with_name(self.home.name + ".serve.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.address: str = ""
        self.id: str = ""
        self.stopped_signal = False

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout: float = STARTUP_S) -> NodeProc:
        argv = cli_command(self.home, "serve", "--json", "--listen", self.listen, *self.args,
                           prefix=self.prefix)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=_env(),
            )
        line = self._read_ready_line(timeout)
        ready = json.loads(line)
        self.ready: dict[str, Any] = ready  # the whole ready line (e.g. "metrics" with --metrics)
        self.address, self.id = ready["address"], ready["id"]
        return self

    def _read_ready_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise AssertionError(f"node of {self.home.name} not ready in {timeout:g} s\n{self.log_tail()}")
                if sel.select(left):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        code = self.proc.wait(timeout=STOP_S)
                        raise AssertionError(
                            f"node of {self.home.name} exited {code} before it was ready\n{self.log_tail()}"
                        )
                    buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_S) -> int:
        """Send ``signum`` and assert a clean exit (status 0) within ``timeout``."""
        assert self.proc is not None, "node was never started"
        self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"node of {self.home.name} did not stop within {timeout:g} s of "
                f"{signal.Signals(signum).name}\n{self.log_tail()}"
            ) from None
        self._close_pipe()
        assert code == 0, f"node of {self.home.name} exited {code} on {signal.Signals(signum).name}\n{self.log_tail()}"
        return code

    def kill(self) -> None:
        """SIGKILL (after SIGCONT, so a stopped process dies too) and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_S)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    # -- inspection ------------------------------------------------------
    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(f"  [{self.home.name}] {line}" for line in text.splitlines()[-lines:])

    def peers(self) -> list[dict[str, Any]]:
        """``p2pmem peers --json``."""
        return cli_json(self.home, "peers")

    def peer_ids(self) -> set[str]:
        """Ids of the connected peers, asked on the control socket directly."""
        return {p["id"] for p in request(self.home, "peers")["peers"]}

    def status(self) -> dict[str, Any]:
        return cli_json(self.home, "status")

    def __repr__(self) -> str:
        return f"NodeProc({self.home.name}, {self.address or 'not started'})"


class Net:
    """Homes and nodes of one test, all cleaned up by :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.nodes: list[NodeProc] = []
        self.home_ids: dict[Path, str] = {}
        self._created: list[Path] = []
        self._stores: dict[Path, Store] = {}

    def store(self, home: Path) -> Store:
        """A read connection to ``home``'s store, kept for the test (SQLite in
        WAL mode: each query sees what the node committed so far)."""
        if home not in self._stores:
            self._stores[home] = Store(home / DB_FILE, verify_workers=1)
        return self._stores[home]

    def missing(self, home: Path, ids: set[str]) -> set[str]:
        """Which of the record ids ``home``'s store does not hold yet."""
        store = self.store(home)
        return {i for i in ids if not store.has(bytes.fromhex(i))}

    def homes(self, n: int, prefix: str = "n") -> list[Path]:
        """``n`` initialised homes (``init --name``), created in parallel."""
        paths = [self.root / f"{prefix}{len(self._created) + i}" for i in range(n)]
        procs = []
        for path in paths:
            self._created.append(path)
            procs.append(subprocess.Popen(
                cli_command(path, "init", "--name", path.name, "--json"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_env(),
            ))
        for path, proc in zip(paths, procs, strict=True):
            out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
            assert proc.returncode == 0, f"init {path.name}: {err.decode().strip()}"
            self.home_ids[path] = json.loads(out)["id"]
        return paths

    def id_of(self, home: Path) -> str:
        return self.home_ids[home]

    def start(self, home: Path, *args: str, listen: str = "127.0.0.1:0", prefix: Sequence[str] = ()) -> NodeProc:
        """Start ``p2pmem serve`` for ``home`` and wait until it is ready."""
        node = NodeProc(home, *args, listen=listen, prefix=prefix,
                        log_path=self.root / f"{home.name}.serve.log")
        self.nodes.append(node)
        node.start()
        return node

    def wait_peers(self, node: NodeProc, expected: set[str] | int, timeout: float = DEADLINE_S) -> None:
        """Wait until ``node``'s ``peers`` are exactly ``expected`` (a set of
        agent ids, or a count)."""
        def ok() -> bool:
            ids = node.peer_ids()
            return len(ids) == expected if isinstance(expected, int) else ids == expected

        wait_until(ok, timeout, f"peers of {node.home.name} to be {expected}",
                   describe=lambda: str(sorted(node.peer_ids())))

    def wait_has(self, homes: Sequence[Path], ids: set[str], timeout: float = DEADLINE_S,
                 interval: float = POLL_S) -> float:
        """Wait until every home's store holds every id, then check that
        ``recall --json`` shows them; returns the seconds the wait took."""
        started = time.monotonic()
        pending = list(homes)

        def check() -> bool:
            pending[:] = [h for h in pending if self.missing(h, ids)]
            return not pending

        wait_until(check, timeout, f"{len(ids)} memories to reach every home", interval=interval,
                   describe=lambda: "; ".join(
                       f"{h.name} lacks {len(self.missing(h, ids))}" for h in pending) + self.logs())
        elapsed = time.monotonic() - started
        for home in homes:
            assert ids <= memory_ids(home), f"`recall` of {home.name} misses memories its store holds"
        return elapsed

    def logs(self) -> str:
        return "\n" + "\n".join(n.log_tail(15) for n in self.nodes)

    def close(self) -> None:
        """Resume, kill and reap every node; remove every home and log."""
        for node in self.nodes:
            node.kill()
        for store in self._stores.values():
            with contextlib.suppress(Exception):
                store.close()
        for path in self._created:
            shutil.rmtree(path, ignore_errors=True)
        for log in self.root.glob("*.serve.log"):
            with contextlib.suppress(OSError):
                log.unlink()


def network_fixture(name: str = "net", scope: str = "function") -> Any:
    """A pytest fixture (give it a module-level name) yielding a :class:`Net`
    rooted in a fresh temporary directory (the test's ``tmp_path`` for the
    function scope); everything is cleaned up in ``finally``."""

    @pytest.fixture(name=name, scope=scope)  # type: ignore[call-overload]
    def _net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
        root = tmp_path_factory.mktemp(name)
        net = Net(root)
        try:
            yield net
        finally:
            net.close()
            shutil.rmtree(root, ignore_errors=True)

    return _net


def remember(home: Path, text: str, *args: str) -> str:
    """``remember --json``; returns the new memory's id."""
    return cli_json(home, "remember", text, *args)["id"]


def remember_batch(home: Path, memories: Sequence[dict[str, Any]]) -> list[str]:
    """``remember --batch - --json`` (one process for many memories, each a
    dict of ``text`` and optional ``topics``, ``session``, ``at``,
    ``visibility``); returns the ids in order."""
    data = "".join(json.dumps(m) + "\n" for m in memories)
    result = run_cli(home, "remember", "--batch", "-", "--json", input=data)
    assert result.returncode == 0, result.stderr
    return [ack["id"] for ack in json.loads(result.stdout)]


def parallel_remember(writes: Sequence[tuple[Path, str]]) -> list[str]:
    """``remember --json`` for several (home, text) at once; ids in order."""
    procs = [subprocess.Popen(cli_command(home, "remember", text, "--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env())
             for home, text in writes]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        assert proc.returncode == 0, err
        ids.append(json.loads(out)["id"])
    return ids


def line(net: Net, homes: Sequence[Path], *args: str, max_peers: Sequence[int] | None = None) -> list[NodeProc]:
    """Start one node per home, each with ``--peer`` the previous one, in order."""
    nodes: list[NodeProc] = []
    for i, home in enumerate(homes):
        extra = list(args)
        if max_peers is not None:
            extra += ["--max-peers", str(max_peers[i])]
        if nodes:
            extra += ["--peer", nodes[-1].address]
        nodes.append(net.start(home, *extra))
    return nodes
