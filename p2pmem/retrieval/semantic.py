"""Meaning: embeddings of the current memories, kept in step with the store.

Optional and off by default (docs/retrieval.md has the measurement that
decided it): a user points p2pmem at a local model folder
(docs/models.md) and each node embeds the memories it holds, for itself.
Vectors are never signed or sent. They live in ``vectors.db`` beside the
lexical index, stamped with the model's fingerprint; a different model
empties the file and everything is embedded again (in the background by
``serve``, on demand by ``p2pmem reindex``).

Like the lexical index, this one replays the store's ``index_log`` (consumer
``vectors``): a memory that stops being current loses its vector, and a
retraction's vector is deleted and the file checkpointed so its bytes leave
the disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from p2pmem.retrieval.embed import Embedder
from p2pmem.retrieval.sync import DocumentSource
from p2pmem.retrieval.vectors import VectorIndex

CONSUMER = "vectors"
EMBED_BATCH = 64
# A recall embeds at most this many pending memories before answering;
# a larger backlog (a new model, a big import) is left to `serve`'s
# background work or `p2pmem reindex`, and recall uses the vectors it has.
INLINE_BACKLOG = 256

Progress = Callable[[int, int], None]


def purge_vectors(root: Path, rids: Sequence[int]) -> None:
    """Delete these memories' vectors, whatever model made them, and fold
    the WAL back so the bytes leave the disk (no model needs loading)."""
    path = root / "vectors.db"
    if not path.exists() or not rids:
        return
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        db.execute("PRAGMA secure_delete=ON")
        db.executemany("DELETE FROM vectors WHERE doc_key = ?", [(rid,) for rid in rids])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass  # no vectors table yet; the stage's own replay of the log deletes them too
    finally:
        db.close()


class SemanticIndex:
    """One model's vectors for one store."""

    def __init__(self, source: DocumentSource, root: Path, embedder: Embedder) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.embedder = embedder
        self.vectors = VectorIndex.open(root / "vectors.db", embedder.fingerprint)
        self._state = root / "vectors.state"

    def close(self) -> None:
        self.vectors.close()

    # -- the log position, tied to the model that produced the vectors ----------
    def _seq(self) -> int:
        try:
            data = json.loads(self._state.read_text())
        except (OSError, ValueError):
            return -1
        if not isinstance(data, dict) or data.get("model") != self.embedder.fingerprint.label():
            return -1
        seq = data.get("seq")
        return seq if isinstance(seq, int) else -1

    def _save(self, seq: int) -> None:
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": self.embedder.fingerprint.label(), "seq": seq}))
        os.replace(tmp, self._state)
        self.source.index_applied(CONSUMER, seq)

    # -- keeping up ------------------------------------------------------------
    def catch_up(self, progress: Progress | None = None, *, limit: int | None = None) -> bool:
        """Embed what changed since the last call. Returns False without
        doing anything when the backlog is over ``limit``."""
        seq = self._seq()
        if seq < 0 or seq < self.source.log_low() - 1:
            if limit is not None and self.source.count_current() > limit:
                return False
            self._embed_everything(progress)
            return True
        if limit is not None and self.source.log_high() - seq > limit:
            return False
        purged = False
        while entries := self.source.log_entries(seq, 5000):
            rids = list(dict.fromkeys(rid for _, rid, _ in entries))
            purged = purged or any(flag for _, _, flag in entries)
            docs = self.source.index_docs(rids)
            current = {d.rid for d in docs}
            self.vectors.delete_many([r for r in rids if r not in current])
            self._embed(docs, progress)
            seq = entries[-1][0]
        if purged:
            self.vectors.checkpoint()
        self._save(seq)
        return True

    def _embed(self, docs: list, progress: Progress | None, done: int = 0, total: int = 0) -> int:
        for i in range(0, len(docs), EMBED_BATCH):
            part = docs[i : i + EMBED_BATCH]
            vectors = self.embedder.embed([d.text for d in part])
            self.vectors.upsert_many(zip([d.rid for d in part], vectors, strict=True))
            done += len(part)
            if progress is not None:
                progress(done, total)
        return done

    def _embed_everything(self, progress: Progress | None) -> None:
        high, batches = self.source.all_index_docs(1000)
        keep: set[int] = set()
        done = 0
        total = self.source.count_current()
        for docs in batches:
            keep.update(d.rid for d in docs)
            done = self._embed(docs, progress, done, total)
        self.vectors.delete_many(self.vectors.keys() - keep)
        self.vectors.checkpoint()
        self._save(high)

    # -- searching -------------------------------------------------------------
    def search(self, text: str, k: int, allowed: set[int] | None) -> list[tuple[int, float]]:
        """(rowid, cosine) of the ``k`` memories nearest ``text`` in meaning."""
        self.catch_up(limit=INLINE_BACKLOG)
        query = self.embedder.embed([text])[0]
        return self.vectors.search(query, k, (lambda key: key in allowed) if allowed is not None else None)
