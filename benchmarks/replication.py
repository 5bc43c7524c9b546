"""Replication rate of a fresh node, against all-core Ed25519 and a real SSB peer.

Usage::

    python benchmarks/replication.py [--count N] [--growth] [--no-ssb] [--ssb-rounds R]

``--count`` (or ``P2PMEM_BENCH_COUNT``) is N, 10,000 by default; the issue's
second size is ``--count 100000``.

Measured, all in one run on one machine:

* **p2pmem replication.** Two real ``p2pmem serve`` processes on loopback
  (Noise-encrypted TCP). Home A holds N signed memories; a fresh home B runs
  ``serve --replicate all --peer A``. The time is taken from B's ready line
  (it is listening and dials A) until B's store holds all N memories (polled
  every 50 ms on a read-only SQLite connection, then checked id by id); the
  time from launching B's process is printed too. Figure: records/s.
* **Raw Ed25519 verify, all cores.** The same N records' signatures, split
  over one process per usable core, each verifying its share with
  ``cryptography``'s ``Ed25519PublicKey.verify`` over pre-built COSE
  ``Sig_structure`` messages (keys built beforehand), all started together
  behind a barrier: N / (last end - first start), median of 3 rounds. The
  single-core rate (as in benchmarks/ingest.py) is printed for reference.
* **Secure Scuttlebutt.** ``run.sh N ROUNDS`` of the side-by-side peer
  (``P2PMEM_PEERBENCH``, default /work/shared/peerbench/run.sh: ssb-server
  16 with ssb-replicate and ssb-ebt; a fresh peer replicates N messages over
  EBT). It installs from npm into its work folder on first use (``W``, default
  /tmp/peerbench-w, kept as a cache) and prints the median replication rate
  for sequentially and for pipeline-published feeds; the higher of the two is
  SSB's figure. If it fails, a line says why and the rest still runs.
* **Ingest as the store grows** (``--growth``, a minute or more): 200,000
  records into one store with ``Store.ingest_raw`` in batches of 500, each
  40,000-record slice timed.

Goals: ``ratio p2pmem/SSB >= 2.5``, ``ratio p2pmem/verify-all-cores >= 0.6``,
``ratio last/first 40k >= 0.8``. The figures are only comparable within one run:
on a small or shared machine they are noisy, so compare ratios, and rerun.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from benchmarks.common import Serve, Timer, corpus, rate  # noqa: E402
from p2pmem.agent.home import init_home  # noqa: E402
from p2pmem.node.control import request  # noqa: E402
from p2pmem.storage.store import DB_FILE, Store  # noqa: E402

DEFAULT_COUNT = int(os.environ.get("P2PMEM_BENCH_COUNT", "10000"))
PEERBENCH = Path(os.environ.get("P2PMEM_PEERBENCH", "/work/shared/peerbench/run.sh"))
VERIFY_ROUNDS = 3
POLL_S = 0.05
SSB_TIMEOUT_S = 3600.0
GROWTH_TOTAL, GROWTH_SLICE, GROWTH_BATCH = 200_000, 40_000, 500


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- raw Ed25519 verify ------------------------------------------------------
def verify_jobs(raws: list[bytes]) -> list[tuple[bytes, bytes, bytes]]:
    """(public key, signature, message) of each record, as ingest.py builds them."""
    jobs = []
    for raw in raws:
        protected, _unprotected, payload, signature = cbor2.loads(raw).value
        author = cbor2.loads(payload)[1]
        jobs.append((author, signature, cbor2.dumps(["Signature1", protected, b"", payload])))
    return jobs


def single_core_verify_rate(jobs: list[tuple[bytes, bytes, bytes]]) -> float:
    keyed = [(Ed25519PublicKey.from_public_bytes(k), s, m) for k, s, m in jobs]
    with Timer() as t:
        for key, signature, message in keyed:
            key.verify(signature, message)
    return rate(len(keyed), t.seconds)


def _verify_worker(jobs: list[tuple[bytes, bytes, bytes]], rounds: int, barrier, out) -> None:
    keyed = [(Ed25519PublicKey.from_public_bytes(k), s, m) for k, s, m in jobs]
    for r in range(rounds):
        barrier.wait()
        start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        for key, signature, message in keyed:
            key.verify(signature, message)
        out.put((r, start, time.monotonic()))


def all_cores_verify_rate(jobs: list[tuple[bytes, bytes, bytes]], cores: int) -> float:
    """Median over rounds of len(jobs) / (last worker's end - first worker's start)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(cores), ctx.Queue()
    shares = [jobs[i::cores] for i in range(cores)]
    procs = [ctx.Process(target=_verify_worker, args=(share, VERIFY_ROUNDS, barrier, out))
             for share in shares]
    try:
        for proc in procs:
            proc.start()
        spans: dict[int, list[tuple[float, float]]] = {}
        for _ in range(cores * VERIFY_ROUNDS):
            r, start, end = out.get(timeout=600)
            spans.setdefault(r, []).append((start, end))
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    rates = [rate(len(jobs), max(e for _, e in s) - min(b for b, _ in s)) for s in spans.values()]
    return statistics.median(rates)


def replicate(root: Path, records: list) -> tuple[float, float, dict]:
    """Seconds from B's ready line and from B's launch until B holds every
    record; and B's traffic stats."""
    home_a, home_b = root / "a", root / "b"
    init_home(home_a, name="a")
    init_home(home_b, name="b")
    with Store(home_a / DB_FILE) as store:
        for i in range(0, len(records), 5000):
            store.ingest(records[i : i + 5000])
        store.search.sync.current()  # A is a node that has been running: its search index exists
    want = len(records)
    deadline_s = max(300.0, want / 100)
    node_a = Serve(home_a)
    try:
        node_b = Serve(home_b, "--peer", node_a.address)
        try:
            db = sqlite3.connect(f"file:{home_b / DB_FILE}?mode=ro", uri=True, timeout=30)
            try:
                query = "SELECT count(*) FROM records WHERE kind = 'memory'"
                while (held := db.execute(query).fetchone()[0]) < want:
                    if time.monotonic() - node_b.ready > deadline_s or node_b.proc.poll() is not None:
                        raise SystemExit(
                            f"replication benchmark: b stuck at {held} of {want}\n{node_b.tail()}"
                        )
                    time.sleep(POLL_S)
                done = time.monotonic()
                have = {row[0] for row in db.execute("SELECT id FROM records")}
            finally:
                db.close()
            missing = sum(1 for r in records if r.id not in have)
            if missing:
                raise SystemExit(f"replication benchmark: b holds {held} memories but lacks "
                                 f"{missing} of A's")
            stats = request(home_b, "status")["status"]["stats"]
        finally:
            node_b.stop()
    finally:
        node_a.stop()
    return done - node_b.ready, done - node_b.launched, stats


# -- Secure Scuttlebutt ----------------------------------------------------------
MEDIAN_LINE = re.compile(r"MEDIAN N=(\d+) (\w+): publish (\d+) msg/s, replication (\d+) msg/s")


def ssb_rate(count: int, rounds: int) -> float | None:
    """Run the SSB side-by-side peer; print its output; its best median
    replication rate, or None (with a line saying why)."""
    if not PEERBENCH.is_file():
        print(f"SSB peer: not run: {PEERBENCH} not found (set P2PMEM_PEERBENCH)")
        return None
    installed = (Path(os.environ.get("W", "/tmp/peerbench-w")) / "node_modules/ssb-server").is_dir()
    first = "" if installed else " (first use: installs ssb-server from npm, minutes)"
    print(f"SSB peer: {PEERBENCH} {count} {rounds}{first} ...", flush=True)
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["bash", str(PEERBENCH), str(count), str(rounds)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=SSB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        for line in (out or "").splitlines():
            print(f"  ssb| {line}")
        print(f"SSB peer: FAILED: no result within {SSB_TIMEOUT_S:g} s")
        return None
    elapsed = time.monotonic() - started
    for line in result.stdout.splitlines():
        print(f"  ssb| {line}")
    found = {m[2]: float(m[4]) for m in MEDIAN_LINE.finditer(result.stdout) if int(m[1]) == count}
    if result.returncode != 0 or not found:
        why = f"run.sh exited {result.returncode}" if result.returncode else "no MEDIAN line"
        hint = ""
        if not (Path(os.environ.get("W", "/tmp/peerbench-w")) / "node_modules/ssb-server").is_dir():
            hint = (" (ssb-server is not installed: npm install failed or timed out;"
                    " it needs node, npm and the npm registry)")
        print(f"SSB peer: FAILED after {elapsed:.0f} s: {why}{hint}")
        if not found:
            return None
    for mode, value in found.items():
        print(f"SSB replication ({mode} publishing), median of {rounds}: {value:,.0f} records/s")
    return max(found.values())


# -- ingest as the store grows -------------------------------------------------
def growth(root: Path) -> None:
    print(f"growth: signing {GROWTH_TOTAL:,} records ...", flush=True)
    raws = [r.raw for r in corpus(GROWTH_TOTAL, seed=11)]
    rates = []
    with Store(root / "growth.db") as store:
        store.start_verifiers()
        for first in range(0, GROWTH_TOTAL, GROWTH_SLICE):
            with Timer() as t:
                for i in range(first, first + GROWTH_SLICE, GROWTH_BATCH):
                    result = store.ingest_raw(raws[i : i + GROWTH_BATCH])
                    assert not result.rejected, result.rejected[:1]
            rates.append(rate(GROWTH_SLICE, t.seconds))
            print(f"ingest records {first:,}-{first + GROWTH_SLICE:,}: {rates[-1]:,.0f} records/s",
                  flush=True)
    print(f"ratio last/first 40k: {rates[-1] / rates[0]:.2f} (goal >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="N (default %(default)s)")
    parser.add_argument("--growth", action="store_true",
                        help="also ingest 200k into one store, first vs last 40k (minutes)")
    parser.add_argument("--no-ssb", action="store_true", help="skip the SSB peer")
    parser.add_argument("--ssb-rounds", type=int, default=3, help="SSB rounds (default 3)")
    args = parser.parse_args()
    count, cores = args.count, usable_cores()
    print(f"replication benchmark: {count} records, {cores} cores, loopback TCP, Noise-encrypted")
    records = list(corpus(count, seed=3))
    jobs = verify_jobs([r.raw for r in records])

    one_core = single_core_verify_rate(jobs)
    all_cores = all_cores_verify_rate(jobs, cores)
    print(f"raw Ed25519 verify (1 core): {one_core:,.0f} records/s")
    print(f"raw Ed25519 verify ({cores} cores, median of {VERIFY_ROUNDS}): {all_cores:,.0f} records/s")

    with tempfile.TemporaryDirectory(prefix="p2pmem-replication-") as tmp:
        from_ready, from_launch, stats = replicate(Path(tmp), records)
        p2pmem = rate(count, from_ready)
        print(f"p2pmem replication of {count} records: {from_ready:.2f} s from the fresh node's ready "
              f"line, {from_launch:.2f} s from its launch; "
              f"{stats['bytes_in'] + stats['bytes_out']:,} wire bytes")
        print(f"p2pmem replication: {p2pmem:,.0f} records/s "
              f"({rate(count, from_launch):,.0f} records/s counting process start-up)")

        ssb = None if args.no_ssb else ssb_rate(count, args.ssb_rounds)
        if ssb:
            print(f"ratio p2pmem/SSB: {p2pmem / ssb:.2f} (goal >= 2.5)")
        else:
            print("ratio p2pmem/SSB: n/a (no SSB figure) (goal >= 2.5)")
        print(f"ratio p2pmem/verify-all-cores: {p2pmem / all_cores:.2f} (goal >= 0.6)")

        if args.growth:
            growth(Path(tmp))


if __name__ == "__main__":
    main()
