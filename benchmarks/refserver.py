"""The reference MCP memory server (npm ``@modelcontextprotocol/server-memory``),
installed with npm into a cache folder on first use, for the differential
test (tests/test_graph_reference.py) and benchmarks/graph_import.py.

``$P2PMEM_REFERENCE_DIR`` chooses the folder (default: the user cache
directory). :func:`install` returns the server's ``index.js`` or raises
:class:`Unavailable` with a reason (no node or npm, no network, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import platformdirs

PACKAGE = "@modelcontextprotocol/server-memory"
VERSION = "2026.8.31"


class Unavailable(Exception):
    """The reference server cannot be installed or run here."""


def folder() -> Path:
    chosen = os.environ.get("P2PMEM_REFERENCE_DIR")
    base = Path(chosen) if chosen else Path(platformdirs.user_cache_dir("p2pmem-tests"))
    return base / f"server-memory-{VERSION}"


def install(timeout: float = 240.0) -> Path:
    """The reference server's entry point, installing it first if needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise Unavailable("node and npm are needed to run the reference MCP memory server")
    where = folder()
    entry = where / "node_modules" / "@modelcontextprotocol" / "server-memory" / "dist" / "index.js"
    if entry.is_file():
        return entry
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(where), f"{PACKAGE}@{VERSION}"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"npm install {PACKAGE}@{VERSION} took over {timeout:.0f} s") from None
    if done.returncode != 0 or not entry.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"npm install {PACKAGE}@{VERSION} failed: {last}")
    return entry


def command(entry: Path) -> tuple[str, list[str]]:
    """The command that runs the server on standard input and output (the
    memory file comes from ``$MEMORY_FILE_PATH``)."""
    node = shutil.which("node")
    assert node is not None
    return node, [str(entry)]
