"""Range-based set reconciliation: correctness, cost and hostile input.

The properties: after a session both sides know exactly the two set
differences; fingerprints depend only on content; bytes grow with the
difference, not the set; and nothing a peer sends raises anything but
ReconcileError.
"""

from __future__ import annotations

import functools
import math
import random

import cbor2
import pycddl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from p2pmem.protocol.reconcile import (
    CDDL,
    DIFF,
    FINGERPRINT,
    ID_LIST,
    INFINITY,
    MAX_ID_LIST,
    MAX_TS,
    MIN_BOUND,
    MIN_MESSAGE,
    SKIP,
    Bound,
    ItemIndex,
    ReconcileError,
    Reconciler,
    fingerprint,
    reconcile_in_memory,
    run_reconciliation,
)

Item = tuple[int, bytes]

# --- strategies and helpers ------------------------------------------------

ids = st.binary(min_size=32, max_size=32)
# Few distinct timestamps on purpose: equal timestamps force id-prefix bounds.
timestamps = st.one_of(st.integers(0, 3), st.integers(0, MAX_TS))
items = st.tuples(timestamps, ids)

# Small thresholds and messages exercise splitting and cutting on small sets.
configs = st.fixed_dictionaries(
    {
        "branching": st.sampled_from([2, 3, 16]),
        "id_list_threshold": st.sampled_from([1, 2, 8, 32]),
        "max_message": st.sampled_from([MIN_MESSAGE, 512 * 1024]),
    }
)

SCHEMA = pycddl.Schema(CDDL)


@st.composite
def two_sets(draw: st.DrawFn, max_size: int = 120) -> tuple[list[Item], list[Item]]:
    """Two sets with every kind of overlap: each item is shared, only in A or
    only in B (so empty, identical and disjoint sets all occur)."""
    pool = draw(st.lists(items, max_size=max_size, unique_by=lambda it: it[1]))
    where = draw(st.lists(st.sampled_from("sab"), min_size=len(pool), max_size=len(pool)))
    a = [it for it, w in zip(pool, where, strict=True) if w in "sa"]
    b = [it for it, w in zip(pool, where, strict=True) if w in "sb"]
    return a, b


def sync(
    a: ItemIndex, b: ItemIndex, validate: bool = False, **cfg: int
) -> tuple[Reconciler, Reconciler, int, int]:
    """Run a session A -> B and check both sides learned the same thing."""
    ra, rb = Reconciler(a, **cfg), Reconciler(b, **cfg)
    if validate:
        messages, total = _run_validating(ra, rb)
    else:
        messages, total = run_reconciliation(ra, rb)
    assert ra.done and rb.done
    assert ra.have == rb.need and ra.need == rb.have
    return ra, rb, messages, total


def _run_validating(ra: Reconciler, rb: Reconciler) -> tuple[int, int]:
    msg: bytes | None = ra.start()
    sides = (rb, ra)
    turn = messages = total = 0
    while msg is not None:
        SCHEMA.validate_cbor(msg)
        assert len(msg) <= ra.max_message
        messages += 1
        total += len(msg)
        msg = sides[turn].receive(msg)
        turn ^= 1
    return messages, total


def id_set(its: list[Item] | set[Item]) -> set[bytes]:
    return {i for _, i in its}


def random_items(rng: random.Random, n: int) -> list[Item]:
    """Realistic HLC-like timestamps (milliseconds << 16 | counter)."""
    return [
        ((rng.randrange(1 << 40, 1 << 41) << 16) | rng.randrange(4), rng.randbytes(32))
        for _ in range(n)
    ]


@functools.lru_cache(maxsize=4)
def base_index(n: int, seed: int = 0) -> ItemIndex:
    return ItemIndex(random_items(random.Random(seed), n))


def with_unique(n: int, k: int, seed: int) -> tuple[ItemIndex, ItemIndex, set[bytes], set[bytes]]:
    """Two copies of a shared n-item set, plus k unique items split between them."""
    rng = random.Random(f"unique {seed}")  # not Random(0): that would repeat base_index's items
    k_a = rng.randint(0, k)
    only_a, only_b = random_items(rng, k_a), random_items(rng, k - k_a)
    a, b = base_index(n).copy(), base_index(n).copy()
    a.update(only_a)
    b.update(only_b)
    return a, b, id_set(only_a), id_set(only_b)


# --- correctness -------------------------------------------------------------


@given(two_sets(), configs)
def test_both_sides_learn_exact_differences(
    sets: tuple[list[Item], list[Item]], cfg: dict[str, int]
) -> None:
    a_items, b_items = sets
    a, b = ItemIndex(a_items), ItemIndex(b_items)
    ra, rb, _, _ = sync(a, b, validate=True, **cfg)
    ids_a, ids_b = id_set(a_items), id_set(b_items)
    assert ra.have == ids_a - ids_b
    assert ra.need == ids_b - ids_a
    assert rb.have == ids_b - ids_a
    assert rb.need == ids_a - ids_b
    assert ids_a | ra.need == ids_b | rb.need == ids_a | ids_b


@given(st.integers(0, 2000), st.integers(0, 300), st.integers(0, 2**32))
@settings(max_examples=15)
def test_larger_sets_with_equal_timestamps(n: int, k: int, seed: int) -> None:
    """Many items on few timestamps, cut into several small messages."""
    rnd = random.Random(seed)
    pool = [(rnd.randrange(3), rnd.randbytes(32)) for _ in range(n + k)]
    where = [rnd.choice("ab") for _ in range(k)]
    a_items = pool[:n] + [it for it, w in zip(pool[n:], where, strict=True) if w == "a"]
    b_items = pool[:n] + [it for it, w in zip(pool[n:], where, strict=True) if w == "b"]
    ra, _, _, _ = sync(ItemIndex(a_items), ItemIndex(b_items), max_message=MIN_MESSAGE)
    assert ra.have == id_set(a_items) - id_set(b_items)
    assert ra.need == id_set(b_items) - id_set(a_items)


@pytest.mark.parametrize("empty_side", ["initiator", "responder"])
def test_one_empty_side_streams_ids(empty_side: str) -> None:
    full = base_index(100_000)
    a, b = (ItemIndex(), full) if empty_side == "initiator" else (full, ItemIndex())
    ra, rb, messages, total = sync(a, b)
    holder = rb if empty_side == "initiator" else ra
    assert holder.have == set(full.ids())
    # ~32 bytes per id, messages of 512 KiB: 3.2 MB fit in 7 messages, each
    # answered by a one-range continuation.
    assert total <= 33 * len(full) + 4096
    assert messages <= 2 * math.ceil(total / (512 * 1024)) + 2


@given(st.integers(0, 40), st.integers(300, 3000), st.integers(0, 2**32), st.booleans())
@settings(max_examples=10)
def test_lopsided_sets(n_small: int, n_large: int, seed: int, small_starts: bool) -> None:
    """A few items against thousands in the same time span: an id list meets a
    crowded range, which is narrowed down before the ids flow."""
    rng = random.Random(seed)
    large = [(rng.randrange(1000), rng.randbytes(32)) for _ in range(n_large)]
    small = rng.sample(large, min(n_small, n_large) // 2) + [
        (rng.randrange(1000), rng.randbytes(32)) for _ in range(n_small - n_small // 2)
    ]
    a, b = (small, large) if small_starts else (large, small)
    ra, _, _, _ = sync(ItemIndex(a), ItemIndex(b), validate=True, max_message=MIN_MESSAGE)
    assert ra.have == id_set(a) - id_set(b)
    assert ra.need == id_set(b) - id_set(a)


def test_many_differences_in_small_messages() -> None:
    """Hundreds of differences with 16 KiB messages: fingerprint splits and id
    lists are cut short and resumed, and every message stays in budget."""
    a, b, only_a, only_b = with_unique(20_000, 600, seed=3)
    ra, rb, messages, total = sync(a, b, validate=True, max_message=MIN_MESSAGE)
    assert ra.have == only_a and ra.need == only_b
    assert messages > 6  # it really was cut into more rounds


def test_identical_sets_cost_two_messages() -> None:
    a = base_index(20_000)
    _, _, messages, total = sync(a, a.copy())
    assert messages == 2
    assert total < 1024


@given(two_sets(max_size=60), configs)
def test_messages_are_deterministic(
    sets: tuple[list[Item], list[Item]], cfg: dict[str, int]
) -> None:
    """Same content gives the same bytes, so simulations replay exactly."""

    def transcript(a_items: list[Item], b_items: list[Item]) -> list[bytes]:
        ra, rb = Reconciler(ItemIndex(a_items), **cfg), Reconciler(ItemIndex(b_items), **cfg)
        out = [ra.start()]
        sides = (rb, ra)
        while (reply := sides[(len(out) - 1) % 2].receive(out[-1])) is not None:
            out.append(reply)
        return out

    a_items, b_items = sets
    assert transcript(a_items, b_items) == transcript(a_items[::-1], b_items[::-1])


@given(
    two_sets(max_size=80),
    st.lists(st.tuples(st.booleans(), timestamps), max_size=20),
    st.integers(0, 2**32),
)
@settings(max_examples=25)
def test_index_changes_during_session(
    sets: tuple[list[Item], list[Item]], arrivals: list[tuple[bool, int]], seed: int
) -> None:
    """Records arriving mid-session never break the session; what it reports
    stays true, and the next session finds whatever was missed."""
    rnd = random.Random(seed)
    a_items, b_items = sets
    a, b = ItemIndex(a_items), ItemIndex(b_items)
    cfg = {"branching": 2, "id_list_threshold": 2}
    ra, rb = Reconciler(a, **cfg), Reconciler(b, **cfg)
    msg: bytes | None = ra.start()
    sides = (rb, ra)
    turn = 0
    while msg is not None:
        if arrivals and rnd.random() < 0.5:
            to_a, ts = arrivals.pop()
            (a if to_a else b).add(ts, rnd.randbytes(32))  # a fresh record id
        msg = sides[turn].receive(msg)
        turn ^= 1
    assert ra.have == rb.need and ra.need == rb.have
    assert ra.have <= set(a.ids()) and rb.have <= set(b.ids())
    # Transfer, then a second session finds nothing left to do.
    for id_ in ra.need:
        b_ts = next(ts for ts, i in b if i == id_)
        a.add(b_ts, id_)
    for id_ in rb.need:
        a_ts = next(ts for ts, i in a if i == id_)
        b.add(a_ts, id_)
    ra2, _, _, _ = sync(a, b, **cfg)
    assert ra2.have == set(a.ids()) - set(b.ids())
    assert ra2.need == set(b.ids()) - set(a.ids())


# --- cost --------------------------------------------------------------------

# Stated bound: bytes <= A + B * k * log2(n). Measured worst case is ~120
# bytes per difference per bit of log2(n) (16 fingerprints of ~29 bytes per
# level of 16 and a leaf id list of at most 32 ids).
COST_A, COST_B = 4096, 200


@given(st.integers(1, 50), st.integers(0, 2**32))
@settings(max_examples=8)
def test_bytes_grow_with_difference_not_size(k: int, seed: int) -> None:
    totals = {}
    for n in (2_000, 20_000):
        a, b, only_a, only_b = with_unique(n, k, seed)
        ra, _, _, total = sync(a, b)
        assert ra.have == only_a and ra.need == only_b
        assert total <= COST_A + COST_B * k * math.log2(n)
        totals[n] = total
    # Ten times the items costs at most a log factor more (or less: leaf sizes vary).
    assert max(totals.values()) <= 3 * min(totals.values())


def test_100k_sets_differing_by_100() -> None:
    """The benchmark case: few messages, bytes proportional to the difference."""
    a, b, only_a, only_b = with_unique(100_000, 100, seed=7)
    have, need, rounds, total = reconcile_in_memory(a, b)
    assert have == only_a and need == only_b
    assert rounds <= 6  # messages in both directions: three round trips
    assert total < 4 * (100 * 300) + 64 * 1024


# --- the index -----------------------------------------------------------------


def naive_range(its: set[Item], lower: Bound, upper: Bound) -> list[Item]:
    lo, hi = lower.key, upper.key
    return sorted(it for it in its if lo <= it[0].to_bytes(8, "big") + it[1] < hi)


bounds = st.builds(
    Bound, st.one_of(st.integers(0, 4), st.integers(0, MAX_TS)), st.binary(max_size=3)
) | st.just(INFINITY)


@given(st.lists(items, max_size=80), st.data())
def test_fingerprint_independent_of_insertion_order(its: list[Item], data: st.DataObject) -> None:
    order = data.draw(st.permutations(its))
    bulk = ItemIndex(its)
    incremental = ItemIndex()
    for n, (ts, id_) in enumerate(order):
        incremental.add(ts, id_)
        if n % 7 == 3:  # query mid-way, so later inserts land before merged ones
            incremental.fingerprint()
    assert list(bulk) == list(incremental) == sorted(set(its))
    assert bulk.fingerprint() == incremental.fingerprint() == fingerprint(i for _, i in set(its))
    for _ in range(5):
        lo, hi = sorted([data.draw(bounds), data.draw(bounds)], key=lambda bd: bd.key)
        expected = naive_range(set(its), lo, hi)
        assert (
            bulk.fingerprint(lo, hi)
            == incremental.fingerprint(lo, hi)
            == fingerprint(i for _, i in expected)
        )
        assert bulk.count(lo, hi) == len(expected)
        assert incremental.ids(lo, hi) == [i for _, i in expected]


@given(st.lists(items, min_size=1, max_size=100, unique=True), st.integers(1, 20))
def test_split_gives_balanced_minimal_bounds(its: list[Item], k: int) -> None:
    index = ItemIndex(its)
    uppers = index.split(MIN_BOUND, INFINITY, k)
    assert uppers[-1] == INFINITY
    counts = []
    lower = MIN_BOUND
    for upper in uppers:
        assert upper.key > lower.key
        counts.append(index.count(lower, upper))
        lower = upper
    assert sum(counts) == len(index)
    assert max(counts) - min(counts) <= 1 and min(counts) >= 1


def test_index_basics_and_bad_items() -> None:
    index = ItemIndex()
    assert index.add(5, b"\x01" * 32) and not index.add(5, b"\x01" * 32)
    assert (5, b"\x01" * 32) in index and (6, b"\x01" * 32) not in index and "x" not in index
    assert index.update([(5, b"\x01" * 32), (1, b"\x02" * 32)]) == 1
    assert len(index) == 2 and list(index)[0] == (1, b"\x02" * 32)
    with pytest.raises(ValueError):
        index.add(MAX_TS + 1, b"\x00" * 32)
    with pytest.raises(ValueError):
        index.add(1, b"\x00" * 31)
    with pytest.raises(TypeError):
        index.add("1", b"\x00" * 32)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        index.add(True, b"\x00" * 32)
    with pytest.raises(ValueError):
        Bound(INFINITY.ts, b"x").key  # noqa: B018
    with pytest.raises(ValueError):
        Reconciler(index, max_message=MIN_MESSAGE - 1)


# --- hostile input -------------------------------------------------------------


def fresh_pair() -> tuple[Reconciler, Reconciler]:
    """A responder, and an initiator that has sent its first message."""
    rng = random.Random(11)
    its = random_items(rng, 300)
    initiator = Reconciler(ItemIndex(its[:250]), id_list_threshold=4)
    initiator.start()
    return Reconciler(ItemIndex(its[50:]), id_list_threshold=4), initiator


def feed(reconciler: Reconciler, msg: object) -> None:
    """Anything but ReconcileError escaping fails the test."""
    try:
        reply = reconciler.receive(msg)  # type: ignore[arg-type]
    except ReconcileError as exc:
        assert exc.reason and str(exc) == exc.reason
        with pytest.raises(ReconcileError):  # a failed session stays failed
            reconciler.receive(b"\x81\x01")
        return
    assert reply is None or (isinstance(reply, bytes) and len(reply) <= reconciler.max_message)


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_reconcile_error(data: bytes) -> None:
    for r in fresh_pair():
        feed(r, data)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


@given(cbor_values)
def test_wrong_shape_cbor_only_raises_reconcile_error(value: object) -> None:
    for r in fresh_pair():
        feed(r, cbor2.dumps(value))
        feed(Reconciler(ItemIndex()), cbor2.dumps(cbor2.CBORTag(55799, value)))


near_ranges = st.tuples(
    st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 1)),
    st.binary(max_size=34),
    st.sampled_from([SKIP, FINGERPRINT, ID_LIST, DIFF, 4]),
    st.lists(
        st.sampled_from([0, 1, 15, 16, 31, 32, 64]).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)
        ),
        max_size=3,
    ),
)


@given(st.sampled_from([1, 1, 1, 0, 2]), st.lists(near_ranges, max_size=8))
def test_near_valid_messages_only_raise_reconcile_error(version: int, ranges: list) -> None:
    msg = cbor2.dumps(
        [version, *[[ts, prefix, mode, *payload] for ts, prefix, mode, payload in ranges]]
    )
    for r in fresh_pair():
        feed(r, msg)


@given(st.data())
@settings(max_examples=30)
def test_mutated_session_messages_only_raise_reconcile_error(data: st.DataObject) -> None:
    """Flip, cut or extend real messages in the middle of a session."""
    rng = random.Random(data.draw(st.integers(0, 1000)))
    shared = random_items(rng, 200)
    ra = Reconciler(ItemIndex(shared + random_items(rng, 5)), id_list_threshold=4, branching=4)
    rb = Reconciler(ItemIndex(shared + random_items(rng, 5)), id_list_threshold=4, branching=4)
    msg: bytes | None = ra.start()
    sides = (rb, ra)
    turn = 0
    while msg is not None:
        if data.draw(st.booleans()):
            how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
            buf = bytearray(msg)
            if how == "flip":
                pos = data.draw(st.integers(0, len(buf) - 1))
                buf[pos] ^= data.draw(st.integers(1, 255))
            elif how == "cut":
                del buf[data.draw(st.integers(0, len(buf) - 1)) :]
            else:
                buf += data.draw(st.binary(min_size=1, max_size=8))
            feed(sides[turn], bytes(buf))
            return
        msg = sides[turn].receive(msg)
        turn ^= 1


def test_specific_bad_messages() -> None:
    fp = b"\x00" * 16
    cases = {
        "not bytes": "hello",
        "oversize": b"\x00" * (512 * 1024 + 1),
        "version": cbor2.dumps([2]),
        "no version": cbor2.dumps([]),
        "trailing": cbor2.dumps([1]) + b"\x00",
        "non-shortest": b"\x81\x18\x01",
        "indefinite": b"\x9f\x01\xff",
        "decreasing": cbor2.dumps([1, [10, b"", 0], [1, b"", 0]]),
        "equal bounds": cbor2.dumps([1, [10, b"a", 0], [1, b"a", 0]]),
        "empty first range": cbor2.dumps([1, [1, b"", 0]]),
        "after infinity": cbor2.dumps([1, [0, b"", 0], [5, b"", 0]]),
        "infinity prefix": cbor2.dumps([1, [0, b"x", 0]]),
        "ts overflow": cbor2.dumps([1, [2**64 - 1, b"", 0], [2, b"", 0]]),
        "long prefix": cbor2.dumps([1, [5, b"x" * 33, 0]]),
        "bad fingerprint": cbor2.dumps([1, [0, b"", FINGERPRINT, b"x" * 15]]),
        "bad id list": cbor2.dumps([1, [0, b"", ID_LIST, b"x" * 33]]),
        "duplicate ids": cbor2.dumps([1, [0, b"", ID_LIST, b"x" * 64]]),
        "long id list": cbor2.dumps(
            [1, [0, b"", ID_LIST, b"".join(i.to_bytes(32, "big") for i in range(MAX_ID_LIST + 1))]]
        ),
        "unsolicited diff": cbor2.dumps([1, [0, b"", DIFF, b"", b""]]),
        "unknown mode": cbor2.dumps([1, [0, b"", 9, fp]]),
        "wrong arity": cbor2.dumps([1, [0, b"", SKIP, fp]]),
        "too many ranges": cbor2.dumps([1] + [[1, b"", SKIP]] * 70_000),
    }
    for name, msg in cases.items():
        r = Reconciler(ItemIndex())
        with pytest.raises(ReconcileError):
            r.receive(msg)  # type: ignore[arg-type]
        assert r.messages_sent == 0, name


def test_diff_must_match_what_we_sent() -> None:
    own = [(1, b"\x01" * 32), (2, b"\x02" * 32)]
    stranger = b"\x09" * 32
    for you_need, you_have in [(own[0][1], b""), (b"", stranger), (stranger + stranger, b"")]:
        r = Reconciler(ItemIndex(own))
        first = cbor2.loads(r.start())
        assert first[1][2] == ID_LIST
        with pytest.raises(ReconcileError):
            r.receive(cbor2.dumps([1, [0, b"", DIFF, you_need, you_have]]))
        assert r.have == set() and r.need == set()


def test_session_order_errors() -> None:
    r = Reconciler(ItemIndex())
    r.start()
    with pytest.raises(ReconcileError):
        r.start()
    assert r.receive(cbor2.dumps([1])) is None and r.done
    with pytest.raises(ReconcileError):
        r.receive(cbor2.dumps([1]))


def test_rounds_are_bounded() -> None:
    """A peer that never lets go hits max_rounds instead of looping forever."""
    r = Reconciler(base_index(2_000), max_rounds=5)
    r.start()
    endless = cbor2.dumps([1, [0, b"", FINGERPRINT, b"\x00" * 16]])
    for _ in range(5):
        assert r.receive(endless) is not None
    with pytest.raises(ReconcileError):
        r.receive(endless)


# --- stateful ------------------------------------------------------------------


class ReconcileMachine(RuleBasedStateMachine):
    """Items arrive at A, B or both, in any order; at any moment a session
    finds exactly the symmetric difference, and applying it converges."""

    @initialize(seed=st.integers(0, 2**32))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.a, self.b = ItemIndex(), ItemIndex()
        self.sa: set[Item] = set()
        self.sb: set[Item] = set()

    def _put(self, item: Item, where: str) -> None:
        if where in ("a", "both"):
            self.a.add(*item)
            self.sa.add(item)
        if where in ("b", "both"):
            self.b.add(*item)
            self.sb.add(item)

    @rule(item=items, where=st.sampled_from(["a", "b", "both"]))
    def add_one(self, item: Item, where: str) -> None:
        # an id is unique to its record, hence to one timestamp
        assume(item[1] not in id_set(self.sa | self.sb) or item in self.sa | self.sb)
        self._put(item, where)

    @rule(n=st.integers(1, 300), where=st.sampled_from(["a", "b", "both"]), same_ts=st.booleans())
    def add_many(self, n: int, where: str, same_ts: bool) -> None:
        for _ in range(n):
            ts = 7 if same_ts else self.rng.randrange(1 << 20)
            self._put((ts, self.rng.randbytes(32)), where)

    @rule(cfg=configs, a_starts=st.booleans())
    def reconcile(self, cfg: dict[str, int], a_starts: bool) -> None:
        first, second = (self.a, self.b) if a_starts else (self.b, self.a)
        r1, r2, _, _ = sync(first, second, **cfg)
        ra, rb = (r1, r2) if a_starts else (r2, r1)
        assert ra.have == rb.need == id_set(self.sa) - id_set(self.sb)
        assert rb.have == ra.need == id_set(self.sb) - id_set(self.sa)

    @precondition(lambda self: self.sa != self.sb)
    @rule()
    def transfer(self) -> None:
        """What the node does with the results: both sides end with the union."""
        for item in self.sa | self.sb:
            self._put(item, "both")
        assert reconcile_in_memory(self.a, self.b)[:2] == (set(), set())

    @invariant()
    def index_matches_model(self) -> None:
        for index, model in ((self.a, self.sa), (self.b, self.sb)):
            assert len(index) == len(model)
            assert index.fingerprint() == fingerprint(id_set(model))
            if model:
                probe = self.rng.choice(sorted(model))
                assert probe in index
                assert index.count(MIN_BOUND, Bound(*probe)) == sum(1 for it in model if it < probe)


ReconcileMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=20)
TestReconcileMachine = ReconcileMachine.TestCase


@given(
    st.sets(st.tuples(st.integers(0, 50), st.binary(min_size=32, max_size=32)), max_size=3000),
    st.sets(st.tuples(st.integers(0, 50), st.binary(min_size=32, max_size=32)), max_size=300),
    st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_a_side_that_caps_its_own_replies_still_reconciles(a_items, b_items, initiator_caps):
    """``max_reply`` is local: a side whose messages are cut short (the core
    caps them so one peer message costs bounded CPU) still interoperates
    with a side that is not, and both learn the exact differences."""
    from p2pmem.protocol.reconcile import MIN_MESSAGE, ItemIndex, Reconciler, run_reconciliation

    a, b = ItemIndex(a_items), ItemIndex(b_items)
    ra = Reconciler(a, max_reply=MIN_MESSAGE if initiator_caps else None)
    rb = Reconciler(b, max_reply=None if initiator_caps else MIN_MESSAGE)
    run_reconciliation(ra, rb)
    ids_a, ids_b = {i for _, i in a_items}, {i for _, i in b_items}
    assert ra.have == ids_a - ids_b and ra.need == ids_b - ids_a
    assert rb.have == ids_b - ids_a and rb.need == ids_a - ids_b


def test_capped_replies_carry_a_large_difference_over_several_rounds():
    from p2pmem.protocol.reconcile import MIN_MESSAGE, ItemIndex, Reconciler, run_reconciliation

    rng = random.Random(5)
    a_items = {(rng.randrange(1 << 40), rng.randbytes(32)) for _ in range(6000)}
    b_items = set(list(a_items)[:500]) | {(rng.randrange(1 << 40), rng.randbytes(32)) for _ in range(300)}
    for caps in (True, False):
        ra = Reconciler(ItemIndex(a_items), max_reply=MIN_MESSAGE if caps else None)
        rb = Reconciler(ItemIndex(b_items), max_reply=None if caps else MIN_MESSAGE)
        messages, _ = run_reconciliation(rb, ra)
        ids_a, ids_b = {i for _, i in a_items}, {i for _, i in b_items}
        assert ra.have == ids_a - ids_b and rb.have == ids_b - ids_a
        assert ra.need == ids_b - ids_a and rb.need == ids_a - ids_b
        assert messages > 4  # the capped side continued over several rounds
