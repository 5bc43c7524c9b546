"""What the sans-IO core needs from the world, as Protocols: the methods of
the store it calls and of the random generator it draws from. The shells pass
the real things (a :class:`p2pmem.storage.store.Store`, a seeded
``random.Random``); the core never imports them (tests/test_layout.py), so it
cannot open a database, read a clock or seed its own randomness."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2pmem.errors import RecordError
from p2pmem.model.record import Record

T = TypeVar("T")


class Rng(Protocol):
    """A source of randomness (``random.Random`` has these methods); the shell
    seeds it: from the OS in the trio node, from the run's seed in the
    simulator."""

    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...

    def randbytes(self, n: int, /) -> bytes: ...

    def choice(self, seq: Sequence[T], /) -> T: ...

    def shuffle(self, x: MutableSequence[Any], /) -> None: ...


#: Where the X25519 keys of Noise handshakes come from (static and ephemeral,
#: one call per key). Default: ``X25519PrivateKey.generate`` (the OS). The
#: simulator derives them from its seed with ``X25519PrivateKey.from_private_bytes``.
KeySource = Callable[[], X25519PrivateKey]


class IngestReport(Protocol):
    """What storing a batch did (:class:`p2pmem.storage.store.IngestResult`)."""

    @property
    def added(self) -> Sequence[Record]: ...

    @property
    def evicted(self) -> int: ...

    @property
    def duplicates(self) -> int: ...


class Found(Protocol):
    """One hit of :meth:`StorePort.recall` (:class:`p2pmem.storage.store.Memory`)."""

    @property
    def record(self) -> Record: ...


class StorePort(Protocol):
    """The store as the core uses it (:class:`p2pmem.storage.store.Store`),
    the knowledge graph's answers to ``ask`` included."""

    def decode_many(self, raws: Sequence[bytes]) -> Sequence[Record | RecordError]: ...

    def ingest(self, records: Iterable[Record]) -> IngestReport: ...

    def ingest_groups(self, groups: Sequence[Sequence[Record]]) -> Sequence[IngestReport]: ...

    def count(self, kind: str | None = None) -> int: ...

    def last_ts(self, author: bytes | None = None) -> int: ...

    def scan(self) -> Iterator[tuple[int, bytes, str, bytes, str]]: ...

    def max_rowid(self) -> int: ...

    def ids_after(self, rowid: int, limit: int = 1000) -> list[tuple[int, bytes]]: ...

    def raws_of(self, ids: Sequence[bytes]) -> list[bytes]: ...

    def known_ids(self, ids: Sequence[bytes]) -> set[bytes]: ...

    def scoped_raw(self, ids: Iterable[bytes]) -> Iterator[tuple[bytes, str, bytes, str, bytes | None]]: ...

    def recall(
        self,
        query: str = "",
        *,
        since: int | None = None,
        until: int | None = None,
        topics: Sequence[str] = (),
        authors: Sequence[bytes] = (),
        visibilities: Sequence[str] = ("public", "ask", "private"),
        limit: int = 10,
        fresh: bool = True,
    ) -> Sequence[Found]: ...

    def follows(self) -> set[tuple[bytes, bytes]]: ...

    def graph_answers(self, text: str, *, authors: Sequence[bytes] = (), limit: int = 10,
                      max_records: int = 100) -> list[bytes]: ...
