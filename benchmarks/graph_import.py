"""Importing the reference MCP memory server's JSONL file.

Writes a reference-format file of 10,000 entities (two observations each)
and 30,000 relations, then measures, in the same run:

- p2pmem: ``p2pmem graph import`` of the file into a fresh home (parse,
  sign every entity, observation and relation, store, update the view), and
  ``read_graph`` through p2pmem's MCP server;
- the reference server (npm @modelcontextprotocol/server-memory, installed
  into a cache folder by benchmarks/refserver.py) started on that file: its
  ``read_graph``, which loads and parses the whole file;

and checks that both read_graph results are equal. ``P2PMEM_BENCH_ENTITIES``
changes the size (relations are three times as many).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402

from benchmarks import refserver  # noqa: E402

ENTITIES = int(os.environ.get("P2PMEM_BENCH_ENTITIES", "10000"))
TYPES = ["person", "service", "team", "project", "library", "host", "customer", "document"]
RELATIONS = ["maintains", "depends on", "owns", "knows", "deploys", "reviews", "calls", "documents"]
WORDS = ["runs", "on", "python", "rust", "billing", "invoices", "prefers", "tea", "coffee", "oncall",
         "weekly", "deploys", "european", "region", "legacy", "migrating", "to", "postgres", "owner",
         "since", "2021", "critical", "slow", "fast", "tests", "flaky", "documented", "in", "wiki"]


def write_file(path: Path, entities: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    names = [f"{rng.choice(TYPES)}-{i:05d}" for i in range(entities)]
    lines = []
    for name in names:
        observations = [" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) for _ in range(2)]
        observations = list(dict.fromkeys(observations))
        lines.append({"type": "entity", "name": name, "entityType": name.split("-")[0],
                      "observations": observations})
    seen: set[tuple[str, str, str]] = set()
    while len(seen) < 3 * entities:
        key = (rng.choice(names), rng.choice(RELATIONS), rng.choice(names))
        if key in seen or key[0] == key[2]:
            continue
        seen.add(key)
        lines.append({"type": "relation", "from": key[0], "to": key[2], "relationType": key[1]})
    path.write_text("\n".join(json.dumps(line, separators=(",", ":")) for line in lines), encoding="utf-8")


async def read_graph(params: StdioServerParameters) -> tuple[float, float, dict[str, Any]]:
    """(seconds to start and initialise, seconds for read_graph, its result)."""
    started = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        ready = time.perf_counter()
        result = await session.call_tool("read_graph", {})
        done = time.perf_counter()
        assert not result.is_error, result.content
        return ready - started, done - ready, dict(result.structured_content or {})


def main() -> int:
    print(f"graph import benchmark: {ENTITIES} entities, {3 * ENTITIES} relations")
    try:
        entry = refserver.install()
    except refserver.Unavailable as exc:
        print(f"reference server unavailable: {exc}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        source = tmp_path / "memory.jsonl"
        write_file(source, ENTITIES)
        home = tmp_path / "home"
        run = [sys.executable, "-m", "p2pmem", "--home", str(home)]
        subprocess.run([*run, "init"], check=True, capture_output=True, cwd=ROOT)

        started = time.perf_counter()
        done = subprocess.run([*run, "--json", "graph", "import", str(source)], capture_output=True,
                              text=True, cwd=ROOT, check=True)
        imported = time.perf_counter() - started
        counts = json.loads(done.stdout)
        print(f"p2pmem graph import: {imported:.2f} s for {counts['records']} signed records "
              f"({counts['records'] / imported:,.0f} records/s, the whole CLI process)")

        reference_file = tmp_path / "reference.jsonl"
        reference_file.write_bytes(source.read_bytes())  # the reference may rewrite its file
        command, args = refserver.command(entry)
        ref_params = StdioServerParameters(command=command, args=args,
                                           env={**os.environ, "MEMORY_FILE_PATH": str(reference_file)})
        our_params = StdioServerParameters(command=sys.executable,
                                           args=["-m", "p2pmem.interfaces.mcp_server", "--home", str(home)], cwd=ROOT)
        ref_start, ref_read, theirs = anyio.run(read_graph, ref_params)
        our_start, our_read, ours = anyio.run(read_graph, our_params)
        print(f"reference server: start {ref_start:.2f} s, read_graph (loads the file) {ref_read:.3f} s")
        print(f"p2pmem MCP server: start {our_start:.2f} s, read_graph {our_read:.3f} s")
        print(f"ratio import / reference load: {imported / ref_read:.1f}")
        print(f"ratio read_graph p2pmem / reference: {our_read / ref_read:.2f}")
        equal = ours == theirs
        print(f"read_graph equal: {equal} ({len(ours.get('entities', []))} entities, "
              f"{len(ours.get('relations', []))} relations)")
        return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
