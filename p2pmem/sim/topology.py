"""Graphs of nodes for simulations: named kinds (line, ring, star, grid,
tree, random regular, Erdos-Renyi) and their distances."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TOPOLOGY_KINDS = ("line", "ring", "star", "grid", "tree", "random", "er")


@dataclass(frozen=True)
class Topology:
    """An undirected graph on nodes ``0..n-1``; ``edges`` sorted, each ``(i, j)`` with ``i < j``."""

    n: int
    edges: tuple[tuple[int, int], ...]
    kind: str = "custom"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("a topology needs at least one node")
        for i, j in self.edges:
            if not 0 <= i < j < self.n:
                raise ValueError(f"edge {(i, j)} is not (i, j) with 0 <= i < j < {self.n}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges must be sorted and unique")

    @classmethod
    def of(cls, n: int, edges: Iterable[tuple[int, int]], kind: str = "custom") -> Topology:
        """A topology from edges in any order and direction (self-loops dropped)."""
        norm = sorted({(min(a, b), max(a, b)) for a, b in edges if a != b})
        return cls(n, tuple(norm), kind)

    def adjacency(self) -> list[list[int]]:
        adj: list[list[int]] = [[] for _ in range(self.n)]
        for i, j in self.edges:
            adj[i].append(j)
            adj[j].append(i)
        return adj

    def degrees(self) -> list[int]:
        return [len(a) for a in self.adjacency()]

    def distances(self, source: int) -> list[int]:
        """Hops from ``source`` to every node (-1: unreachable)."""
        return bfs_distances(self.adjacency(), source)

    def is_connected(self) -> bool:
        return self.n == 1 or min(self.distances(0)) >= 0

    def diameter(self) -> int:
        """The longest shortest path (-1 if disconnected)."""
        adj = self.adjacency()
        best = 0
        for source in range(self.n):
            dist = bfs_distances(adj, source)
            if min(dist) < 0:
                return -1
            best = max(best, max(dist))
        return best


def bfs_distances(adjacency: Sequence[Sequence[int]], source: int) -> list[int]:
    """Hops from ``source`` in a graph given as adjacency lists (-1: unreachable)."""
    dist = [-1] * len(adjacency)
    dist[source] = 0
    frontier = [source]
    while frontier:
        nxt = []
        for v in frontier:
            for w in adjacency[v]:
                if dist[w] < 0:
                    dist[w] = dist[v] + 1
                    nxt.append(w)
        frontier = nxt
    return dist


def make_topology(kind: str, n: int, *, rng: random.Random | None = None, degree: int = 4) -> Topology:
    """A connected graph of ``n`` nodes.

    ``line``, ``ring``, ``star`` (hub 0), ``grid`` (near-square), ``tree``
    (random recursive tree), ``random`` (random ``degree``-regular graph, the
    Steger-Wormald pairing, redrawn until connected) or ``er`` (Erdős–Rényi
    G(n, p) with mean degree ``degree``, redrawn until connected).
    """
    if n < 1:
        raise ValueError("a topology needs at least one node")
    rng = rng or random.Random(0)
    if kind == "line":
        return Topology.of(n, ((i, i + 1) for i in range(n - 1)), kind)
    if kind == "ring":
        edges = [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(i, i + 1) for i in range(n - 1)]
        return Topology.of(n, edges, kind)
    if kind == "star":
        return Topology.of(n, ((0, i) for i in range(1, n)), kind)
    if kind == "grid":
        cols = math.ceil(math.sqrt(n))
        edges = []
        for i in range(n):
            if (i + 1) % cols and i + 1 < n:
                edges.append((i, i + 1))
            if i + cols < n:
                edges.append((i, i + cols))
        return Topology.of(n, edges, kind)
    if kind == "tree":
        return Topology.of(n, ((rng.randrange(i), i) for i in range(1, n)), kind)
    if kind == "random":
        return _random_regular(n, degree, rng)
    if kind == "er":
        p = min(1.0, degree / max(1, n - 1))
        for _ in range(1000):
            edges = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p]
            topo = Topology.of(n, edges, kind)
            if topo.is_connected():
                return topo
        raise ValueError(f"G({n}, {p:.4f}) was never connected in 1000 draws; raise the degree")
    raise ValueError(f"unknown topology {kind!r} (one of {', '.join(TOPOLOGY_KINDS)})")


def _random_regular(n: int, d: int, rng: random.Random) -> Topology:
    if d >= n - 1:
        return Topology.of(n, ((i, j) for i in range(n) for j in range(i + 1, n)), "random")
    if d < 1:
        raise ValueError("degree must be at least 1")
    if (n * d) % 2:
        raise ValueError(f"no {d}-regular graph on {n} nodes (n*d must be even)")
    for _ in range(1000):
        edges = _regular_pairing(n, d, rng)
        if edges is not None:
            topo = Topology.of(n, edges, "random")
            if topo.is_connected():
                return topo
    raise ValueError(f"could not draw a connected {d}-regular graph on {n} nodes")


def _regular_pairing(n: int, d: int, rng: random.Random) -> list[tuple[int, int]] | None:
    """One attempt of the Steger-Wormald pairing (as networkx draws regular graphs)."""
    edges: set[tuple[int, int]] = set()
    stubs = [v for v in range(n) for _ in range(d)]
    while stubs:
        leftover: dict[int, int] = {}
        rng.shuffle(stubs)
        for k in range(0, len(stubs), 2):
            a, b = sorted(stubs[k : k + 2])
            if a != b and (a, b) not in edges:
                edges.add((a, b))
            else:
                leftover[a] = leftover.get(a, 0) + 1
                leftover[b] = leftover.get(b, 0) + 1
        if leftover:
            nodes = sorted(leftover)
            if not any((a, b) not in edges for a in nodes for b in nodes if a < b):
                return None
        stubs = [v for v, count in sorted(leftover.items()) for _ in range(count)]
    return sorted(edges)
