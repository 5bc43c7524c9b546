"""One scorer for answers from many nodes.

Each node ranks its own hits with its own BM25 statistics, which are not
comparable across nodes. The asker therefore ranks every verified hit again
in a throw-away in-memory store: one corpus, one BM25, newest first on ties.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pmem import limits
from p2pmem.identity import agent_id
from p2pmem.output import memory_json
from p2pmem.query import VerifiedHit
from p2pmem.store import Store, fts_query

if TYPE_CHECKING:
    from p2pmem.home import Agent


def rank_by_trust(*args: Any, **kwargs: Any) -> Any:
    from p2pmem.home import rank_by_trust as rank

    return rank(*args, **kwargs)


def rank_hits(agent: Agent | None, text: str, hits: list[VerifiedHit], *, limit: int) -> list[dict[str, Any]]:
    """The contract's `ask` result objects, best first."""
    best: dict[bytes, VerifiedHit] = {}
    for hit in hits:
        seen = best.get(hit.record.id)
        if seen is None or hit.hops < seen.hops:
            best[hit.record.id] = hit
    with Store(Path(":memory:"), verify_workers=1) as scratch:
        scratch.ingest([h.record for h in best.values()])
        ranked = scratch.recall(text, limit=limits.MAX_QUERY_HITS * 8)
        if agent is not None and fts_query(text) is not None:
            ranked = rank_by_trust(ranked, agent.trust())
        if len(ranked) < limit:  # filters-only queries: whatever matched them, newest first
            seen_ids = {m.record.id for m in ranked}
            ranked += [m for m in scratch.recall("", limit=limit) if m.record.id not in seen_ids]
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
