"""Local recall latency at 100,000 memories.

Fills a store with 100,000 varied memories (function words and Zipf-Mandelbrot content words, topics,
sessions, authors, `at` times over two years), then times 2,000 recalls of
the kinds agents make: one to three words, some with a topic, a time window,
an author or a session. The baseline in the same run is one primary-key
lookup of a record, the cheapest read the store can do.
Goal (docs/performance.md): p50 <= 2 ms, p99 <= 10 ms.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import FUNCTION_WORDS, TOPICS, ContentWords, corpus, identities, vocabulary  # noqa: E402
from p2pmem.agent.home import Agent  # noqa: E402
from p2pmem.storage.keyfile import save_identity
from p2pmem.storage.store import Store  # noqa: E402

COUNT = int(os.environ.get("P2PMEM_BENCH_COUNT", "100000"))
QUERIES = 2000
WARM_UP = 200


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main() -> None:
    print(f"recall benchmark: {COUNT} memories, {QUERIES} queries")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        viewer = identities(1, seed=99)[0]
        save_identity(viewer, home)
        store = Store(home / "store.db")
        started = time.perf_counter()
        batch = []
        for record in corpus(COUNT):
            batch.append(record)
            if len(batch) == 2000:
                store.ingest(batch)
                batch = []
        store.ingest(batch)
        print(f"filled in {time.perf_counter() - started:.1f} s (signed, verified, stored)")
        started = time.perf_counter()
        store.search.sync.current()  # the derived index catches up with the store
        caught_up = time.perf_counter() - started
        started = time.perf_counter()
        store.search.rebuild()
        rebuilt = time.perf_counter() - started
        index_bytes = sum(f.stat().st_size for f in (home / "store.index").rglob("*") if f.is_file())
        db_bytes = sum(f.stat().st_size for f in home.glob("store.db*"))
        print(f"lexical index: catch-up from the log {caught_up:.1f} s, full rebuild {rebuilt:.1f} s, "
              f"{index_bytes / 1e6:.1f} MB on disk (store.db {db_bytes / 1e6:.1f} MB)")
        agent = Agent(home, viewer, store)
        rng = random.Random(5)
        content = ContentWords(vocabulary(random.Random(1)))
        authors = [i.public_key for i in identities(20, 1)]
        ids = [row[1] for row in store.items()][:5000]

        lookups = []
        for record_id in rng.sample(ids, 1000):
            t = time.perf_counter()
            store.get_raw(record_id)
            lookups.append(time.perf_counter() - t)

        latencies = []
        base_ms = 1_700_000_000_000
        for query in range(QUERIES + WARM_UP):
            filters: dict[str, object] = {}
            roll = rng.random()
            if roll < 0.15:
                filters["topics"] = [rng.choice(TOPICS)]
            elif roll < 0.30:
                start = base_ms - rng.randrange(0, 700 * 86_400_000)
                filters["since"], filters["until"] = start, start + 30 * 86_400_000
            elif roll < 0.40:
                filters["authors"] = [rng.choice(authors)]
            elif roll < 0.45:
                filters["session"] = f"s{rng.randrange(5)}"
            # keywords, or a question in words ("what about X and Y")
            terms = content.draw(rng, rng.randint(1, 3))
            if rng.random() < 0.3:
                terms = [rng.choice(FUNCTION_WORDS), *terms, rng.choice(FUNCTION_WORDS)]
            text = " ".join(terms)
            t = time.perf_counter()
            agent.recall(text, limit=10, **filters)
            if query >= WARM_UP:  # a serving node's caches are warm
                latencies.append(time.perf_counter() - t)
        store.close()

    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    lookup = statistics.median(lookups) * 1000
    print(f"baseline primary-key lookup: p50 {lookup * 1000:.0f} us")
    print(f"recall p50 {p50:.2f} ms (goal <= 2), p99 {p99:.2f} ms (goal <= 10), mean {statistics.mean(latencies) * 1000:.2f} ms")
    print(f"ratio recall p50 / lookup p50: {p50 / lookup:.0f}x")


if __name__ == "__main__":
    main()
