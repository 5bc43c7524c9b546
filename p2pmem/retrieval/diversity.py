"""Session diversity: the top k should not be one session's turns only.

A conversation's best-matching session tends to fill the whole top k (its
turns share the question's words, and the context stage lifts them all),
while questions about what happened across sessions need one or two turns
from each. The selection is greedy: each memory's score is multiplied by
``decay ** n`` where n is how many memories of its session are already
chosen. Memories without a session are sessions of their own.

It only reorders: every memory of the input appears exactly once in the
output, the best one stays first, and with ``decay`` 1 the order is the
plain score order. Equal scores keep a fixed tiebreak, so the result is
deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def diversify(
    scores: Sequence[float], sessions: Sequence[int], tiebreak: Sequence[tuple[int, ...]], decay: float, limit: int,
) -> list[int]:
    """Positions of the first ``limit`` memories in the diversified order.

    ``scores`` must be non-negative; ``sessions`` holds a key per memory
    (0: no session); ``tiebreak`` orders equal effective scores (smaller
    first)."""
    if not 0.0 < decay <= 1.0:
        raise ValueError("decay must be in (0, 1]")
    heap = [(-scores[i], tiebreak[i], i, 0) for i in range(len(scores))]
    heapq.heapify(heap)
    taken: dict[int, int] = {}
    out: list[int] = []
    while heap and len(out) < limit:
        neg, tie, i, seen = heapq.heappop(heap)
        session = sessions[i]
        now = taken.get(session, 0) if session else 0
        if now != seen:
            # its session gained members since this entry was scored: a lower
            # score now, which may no longer be the best (scores only fall)
            heapq.heappush(heap, (-scores[i] * decay**now, tie, i, now))
            continue
        out.append(i)
        if session:
            taken[session] = now + 1
    return out
