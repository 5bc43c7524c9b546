"""The CRDT views (p2pmem.model.views): laws and semantics.

The state of a node is a grow-only set of records and every view is a pure
function of that set, so merge is set union and the laws below are what make
any delivery order and any partition converge. The store's agreement with
these views is tested in test_store.py.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from p2pmem.model.clock import from_ms
from p2pmem.model.record import Record, sign_record
from p2pmem.model.views import ViewSnapshot, build_views
from tests.strategies import BASE_MS, OPERATIONS, History, histories, identity

A, B, C = identity(0), identity(1), identity(2)


def merge(*sets: dict[bytes, Record]) -> dict[bytes, Record]:
    """What a node does with two record sets: their union (keyed by id)."""
    out: dict[bytes, Record] = {}
    for s in sets:
        out.update(s)
    return out


def as_set(records: list[Record]) -> dict[bytes, Record]:
    return {r.id: r for r in records}


def views(records) -> tuple:
    if isinstance(records, dict):
        records = list(records.values())
    return build_views(records).comparable()


# --- laws ---------------------------------------------------------------------
@given(histories(), st.randoms(use_true_random=False), st.integers(0, 3))
def test_views_ignore_order_and_duplicates(history: History, rng: random.Random, copies: int) -> None:
    records = list(history.records)
    expected = views(records)
    shuffled = records + [rng.choice(records) for _ in range(copies * len(records) // 2)]
    rng.shuffle(shuffled)
    assert views(shuffled) == expected
    assert views(list(reversed(records))) == expected


@st.composite
def partitions(draw: st.DrawFn) -> tuple[History, list[dict[bytes, Record]]]:
    """A history and three (overlapping, possibly empty) subsets of it."""
    history = draw(histories())
    parts: list[dict[bytes, Record]] = [{}, {}, {}]
    for record in history.records:
        for i in draw(st.sets(st.integers(0, 2), max_size=3)):
            parts[i][record.id] = record
    return history, parts


@given(partitions())
def test_merge_is_commutative_associative_and_idempotent(case) -> None:
    _, (a, b, c) = case
    assert views(merge(a, b)) == views(merge(b, a))
    assert views(merge(a, merge(b, c))) == views(merge(merge(a, b), c))
    assert views(merge(a, merge(b, c))) == views(merge(c, b, a)) == views(merge(b, c, a))
    assert views(merge(a, a)) == views(a)
    assert views(merge(merge(a, b), b)) == views(merge(a, b))


@given(partitions())
def test_views_of_a_union_do_not_depend_on_how_it_was_assembled(case) -> None:
    history, (a, b, c) = case
    everything = as_set(history.records)
    rest = {k: v for k, v in everything.items() if k not in a and k not in b and k not in c}
    assert views(merge(a, b, c, rest)) == views(everything)
    assert views(merge(rest, merge(c, b), a)) == views(everything)


@given(histories(), st.randoms(use_true_random=False))
def test_retraction_is_permanent_in_every_superset(history: History, rng: random.Random) -> None:
    """Whatever subset a node holds, a memory retracted there is retracted in
    every larger set, and never a head."""
    full = build_views(history.records)
    subset = [r for r in history.records if rng.random() < 0.6]
    partial = build_views(subset)
    assert partial.retracted <= full.retracted
    assert not (full.retracted & set(full.heads))


@given(histories())
def test_view_structure_is_consistent(history: History) -> None:
    v = build_views(history.records)
    by_id = as_set(history.records)
    for head_id, head in v.heads.items():
        assert head.kind == "memory" and head_id not in v.retracted
    lineage_heads: dict[tuple[bytes, bytes], list[Record]] = {}
    for head in v.heads.values():
        lineage_heads.setdefault((head.author, head.lineage), []).append(head)
    assert set(v.current) == set(lineage_heads)
    for key, members in lineage_heads.items():
        best = max(members, key=lambda r: (r.ts, r.id))
        assert v.current[key] == best.id
        assert set(v.conflicts.get(key, ())) == {m.id for m in members} - {best.id}
    for author, profile_id in v.profiles.items():
        profile = by_id[profile_id]
        assert profile.author == author
        rivals = [r for r in history.records if r.kind == "profile" and r.author == author]
        assert (profile.ts, profile.id) == max((r.ts, r.id) for r in rivals)
    # a retracted memory never supersedes: what it replaced is a head again
    for memory in history.memories:
        if memory.id in v.heads:
            assert not any(
                memory.id in other.refs and other.author == memory.author and other.id not in v.retracted
                for other in history.memories
            )


@given(histories(operations=tuple(op for op in OPERATIONS if op != "foreign_edit")))
def test_retracts_by_other_agents_are_inert(history: History) -> None:
    """A retract only reaches its own author's memories: with no lineage of
    the retracting agent involved, removing it changes nothing."""
    without_foreign_retracts = [r for r in history.records if history.ops[r.id] != "foreign_retract"]
    assert views(without_foreign_retracts) == views(history.records)


@given(histories(authors=3))
def test_updates_by_other_agents_only_start_their_own_lineage(history: History) -> None:
    """A memory naming another agent's memory in refs and root does not
    supersede it: everything outside the foreign lineages is the same as if
    the foreign memories did not exist."""
    v = build_views(history.records)
    foreign = {(r.author, r.lineage) for r in history.records if history.ops[r.id] == "foreign_edit"}

    def own_part(view: ViewSnapshot) -> tuple:
        return (
            sorted(i for i, r in view.heads.items() if (r.author, r.lineage) not in foreign),
            sorted((k, x) for k, x in view.current.items() if k not in foreign),
            sorted((k, x) for k, x in view.conflicts.items() if k not in foreign),
        )

    rest = [r for r in history.records if r.kind != "memory" or (r.author, r.lineage) not in foreign]
    assert own_part(build_views(rest)) == own_part(v)


# --- semantics, by example -------------------------------------------------------
def ts(step: int, counter: int = 0) -> int:
    return from_ms(BASE_MS + step * 1000, counter)


def mem(who, step: int, text: str, *, refs=(), root=None, counter: int = 0) -> Record:
    return sign_record(who, "memory", ts(step, counter), text, refs=list(refs), root=root)


def retract(who, step: int, *refs: bytes) -> Record:
    return sign_record(who, "retract", ts(step), "", refs=list(refs))


def test_an_update_supersedes_the_old_version() -> None:
    v1 = mem(A, 1, "v1")
    v2 = mem(A, 2, "v2", refs=[v1.id], root=v1.id)
    view = build_views([v1, v2])
    assert set(view.heads) == {v2.id}
    assert view.current == {(A.public_key, v1.id): v2.id}
    assert view.conflicts == {}


def test_concurrent_updates_are_kept_and_the_greatest_wins() -> None:
    v1 = mem(A, 1, "v1")
    left = mem(A, 2, "left", refs=[v1.id], root=v1.id)
    right = mem(A, 2, "right", refs=[v1.id], root=v1.id)  # same timestamp
    view = build_views([v1, left, right])
    winner, loser = sorted([left, right], key=lambda r: r.id, reverse=True)
    assert set(view.heads) == {left.id, right.id}
    assert view.current[(A.public_key, v1.id)] == winner.id
    assert view.conflicts[(A.public_key, v1.id)] == (loser.id,)
    later = mem(A, 3, "later", refs=[v1.id], root=v1.id)  # a later concurrent edit wins
    assert build_views([v1, left, right, later]).current[(A.public_key, v1.id)] == later.id
    merged = mem(A, 4, "merged", refs=[left.id, right.id], root=v1.id)
    view = build_views([v1, left, right, merged])
    assert set(view.heads) == {merged.id} and view.conflicts == {}


def test_retracting_a_lineage_hides_every_version_even_future_ones() -> None:
    v1 = mem(A, 1, "v1")
    v2 = mem(A, 2, "v2", refs=[v1.id], root=v1.id)
    gone = retract(A, 3, v1.id)
    v3 = mem(A, 4, "v3 from a node that had not heard", refs=[v2.id], root=v1.id)
    view = build_views([v1, v2, gone, v3])
    assert view.heads == {} and view.current == {}
    assert view.retracted == {v1.id, v2.id, v3.id}


def test_retracting_one_version_brings_back_the_version_it_replaced() -> None:
    v1 = mem(A, 1, "v1")
    v2 = mem(A, 2, "v2", refs=[v1.id], root=v1.id)
    view = build_views([v1, v2, retract(A, 3, v2.id)])
    assert set(view.heads) == {v1.id}
    assert view.retracted == {v2.id}


def test_only_the_author_can_retract_or_supersede() -> None:
    v1 = mem(A, 1, "v1")
    hijack = mem(B, 2, "hijack", refs=[v1.id], root=v1.id)
    view = build_views([v1, hijack])
    assert set(view.heads) == {v1.id, hijack.id}
    assert view.current == {(A.public_key, v1.id): v1.id, (B.public_key, v1.id): hijack.id}
    # B's retract naming v1 only reaches B's own memories of that lineage
    view = build_views([v1, hijack, retract(B, 3, v1.id)])
    assert set(view.heads) == {v1.id}
    assert view.retracted == {hijack.id}


def test_profiles_follows_endorsements_and_messages() -> None:
    def profile(step, name, counter=0):
        body = {"name": name, "description": "", "skills": [], "addresses": [], "xkey": A.message_public_key}
        return sign_record(A, "profile", ts(step, counter), body)

    def follow(step, who, target, active):
        return sign_record(who, "follow", ts(step), {"target": target.public_key, "active": active})

    old, new = profile(1, "old"), profile(2, "new")
    tie1, tie2 = profile(3, "x"), profile(3, "y")
    view = build_views([new, old])
    assert view.profiles == {A.public_key: new.id}
    assert build_views([old, new, tie1, tie2]).profiles == {A.public_key: max(tie1.id, tie2.id)}

    records = [follow(1, A, B, True), follow(2, A, B, False), follow(3, A, C, True), follow(1, B, A, True)]
    assert build_views(records).follows == {(A.public_key, C.public_key), (B.public_key, A.public_key)}
    records.append(follow(4, A, B, True))
    assert (A.public_key, B.public_key) in build_views(records).follows

    e1 = sign_record(A, "endorse", ts(1), {"target": B.public_key, "what": "agent"})
    e2 = sign_record(A, "endorse", ts(2), {"target": B.public_key, "what": "agent"})
    assert build_views([e1, e2]).endorsements == {(A.public_key, B.public_key, "agent")}
    msg = sign_record(A, "message", ts(1), {"to": B.public_key, "epk": bytes(32), "ct": b"x" * 20})
    assert build_views([msg]).messages == {msg.id}


def test_empty_set_has_empty_views() -> None:
    assert build_views([]).comparable() == ViewSnapshot().comparable()
