"""Ingest rate against the raw single-core Ed25519 verify rate.

Baseline: verifying each record's signature alone, one core, nothing else.
Measured: `Store.ingest_raw` in batches of 500 — decode, check canonical form
and schema, verify (in the store's worker processes, started beforehand as a serving
node starts them), insert, log for the search index — and then, separately, the
same with the derived tantivy index brought up to date after every batch (what a
serving node that is recalled from while it replicates pays).
Goal (docs/performance.md): ratio >= 0.7.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cbor2  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from benchmarks.common import Timer, corpus, rate  # noqa: E402
from p2pmem.storage.store import Store  # noqa: E402

COUNT = int(os.environ.get("P2PMEM_BENCH_COUNT", "20000"))
BATCH = 500


def raw_verify_rate(raws: list[bytes]) -> float:
    jobs = []
    for raw in raws:
        protected, _unprotected, payload, signature = cbor2.loads(raw).value
        author = cbor2.loads(payload)[1]
        message = cbor2.dumps(["Signature1", protected, b"", payload])
        jobs.append((Ed25519PublicKey.from_public_bytes(author), signature, message))
    with Timer() as t:
        for key, signature, message in jobs:
            key.verify(signature, message)
    return rate(len(jobs), t.seconds)


def main() -> None:
    print(f"ingest benchmark: {COUNT} signed memories, batches of {BATCH}, {os.cpu_count()} cores")
    raws = [r.raw for r in corpus(COUNT)]
    size = sum(map(len, raws))
    verify = raw_verify_rate(raws)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        store.start_verifiers()  # one-time start-up, as a serving node does
        with Timer() as t:
            for i in range(0, len(raws), BATCH):
                result = store.ingest_raw(raws[i : i + BATCH])
                assert not result.rejected, result.rejected[:1]
        with Timer() as indexed:
            store.search.sync.current()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.db") as store:
        store.start_verifiers()
        indexer = Store(store.path, verify_workers=1, check_same_thread=False)
        done = threading.Event()

        def keep_up() -> None:  # what `serve` does: a worker thread, once a second
            while not done.wait(1.0):
                indexer.search.sync.current()

        worker = threading.Thread(target=keep_up)
        with Timer() as both:
            worker.start()
            for i in range(0, len(raws), BATCH):
                result = store.ingest_raw(raws[i : i + BATCH])
                assert not result.rejected, result.rejected[:1]
            done.set()
            worker.join()
            indexer.search.sync.current()
        assert indexer.search.sync.current().size == COUNT
        indexer.close()
    ingest = rate(COUNT, t.seconds)
    print(f"raw Ed25519 verify (1 core): {verify:,.0f} records/s")
    print(f"ingest (decode+verify+store+log): {ingest:,.0f} records/s ({size / t.seconds / 1e6:.1f} MB/s)")
    print(f"ratio ingest/verify: {ingest / verify:.2f} (goal >= 0.70)")
    print(f"lexical index of the {COUNT} afterwards: {indexed.seconds:.1f} s ({rate(COUNT, indexed.seconds):,.0f} records/s)")
    print(f"ingest with the index kept up by a worker thread once a second (as serve does): "
          f"{rate(COUNT, both.seconds):,.0f} records/s until both are done, "
          f"ratio to verify {rate(COUNT, both.seconds) / verify:.2f}")


if __name__ == "__main__":
    main()
