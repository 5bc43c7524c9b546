"""The record-kind registry (p2pmem/model/kinds.py): every kind has one
complete entry, and a kind registered from outside the model (a toy one
here) is signed, decoded, scoped, quota'd and stored through it alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from p2pmem.errors import RecordError
from p2pmem.graph.records import GRAPH_KINDS
from p2pmem.model import kinds
from p2pmem.model.kinds import AUTHOR_SCOPED, EVERYWHERE, REGISTRY, VIEW_HOOKS, RecordKind
from p2pmem.model.quota import group_limit, kept
from p2pmem.model.record import KINDS, VISIBLE_KINDS, decode_record, sign_record
from p2pmem.model.scope import ReplicationInterest, shared, travels
from p2pmem.storage.store import Store
from tests.strategies import identity

ALICE, BOB = identity(0), identity(1)
TS = 1 << 40


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_has_a_complete_registry_entry(name: str) -> None:
    spec = REGISTRY[name]
    assert spec.name == name
    assert callable(spec.check_body)
    assert spec.scope in (kinds.SCOPE_EVERYWHERE, kinds.SCOPE_AUTHOR)
    assert spec.view in VIEW_HOOKS and spec.view in Store._VIEWS
    assert (name in EVERYWHERE) != (name in AUTHOR_SCOPED)
    # only the directory and messages, which go everywhere, are under a quota
    assert (spec.quota is not None) == (spec.scope == kinds.SCOPE_EVERYWHERE)
    assert spec.visible == (name in VISIBLE_KINDS)


def test_the_registry_holds_exactly_the_known_kinds() -> None:
    assert set(REGISTRY) == set(KINDS)
    assert set(GRAPH_KINDS) <= set(AUTHOR_SCOPED)
    assert sorted(EVERYWHERE) == ["endorse", "follow", "message", "profile"]


def test_a_taken_name_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError):
        kinds.register(RecordKind("memory", lambda body: body, kinds.SCOPE_EVERYWHERE))
    kinds.register(REGISTRY["memory"])  # the same entry again is fine
    with pytest.raises(ValueError):
        RecordKind("x", lambda body: body, "nowhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RecordKind("x", lambda body: body, kinds.SCOPE_AUTHOR, view="no-such-hook")


def _check_note(body: Any) -> dict[str, Any]:
    if type(body) is not dict or set(body) != {"note"} or type(body["note"]) is not str:
        raise RecordError("a note body is {'note': text}")
    return body


@pytest.fixture
def note_kinds() -> Iterator[None]:
    """Two toy kinds: ``note`` scoped like memories, ``beacon`` everywhere
    under a quota of 2 per author."""
    kinds.register(RecordKind("note", _check_note, kinds.SCOPE_AUTHOR, visible=True))
    kinds.register(RecordKind("beacon", _check_note, kinds.SCOPE_EVERYWHERE, quota=(2, None)))
    try:
        yield
    finally:
        kinds.unregister("note")
        kinds.unregister("beacon")


def test_a_toy_kind_round_trips_and_gets_its_scope(note_kinds: None) -> None:
    record = sign_record(ALICE, "note", TS, {"note": "hello"}, visibility="ask")
    assert decode_record(record.raw) == record
    with pytest.raises(RecordError, match="note body"):
        sign_record(ALICE, "note", TS, {"text": "hello"})
    with pytest.raises(RecordError, match="has no refs"):
        sign_record(ALICE, "note", TS, {"note": "x"}, refs=[b"\0" * 32])
    with pytest.raises(RecordError, match="visibility 'public'"):
        sign_record(ALICE, "beacon", TS, {"note": "x"}, visibility="private")

    assert "note" in AUTHOR_SCOPED and "note" not in EVERYWHERE
    assert "beacon" in EVERYWHERE
    follows_alice = ReplicationInterest(False, frozenset({ALICE.public_key}))
    nobody = ReplicationInterest(False, frozenset())
    assert follows_alice.wants("note", ALICE.public_key, "public")
    assert not follows_alice.wants("note", ALICE.public_key, "ask")
    assert not nobody.wants("note", ALICE.public_key, "public")
    assert shared(follows_alice, nobody).wants("beacon", BOB.public_key, "public")
    assert travels("note", "public") and not travels("note", "private")
    assert travels("beacon", "public")
    assert not travels("no-such-kind", "public")

    assert group_limit("note") is None and group_limit("beacon") == (2, None)
    beacons = [sign_record(ALICE, "beacon", TS + i, {"note": str(i)}) for i in range(4)]
    assert {r.id for r in kept(beacons)} == {r.id for r in beacons[2:]}


def test_a_toy_kind_is_stored_through_its_view_hook(note_kinds: None, tmp_path) -> None:
    store = Store(tmp_path / "store.db")
    try:
        beacons = [sign_record(ALICE, "beacon", TS + i, {"note": str(i)}) for i in range(3)]
        note = sign_record(ALICE, "note", TS, {"note": "hello"})
        result = store.ingest([note, *beacons])
        assert store.get(note.id) == note
        assert result.evicted == 1 and store.count("beacon") == 2
    finally:
        store.close()


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(RecordError, match="unknown kind"):
        kinds.kind_of("note")
    with pytest.raises(RecordError, match="unknown kind"):
        sign_record(ALICE, "note", TS, {"note": "x"})
