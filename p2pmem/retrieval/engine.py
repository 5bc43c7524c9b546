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
3. **Meaning** (optional, off by default): a semantic ranking from the
   node's own embedder, joined by reciprocal rank fusion.
4. **Priors**: a time expression in the question ("last week", "in May
   2023") becomes a soft preference for memories whose ``at`` falls in that
   interval, never a filter. Trust is applied by the Agent on top; equal
   scores go to the newest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p2pmem.retrieval import text as words
from p2pmem.retrieval.lexical import Filters, LexicalIndex
from p2pmem.retrieval.sync import DocumentSource, IndexSync, Progress
from p2pmem.retrieval.timeexpr import TimePreference, parse_time_preference, time_weight

# Measured on the LoCoMo dev split (docs/retrieval.md): 100 candidates lose
# nothing against scoring every memory; the weights held in leave-one-
# conversation-out tuning.
CANDIDATES = 100
WINDOW_WEIGHT = 1.0
SESSION_WEIGHT = 1.0
SESSION_TOP = 3  # a session's strength: the sum of its three best memories' scores
SPEAKER_BOOST = 0.5  # x1.5 when the question names the memory's speaker
TIME_BOOST = 1.0  # a memory inside the question's time gets up to (1 + TIME_BOOST) x
RRF_K = 60
SEMANTIC_WEIGHT = 0.3  # the semantic ranking's weight in the fusion (lexical: 1.0)

SemanticSearch = Callable[[str, int, set[int] | None], list[int]]


@dataclass(frozen=True)
class SearchRequest:
    text: str
    filters: Filters = Filters()
    limit: int = 10
    now_ms: int | None = None  # for time expressions; None: no time preference


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

    def explain(self) -> dict[str, object]:
        out: dict[str, object] = {
            "score": round(self.score, 6),
            "lexical_rank": self.lexical_rank,
            "lexical_score": round(self.lexical_score, 4),
            "semantic_rank": self.semantic_rank,
            "time_weight": None if self.time_weight is None else round(self.time_weight, 4),
        }
        out.update({k: round(v, 4) for k, v in self.parts.items()})
        return out


@dataclass(frozen=True)
class SearchResult:
    ranked: list[Ranked]
    terms: tuple[str, ...]
    time: TimePreference | None


class SearchEngine:
    """Ranks the current memories of one store."""

    def __init__(self, source: DocumentSource, root: Path | None) -> None:
        self.source = source
        self.sync = IndexSync(source, root)
        self.semantic: SemanticSearch | None = None  # set by the owner when a model is configured

    def search(self, request: SearchRequest) -> SearchResult:
        terms = tuple(words.query_terms(request.text))
        preference = (
            parse_time_preference(request.text, request.now_ms) if request.now_ms is not None else None
        )
        if not terms:
            return SearchResult([], terms, preference)
        index = self.sync.current()
        wanted = max(CANDIDATES, request.limit)
        if words.only_stopwords(request.text):
            ranked = [
                Ranked(c.rid, c.score, lexical_rank=rank, lexical_score=c.score)
                for rank, c in enumerate(index.candidates(terms, request.filters, wanted, field="plain"), 1)
            ]
        else:
            ranked = self._contextual(index, terms, request)
        if self.semantic is not None and ranked:
            ranked = self._fuse(ranked, request)
        times = self.source.times([r.rid for r in ranked])
        if preference is not None:
            for r in ranked:
                if r.rid in times:
                    r.time_weight = time_weight(times[r.rid][0], preference)
                    r.score *= 1.0 + TIME_BOOST * r.time_weight
        # equal scores (same words, same length): the newest first
        ranked.sort(key=lambda r: (-round(r.score, 9), -times.get(r.rid, (0, 0))[1], r.rid))
        return SearchResult(ranked[: request.limit], terms, preference)

    def _contextual(self, index: LexicalIndex, terms: Sequence[str], request: SearchRequest) -> list[Ranked]:
        """Stages 1 and 2: candidates, then context re-scoring."""
        found = index.candidates(terms, request.filters, max(CANDIDATES, request.limit))
        if not found:
            return []
        rank_of = {c.rid: rank for rank, c in enumerate(found, 1)}
        lexical = {c.rid: c.score for c in found}
        session_of = {c.rid: c.session_key for c in found}
        extra = list(dict.fromkeys(
            n for c in found for n in (c.prev, c.next) if n >= 0 and n not in rank_of
        ))
        if extra:
            extra = [r for r in extra if r in index.passing(extra, request.filters)]
            for rid, (_prev, _next, key) in index.neighbourhood(extra).items():
                session_of[rid] = key
        pool = [c.rid for c in found] + [r for r in extra if r in session_of]
        turn = index.scores_within("body", terms, pool)
        window = index.scores_within("window", terms, pool)
        speaking = index.scores_within("speaker", terms, pool)
        best: dict[int, list[float]] = {}
        for rid in pool:
            if session_of[rid]:
                best.setdefault(session_of[rid], []).append(turn.get(rid, 0.0))
        strength = {key: sum(sorted(v, reverse=True)[:SESSION_TOP]) for key, v in best.items()}
        top_turn = max(turn.values(), default=0.0)
        top_strength = max([*strength.values(), top_turn]) or 1.0
        ranked = []
        for rid in pool:
            own = turn.get(rid, 0.0)
            key = session_of[rid]
            session = strength[key] if key else own  # no session: a session of one
            parts = {
                "turn": own,
                "window": window.get(rid, 0.0),
                "session": session / top_strength * top_turn,
                "speaker": 1.0 if rid in speaking else 0.0,
            }
            score = (parts["turn"] + WINDOW_WEIGHT * parts["window"] + SESSION_WEIGHT * parts["session"])
            score *= 1.0 + SPEAKER_BOOST * parts["speaker"]
            ranked.append(Ranked(
                rid, score, lexical_rank=rank_of.get(rid), lexical_score=lexical.get(rid, 0.0), parts=parts,
            ))
        return ranked

    def _fuse(self, ranked: list[Ranked], request: SearchRequest) -> list[Ranked]:
        """Stage 3: reciprocal rank fusion of the lexical order with the
        semantic ranking (over the memories that pass the filters)."""
        assert self.semantic is not None
        ranked.sort(key=lambda r: -r.score)
        index = self.sync.current()
        semantic = self.semantic(request.text, max(CANDIDATES, request.limit), None)
        semantic = [r for r in semantic if r in index.passing(semantic, request.filters)]
        by_rid = {r.rid: r for r in ranked}
        for position, rid in enumerate(semantic, 1):
            by_rid.setdefault(rid, Ranked(rid, 0.0)).semantic_rank = position
        fused = reciprocal_rank_fusion([[r.rid for r in ranked], semantic], [1.0, SEMANTIC_WEIGHT])
        for rid, item in by_rid.items():
            item.parts["lexical_order"] = float(ranked.index(item) + 1) if rid in {r.rid for r in ranked} else 0.0
            item.score = fused.get(rid, 0.0)
        return list(by_rid.values())

    def rebuild(self, progress: Progress | None = None) -> None:
        self.sync.rebuild(progress)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], weights: Sequence[float]) -> dict[int, float]:
    """Σ weight / (RRF_K + rank) over the rankings each key appears in."""
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, key in enumerate(ranking, 1):
            fused[key] = fused.get(key, 0.0) + weight / (RRF_K + rank)
    return fused
