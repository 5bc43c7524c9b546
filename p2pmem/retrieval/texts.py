"""The lexical engine over a plain set of texts (no store behind them):
the knowledge graph's entity documents are ranked with the same analyzer,
stopwords and BM25 as memories."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import tantivy

from p2pmem.retrieval.text import ANALYZER, PLAIN_ANALYZER, analyse_query, register


class TextIndex:
    """An in-memory tantivy index of ``documents`` (key -> text)."""

    def __init__(self, documents: Mapping[str, str]) -> None:
        self.documents = dict(documents)
        self.keys = list(self.documents)
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("key", indexed=True, fast=True)
        builder.add_text_field("text", tokenizer_name=ANALYZER, index_option="freq")
        builder.add_text_field("plain", tokenizer_name=PLAIN_ANALYZER, index_option="freq")
        self.schema = builder.build()
        self._index = tantivy.Index(self.schema)
        register(self._index)
        writer = self._index.writer(heap_size=32_000_000, num_threads=1)
        for number, text in enumerate(self.documents.values()):
            writer.add_document(tantivy.Document(key=number, text=text, plain=text))
        writer.commit()
        writer.wait_merging_threads()
        self._index.reload()
        self._searcher = self._index.searcher()
        self.lock = threading.Lock()

    def search(self, query: str, limit: int) -> list[str]:
        """Keys of the best ``limit`` documents by BM25, best first (ties:
        the order the documents were given in)."""
        terms, plain = analyse_query(query)
        if not terms or limit < 1:
            return []
        field = "plain" if plain else "text"
        should = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, field, t)) for t in terms]
        with self.lock:
            hits = self._searcher.search(tantivy.Query.boolean_query(should), limit, count=False).hits
            if not hits:
                return []
            numbers = self._searcher.fast_field_values("key", [address for _, address in hits])
        ranked = sorted(zip(hits, numbers, strict=True), key=lambda item: (-item[0][0], item[1]))
        return [self.keys[int(number)] for _, number in ranked]
