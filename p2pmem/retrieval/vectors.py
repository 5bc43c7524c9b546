"""A node's own embedding vectors, in a SQLite file beside its store.

Vectors are derived data: each node computes them from the texts it holds,
with the model it has, and never signs, sends or gossips them. The file
records which model made them (its :class:`ModelFingerprint`); opening it
with another model clears every vector, so the caller re-embeds.

Search is brute-force cosine over an in-memory float32 matrix: exact, and
fast enough for the few hundred thousand memories a node holds (a 384-d
matrix of 100k rows is 150 MB and one matrix-vector product). The matrix is
patched in place by this object's own writes, and rebuilt from the file when
``PRAGMA data_version`` shows another connection's commit.

Deleting really deletes: ``secure_delete`` overwrites freed bytes with
zeros, and :meth:`VectorIndex.checkpoint` folds the WAL back into the file
and truncates it, so a forgotten memory's vector leaves no trace on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from p2pmem.retrieval.embed import ModelFingerprint, optional_import

__all__ = ["VectorIndex"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    name TEXT NOT NULL,
    dim INTEGER NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    doc_key INTEGER PRIMARY KEY,
    vec BLOB NOT NULL
);
"""


class VectorIndex:
    """Vectors by integer document key, made by one model, searched by cosine.

    One SQLite connection per object; calls are serialised by a lock, so the
    object may be used from worker threads (one at a time).
    """

    def __init__(self, conn: sqlite3.Connection, fingerprint: ModelFingerprint) -> None:
        """Use :meth:`open`."""
        self._np = optional_import("numpy")
        self._conn = conn
        self._fingerprint = fingerprint
        self._lock = threading.Lock()
        self._stale = True  # the matrix cache needs a reload
        self._version: int | None = None
        self._keys: Any = None  # int64 (n,)
        self._matrix: Any = None  # float32 (n, dim), unit rows

    @classmethod
    def open(cls, path: Path, fingerprint: ModelFingerprint) -> VectorIndex:
        """Open or create the index at ``path`` for vectors of ``fingerprint``;
        vectors another model made are deleted."""
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA synchronous=NORMAL")  # derived data: a lost tail is re-embedded
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT name, dim, digest FROM meta WHERE id = 0").fetchone()
            if row is None or ModelFingerprint(*row) != fingerprint:
                conn.execute("DELETE FROM vectors")
                conn.execute(
                    "INSERT OR REPLACE INTO meta (id, name, dim, digest) VALUES (0, ?, ?, ?)",
                    (fingerprint.name, fingerprint.dim, fingerprint.digest),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return cls(conn, fingerprint)

    @property
    def fingerprint(self) -> ModelFingerprint:
        """The model whose vectors this index holds."""
        return self._fingerprint

    # --- writing -----------------------------------------------------------------

    def _blob(self, vector: Any) -> bytes:
        np = self._np
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        if array.shape[0] != self._fingerprint.dim:
            raise ValueError(
                f"vector of {array.shape[0]} floats, the model gives {self._fingerprint.dim}"
            )
        if not np.isfinite(array).all():
            raise ValueError("vector holds NaN or infinity")
        return array.astype("<f4").tobytes()  # little-endian on disk whatever the machine

    def upsert_many(self, items: Iterable[tuple[int, Any]]) -> None:
        """Store each ``(key, vector)``, replacing a key's previous vector."""
        rows = dict((int(key), self._blob(vector)) for key, vector in items)  # last one wins
        with self._lock:
            self._write("INSERT OR REPLACE INTO vectors (doc_key, vec) VALUES (?, ?)", rows.items())
            self._patch(rows, ())

    def delete_many(self, keys: Iterable[int]) -> None:
        """Forget the vectors of ``keys`` (unknown keys are ignored)."""
        gone = {int(key) for key in keys}
        with self._lock:
            self._write("DELETE FROM vectors WHERE doc_key = ?", [(key,) for key in gone])
            self._patch({}, gone)

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(sql, rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            self._stale = True
            raise

    def _patch(self, upserted: dict[int, bytes], deleted: set[int] | tuple[()]) -> None:
        """Apply this object's own committed write to the cached matrix, so a
        write does not cost a full reload (own commits leave data_version
        alone; another connection's still triggers one in _refresh)."""
        if self._stale or self._matrix is None:
            return
        np = self._np
        keys, matrix = self._keys, self._matrix
        if deleted:
            keep = ~np.isin(keys, np.fromiter(deleted, dtype=np.int64, count=len(deleted)))
            keys, matrix = keys[keep], matrix[keep]
        if upserted:
            position = {int(key): row for row, key in enumerate(keys)}
            fresh = [key for key in upserted if key not in position]
            vectors = self._unit(b"".join(upserted.values()), len(upserted))
            matrix = np.concatenate([matrix, np.empty((len(fresh), matrix.shape[1]), np.float32)])
            keys = np.concatenate([keys, np.asarray(fresh, dtype=np.int64)])
            position.update({key: len(position) + i for i, key in enumerate(fresh)})
            matrix[[position[key] for key in upserted]] = vectors
        self._keys, self._matrix = keys, matrix

    def _unit(self, blob: bytes, count: int) -> Any:
        """Rows decoded from concatenated blobs, scaled to unit length (zero stays zero)."""
        np = self._np
        matrix = np.frombuffer(blob, dtype="<f4").reshape(count, self._fingerprint.dim)
        matrix = matrix.astype(np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms > 0, norms, 1.0)

    def checkpoint(self) -> None:
        """Fold the WAL into the file and truncate it (after deletions, so
        that no copy of a deleted vector stays in the WAL)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # --- reading -----------------------------------------------------------------

    def keys(self) -> set[int]:
        """The keys that have a vector."""
        with self._lock:
            return {key for (key,) in self._conn.execute("SELECT doc_key FROM vectors")}

    def count(self) -> int:
        """How many vectors are stored."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def _refresh(self) -> None:
        """Reload the matrix if this or another connection changed the file."""
        np = self._np
        version = int(self._conn.execute("PRAGMA data_version").fetchone()[0])
        if not self._stale and version == self._version:
            return
        rows = self._conn.execute("SELECT doc_key, vec FROM vectors ORDER BY doc_key").fetchall()
        self._keys = np.fromiter((key for key, _ in rows), dtype=np.int64, count=len(rows))
        self._matrix = self._unit(b"".join(blob for _, blob in rows), len(rows))
        self._version, self._stale = version, False

    def search(
        self, query_vec: Any, k: int, allowed: Callable[[int], bool] | None = None
    ) -> list[tuple[int, float]]:
        """The ``k`` keys most similar to ``query_vec`` by cosine, best first (ties
        by smaller key), among those ``allowed`` accepts, with their cosines."""
        np = self._np
        query = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        if query.shape[0] != self._fingerprint.dim:
            raise ValueError(
                f"query of {query.shape[0]} floats, the model gives {self._fingerprint.dim}"
            )
        if k <= 0:
            return []
        with self._lock:
            self._refresh()
            keys, matrix = self._keys, self._matrix
        norm = float(np.linalg.norm(query))
        scores = matrix @ (query / norm if norm > 0 else query)
        if allowed is None and k < len(scores):
            # Only the best k need sorting: partition first, then order those.
            top = np.argpartition(-scores, k - 1)[:k]
            threshold = scores[top].min()
            candidates = np.flatnonzero(scores >= threshold)  # keeps ties at the cut
        else:
            candidates = np.arange(len(scores))
        order = candidates[np.lexsort((keys[candidates], -scores[candidates]))]
        hits: list[tuple[int, float]] = []
        for index in order:
            key = int(keys[index])
            if allowed is None or allowed(key):
                hits.append((key, float(scores[index])))
                if len(hits) == k:
                    break
        return hits

    # --- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; the object is unusable afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
