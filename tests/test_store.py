"""The SQLite store (p2pmem.storage.store) against the reference views.

The store maintains the CRDT views incrementally; p2pmem.model.views defines them.
For any record set, fed in any order, in any chunks, split among several
stores that then exchange everything, the store must show exactly
``build_views(set)``; a retracted memory must never come back, and its text
must be gone from the database file. Plus recall's filters and ranking.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from p2pmem.errors import StoreError
from p2pmem.model.clock import from_ms
from p2pmem.model.quota import kept
from p2pmem.model.record import MAX_TIME, Record, sign_record
from p2pmem.model.views import ViewSnapshot, build_views
from p2pmem.storage.store import Store
from tests.strategies import BASE_MS, History, any_records, histories, identity, memory_texts

A, B = identity(0), identity(1)


# --- comparing a store with the reference views -----------------------------------
def store_views(store: Store) -> ViewSnapshot:
    """The views as the store shows them, through its public read methods."""
    heads = {m.record.id: m.record for m in store.recall("", limit=1000)}
    assert len(heads) < 1000, "raise the limit"
    current: dict[tuple[bytes, bytes], bytes] = {}
    conflicts: dict[tuple[bytes, bytes], tuple[bytes, ...]] = {}
    for record in heads.values():
        key = (record.author, record.lineage)
        if key in current:
            continue
        lineage = store.lineage_heads(record.lineage, record.author)
        current[key] = lineage[0].id
        if len(lineage) > 1:
            conflicts[key] = tuple(r.id for r in lineage[1:])
    return ViewSnapshot(
        heads=heads,
        current=current,
        conflicts=conflicts,
        profiles={a: r.id for a, r in store.profiles().items()},
        follows=frozenset(store.follows()),
        endorsements=frozenset(store.endorsements()),
        messages=frozenset(r.id for r in store.records_by_kind("message")),
    )


def _without_retracted(view: ViewSnapshot) -> tuple:
    # the store cannot list what it purged; that is checked record by record
    return ViewSnapshot(
        heads=view.heads, current=view.current, conflicts=view.conflicts,
        profiles=view.profiles, follows=view.follows, endorsements=view.endorsements,
        messages=view.messages,
    ).comparable()


def assert_store_matches(store: Store, records) -> ViewSnapshot:
    records = kept(records)  # what the quotas of records that go everywhere leave (p2pmem/model/quota.py)
    expected = build_views(records)
    actual = store_views(store)
    assert _without_retracted(actual) == _without_retracted(expected)
    # recall reports each current head's concurrent versions
    for memory in store.recall("", limit=1000):
        key = (memory.record.author, memory.record.lineage)
        if expected.current[key] == memory.record.id:
            assert memory.conflicts == expected.conflicts.get(key, ())
    for record in records:
        if record.id in expected.retracted:
            assert store.get(record.id) is None and not store.has(record.id)
        else:
            assert store.has(record.id)
            assert store.get_raw(record.id) == record.raw
    assert store.count() == len({r.id for r in records} - expected.retracted)
    return expected


def fresh_store(directory: str, name: str = "store.db") -> Store:
    return Store(Path(directory) / name)


def chunks(items: list, cuts: list[int]) -> list[list]:
    bounds = sorted({c % (len(items) + 1) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# --- (b) any order, any chunking, any partition ----------------------------------------
@given(histories(), st.randoms(use_true_random=False), st.lists(st.integers(0, 100), max_size=4),
       st.booleans())
def test_a_store_fed_in_any_order_shows_the_reference_views(
    history: History, rng: random.Random, cuts: list[int], as_raw: bool
) -> None:
    records = list(history.records)
    rng.shuffle(records)
    with tempfile.TemporaryDirectory() as tmp, fresh_store(tmp) as store:
        for part in chunks(records, cuts):
            if as_raw:
                result = store.ingest_raw([r.raw for r in part])
                assert result.rejected == []
            else:
                store.ingest(part)
        assert_store_matches(store, history.records)
        # everything again, in another order: nothing changes
        rng.shuffle(records)
        result = store.ingest(records)
        assert result.added == []
        assert_store_matches(store, history.records)


@st.composite
def partitioned(draw: st.DrawFn) -> tuple[History, list[list[Record]], list[tuple[int, int]]]:
    """A history split among 2-3 stores (each record on at least one), each
    store's share in its own order, and an order for the exchanges."""
    history = draw(histories())
    n = draw(st.integers(2, 3))
    shares: list[list[Record]] = [[] for _ in range(n)]
    for record in history.records:
        for i in draw(st.sets(st.integers(0, n - 1), min_size=1)):
            shares[i].append(record)
    shares = [draw(st.permutations(share)) for share in shares]
    pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
    return history, shares, draw(st.permutations(pairs))


@given(partitioned())
def test_stores_that_exchange_everything_converge_to_the_reference_views(case) -> None:
    history, shares, exchanges = case
    with tempfile.TemporaryDirectory() as tmp:
        stores = [fresh_store(tmp, f"node{i}.db") for i in range(len(shares))]
        try:
            for store, share in zip(stores, shares, strict=True):
                store.ingest(share)
                assert_store_matches(store, share)
            for src, dst in exchanges:
                result = stores[dst].ingest_raw(list(stores[src].raw_records()))
                assert result.rejected == []
            expected = [assert_store_matches(s, history.records).comparable() for s in stores]
            assert all(e == expected[0] for e in expected)
        finally:
            for store in stores:
                store.close()


@given(st.lists(any_records(), max_size=8))
def test_any_valid_record_of_any_kind_can_be_stored(records: list[Record]) -> None:
    """Every field at any value the schema allows (timestamps up to 2**63-1,
    random refs and roots) is storable: no valid record can poison a sync."""
    with tempfile.TemporaryDirectory() as tmp, fresh_store(tmp) as store:
        result = store.ingest_raw([r.raw for r in records])
        assert result.rejected == []
        assert_store_matches(store, records)
        for memory in store.recall("", limit=1000):
            assert memory.record in records


def test_records_at_the_time_limits_are_stored_and_found(store: Store) -> None:
    far = sign_record(A, "memory", MAX_TIME, "far future memory", at=MAX_TIME, topics=["t"], session="s")
    zero = sign_record(A, "memory", 1, "epoch memory", at=0)
    result = store.ingest_raw([far.raw, zero.raw])
    assert result.rejected == [] and len(result.added) == 2
    assert set(ids(store.recall("memory"))) == {far.id, zero.id}
    assert ids(store.recall("memory", since=MAX_TIME)) == [far.id]
    assert ids(store.recall("memory", until=0)) == [zero.id]
    assert ids(store.recall("memory", since=0, until=MAX_TIME, topics=["t"], session="s")) == [far.id]
    assert store.last_ts(A.public_key) == MAX_TIME


# --- (c) retraction is for good ------------------------------------------------------------
retract_heavy = histories(
    min_ops=3, max_ops=16, marked=True,
    operations=("remember", "update", "concurrent_update", "stale_edit", "retract_lineage",
                "retract_version", "foreign_edit"),
)


@given(retract_heavy, st.randoms(use_true_random=False))
def test_a_retracted_memory_never_reappears_and_its_text_is_purged(
    history: History, rng: random.Random
) -> None:
    expected = build_views(history.records)
    gone = [r for r in history.memories if r.id in expected.retracted]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        with Store(path) as store:
            store.ingest(history.records)
            # replay everything, retracted memories included, in any order and any chunks
            for _ in range(2):
                replay = list(history.records) + gone
                rng.shuffle(replay)
                cut = rng.randrange(len(replay) + 1)
                store.ingest_raw([r.raw for r in replay[:cut]])
                store.ingest(replay[cut:])
                for record in gone:
                    assert store.ingest([record]).added == []
                    assert store.get(record.id) is None
            assert_store_matches(store, history.records)
            recalled = {m.record.id for m in store.recall("", limit=1000)}
            for record in gone:
                assert record.id not in recalled
                mark = history.marks[record.id]
                assert store.recall(mark, limit=1000) == []
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = path.read_bytes()
        wal = path.with_name(path.name + "-wal")
        data += wal.read_bytes() if wal.exists() else b""
        for record in gone:
            mark = history.marks[record.id]
            assert record.text.encode() not in data
            # FTS5 stores words prefix-compressed: look for the marker's tail too
            assert mark[4:].encode() not in data, f"text of retracted {record.id.hex()[:8]} still on disk"
            assert record.raw[-64:] not in data  # its signature
        for record in history.memories:
            if record.id in expected.heads:
                assert history.marks[record.id].encode() in data  # the check can see text


def test_retracted_text_is_purged_from_the_full_text_index(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store(path) as store:
        keep = [sign_record(A, "memory", from_ms(BASE_MS + i), f"ordinary words number {i}") for i in range(20)]
        secret = sign_record(A, "memory", from_ms(BASE_MS + 100), "zebrasecretword quokkaprivate",
                             topics=["topicsecretxyz"])
        store.ingest(keep + [secret])
        store.ingest([sign_record(A, "retract", from_ms(BASE_MS + 200), "", refs=[secret.id])])
        assert store.recall("zebrasecretword") == []
        assert len(store.recall("ordinary", limit=100)) == 20
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    for word in (b"zebrasecret", b"quokkaprivate", b"topicsecretxyz"):
        assert word not in data


# --- (d) a state machine over one store --------------------------------------------------
class StoreMachine(RuleBasedStateMachine):
    """remember / update / concurrent update / retract / social records /
    replay / reopen, in any interleaving; after every step the store shows
    exactly the views of every record it was ever given."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "store.db"
        self.store = Store(self.path)
        self.records: dict[bytes, Record] = {}
        self.lineages: list[tuple[int, bytes]] = []  # (author index, root)
        self.ms = BASE_MS
        self.counter = 0

    def teardown(self) -> None:
        self.store.close()
        self.tmp.cleanup()

    def ts(self) -> int:
        self.counter += 1
        return from_ms(self.ms, self.counter)

    def feed(self, *records: Record) -> None:
        for record in records:
            self.records[record.id] = record
        self.store.ingest(records)

    @initialize(text=memory_texts)
    def first(self, text: str) -> None:
        self.remember(0, text)

    @rule(who=st.integers(0, 2), text=memory_texts)
    def remember(self, who: int, text: str) -> None:
        record = sign_record(identity(who), "memory", self.ts(), text)
        self.lineages.append((who, record.id))
        self.feed(record)

    def _heads(self, data: st.DataObject) -> tuple[int, bytes, list[Record]]:
        who, root = data.draw(st.sampled_from(self.lineages))
        heads = self.store.lineage_heads(root, identity(who).public_key)
        return who, root, heads

    @rule(data=st.data(), text=memory_texts)
    def update(self, data: st.DataObject, text: str) -> None:
        who, root, heads = self._heads(data)
        refs = [h.id for h in heads] or [root]
        self.feed(sign_record(identity(who), "memory", self.ts(), text, refs=refs, root=root))

    @rule(data=st.data(), texts=st.lists(memory_texts, min_size=2, max_size=3), same_ts=st.booleans())
    def concurrent_update(self, data: st.DataObject, texts: list[str], same_ts: bool) -> None:
        who, root, heads = self._heads(data)
        refs = [h.id for h in heads] or [root]
        ts = self.ts()
        self.feed(*[
            sign_record(identity(who), "memory", ts if same_ts else self.ts(), t, refs=refs, root=root)
            for t in texts
        ])

    @rule(data=st.data(), whole=st.booleans())
    def retract(self, data: st.DataObject, whole: bool) -> None:
        who, root, heads = self._heads(data)
        versions = [r for r in self.records.values()
                    if r.kind == "memory" and r.lineage == root and r.author == identity(who).public_key]
        target = root if whole or not versions else data.draw(st.sampled_from(versions)).id
        self.feed(sign_record(identity(who), "retract", self.ts(), "", refs=[target]))

    @rule(who=st.integers(0, 2), other=st.integers(0, 2), active=st.booleans(), name=st.text(max_size=8))
    def social(self, who: int, other: int, active: bool, name: str) -> None:
        me = identity(who)
        body = {"name": name, "description": "", "skills": [], "addresses": [],
                "xkey": me.message_public_key}
        records = [sign_record(me, "profile", self.ts(), body),
                   sign_record(me, "endorse", self.ts(), {"target": identity(other).public_key, "what": "agent"})]
        if other != who:
            records.append(sign_record(me, "follow", self.ts(), {"target": identity(other).public_key,
                                                                  "active": active}))
        self.feed(*records)

    @rule(seconds=st.integers(0, 5))
    def time_passes(self, seconds: int) -> None:
        if seconds:
            self.ms += seconds * 1000
            self.counter = 0

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        everything = sorted(self.records.values(), key=lambda r: r.id)
        subset = data.draw(st.lists(st.sampled_from(everything), max_size=len(everything) + 2))
        result = self.store.ingest_raw([r.raw for r in subset])
        assert result.added == [] and result.rejected == []

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store(self.path)

    @invariant()
    def matches_the_reference_views(self) -> None:
        assert_store_matches(self.store, self.records.values())
        assert self.store.integrity_check() == "ok"


StoreMachine.TestCase.settings = settings(StoreMachine.TestCase.settings, stateful_step_count=25)
TestStoreMachine = StoreMachine.TestCase


# --- recall: filters and ranking ------------------------------------------------------------
def _memory(who, step: int, text: str, **fields) -> Record:
    return sign_record(who, "memory", from_ms(BASE_MS + step * 1000), text, **fields)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "store.db") as s:
        yield s


def ids(found) -> list[bytes]:
    return [m.record.id for m in found]


def test_recall_filters(store: Store) -> None:
    day = 86_400_000
    old = _memory(A, 1, "deploy notes for the old cluster", topics=["ops"], session="s1", at=BASE_MS - 10 * day)
    mid = _memory(A, 2, "deploy notes for the new cluster", topics=["ops", "k8s"], session="s2", at=BASE_MS - 2 * day)
    new = _memory(B, 3, "lunch menu", topics=["food"], session="s2")
    private = _memory(B, 4, "deploy password hint", visibility="private")
    store.ingest([old, mid, new, private])

    assert set(ids(store.recall(""))) == {old.id, mid.id, new.id, private.id}
    assert ids(store.recall("")) == [private.id, new.id, mid.id, old.id]  # newest first
    assert set(ids(store.recall("deploy"))) == {old.id, mid.id, private.id}
    assert set(ids(store.recall("", since=BASE_MS - 3 * day))) == {mid.id, new.id, private.id}
    assert set(ids(store.recall("", until=BASE_MS - 3 * day))) == {old.id}
    assert set(ids(store.recall("", since=BASE_MS - 3 * day, until=BASE_MS - day))) == {mid.id}
    assert set(ids(store.recall("", since=BASE_MS - 2 * day, until=BASE_MS - 2 * day))) == {mid.id}  # inclusive
    assert set(ids(store.recall("", topics=["ops"]))) == {old.id, mid.id}
    assert set(ids(store.recall("", topics=["k8s", "food"]))) == {mid.id, new.id}
    assert set(ids(store.recall("", authors=[B.public_key]))) == {new.id, private.id}
    assert set(ids(store.recall("", authors=[A.public_key, B.public_key]))) == {old.id, mid.id, new.id, private.id}
    assert set(ids(store.recall("", session="s2"))) == {mid.id, new.id}
    assert set(ids(store.recall("", session=""))) == {private.id}
    assert set(ids(store.recall("", visibilities=("public",)))) == {old.id, mid.id, new.id}
    assert set(ids(store.recall("deploy", topics=["ops"], session="s1"))) == {old.id}
    assert ids(store.recall("", limit=2)) == [private.id, new.id]
    assert len(store.recall("", limit=0)) == 1  # at least one
    assert store.recall("nothing matches this") == []
    assert store.recall("deploy", authors=[identity(5).public_key]) == []


def test_recall_query_text_is_never_fts_syntax(store: Store) -> None:
    store.ingest([_memory(A, 1, 'say "hello" AND NOT world (near) * ^ : -')])
    for query in ['"', "AND", "NOT", "(", "hello OR", "NEAR(a b)", "*", "^x", "col:hello", "-", "'", "\\"]:
        store.recall(query)  # no sqlite3.OperationalError
    assert len(store.recall('"hello"')) == 1


def test_bm25_ranks_more_matching_terms_first_and_ties_go_to_the_newest(store: Store) -> None:
    one = _memory(A, 1, "the cache server restarts nightly")
    both = _memory(A, 2, "the cache server leaks memory on restart")
    store.ingest([both, one])
    assert ids(store.recall("cache memory")) == [both.id, one.id]
    # equal relevance: same text shape, the newest first
    twins = [_memory(B, 10 + i, f"kettle descaling guide part {word}") for i, word in enumerate(["alpha", "bravo", "charlie"])]
    store.ingest(twins)
    assert ids(store.recall("kettle descaling")) == [t.id for t in reversed(twins)]


def test_update_and_retract_through_the_store(store: Store) -> None:
    v1 = _memory(A, 1, "the office wifi password is hunter2")
    v2 = _memory(A, 2, "the office wifi password is correct horse", refs=[v1.id], root=v1.id)
    store.ingest([v1])
    store.ingest([v2])
    assert ids(store.recall("wifi")) == [v2.id]
    assert store.recall("hunter2") == []  # the old text is not searchable
    assert store.get(v1.id) == v1  # but still stored, until retracted
    assert store.current_version(v1.id) == v2
    store.ingest([sign_record(A, "retract", from_ms(BASE_MS + 3000), "", refs=[v1.id])])
    assert store.recall("wifi") == [] and store.get(v1.id) is None and store.get(v2.id) is None
    assert store.is_retracted(v1.id)
    assert store.ingest([v1, v2]).retracted == 2  # gossip cannot bring them back


def test_ingest_raw_rejects_bad_records_with_a_reason_and_keeps_the_rest(store: Store) -> None:
    good = [_memory(A, i, f"good {i}") for i in range(3)]
    tampered = bytearray(good[1].raw)
    tampered[-1] ^= 1
    raws = [good[0].raw, bytes(tampered), b"not cbor", good[2].raw, good[0].raw, b"\xd2" + b"\x00" * 200_000]
    result = store.ingest_raw(raws)
    assert [r.id for r in result.added] == [good[0].id, good[2].id]
    assert result.duplicates == 1
    reasons = dict(result.rejected)
    assert sorted(reasons) == [1, 2, 5]
    assert "signature" in reasons[1]
    assert "tag 18" in reasons[2]
    assert "limit" in reasons[5]
    assert not store.has(good[1].id)


def test_ingest_raw_verifies_in_parallel_for_large_batches(store: Store) -> None:
    records = [_memory(A, i, f"batch memory {i}") for i in range(200)]
    raws = [r.raw for r in records]
    raws[150] = raws[150][:-1] + bytes([raws[150][-1] ^ 1])
    result = store.ingest_raw(raws)
    assert len(result.added) == 199
    assert [(p, "bad signature") for p, _ in result.rejected] == result.rejected == [(150, "bad signature")]


def test_store_survives_reopen_and_resolves_id_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    record = _memory(A, 1, "persist me")
    with Store(path) as store:
        store.ingest([record])
    with Store(path) as store:
        assert store.get(record.id) == record
        assert store.resolve_prefix(record.id.hex()[:8]) == record.id
        assert store.resolve_prefix(record.id.hex().upper()) == record.id
        with pytest.raises(StoreError, match="not a record id"):
            store.resolve_prefix("xyz")
        with pytest.raises(StoreError, match="no record"):
            store.resolve_prefix("0" * 8 if not record.id.hex().startswith("0" * 8) else "f" * 8)
        assert store.last_ts(A.public_key) == record.ts
        assert store.integrity_check() == "ok"


def test_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    with Store(tmp_path / "store.db") as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._db.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_two_connections_share_one_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with Store(path) as first, Store(path) as second:
        first.ingest([_memory(A, 1, "written by the first")])
        assert [m.record.text for m in second.recall("first")] == ["written by the first"]
        sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()


def test_large_batches_verify_in_worker_processes_and_keep_positions(tmp_path: Path) -> None:
    """A batch big enough for the worker pool: the bad records are reported
    at their own positions, everything else is stored, plain and superseding
    memories alike."""
    author = identity(0)
    raws = []
    for i in range(400):
        raws.append(sign_record(author, "memory", from_ms(BASE_MS + i), f"note {i}").raw)
    first = sign_record(author, "memory", from_ms(BASE_MS + 1000), "first version")
    second = sign_record(author, "memory", from_ms(BASE_MS + 1001), "second version",
                         refs=[first.id], root=first.id)
    raws[100:100] = [first.raw, second.raw]
    raws[7] = raws[7][:-1] + bytes([raws[7][-1] ^ 1])  # bad signature
    raws[300] = b"\xd2garbage"
    with Store(tmp_path / "s.db") as store:
        result = store.ingest_raw(raws)
        assert [position for position, _ in result.rejected] == [7, 300]
        assert "signature" in result.rejected[0][1]
        assert len(result.added) == len(raws) - 2
        assert store.ingest_raw(raws).duplicates == len(raws) - 2
        texts = [m.record.text for m in store.recall("version", limit=10)]
        assert texts == ["second version"]


@settings(max_examples=25, deadline=None)
@given(
    ats=st.lists(st.integers(0, 40), min_size=1, max_size=40),
    window=st.tuples(st.integers(-2, 42), st.integers(-2, 42)),
    limit=st.integers(1, 12),
    updated=st.sets(st.integers(0, 39), max_size=5),
)
def test_a_time_window_without_words_lists_the_newest_current_memories(ats, window, limit, updated) -> None:
    """``recall("", since, until)`` (answered from the search index's fast
    fields) equals the reference: current memories with since <= at <= until,
    newest first, the first ``limit``."""
    day = 86_400_000
    originals = [_memory(A, i + 1, f"note {i}", at=BASE_MS - at * day) for i, at in enumerate(ats)]
    updates = [
        sign_record(A, "memory", from_ms(BASE_MS + 100 + i), f"note {i} again", at=originals[i].at,
                    refs=[originals[i].id], root=originals[i].id)
        for i in sorted(updated) if i < len(originals)
    ]
    since, until = (BASE_MS - max(window) * day, BASE_MS - min(window) * day)
    with Store(Path(":memory:")) as store:
        store.ingest(originals + updates)
        replaced = {ref for u in updates for ref in u.refs}
        current = [r for r in originals + updates if r.id not in replaced]
        expected = sorted((r for r in current if since <= r.at <= until), key=lambda r: r.ts, reverse=True)
        assert ids(store.recall("", since=since, until=until, limit=limit)) == [r.id for r in expected[:limit]]
