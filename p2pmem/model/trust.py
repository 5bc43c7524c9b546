"""The trust score: how much this agent should believe another agent.

It is a deterministic function of the record set as seen from one agent
(docs/architecture.md, "Trust"):

- distance in the follow graph from the viewer: the viewer itself 1.0, an
  agent it follows 0.8, two follows away 0.5, three away 0.3, a stranger 0.1;
- endorsements: each agent that endorses X adds ``0.2 * trust(endorser)``
  (using the follow-distance part, so endorsements cannot be bootstrapped by a
  ring of strangers endorsing each other), capped so the total stays <= 1.0.

A memory endorsed by trusted agents gains the same way. Ranking multiplies
text relevance by ``1 + trust``: relevance still dominates, and between
equally relevant memories the more trusted author wins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

DISTANCE_TRUST = {0: 1.0, 1: 0.8, 2: 0.5, 3: 0.3}
STRANGER = 0.1
ENDORSEMENT_WEIGHT = 0.2
MAX_DEPTH = 3


def follow_distances(viewer: bytes, follows: Iterable[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """Breadth-first distances from ``viewer`` along active follows."""
    graph: dict[bytes, list[bytes]] = {}
    for follower, followee in follows:
        graph.setdefault(follower, []).append(followee)
    distances = {viewer: 0}
    queue = deque([viewer])
    while queue:
        node = queue.popleft()
        if distances[node] >= MAX_DEPTH:
            continue
        for nxt in sorted(graph.get(node, ())):
            if nxt not in distances:
                distances[nxt] = distances[node] + 1
                queue.append(nxt)
    return distances


class TrustModel:
    """Trust of agents and memories from one viewer's standpoint."""

    def __init__(
        self,
        viewer: bytes,
        follows: Iterable[tuple[bytes, bytes]],
        endorsements: Iterable[tuple[bytes, bytes, str]],
    ) -> None:
        self.viewer = viewer
        self.distances = follow_distances(viewer, follows)
        self._agent_bonus: dict[bytes, float] = {}
        # memory id -> [(endorser, weight)]: whether an endorser is the
        # memory's author is only known when the memory is ranked
        self._memory_endorsers: dict[bytes, list[tuple[bytes, float]]] = {}
        for endorser, target, what in sorted(endorsements):  # a fixed order: the same sums everywhere
            weight = ENDORSEMENT_WEIGHT * self.base(endorser)
            if what == "agent":
                if endorser == target:
                    continue  # self-endorsement counts for nothing
                self._agent_bonus[target] = self._agent_bonus.get(target, 0.0) + weight
            else:
                self._memory_endorsers.setdefault(target, []).append((endorser, weight))

    def base(self, agent: bytes) -> float:
        distance = self.distances.get(agent)
        return STRANGER if distance is None else DISTANCE_TRUST[distance]

    def agent(self, agent: bytes) -> float:
        return min(1.0, self.base(agent) + self._agent_bonus.get(agent, 0.0))

    def memory(self, author: bytes, memory_id: bytes) -> float:
        bonus = sum(w for endorser, w in self._memory_endorsers.get(memory_id, ()) if endorser != author)
        return min(1.0, self.agent(author) + bonus)
