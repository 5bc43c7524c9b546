"""Ranked search over the graph's entities: one narrow function,
:func:`rank`, so a better engine (p2pmem/retrieval/) can replace it.

Each entity is one document (its name, type, observations and the relations
it takes part in, see :func:`entity_documents`). Ranking is BM25 over
Porter-stemmed words (SQLite FTS5, an in-memory index built from the
documents and kept while they do not change), after dropping stopwords,
question words included: "which person likes tea" searches for *person*,
*like* and *tea*; any of them may match and documents with more (and
rarer) of them rank first.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Mapping

from p2pmem.graph.view import Graph

# English function words and question words: they say what kind of answer is
# wanted, not what it is about. Kept when a query has nothing else.
STOPWORDS = frozenset(["a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "done", "for", "from", "had", "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "more", "most", "my", "no", "nor", "not", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "whatever", "when", "where", "whether", "which", "while", "who", "whoever", "whom", "whose", "why", "will", "with", "would", "you", "your", "yours", "tell", "show", "find", "give", "list", "know", "anyone", "anybody", "someone", "somebody"])
_WORD = re.compile(r"\w+", re.UNICODE)
_MAX_TERMS = 32


def query_terms(text: str) -> list[str]:
    """The distinct search words of a question, stopwords dropped unless
    nothing else is left."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:_MAX_TERMS]
    content = [w for w in words if w not in STOPWORDS]
    return content or words


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


class _Index:
    """An in-memory FTS5 index of one set of documents."""

    def __init__(self, documents: Mapping[str, str]) -> None:
        self.documents = dict(documents)
        self.names = list(self.documents)
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute("CREATE VIRTUAL TABLE docs USING fts5(body, tokenize = 'porter unicode61 remove_diacritics 2')")
        self.db.executemany("INSERT INTO docs(rowid, body) VALUES (?, ?)",
                            ((i + 1, text) for i, text in enumerate(self.documents.values())))
        self.lock = threading.Lock()

    def search(self, terms: list[str], limit: int) -> list[str]:
        match = " OR ".join('"' + t.replace('"', "") + '"' for t in terms)
        with self.lock:
            rows = self.db.execute(
                "SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs), rowid LIMIT ?",
                (match, limit),
            ).fetchall()
        return [self.names[row[0] - 1] for row in rows]


_cache: list[_Index] = []
_cache_lock = threading.Lock()


def rank(documents: Mapping[str, str], query: str, limit: int = 10) -> list[str]:
    """The names of the documents that best match ``query``, best first, at
    most ``limit``; empty when no word of the query occurs anywhere."""
    terms = query_terms(query)
    if not terms or not documents or limit < 1:
        return []
    with _cache_lock:
        index = _cache[0] if _cache and _cache[0].documents == documents else None
        if index is None:
            index = _Index(documents)
            _cache[:] = [index]
    return index.search(terms, limit)
