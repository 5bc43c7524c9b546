"""One scorer for answers from many nodes.

Each node ranks its own hits with its own statistics, which are not
comparable across nodes. The asker therefore ranks every verified hit again
in a throw-away in-memory store: one corpus, one engine, newest first on
ties. The engine scores a memory with its session neighbours (the window and
session stages, p2pmem/retrieval/engine.py), which live on the answering
node; answers carry them as context records (query-hits field 5), and they
go into the throw-away store beside the hits, so each hit is scored as one
index over the union of the network would score it. Context records are
never results themselves.

BM25's statistics (how many memories there are, how many hold each query
term) are the union's too: every node's echo adds its own to its subtree's
(p2pmem/protocol/wave.py), and the throw-away index is given documents that
no search returns but that count in its statistics, so its IDF is the
union's (scaled down to at most MAX_STAT_DOCS documents, which keeps their
ratios). docs/retrieval.md ("Merging answers") has the measurement against
one store holding everything.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pmem import limits
from p2pmem.interfaces.output import memory_json
from p2pmem.model.identity import agent_id
from p2pmem.model.record import Record
from p2pmem.model.trust import TrustModel
from p2pmem.protocol.query import VerifiedHit
from p2pmem.retrieval.documents import IndexDoc, Neighbour
from p2pmem.retrieval.lexical import Filters
from p2pmem.retrieval.text import query_terms
from p2pmem.storage.store import Memory, Store

if TYPE_CHECKING:
    from p2pmem.agent.home import Agent


# Statistics-only documents one ranking may add; above this the union's
# counts are scaled down (the IDF depends on their ratios).
MAX_STAT_DOCS = 500
_FILLER = "zzstatfillerzz"  # a word no question holds: it only gives length
DATE_WORDS = 3  # "8 May 2023": the index adds a memory's date to its text
TRUST_PRIOR = 0.25  # relevance x (1 + 0.25 trust): a stranger needs at most ~1.2x an own memory's score


def rank_by_trust(memories: list[Memory], trust: TrustModel) -> list[Memory]:
    """Relevance times (1 + TRUST_PRIOR x trust), a gentle prior; newest
    first among equals. A query without words has relevance 1 for every memory."""

    def key(memory: Memory) -> tuple[float, int, bytes]:
        relevance = memory.score if memory.score > 0 else 1.0
        weight = 1.0 + TRUST_PRIOR * trust.memory(memory.record.author, memory.record.id)
        return (-(relevance * weight), -memory.record.ts, memory.record.id)

    return sorted(memories, key=key)

def rank_hits(
    agent: Agent | None, text: str, hits: list[VerifiedHit], *, limit: int,
    context: Sequence[Record] = (), now_ms: int | None = None,
    collection: tuple[int, Sequence[int]] | None = None, trust: TrustModel | None = None,
) -> list[dict[str, Any]]:
    """The contract's `ask` result objects, best first. ``context``: the
    answers' session neighbours, scored beside them, never returned;
    ``collection``: the union's statistics (memories, and how many hold each
    search term of ``text``), which the ranking then uses. ``trust`` (else
    the agent's) is the prior; with both given beforehand, no store of the
    agent is read, so the ranking may run on another thread."""
    best: dict[bytes, VerifiedHit] = {}
    for hit in hits:
        seen = best.get(hit.record.id)
        if seen is None or hit.hops < seen.hops:
            best[hit.record.id] = hit
    if now_ms is None and agent is not None:
        now_ms = agent.wall_ms()
    if trust is None and agent is not None:
        trust = agent.trust()
    with Store(Path(":memory:"), verify_workers=1) as scratch:
        scratch.ingest([h.record for h in best.values()] + [r for r in context if r.id not in best])
        if collection is not None:
            _give_statistics(scratch, text, *collection)
        everything = limits.MAX_QUERY_HITS * 8 * 3  # hits and their context
        ranked = [m for m in scratch.recall(text, limit=everything, now_ms=now_ms, visibilities=("public", "ask"))
                  if m.record.id in best]
        if trust is not None and query_terms(text):
            ranked = rank_by_trust(ranked, trust)
        if not query_terms(text) and len(ranked) < limit:  # filters only: what matched them, newest first
            seen_ids = {m.record.id for m in ranked}
            ranked += [m for m in scratch.recall("", limit=limit + len(context))
                       if m.record.id not in seen_ids and m.record.id in best]
    out = []
    for memory in ranked[:limit]:
        hit = best[memory.record.id]
        out.append(
            memory_json(
                memory.record, hops=hit.hops, via=agent_id(hit.responder),
                record=base64.b64encode(memory.record.raw).decode("ascii"),
            )
        )
    return out


def _give_statistics(scratch: Store, text: str, docs: int, dfs: Sequence[int]) -> None:
    """Make the scratch index's BM25 statistics those of a collection of
    ``docs`` memories in which ``dfs[i]`` hold the i-th search term: add
    documents that only count (visibility "statistics", which the ranking's
    filter leaves out), as long as the scratch memories on average."""
    terms = query_terms(text)
    index = scratch.search.sync.current()
    here, held = index.counts(terms, Filters())
    if len(dfs) != len(terms) or docs <= here:
        return
    scale = min(1.0, MAX_STAT_DOCS / (docs - here))
    total = here + round((docs - here) * scale)
    # each term's share of the collection kept: df' / total = df / docs
    need = [max(0, round(df * total / docs) - h) for df, h in zip(dfs, held, strict=True)]
    length = max(1, round(sum(len(t.split()) for t in _texts(scratch)) / max(1, here)))
    added = []
    for k in range(total - here):
        words = [t for t, n in zip(terms, need, strict=True) if k < n]
        # as long as a memory: its words and the three date words of its text field; a window of three
        body = " ".join(words + [_FILLER] * max(0, length + DATE_WORDS - len(words)))
        window = " ".join(words + [_FILLER] * max(0, 3 * length - len(words)))
        added.append(IndexDoc(
            rid=-2 - k, text=body, body=body, window=window, speaker=(0, 0), prev=Neighbour(),
            next=Neighbour(), session_key=0, at=0, ts=0, author=b"", session="", topics=(),
            visibility="statistics",
        ))
    index.add_statistics_only(added)


def _texts(scratch: Store) -> list[str]:
    return [m.record.text for m in scratch.recall("", limit=limits.MAX_RECALL_LIMIT)]
