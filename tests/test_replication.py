"""Replication alone (p2pmem/protocol/replication.py): two PeerSyncs
reconciling over real indexes with no core and no connection, their bounds
(concurrent reconciliations, start rate, interest rate, what we owe), and the
key catalogue over a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.model.record import sign_record
from p2pmem.model.scope import ReplicationInterest
from p2pmem.protocol import wire
from p2pmem.protocol.reconcile import ItemIndex
from p2pmem.protocol.replication import Catalogue, PeerSync, ReconStart
from p2pmem.storage.store import Store
from p2pmem.testing import test_identity

items = st.sets(st.tuples(st.integers(1, 10**6), st.binary(min_size=32, max_size=32)), max_size=300)


def sync(now: float = 0.0) -> PeerSync:
    return PeerSync.new({}, limits.PUSH_BYTES_PER_S, now)


def reconcile(ours: set, theirs: set) -> tuple[set[bytes], set[bytes], int]:
    """Run one reconciliation between two PeerSyncs; the ids each ends up
    owing the other, and the messages it took."""
    a, b = sync(), sync()
    index_a, index_b = ItemIndex(ours), ItemIndex(theirs)
    start = a.start(lambda: index_a)
    assert isinstance(start, ReconStart)
    owed_a: set[bytes] = set()
    owed_b: set[bytes] = set()
    recon_id, payload, to_b, messages = start.recon_id, start.payload, True, 1
    while payload is not None:
        receiver, index, owed = (b, index_b, owed_b) if to_b else (a, index_a, owed_a)
        step = receiver.receive(recon_id, payload, lambda index=index: index, initiator=not to_b, now=0.0)
        assert step is not None
        owed |= set(step.owed)
        payload, to_b = step.reply, not to_b
        messages += payload is not None
        assert messages < 100
    assert not a.recon and not b.recon  # both ends closed it
    return owed_a, owed_b, messages


@given(items, items)
@settings(max_examples=60, deadline=None)
def test_each_side_owes_exactly_what_the_other_lacks(ours, theirs):
    owed_a, owed_b, _ = reconcile(ours, theirs)
    assert owed_a == {i for _, i in ours - theirs}
    assert owed_b == {i for _, i in theirs - ours}


def test_one_reconciliation_at_a_time_from_our_side():
    a, index = sync(), ItemIndex()
    assert a.start(lambda: index) is not None
    assert a.start(lambda: index) is None  # the first one is still open
    assert a.receive(99, b"", lambda: index, initiator=True, now=0.0) is None  # a late reply


def test_a_peer_may_not_open_more_reconciliations_than_the_bound():
    """A peer that opens reconciliations and never finishes them holds at
    most MAX_CONCURRENT_RECONS of ours; the next one closes it."""
    ours = ItemIndex((t, t.to_bytes(32, "big")) for t in range(1, 2000, 2))
    theirs = ItemIndex((t, t.to_bytes(32, "big")) for t in range(2, 2000, 2))
    b = sync()
    for recon_id in range(1, limits.MAX_CONCURRENT_RECONS + 1):
        opened = sync().start(lambda: theirs)
        assert opened is not None
        step = b.receive(recon_id, opened.payload, lambda: ours, initiator=False, now=0.0)
        assert step is not None and step.reply is not None  # open: the sets differ
    assert len(b.recon) == limits.MAX_CONCURRENT_RECONS
    opened = sync().start(lambda: theirs)
    assert opened is not None
    with pytest.raises(wire.WireError, match="concurrent"):
        b.receive(50, opened.payload, lambda: ours, initiator=False, now=0.0)
    assert b.limited["recon_concurrent"] == 1


def test_the_peer_opens_reconciliations_within_its_rate():
    b, index, peer_index = sync(), ItemIndex(), ItemIndex()
    payload = sync().start(lambda: peer_index)
    assert payload is not None
    for recon_id in range(1, limits.RECON_STARTS_BURST + 1):
        b.receive(recon_id, payload.payload, lambda: index, initiator=False, now=0.0)  # empty: done at once
    with pytest.raises(wire.WireError, match="too often"):
        b.receive(1000, payload.payload, lambda: index, initiator=False, now=0.0)
    assert b.limited["recon_rate"] == 1
    b.receive(1001, payload.payload, lambda: index, initiator=False, now=1 / limits.RECON_STARTS_PER_S)


def test_interest_changes_are_rate_limited_and_stored_as_an_interest():
    s = sync()
    for _ in range(limits.INTEREST_BURST):
        s.change_interest(False, [b"\x07" * 32], 0.0)
    assert s.interest == ReplicationInterest(False, frozenset({b"\x07" * 32}))
    with pytest.raises(wire.WireError, match="too often"):
        s.change_interest(True, [], 0.0)
    assert s.limited["interest_rate"] == 1


@given(st.lists(st.lists(st.integers(0, 30_000), max_size=3000), max_size=12))
@settings(max_examples=20, deadline=None)
def test_what_we_owe_is_bounded_deduplicated_and_handed_out_in_message_batches(rounds):
    s = sync()
    for ids in rounds:
        s.owe(i.to_bytes(32, "big") for i in ids)
        assert len(s.push_pending) <= limits.MAX_PUSH_PENDING
        assert len(s.push_pending) == len(set(s.push_pending)) == len(s.push_queued)
    total = len(s.push_pending)
    taken: list[bytes] = []
    while batch := s.take_owed():
        assert len(batch) <= limits.MAX_RECORDS_PER_MESSAGE
        taken += batch
    assert len(taken) == total and not s.push_queued
    s.owe([b"\x01" * 32])
    s.forget_owed()
    assert not s.push_pending and not s.push_queued


def test_the_catalogue_builds_scoped_indexes_from_a_real_store_and_keeps_them_current():
    store = Store(Path(":memory:"), verify_workers=1)
    alice, bob = test_identity(1), test_identity(2)
    old = [sign_record(alice, "memory", 1000 + i, f"alice {i}") for i in range(5)]
    old += [sign_record(bob, "memory", 2000 + i, f"bob {i}") for i in range(3)]
    old.append(sign_record(bob, "memory", 3000, "bob private", visibility="private"))
    store.ingest(old)
    catalogue = Catalogue(store)
    only_alice = ReplicationInterest(False, frozenset({alice.public_key}))
    everyone = ReplicationInterest(True, frozenset())
    assert len(catalogue.index_for(only_alice)) == 5
    assert len(catalogue.index_for(everyone)) == 8  # never the private one
    new = sign_record(alice, "memory", 5000, "alice later")
    store.ingest([new])
    catalogue.add(new)
    assert (new.ts, new.id) in catalogue.index_for(only_alice)
    assert len(catalogue.index_for(everyone)) == 9
    for i in range(limits.MAX_CACHED_INDEXES + 5):
        catalogue.index_for(ReplicationInterest(False, frozenset({i.to_bytes(32, "big")})))
    assert len(catalogue.indexes) == limits.MAX_CACHED_INDEXES
    catalogue.interest_changed()
    assert catalogue.indexes == {}
    store.close()
