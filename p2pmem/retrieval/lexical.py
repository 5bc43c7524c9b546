"""The lexical index: BM25 over every current memory, in tantivy.

tantivy ranks the exact BM25 top k over all matching documents with
block-max WAND, so a query costs about the same whether a word is in ten
memories or in half of them (docs/retrieval.md has the measurements that
chose it over SQLite FTS5). The index is derived data: SQLite holds the
truth, and :mod:`p2pmem.retrieval.maintain` keeps this index in step with it.

A document is one current memory (a head of its lineage), keyed by the
SQLite rowid of its record. Filters are indexed fields, so a filtered query
is one tantivy query, not a scan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import tantivy

from p2pmem.retrieval.documents import IndexDoc
from p2pmem.retrieval.text import ANALYZER, PLAIN_ANALYZER, register

FORMAT = 1  # bump when the schema or the analyzer changes: the index is rebuilt
STATE_FILE = "p2pmem-index.json"  # our own commit point: the log sequence applied
_WRITER_HEAP = 32_000_000


@dataclass(frozen=True)
class Filters:
    """Hard filters: a memory outside them is never returned."""

    since: int | None = None
    until: int | None = None
    topics: tuple[str, ...] = ()
    authors: tuple[bytes, ...] = ()
    session: str | None = None
    visibilities: tuple[str, ...] = ()


# Per-document numbers read back with every candidate (fast fields): the
# re-scoring needs them for the candidate and for its two neighbours.
FAST = (
    "rid", "session_key", "at", "ts", "spk1", "spk2",
    "prev", "prev_at", "prev_ts", "prev_spk1", "prev_spk2",
    "next", "next_at", "next_ts", "next_spk1", "next_spk2",
)


@dataclass(frozen=True)
class Candidates:
    """Matching documents, best first: their scores and, column by column,
    the fast fields of each and of its neighbours."""

    scores: list[float]
    columns: dict[str, list[int]]

    def __len__(self) -> int:
        return len(self.scores)


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    for name in FAST:
        if name != "at":
            builder.add_integer_field(name, indexed=name == "rid", fast=True)
    for name in ("text", "body", "window"):
        builder.add_text_field(name, tokenizer_name=ANALYZER, index_option="freq")
    # every word, stopwords too, for queries made only of stopwords; positions
    # and frequencies are not needed for that fallback
    builder.add_text_field("plain", tokenizer_name=PLAIN_ANALYZER, index_option="basic")
    builder.add_integer_field("at", indexed=True, fast=True)
    for name in ("author", "session", "topic", "visibility"):
        builder.add_text_field(name, tokenizer_name="raw", index_option="basic")
    return builder.build()


class LexicalIndex:
    """One tantivy index, on disk (``directory``) or in memory (None).

    Not thread-safe; one process writes at a time (the caller holds
    :mod:`p2pmem.retrieval.maintain`'s lock around :meth:`apply`)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.schema = _schema()
        if directory is None:
            self._index = tantivy.Index(self.schema)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self._index = tantivy.Index(self.schema, path=str(directory), reuse=True)
        register(self._index)
        self._searcher = self._index.searcher()
        self._memory_state: dict[str, int] = {"format": FORMAT, "seq": 0}

    # -- state -------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """The committed state: ``seq`` is the last log entry applied."""
        if self.directory is None:
            return dict(self._memory_state)
        try:
            data = json.loads((self.directory / STATE_FILE).read_text())
            return {"format": int(data["format"]), "seq": int(data["seq"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {"format": 0, "seq": -1}  # never committed, or damaged: rebuild

    def _write_state(self, seq: int) -> None:
        state = {"format": FORMAT, "seq": seq}
        if self.directory is None:
            self._memory_state = state
            return
        tmp = self.directory / (STATE_FILE + ".tmp")
        with open(tmp, "w") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.directory / STATE_FILE)

    @property
    def size(self) -> int:
        return self._searcher.num_docs

    # -- writes ------------------------------------------------------------
    def apply(
        self, removed: Iterable[int], added: Iterable[IndexDoc], seq: int, *, reset: bool = False,
        threads: int = 1,
    ) -> None:
        """Remove documents by rowid, add new ones, and commit together with
        the log position ``seq``. Removing then re-adding a rowid in one call
        leaves the new document: deletes apply to earlier documents only."""
        writer = self._index.writer(heap_size=_WRITER_HEAP * threads, num_threads=threads)
        try:
            # a writer killed mid-commit leaves files no commit names (a
            # segment's .del among them) that the next commit would collide with
            writer.garbage_collect_files()
            if reset:
                writer.delete_all_documents()
            for rid in removed:
                writer.delete_documents_by_term("rid", rid)
            for doc in added:
                writer.add_document(self._document(doc))
            writer.commit()
            writer.garbage_collect_files()
            writer.wait_merging_threads()
        except BaseException:
            writer.rollback()
            raise
        self._write_state(seq)
        self.reload()

    @staticmethod
    def _document(doc: IndexDoc) -> tantivy.Document:
        return tantivy.Document(
            rid=doc.rid, session_key=doc.session_key, at=doc.at, ts=doc.ts,
            spk1=doc.speaker[0], spk2=doc.speaker[1],
            prev=doc.prev.rid, prev_at=doc.prev.at, prev_ts=doc.prev.ts,
            prev_spk1=doc.prev.speaker[0], prev_spk2=doc.prev.speaker[1],
            next=doc.next.rid, next_at=doc.next.at, next_ts=doc.next.ts,
            next_spk1=doc.next.speaker[0], next_spk2=doc.next.speaker[1],
            text=doc.text, body=doc.body, window=doc.window, plain=doc.text,
            author=doc.author.hex(), session=doc.session, topic=list(doc.topics),
            visibility=doc.visibility,
        )

    def reload(self) -> None:
        self._index.reload()
        self._searcher = self._index.searcher()

    # -- reads -------------------------------------------------------------
    def _any(self, field: str, terms: Sequence[str]) -> tantivy.Query:
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, field, t)) for t in terms]
        )

    def _filtered(self, query: tantivy.Query, filters: Filters) -> tantivy.Query:
        musts = self._filter_queries(filters)
        if not musts:
            return query
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Must, query), *((tantivy.Occur.Must, q) for q in musts)]
        )

    def candidates(
        self, terms: Sequence[str], filters: Filters, limit: int, *, field: str = "text"
    ) -> Candidates:
        """The best ``limit`` documents by BM25 over ``field`` that match any
        of ``terms`` (already analysed) and every filter, best first."""
        if not terms or limit <= 0:
            return Candidates([], {})
        query = self._filtered(self._any(field, terms), filters)
        hits = self._searcher.search(query, limit, count=False).hits
        if not hits:
            return Candidates([], {})
        addresses = [address for _, address in hits]
        columns = {name: self._searcher.fast_field_values(name, addresses) for name in FAST}
        return Candidates([score for score, _ in hits], columns)

    def top_scores(self, field: str, terms: Sequence[str], filters: Filters, limit: int) -> dict[int, float]:
        """rowid -> BM25 over ``field`` of the best ``limit`` matches."""
        if not terms or limit <= 0:
            return {}
        hits = self._searcher.search(self._filtered(self._any(field, terms), filters), limit, count=False).hits
        if not hits:
            return {}
        rids = self._searcher.fast_field_values("rid", [address for _, address in hits])
        return {int(rid): float(score) for (score, _), rid in zip(hits, rids, strict=True)}

    def counts(self, terms: Sequence[str], filters: Filters) -> tuple[int, list[int]]:
        """How many documents pass ``filters``, and how many of those hold
        each term in the text field: the collection statistics an asker
        merging answers from many nodes needs (p2pmem/agent/ranking.py)."""
        def count(query: tantivy.Query) -> int:
            return int(self._searcher.search(self._filtered(query, filters), 1, count=True).count or 0)

        return (count(tantivy.Query.all_query()),
                [count(tantivy.Query.term_query(self.schema, "text", t)) for t in terms])

    def add_statistics_only(self, docs: Iterable[IndexDoc]) -> None:
        """Add documents that no filtered search returns but that count in
        BM25's statistics (a throw-away index given a bigger collection's
        statistics, p2pmem/agent/ranking.py); they keep the commit point."""
        self.apply((), docs, self.state()["seq"])

    def newest(self, filters: Filters, limit: int) -> list[int]:
        """Rowids of the newest ``limit`` documents (by ``ts``) that pass every
        filter: a listing without query words (``recall --since``), from the
        fast fields, whatever the size of the time window."""
        if limit <= 0:
            return []
        query = self._filtered(tantivy.Query.all_query(), filters)
        hits = self._searcher.search(query, limit, count=False, order_by_field="ts").hits
        if not hits:
            return []
        return [int(r) for r in self._searcher.fast_field_values("rid", [address for _, address in hits])]

    def _with_rids(self, rids: Sequence[int]) -> tantivy.Query:
        # one term query per id: a term-set query over an integer field walks
        # the whole term dictionary, this costs O(ids log n)
        return tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "rid", r)) for r in rids]
        )

    def passing(self, rids: Sequence[int], filters: Filters) -> set[int]:
        """Those of ``rids`` that pass every filter."""
        musts = self._filter_queries(filters)
        if not musts or not rids:
            return set(rids)
        query = self._filtered(self._with_rids(rids), filters)
        hits = self._searcher.search(query, len(rids), count=False).hits
        if not hits:
            return set()
        return {int(r) for r in self._searcher.fast_field_values("rid", [a for _, a in hits])}

    def neighbours(self, rids: Sequence[int]) -> set[int]:
        """The neighbours the index holds for these documents."""
        out: set[int] = set()
        for i in range(0, len(rids), 1000):
            part = rids[i : i + 1000]
            hits = self._searcher.search(self._with_rids(part), len(part), count=False).hits
            addresses = [address for _, address in hits]
            if addresses:
                for name in ("prev", "next"):
                    out.update(int(r) for r in self._searcher.fast_field_values(name, addresses) if r >= 0)
        return out

    def _filter_queries(self, f: Filters) -> list[tantivy.Query]:
        out = []
        if f.since is not None or f.until is not None:
            out.append(tantivy.Query.range_query(
                self.schema, "at", tantivy.FieldType.Integer,
                f.since if f.since is not None else -(2**63),
                f.until if f.until is not None else 2**63 - 1,
            ))
        if f.topics:
            out.append(tantivy.Query.term_set_query(self.schema, "topic", list(f.topics)))
        if f.authors:
            out.append(tantivy.Query.term_set_query(self.schema, "author", [a.hex() for a in f.authors]))
        if f.session is not None:
            out.append(tantivy.Query.term_query(self.schema, "session", f.session))
        if f.visibilities:
            out.append(tantivy.Query.term_set_query(self.schema, "visibility", list(f.visibilities)))
        return out
