"""Retrieval quality on every development set, beside plain FTS5 BM25.

Sets: the LoCoMo development split (read from ../shared, never copied) and
the generated sets of benchmarks/datasets/ (written to a cache at run time).
Each turn becomes one signed memory of one agent (text "{speaker}: {text}",
the session as `session`, the session's date-time as `at`), stored through
the real Store; each question is an ``Agent.recall`` with limit 10 inside its
conversation, asked "now" = the day after the last session. A question is
found at k when any evidence turn is among the first k results; session
coverage is the share of the sessions holding evidence that the top 10
reaches. Questions without evidence (LoCoMo category 5, abstention) are not
scored.

The baseline in the same run: SQLite FTS5 (``porter unicode61``) BM25 over
the same texts with the question's words OR-ed and nothing else. Goals
(docs/performance.md): R@10 >= 1.2 x the baseline on every set, and no
category or ability below it.

``--ablate`` also runs the ranking with each component off (or on, for
those off by default), on every set: the table docs/retrieval.md shows.

Usage: python benchmarks/retrieval.py [--set locomo|techchat|...] [--ablate] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.datasets import lifechat, techchat  # noqa: E402
from p2pmem.agent.home import Agent  # noqa: E402
from p2pmem.model.identity import Identity  # noqa: E402
from p2pmem.retrieval import engine  # noqa: E402
from p2pmem.storage.keyfile import save_identity  # noqa: E402
from p2pmem.storage.store import DB_FILE, Store  # noqa: E402

_LOCOMO_PART = "shared/datasets/locomo-dev/locomo-dev.json"


def _locomo() -> Path:
    """The LoCoMo dev split in the nearest ancestor's shared/ (a worktree sits deeper than the checkout)."""
    here = Path(__file__).resolve().parent
    found = [p / _LOCOMO_PART for p in here.parents if (p / _LOCOMO_PART).exists()]
    return found[0] if found else here.parent.parent / _LOCOMO_PART


LOCOMO = _locomo()
DAY_MS = 86_400_000
LOCOMO_CATEGORIES = {1: "c1 multi-hop", 2: "c2 temporal", 3: "c3 open-domain", 4: "c4 single-hop"}


@dataclass
class Conversation:
    name: str
    turns: list[tuple[str, str, str, int]]  # (turn id, text, session, at_ms)
    questions: list[tuple[str, str, set[str]]]  # (question, category or ability, evidence turn ids)


def load_locomo(path: Path) -> list[Conversation]:
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
                questions.append((qa["question"], LOCOMO_CATEGORIES[qa["category"]], evidence))
        out.append(Conversation(item["sample_id"], turns, questions))
    return out


def load_generated(path: Path) -> list[Conversation]:
    """A set in the shape of benchmarks/datasets/base.py."""
    out = []
    for conv in json.loads(path.read_text()):
        turns = [
            (t["id"], f"{t['role'].capitalize()}: {t['text']}", s["id"], s["at_ms"])
            for s in conv["sessions"] for t in s["turns"]
        ]
        questions = [(q["question"], q["ability"], set(q["evidence"])) for q in conv["questions"] if q["evidence"]]
        out.append(Conversation(conv["name"], turns, questions))
    return out


SETS: dict[str, Callable[[], list[Conversation]]] = {
    "locomo": lambda: load_locomo(LOCOMO),
    "techchat": lambda: load_generated(Path(techchat.path())),
    "lifechat": lambda: load_generated(Path(lifechat.path())),
}


@dataclass
class Score:
    """R@5, R@10, MRR and session coverage, overall and per label."""

    n: int = 0
    at5: int = 0
    at10: int = 0
    rr: float = 0.0
    coverage: float = 0.0
    per: dict[str, list[int]] = field(default_factory=dict)

    def add(self, label: str, ranked: list[str], evidence: set[str], session_of: dict[str, str]) -> None:
        first = next((i for i, d in enumerate(ranked[:10]) if d in evidence), None)
        self.n += 1
        self.at5 += first is not None and first < 5
        self.at10 += first is not None
        self.rr += 0.0 if first is None else 1.0 / (first + 1)
        wanted = {session_of[e] for e in evidence}
        self.coverage += len(wanted & {session_of[d] for d in ranked[:10]}) / len(wanted)
        hits = self.per.setdefault(label, [0, 0])
        hits[0] += first is not None
        hits[1] += 1

    def r10(self, label: str | None = None) -> float:
        if label is None:
            return self.at10 / max(1, self.n)
        hits, total = self.per.get(label, (0, 0))
        return hits / total if total else 0.0

    def line(self, name: str) -> str:
        n = max(1, self.n)
        return (f"{name:<16} R@5 {self.at5 / n:.3f}  R@10 {self.r10():.3f}  MRR {self.rr / n:.3f}  "
                f"sessions@10 {self.coverage / n:.3f}")

    def labels(self, name: str) -> str:
        return f"{'':<16} R@10 " + " ".join(f"{k}={self.r10(k):.3f}" for k in sorted(self.per))


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


class Loaded:
    """One conversation in a real store, asked as many times as needed."""

    def __init__(self, conv: Conversation, home: Path, model: Path | None) -> None:
        identity = Identity.generate()
        save_identity(identity, home)
        self.store = Store(home / DB_FILE)
        self.store.search.model_path = model
        self.agent = Agent(home, identity, self.store)
        self.conv = conv
        self.dia_of: dict[bytes, str] = {}
        records = []
        for dia, text, session, at_ms in conv.turns:
            record = self.agent.make_memory(text, session=session, at=at_ms)
            self.dia_of[record.id] = dia
            records.append(record)
        self.store.ingest(records)
        if model is not None:
            self.store.search.rebuild()  # embeds every memory before the questions
        self.now = max(t[3] for t in conv.turns) + DAY_MS
        self.agent.recall("warm up", now_ms=self.now)

    def ask(self, semantic: bool) -> tuple[list[list[str]], float]:
        model = self.store.search.model_path
        if not semantic:
            self.store.search.model_path, self.store.search._semantic = None, None
        out, started = [], time.perf_counter()
        for question, _, _ in self.conv.questions:
            found = self.agent.recall(question, limit=10, now_ms=self.now)
            out.append([self.dia_of[m.record.id] for m in found])
        elapsed = time.perf_counter() - started
        self.store.search.model_path = model
        return out, elapsed

    def close(self) -> None:
        self.store.close()


def variants(ablate: bool, model: Path | None) -> dict[str, tuple[engine.Tuning, bool]]:
    """Name -> (the tuning, whether the semantic stage runs)."""
    base = engine.TUNING
    out = {"p2pmem": (base, False)}
    if ablate:
        for name in ("window", "session", "speaker", "time"):
            out[f"-{name}"] = (replace(base, **{name: 0.0}), False)
        for decay in (0.5, 0.7, 0.85):
            out[f"diversity {decay}"] = (replace(base, diversity=decay), False)
        out["diversity off"] = (replace(base, diversity=1.0), False)
        out["-session +div 0.7"] = (replace(base, session=0.0, diversity=0.7), False)
        out["BM25 only"] = (replace(base, window=0.0, session=0.0, speaker=0.0, time=0.0), False)
    if model is not None:
        out["p2pmem+sem"] = (base, True)
        if ablate:
            for weight in (0.3, 0.6, 1.0):
                out[f"+sem {weight}"] = (replace(base, semantic=weight), True)
    return {k: v for k, v in out.items() if k == "p2pmem" or v[0] != base or v[1]}


def run_set(name: str, conversations: list[Conversation], ablate: bool, model: Path | None) -> bool:
    systems = variants(ablate, model)
    scores = {"FTS5 BM25": Score(), **{k: Score() for k in systems}}
    seconds: dict[str, float] = dict.fromkeys(systems, 0.0)
    for conv in conversations:
        session_of = {t[0]: t[2] for t in conv.turns}
        for (_, label, evidence), ranked in zip(conv.questions, fts5_baseline(conv), strict=True):
            scores["FTS5 BM25"].add(label, ranked, evidence, session_of)
        with tempfile.TemporaryDirectory() as tmp:
            loaded = Loaded(conv, Path(tmp), model)
            for system, (tuning, semantic) in systems.items():
                engine.TUNING = tuning
                results, elapsed = loaded.ask(semantic)
                seconds[system] += elapsed
                for (_, label, evidence), ranked in zip(conv.questions, results, strict=True):
                    scores[system].add(label, ranked, evidence, session_of)
            engine.TUNING = systems["p2pmem"][0]
            loaded.close()
    questions = sum(len(c.questions) for c in conversations)
    memories = sum(len(c.turns) for c in conversations)
    print(f"== {name}: {len(conversations)} conversations, {memories} memories, {questions} questions")
    for system, score in scores.items():
        print(score.line(system))
        if system in ("FTS5 BM25", "p2pmem", "p2pmem+sem"):
            print(score.labels(system))
    base, ours = scores["FTS5 BM25"], scores["p2pmem"]
    ratio = ours.r10() / max(base.r10(), 1e-9)
    worst = min(ours.r10(k) - base.r10(k) for k in base.per)
    print(f"ratio R@10 p2pmem/FTS5: {ratio:.2f} (goal >= 1.2); smallest label margin {worst:+.3f} (goal >= 0)")
    for system, spent in seconds.items():
        print(f"{system} recall mean {1000 * spent / questions:.2f} ms per question (Agent.recall, trust included)")
    return ratio >= 1.2 and worst >= 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", choices=sorted(SETS), help="one set (repeatable); default: all")
    parser.add_argument("--ablate", action="store_true", help="also each ranking component on/off")
    parser.add_argument("--model", type=Path, default=None, help="a local embedding model folder")
    args = parser.parse_args()
    if "locomo" in (args.set or SETS) and not LOCOMO.exists():
        print(f"retrieval benchmark: no LoCoMo dataset at {LOCOMO}", file=sys.stderr)
        return 1
    ok = True
    for name in args.set or list(SETS):
        ok = run_set(name, SETS[name](), args.ablate, args.model) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
