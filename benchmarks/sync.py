"""Sync over loopback between real `p2pmem serve` processes.

Part 1: node A holds N records, a fresh node B dials it; B's time to hold all
N is compared with the time to ingest the same records straight into a store
in this process (the baseline, measured in the same run), and the bytes on the
wire with the records' encoded size. Goals: sync/ingest <= 1.3, wire/encoded
<= 1.15.

Part 2: two nodes with N common records and 50 of their own each: the bytes
and reconciliation round trips to converge. Goals: bytes under 4 x the
differing records' size + 64 KiB; at most 6 round trips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Timer, corpus  # noqa: E402
from p2pmem.agent.home import init_home  # noqa: E402
from p2pmem.node.control import request  # noqa: E402
from p2pmem.storage.store import DB_FILE, Store  # noqa: E402

COUNT = int(os.environ.get("P2PMEM_BENCH_COUNT", "100000"))
UNIQUE = 50
WIRE_BATCH = 256  # records per wire message (limits.MAX_RECORDS_PER_MESSAGE)
DEADLINE_S = 900.0


def serve(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pmem", "--home", str(home), "serve", "--json", "--replicate", "all", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())["address"]


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count(home: Path) -> int:
    db = sqlite3.connect(f"file:{home / DB_FILE}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        db.close()


def ids(home: Path) -> set[bytes]:
    db = sqlite3.connect(f"file:{home / DB_FILE}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0] for row in db.execute("SELECT id FROM records")}
    finally:
        db.close()


def wait_count(home: Path, target: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while count(home) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"sync benchmark: {home.name} stuck at {count(home)} of {target}")
        time.sleep(0.05)


def fill(home: Path, records: list) -> None:
    with Store(home / DB_FILE) as store:
        for i in range(0, len(records), 5000):
            store.ingest(records[i : i + 5000])


def main() -> None:
    print(f"sync benchmark: {COUNT} records, {os.cpu_count()} cores, loopback TCP, Noise-encrypted")
    records = list(corpus(COUNT + 2 * UNIQUE, seed=3))
    common, only_a, only_b = records[:COUNT], records[COUNT : COUNT + UNIQUE], records[COUNT + UNIQUE :]
    encoded = sum(len(r.raw) for r in common)

    with tempfile.TemporaryDirectory(prefix="p2pmem-sync-") as tmp:
        root = Path(tmp)
        with Store(root / "baseline.db") as store, Timer() as baseline:
            raws = [r.raw for r in common]
            for i in range(0, len(raws), WIRE_BATCH):
                store.ingest_raw(raws[i : i + WIRE_BATCH])
        print(f"baseline: ingest of the same records in-process: {baseline.seconds:.1f} s")

        # -- part 1: a fresh node syncs everything ---------------------------
        home_a, home_b = root / "a", root / "b"
        init_home(home_a, name="a")
        init_home(home_b, name="b")
        fill(home_a, common)
        proc_a, addr_a = serve(home_a)
        try:
            started = time.monotonic()
            proc_b, _ = serve(home_b, "--peer", addr_a)
            try:
                # both have announced their address in a new profile by now
                wait_count(home_b, len(ids(home_a) | ids(home_b)))
                sync_s = time.monotonic() - started
                stats = request(home_b, "status")["status"]["stats"]
            finally:
                stop(proc_b)
        finally:
            stop(proc_a)
        wire = stats["bytes_in"] + stats["bytes_out"]
        print(f"full sync of {COUNT} records: {sync_s:.1f} s; {wire:,} wire bytes for {encoded:,} record bytes")
        print(f"ratio sync/ingest time: {sync_s / baseline.seconds:.2f} (goal <= 1.3)")
        print(f"ratio wire/encoded bytes: {wire / encoded:.3f} (goal <= 1.15)")

        # -- part 2: two large sets that differ a little ----------------------
        home_c, home_d = root / "c", root / "d"
        for home in (home_c, home_d):
            init_home(home, name=home.name)
            shutil.copy(home_a / DB_FILE, home / "common.db")
        for home, extra in ((home_c, only_a), (home_d, only_b)):
            (home / DB_FILE).unlink()
            for suffix in ("-wal", "-shm"):
                (home / (DB_FILE + suffix)).unlink(missing_ok=True)
            (home / "common.db").rename(home / DB_FILE)
            fill(home, extra)
        proc_c, addr_c = serve(home_c)
        try:
            proc_d, _ = serve(home_d, "--peer", addr_c)
            try:
                c_ids, d_ids = ids(home_c), ids(home_d)
                differing = c_ids ^ d_ids
                with Store(home_c / DB_FILE) as c_store, Store(home_d / DB_FILE) as d_store:
                    diff_bytes = sum(len(c_store.get_raw(i) or d_store.get_raw(i) or b"") for i in differing)
                union = len(c_ids | d_ids)
                wait_count(home_c, union)
                wait_count(home_d, union)
                status_d = request(home_d, "status")["status"]["stats"]
            finally:
                stop(proc_d)
        finally:
            stop(proc_c)
        wire = status_d["bytes_in"] + status_d["bytes_out"]
        trips = status_d["recon_messages"] / 2
        goal = 4 * diff_bytes + 64 * 1024
        print(
            f"two sets of {COUNT + UNIQUE} differing by {len(differing)} records ({diff_bytes:,} bytes): "
            f"{wire:,} wire bytes (goal < {goal:,}), {status_d['recon_bytes']:,} of them reconciliation"
        )
        print(f"ratio wire/goal: {wire / goal:.2f} (goal < 1); round trips: {trips:g} (goal <= 6)")


if __name__ == "__main__":
    main()
