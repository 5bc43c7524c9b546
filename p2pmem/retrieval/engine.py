"""The retrieval engine: one ranking for recall, for answering ``ask``, and
for merging the hits an asker collects from many nodes.

A search runs in stages (docs/retrieval.md explains each and its measured
effect on LoCoMo):

1. **Candidates**: exact BM25 top ``CANDIDATES`` from tantivy over every
   current memory that passes the hard filters (since/until/topic/author/
   session/visibility), whatever its age.
2. **Context re-scoring** of the candidates and their session neighbours:
   a memory's own BM25 (without a "Name:" prefix), plus the BM25 of its
   window (previous + itself + next memory of the session), plus the
   strength of its session (its three best memories), times a boost when
   the question names the memory's speaker.
3. **Meaning** (optional, off by default): the cosine similarity from the
   node's own embedder, added with a small weight to the lexical score
   relative to the best one.
4. **Priors**: a time expression in the question ("last week", "in May
   2023") becomes a soft preference for memories whose ``at`` falls in that
   interval, never a filter. Trust is applied by the Agent on top; equal
   scores go to the newest.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from p2pmem.retrieval import text as words
from p2pmem.retrieval.diversity import diversify
from p2pmem.retrieval.documents import term_key
from p2pmem.retrieval.lexical import Filters, LexicalIndex
from p2pmem.retrieval.sync import DocumentSource, IndexSync, Progress
from p2pmem.retrieval.timeexpr import TimePreference, parse_time_preference, time_weight

if TYPE_CHECKING:
    from p2pmem.retrieval.semantic import SemanticIndex

# Measured on the LoCoMo dev split (docs/retrieval.md): 100 candidates lose
# nothing against scoring every memory.
CANDIDATES = 100
SESSION_TOP = 3  # a session's strength: the sum of its three best memories' scores
POOL_SCORES = 3  # body and window scores are read for the best 3 x CANDIDATES matches


@dataclass(frozen=True)
class Tuning:
    """The ranking's weights (docs/retrieval.md has the ablation on every
    development set that chose them). One module-level instance is used;
    benchmarks/retrieval.py swaps it to measure each component on and off."""

    window: float = 1.0  # BM25 of previous + self + next
    session: float = 1.0  # the session's strength
    speaker: float = 0.5  # x1.5 when the question names the memory's speaker
    time: float = 1.0  # a memory inside the question's time gets up to (1 + time) x
    # Measured on LoCoMo with MiniLM-L6: the cosine added at weight 0.1 to the
    # lexical score relative to the best gave +0.003 R@10; reciprocal rank
    # fusion lost 0.005-0.03 (it throws away how far ahead the lexical leader is).
    semantic: float = 0.1
    diversity: float = 1.0  # each further memory of a session already chosen: score x this (1: off)
    expansion: float = 0.0


TUNING = Tuning()


@dataclass(frozen=True)
class SearchRequest:
    text: str
    filters: Filters = Filters()
    limit: int = 10
    now_ms: int | None = None  # for time expressions; None: no time preference
    fresh: bool = True  # bring the index up to date first (else: search it as it is)


@dataclass
class Ranked:
    """One result and how it got its place (``recall --explain``)."""

    rid: int
    score: float
    lexical_rank: int | None = None
    lexical_score: float = 0.0
    semantic_rank: int | None = None
    time_weight: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    time: TimePreference | None = None  # the time the question named, if any

    def explain(self) -> dict[str, object]:
        out: dict[str, object] = {
            "score": round(self.score, 6),
            "lexical_rank": self.lexical_rank,
            "lexical_score": round(self.lexical_score, 4),
            "semantic_rank": self.semantic_rank,
            "time_weight": None if self.time_weight is None else round(self.time_weight, 4),
        }
        out.update({k: round(v, 4) for k, v in self.parts.items()})
        if self.time is not None:
            out["time"] = {"phrase": self.time.phrase, "from_ms": self.time.start_ms, "until_ms": self.time.end_ms}
        return out


@dataclass(frozen=True)
class SearchResult:
    ranked: list[Ranked]
    terms: tuple[str, ...]


class SearchEngine:
    """Ranks the current memories of one store."""

    def __init__(self, source: DocumentSource, root: Path | None) -> None:
        self.source = source
        self.sync = IndexSync(source, root)
        self.model_path: Path | None = None  # a local embedding model (docs/models.md), loaded on first use
        self._semantic: SemanticIndex | None = None

    @property
    def semantic(self) -> SemanticIndex | None:
        """The semantic stage, if a model is configured (and loadable)."""
        if self._semantic is None and self.model_path is not None and self.sync.root is not None:
            from p2pmem.retrieval.embed import load_embedder
            from p2pmem.retrieval.semantic import SemanticIndex

            self._semantic = SemanticIndex(self.source, self.sync.root, load_embedder(self.model_path))
        return self._semantic

    def close(self) -> None:
        if self._semantic is not None:
            self._semantic.close()
            self._semantic = None

    def newest(self, filters: Filters, limit: int, *, fresh: bool = True) -> list[int]:
        """Rowids of the newest current memories passing ``filters`` (no
        query words), newest first."""
        index = self.sync.current() if fresh else self.sync.as_is()
        return index.newest(filters, limit)

    def search(self, request: SearchRequest) -> SearchResult:
        analysed, plain = words.analyse_query(request.text)
        terms = tuple(analysed)
        preference = (
            parse_time_preference(request.text, request.now_ms) if request.now_ms is not None else None
        )
        if not terms:
            return SearchResult([], terms)
        index = self.sync.current() if request.fresh else self.sync.as_is()
        wanted = max(CANDIDATES, request.limit)
        if plain:
            found = index.candidates(terms, request.filters, wanted, field="plain")
            pool = _Pool()
            for i, rid in enumerate(found.columns.get("rid", [])):
                pool.add(rid, found.columns["at"][i], found.columns["ts"][i], 0, False, i + 1, found.scores[i])
            pool.scores = list(pool.lexical)
        else:
            pool = self._contextual(index, terms, request)
        if not pool.rids:
            return SearchResult([], terms)
        if preference is not None:
            for i, at in enumerate(pool.at):
                weight = time_weight(at, preference)
                pool.time[i] = weight
                pool.scores[i] *= 1.0 + TUNING.time * weight
        semantic_rank: dict[int, int] = {}
        if self.semantic is not None:
            semantic_rank = self._fuse(pool, request, self.semantic)
        # equal scores (same words, same length): the newest first
        rounded = [round(score, 9) for score in pool.scores]
        if TUNING.diversity < 1.0:
            tiebreak = [(-ts, rid) for ts, rid in zip(pool.ts, pool.rids, strict=True)]
            order = diversify(rounded, pool.session, tiebreak, TUNING.diversity, request.limit)
        else:
            order = heapq.nsmallest(
                request.limit, range(len(pool.rids)), key=lambda i: (-rounded[i], -pool.ts[i], pool.rids[i]),
            )
        ranked = [pool.ranked(i, semantic_rank.get(pool.rids[i])) for i in order]
        for item in ranked:
            item.time = preference
        return SearchResult(ranked, terms)

    def _contextual(self, index: LexicalIndex, terms: Sequence[str], request: SearchRequest) -> _Pool:
        """Stages 1 and 2: candidates, then context re-scoring. Everything
        comes from three index searches: the candidates with their
        neighbours' fast fields, and the best body and window scores."""
        wanted = max(CANDIDATES, request.limit)
        found = index.candidates(terms, request.filters, wanted)
        pool = _Pool()
        if not len(found):
            return pool
        turn = index.top_scores("body", terms, request.filters, POOL_SCORES * wanted)
        window = index.top_scores("window", terms, request.filters, POOL_SCORES * wanted)
        asked = {term_key(t) for t in terms}
        col = found.columns
        keys = col["session_key"]
        for i, rid in enumerate(col["rid"]):
            named = col["spk1"][i] in asked or col["spk2"][i] in asked
            pool.add(rid, col["at"][i], col["ts"][i], keys[i], named, i + 1, found.scores[i])
        for side in ("prev", "next"):
            at, ts, spk1, spk2 = (col[f"{side}_{n}"] for n in ("at", "ts", "spk1", "spk2"))
            for i, rid in enumerate(col[side]):
                if rid >= 0 and rid not in pool.position:
                    pool.add(rid, at[i], ts[i], keys[i], spk1[i] in asked or spk2[i] in asked, None, 0.0)
        if _needs_check(request.filters):
            extra = [rid for rid, rank in zip(pool.rids, pool.rank, strict=True) if rank is None]
            if extra:
                pool.keep(index.passing(extra, request.filters) | set(col["rid"]))
        own = [turn.get(rid, 0.0) for rid in pool.rids]
        best: dict[int, list[float]] = {}
        for key, score in zip(pool.session, own, strict=True):
            if key:
                best.setdefault(key, []).append(score)
        strength = {key: sum(sorted(v, reverse=True)[:SESSION_TOP]) for key, v in best.items()}
        top_turn = max(own, default=0.0)
        scale = top_turn / (max([*strength.values(), top_turn]) or 1.0)
        for i, rid in enumerate(pool.rids):
            key = pool.session[i]
            session = (strength[key] if key else own[i]) * scale  # no session: a session of one
            around = window.get(rid, 0.0)
            score = own[i] + TUNING.window * around + TUNING.session * session
            pool.scores[i] = score * (1.0 + TUNING.speaker * pool.named[i])
            pool.parts[i] = (own[i], around, session)
        return pool

    def _fuse(self, pool: _Pool, request: SearchRequest, stage: SemanticIndex) -> dict[int, int]:
        """Stage 3: the semantic ranking joined to the lexical one (over the
        memories that pass the filters). Returns each memory's semantic rank."""
        index = self.sync.index or self.sync.current()
        hits = stage.search(request.text, max(CANDIDATES, request.limit), None)
        allowed = index.passing([rid for rid, _ in hits], request.filters)
        hits = [(rid, cosine) for rid, cosine in hits if rid in allowed]
        semantic = [rid for rid, _ in hits]
        missing = [rid for rid in semantic if rid not in pool.position]
        times = self.source.times(missing) if missing else {}
        for rid in missing:
            at, ts = times.get(rid, (0, 0))
            pool.add(rid, at, ts, 0, False, None, 0.0)
        # the lexical score relative to the best (time preference included), plus the cosine
        top = max(pool.scores) or 1.0
        cosine = dict(hits)
        for i, rid in enumerate(pool.rids):
            pool.scores[i] = pool.scores[i] / top + TUNING.semantic * max(0.0, cosine.get(rid, 0.0))
        return {rid: rank for rank, rid in enumerate(semantic, 1)}

    def purge(self, rids: Sequence[int]) -> None:
        """Memories were retracted: rewrite the lexical index without them
        and delete their vectors, so their text leaves every index at once."""
        self.sync.current()
        if self.sync.root is not None:
            from p2pmem.retrieval.semantic import purge_vectors

            purge_vectors(self.sync.root, rids)

    def rebuild(self, progress: Progress | None = None) -> None:
        """Rewrite the lexical index from the store, and re-embed every
        memory if a model is configured (``p2pmem reindex``)."""
        self.sync.rebuild(progress)
        if self.semantic is not None:
            self.semantic.catch_up(progress)


class _Pool:
    """The memories being scored, column by column (a query scores a few
    hundred: plain lists keep the per-query cost small)."""

    def __init__(self) -> None:
        self.rids: list[int] = []
        self.at: list[int] = []
        self.ts: list[int] = []
        self.session: list[int] = []
        self.named: list[bool] = []
        self.rank: list[int | None] = []
        self.lexical: list[float] = []
        self.scores: list[float] = []
        self.time: list[float | None] = []
        self.parts: list[tuple[float, float, float] | None] = []
        self.position: dict[int, int] = {}

    def add(self, rid: int, at: int, ts: int, session: int, named: bool, rank: int | None, lexical: float) -> None:
        self.position[rid] = len(self.rids)
        self.rids.append(rid)
        self.at.append(at)
        self.ts.append(ts)
        self.session.append(session)
        self.named.append(named)
        self.rank.append(rank)
        self.lexical.append(lexical)
        self.scores.append(0.0)
        self.time.append(None)
        self.parts.append(None)

    def keep(self, allowed: set[int]) -> None:
        columns = ("rids", "at", "ts", "session", "named", "rank", "lexical", "scores", "time", "parts")
        keep = [i for i, rid in enumerate(self.rids) if rid in allowed]
        for name in columns:
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])
        self.position = {rid: i for i, rid in enumerate(self.rids)}

    def ranked(self, i: int, semantic_rank: int | None) -> Ranked:
        parts: dict[str, float] = {}
        if self.parts[i] is not None:
            own, around, session = self.parts[i]  # type: ignore[misc]
            parts = {"turn": own, "window": around, "session": session, "speaker": float(self.named[i])}
        return Ranked(
            self.rids[i], self.scores[i], lexical_rank=self.rank[i], lexical_score=self.lexical[i],
            semantic_rank=semantic_rank, time_weight=self.time[i], parts=parts,
        )


def _needs_check(f: Filters) -> bool:
    """Filters a session neighbour may fail although its neighbour passed
    (author and session are the same for both)."""
    return bool(f.topics or f.visibilities or f.since is not None or f.until is not None)
