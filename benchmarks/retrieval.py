"""Retrieval quality on LoCoMo (development split), beside plain FTS5 BM25.

Each dialogue turn becomes one signed memory of one agent (text
"{speaker}: {text}", session "session_N", `at` the session's date-time),
stored through the real Store; each question is an ``Agent.recall`` with
limit 10 inside its conversation, asked "now" = the day after the last
session. A question is found at k when any evidence turn is among the first
k results. Category 5 (no answer in the conversation) is skipped.

The baseline in the same run is the dataset README's: SQLite FTS5
(``porter unicode61``) BM25 over the same turns with the question's words
OR-ed and nothing else. Goal (docs/performance.md): R@10 >= 1.2 x the
baseline overall and no category below the baseline.

Usage: python benchmarks/retrieval.py [PATH-TO-locomo-json] [--model FOLDER]
(default: ../shared/datasets/locomo-dev/locomo-dev.json beside the repository)
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pmem.agent.home import Agent  # noqa: E402
from p2pmem.model.identity import Identity  # noqa: E402
from p2pmem.storage.keyfile import save_identity
from p2pmem.storage.store import DB_FILE, Store  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/datasets/locomo-dev/locomo-dev.json"
CATEGORIES = (1, 2, 3, 4)
DAY_MS = 86_400_000


@dataclass
class Conversation:
    name: str
    turns: list[tuple[str, str, str, int]]  # (dia_id, text, session, at_ms)
    questions: list[tuple[str, int, set[str]]]  # (question, category, evidence dia_ids)


def load(path: Path) -> list[Conversation]:
    out = []
    for item in json.loads(path.read_text()):
        conv = item["conversation"]
        turns = []
        n = 1
        while f"session_{n}" in conv:
            when = datetime.strptime(conv[f"session_{n}_date_time"].strip(), "%I:%M %p on %d %B, %Y")
            at_ms = int(when.replace(tzinfo=UTC).timestamp() * 1000)
            for turn in conv[f"session_{n}"]:
                turns.append((turn["dia_id"], f"{turn['speaker']}: {turn['text']}", f"session_{n}", at_ms))
            n += 1
        known = {t[0] for t in turns}
        questions = []
        for qa in item["qa"]:
            if qa["category"] == 5:
                continue
            # one evidence entry in the data holds two ids joined by ';'
            evidence = {e.strip() for x in qa["evidence"] for e in x.split(";") if e.strip() in known}
            if evidence:
                questions.append((qa["question"], qa["category"], evidence))
        out.append(Conversation(item["sample_id"], turns, questions))
    return out


@dataclass
class Score:
    n: int = 0
    at5: int = 0
    at10: int = 0
    rr: float = 0.0
    per: dict[int, list[int]] = field(default_factory=lambda: {c: [0, 0] for c in CATEGORIES})

    def add(self, category: int, ranked: list[str], evidence: set[str]) -> None:
        first = next((i for i, d in enumerate(ranked[:10]) if d in evidence), None)
        self.n += 1
        self.at5 += first is not None and first < 5
        self.at10 += first is not None
        self.rr += 0.0 if first is None else 1.0 / (first + 1)
        self.per[category][0] += first is not None
        self.per[category][1] += 1

    def r10(self, category: int | None = None) -> float:
        if category is None:
            return self.at10 / self.n
        hits, total = self.per[category]
        return hits / total if total else 0.0

    def line(self, name: str) -> str:
        cats = " ".join(f"c{c}={self.r10(c):.3f}" for c in CATEGORIES)
        return (f"{name:<10} R@5 {self.at5 / self.n:.3f}  R@10 {self.r10():.3f}  MRR {self.rr / self.n:.3f}"
                f"  | R@10 by category {cats}")


def fts5_baseline(conv: Conversation) -> list[list[str]]:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE m USING fts5(text, tokenize='porter unicode61')")
    db.executemany("INSERT INTO m(rowid, text) VALUES (?, ?)", [(i + 1, t[1]) for i, t in enumerate(conv.turns)])
    out = []
    for question, _, _ in conv.questions:
        words = list(dict.fromkeys(re.findall(r"\w+", question.lower())))
        query = " OR ".join('"' + w + '"' for w in words)
        rows = db.execute("SELECT rowid FROM m WHERE m MATCH ? ORDER BY bm25(m) LIMIT 10", (query,))
        out.append([conv.turns[r[0] - 1][0] for r in rows])
    return out


def p2pmem_recall(conv: Conversation, home: Path, model: Path | None = None) -> tuple[list[list[str]], float]:
    identity = Identity.generate()
    save_identity(identity, home)
    store = Store(home / DB_FILE)
    store.search.model_path = model
    agent = Agent(home, identity, store)
    dia_of: dict[bytes, str] = {}
    records = []
    for dia, text, session, at_ms in conv.turns:
        record = agent.make_memory(text, session=session, at=at_ms)
        dia_of[record.id] = dia
        records.append(record)
    store.ingest(records)
    if model is not None:
        store.search.rebuild()  # embeds every memory before the questions
    now = max(t[3] for t in conv.turns) + DAY_MS
    agent.recall("warm up", now_ms=now)
    out, started = [], time.perf_counter()
    for question, _, _ in conv.questions:
        found = agent.recall(question, limit=10, now_ms=now)
        out.append([dia_of[m.record.id] for m in found])
    elapsed = time.perf_counter() - started
    store.close()
    return out, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=None, help="a local embedding model folder")
    args = parser.parse_args()
    path = args.data
    if not path.exists():
        print(f"retrieval benchmark: no dataset at {path}", file=sys.stderr)
        return 1
    conversations = load(path)
    baseline, ours = Score(), Score()
    seconds, questions = 0.0, 0
    for conv in conversations:
        for (_, category, evidence), ranked in zip(conv.questions, fts5_baseline(conv), strict=True):
            baseline.add(category, ranked, evidence)
        with tempfile.TemporaryDirectory() as tmp:
            results, elapsed = p2pmem_recall(conv, Path(tmp), args.model)
        seconds += elapsed
        questions += len(conv.questions)
        for (_, category, evidence), ranked in zip(conv.questions, results, strict=True):
            ours.add(category, ranked, evidence)
    memories = sum(len(c.turns) for c in conversations)
    print(f"retrieval benchmark: {path.name}, {len(conversations)} conversations, {memories} memories, "
          f"{questions} questions (categories 1-4)")
    print(baseline.line("FTS5 BM25"))
    print(ours.line("p2pmem" if args.model is None else "p2pmem+sem"))
    ratio = ours.r10() / baseline.r10()
    worst = min(ours.r10(c) - baseline.r10(c) for c in CATEGORIES)
    print(f"ratio R@10 p2pmem/FTS5: {ratio:.2f} (goal >= 1.2); smallest category margin {worst:+.3f} (goal >= 0)")
    print(f"p2pmem recall mean {1000 * seconds / questions:.2f} ms per question (Agent.recall, trust included)")
    return 0 if ratio >= 1.2 and worst >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
