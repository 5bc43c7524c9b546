"""Packaging: the version has one source, and a wheel built from this tree,
installed alone into a new venv, gives a working ``p2pmem`` and ``p2pmem mcp``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

import p2pmem

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
# the tools of the user contract (tests/test_mcp.py checks their arguments)
CONTRACT_TOOLS = {
    "remember", "recall", "ask_network", "update_memory", "forget", "send_message",
    "read_inbox", "find_agents", "follow_agent", "status",
}
# what a source copy for the build leaves out: local state, never package data
SKIP = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
    ".ruff_cache", ".pytest_cache", "*.db", "*.db-wal", "*.db-shm",
)


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points Python at this tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "P2PMEM"))}
    env.update(extra)
    return env


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def _mcp_info(command: str, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, set[str]]:
    """(server version, tool names) from a real server through the SDK's stdio client."""
    params = StdioServerParameters(command=command, args=args, env=env, cwd=cwd)
    with anyio.fail_after(60):
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
    return init.server_info.version, {t.name for t in tools.tools}


def test_version_comes_from_pyproject(tmp_path: Path) -> None:
    assert p2pmem.__version__ == VERSION
    out = _run([sys.executable, "-m", "p2pmem", "--version"], ROOT, dict(os.environ))
    assert out.strip() == f"p2pmem {VERSION}"


def test_mcp_server_reports_the_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _run([sys.executable, "-m", "p2pmem", "--home", home, "init"], ROOT, dict(os.environ))
    version, tools = anyio.run(
        _mcp_info, sys.executable, ["-m", "p2pmem", "--home", str(home), "mcp"], ROOT, dict(os.environ),
    )
    assert version == VERSION
    assert tools >= CONTRACT_TOOLS


def _build_wheel(tmp_path: Path) -> Path:
    """``python -m build --wheel`` on a copy of the tree (a build writes
    build/ and *.egg-info beside the sources; keep the checkout clean)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist], src, _clean_env(), timeout=300)
    wheels = list(dist.glob("p2pmem-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    assert wheel.name.startswith(f"p2pmem-{VERSION}-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert f"p2pmem-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith("tests/") for n in names), "the tests are not package data"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, _clean_env())
    py = venv / "bin" / "python"
    # this run's pip installs into the new venv (--python): no ensurepip, and
    # the dependencies come from the registry, as for a user
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--quiet",
          "--disable-pip-version-check", wheel], tmp_path, _clean_env(), timeout=600)

    work = tmp_path / "work"  # not the checkout: nothing here may shadow the installed package
    work.mkdir()
    env = _clean_env(HOME=str(tmp_path / "user"))
    exe = venv / "bin" / "p2pmem"
    where = _run([py, "-c", "import p2pmem; print(p2pmem.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv), where

    assert _run([exe, "--version"], work, env).strip() == f"p2pmem {VERSION}"
    home = tmp_path / "home"
    me = _run([exe, "--home", home, "init", "--name", "fresh"], work, env).strip()
    assert me.startswith("pm1")
    _run([exe, "--home", home, "remember", "the wheel installs cleanly", "--topic", "release"], work, env)
    found = json.loads(_run([exe, "--home", home, "recall", "wheel", "--json"], work, env))
    assert [m["text"] for m in found] == ["the wheel installs cleanly"]

    version, tools = anyio.run(_mcp_info, str(exe), ["--home", str(home), "mcp"], work, env)
    assert version == VERSION
    assert tools >= CONTRACT_TOOLS
