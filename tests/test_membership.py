"""Membership alone (p2pmem/protocol/membership.py): the address book, its
bounds, back-off, the active view and the eviction rule, driven through its
explicit inputs with no core, no connection and no network."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.protocol.membership import Connected, DialTo, Membership
from p2pmem.protocol.timing import Timing

ME = b"\x00" * 32
NOBODY = Connected(0, (), ())


def key(i: int) -> bytes:
    return i.to_bytes(2, "big") * 16


def book(*bootstrap: str, seed: int = 0, timing: Timing | None = None) -> Membership:
    return Membership(ME, random.Random(seed), timing or Timing(), {}, 0.0, bootstrap=bootstrap)


def test_bootstrap_addresses_are_dialled_at_once_and_only_once():
    m = book("a:1", "b:1")
    assert m.maintain(0.0, NOBODY) == [DialTo("a:1", None), DialTo("b:1", None)]
    assert m.maintain(0.1, NOBODY) == []  # in flight
    assert m.next_deadline(NOBODY) is None


def test_an_address_whose_identity_is_connected_is_not_dialled():
    """Issue 16: once a handshake proved who listens at an address, that
    address is not dialled while the identity is connected, whichever
    connection (ours or theirs) carries it; once it is gone, it is again."""
    m = book("a:1")
    [dial] = m.maintain(0.0, NOBODY)
    m.connected(dial.address)
    m.proven("a:1", key(1))
    m.lost("a:1", 1.0, failed=False)  # our connection lost the tie-break, theirs stays
    theirs = Connected(1, {key(1)}, ())
    for t in range(1, 600, 7):
        assert m.maintain(float(t), theirs) == []
    assert m.next_deadline(theirs) is None
    assert m.maintain(600.0, NOBODY) == [DialTo("a:1", key(1))]


def test_back_off_doubles_with_jitter_up_to_the_maximum():
    timing = Timing(backoff_base=0.5, backoff_max=30.0)
    m = book("a:1", timing=timing)
    now = 0.0
    for failures in range(1, 12):
        assert m.maintain(now, NOBODY) == [DialTo("a:1", None)]
        m.dial_failed("a:1", now, "refused")
        entry = m.addresses["a:1"]
        delay = min(30.0, 0.5 * 2**failures)
        assert 0.5 * delay <= entry.next_attempt - now <= 1.5 * delay
        assert m.maintain(entry.next_attempt - 1e-6, NOBODY) == []
        now = max(entry.next_attempt, m.next_deadline(NOBODY) or 0.0)
    assert "a:1" in m.addresses  # a bootstrap address is never forgotten


def test_an_unverified_address_is_forgotten_after_one_failed_dial():
    m = book()
    m.learn("x:1", key(5), source=key(5))
    [dial] = m.maintain(0.0, NOBODY)
    m.dial_failed(dial.address, 0.0, "refused")
    assert "x:1" not in m.addresses
    assert m.limited["addresses_aged_out"] == 1


def test_the_dial_rate_is_bounded():
    m = book(*[f"h{i}:1" for i in range(40)], timing=Timing(target_peers=40, max_peers=40))
    assert len(m.maintain(0.0, NOBODY)) == limits.DIALS_BURST
    assert m.limited["dial_rate"] == 1
    later = m.next_deadline(NOBODY)
    assert later is not None and later > 0.0
    assert later == 0.5 * 0.999 + 1e-6  # when the bucket is about to hold a token again
    assert len(m.maintain(later + 0.001, NOBODY)) == 1


def test_the_target_leaves_room_for_incoming_peers_but_bootstrap_goes_beyond():
    timing = Timing(target_peers=2, max_peers=4)
    m = book("b:1", timing=timing)
    for i in range(1, 6):
        m.learn(f"x{i}:1", key(i), source=key(i))
    full = Connected(2, {key(90), key(91)}, ())
    assert m.maintain(0.0, full) == [DialTo("b:1", None)]  # only the bootstrap one


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5000)), max_size=600), st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_the_address_book_stays_within_its_bounds(learnt, seed):
    """Whatever peers tell us, in any order: unverified addresses are bounded
    in total and per source, and the book as a whole."""
    m = book("boot:1", seed=seed)
    for source, n in learnt:
        m.learn(f"10.{source}.{n}.1:7000", key(1000 + n), source=key(source))
        unverified = [e for e in m.addresses.values() if not e.verified and not e.bootstrap]
        assert len(unverified) <= limits.MAX_UNVERIFIED_ADDRESSES
        assert len(m.addresses) <= limits.MAX_KNOWN_ADDRESSES
        per: dict[bytes | None, int] = {}
        for e in unverified:
            per[e.source] = per.get(e.source, 0) + 1
        assert max(per.values(), default=0) <= limits.MAX_ADDRESSES_PER_SOURCE
    assert "boot:1" in m.addresses


def test_no_entry_for_ourselves_or_our_own_listen_address():
    m = Membership(ME, random.Random(0), Timing(), {}, 0.0, listen_addresses=("me:1",))
    m.learn("me:1", key(3), source=key(3))
    m.learn("elsewhere:1", ME, source=key(3))
    assert m.addresses == {}


def test_an_address_found_to_be_ourselves_is_never_dialled_again():
    m = book("alias:1")
    m.maintain(0.0, NOBODY)
    m.is_self("alias:1")
    m.lost("alias:1", 1.0, failed=True)
    assert m.maintain(1000.0, NOBODY) == [] and m.next_deadline(NOBODY) is None


def test_eviction_at_most_once_per_interval_and_never_a_followed_agent():
    m = book()
    m.follows = frozenset({key(1)})
    incoming = [(7, key(1)), (3, key(2)), (9, key(3))]
    victim = m.evict_for_newcomer(incoming, 100.0)
    assert victim in (3, 9)
    assert m.evict_for_newcomer(incoming, 100.0 + limits.EVICT_INTERVAL_S - 0.01) is None
    assert m.evict_for_newcomer(incoming, 100.0 + limits.EVICT_INTERVAL_S) in (3, 9)
    assert m.evict_for_newcomer([(7, key(1))], 1000.0) is None
    assert m.limited["peers_evicted_for_newcomer"] == 2


def test_peer_exchange_offers_at_most_its_limit():
    m = book()
    peers = [(key(i), f"10.0.0.{i}:7000") for i in range(100)]
    offered = m.offer(list(peers))
    assert len(offered) == limits.MAX_PEER_EXCHANGE and set(offered) <= set(peers)
