"""Ranked search over the graph's entities: one narrow function,
:func:`rank`, so a better engine (p2pmem/retrieval/) can replace it.

Each entity is one document (its name, type, observations and the relations
it takes part in, see :func:`entity_documents`). Ranking is the retrieval
engine's lexical stage (p2pmem/retrieval/texts.py: the same analyzer,
stopwords and BM25 as memory recall, in an in-memory tantivy index built
from the documents and kept while they do not change): "which person likes
tea" searches for *person*, *like* and *tea*; any of them may match and
documents with more (and rarer) of them rank first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from p2pmem.graph.view import Graph
from p2pmem.retrieval.text import query_terms
from p2pmem.retrieval.texts import TextIndex


def entity_documents(graph: Graph) -> dict[str, str]:
    """One text per entity: name, type, observations, and for each relation
    it is the source of, the relation type and the target's name; for each
    relation it is the target of, the source's name."""
    docs = {
        name: "\n".join([name, entity.type, *entity.observations])
        for name, entity in graph.entities.items()
    }
    extra: dict[str, list[str]] = {}
    for source, relation_type, target in graph.relations:
        extra.setdefault(source, []).append(f"{relation_type} {target}")
        extra.setdefault(target, []).append(source)  # the subject of "who <relation> <target>" ranks first
    for name, lines in extra.items():
        if name in docs:
            docs[name] += "\n" + "\n".join(lines)
    return docs


_cache: list[TextIndex] = []
_cache_lock = threading.Lock()


def rank(documents: Mapping[str, str], query: str, limit: int = 10) -> list[str]:
    """The names of the documents that best match ``query``, best first, at
    most ``limit``; empty when no word of the query occurs anywhere."""
    if not query_terms(query) or not documents or limit < 1:
        return []
    with _cache_lock:
        index = _cache[0] if _cache and _cache[0].documents == documents else None
        if index is None:
            index = TextIndex(documents)
            _cache[:] = [index]
    return index.search(query, limit)
