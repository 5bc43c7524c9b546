"""Admission alone (p2pmem/protocol/admission.py): the bounds on incoming
handshakes, per host and in total, at once and per second, with no core and
no connection: only verdicts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmem import limits
from p2pmem.protocol.admission import Admission, Verdict
from p2pmem.protocol.events import CloseReason


def test_a_host_is_refused_past_its_burst_then_let_in_at_its_rate():
    a = Admission({}, 0.0)
    for _ in range(limits.HANDSHAKES_PER_HOST_BURST):
        assert a.admit("h", 0.0, []) == Verdict()
        a.release("h")
    assert a.admit("h", 0.0, []) == Verdict(refuse=CloseReason.HOST_RATE)
    assert a.limited == {"handshakes_per_host_rate": 1}
    assert a.admit("h", 1.0 / limits.HANDSHAKES_PER_HOST_PER_S, []) == Verdict()
    assert a.admit("other", 0.0, []) == Verdict()  # other hosts are not held up


def test_pending_handshakes_per_host_are_bounded_and_freed():
    a = Admission({}, 0.0)
    for _ in range(limits.MAX_PENDING_PER_HOST):
        assert a.admit("h", 0.0, []).refuse is None
    assert a.admit("h", 0.0, []) == Verdict(refuse=CloseReason.HOST_PENDING)
    a.release("h")
    assert a.admit("h", 0.0, []).refuse is None
    assert a.pending() == limits.MAX_PENDING_PER_HOST


def test_the_total_rate_binds_shells_that_know_no_host():
    a = Admission({}, 0.0)
    verdicts = [a.admit(None, 0.0, []) for _ in range(limits.HANDSHAKES_BURST + 3)]
    assert verdicts.count(Verdict()) == limits.HANDSHAKES_BURST
    assert verdicts[-1] == Verdict(refuse=CloseReason.HANDSHAKE_RATE)
    assert a.pending() == 0  # no host, nothing to count per host


def test_past_the_total_of_pending_handshakes_the_oldest_gives_way():
    a = Admission({}, 0.0)
    pending = [(float(i % 7), 100 + i) for i in range(limits.MAX_PENDING_HANDSHAKES)]
    assert a.admit(None, 10.0, pending[:-1]) == Verdict()
    assert a.admit(None, 10.0, pending) == Verdict(evict=100)  # opened at 0.0, lowest id
    assert a.limited["pending_handshakes"] == 1


@given(st.lists(st.tuples(st.integers(0, 2000), st.floats(0, 5)), max_size=800))
@settings(max_examples=30, deadline=None)
def test_per_host_state_stays_bounded_whatever_hosts_come(arrivals):
    """Any sequence of hosts (a spoofing flood included): at most
    MAX_PENDING_PER_HOST pending per host, and the per-host buckets are
    forgotten once full again, so they stay near 4 x MAX_PENDING_HANDSHAKES."""
    a = Admission({}, 0.0)
    now = 0.0
    for host, dt in arrivals:
        now += dt
        verdict = a.admit(f"10.0.{host // 256}.{host % 256}", now, [])
        if verdict.refuse is None and host % 3:
            a.release(f"10.0.{host // 256}.{host % 256}")  # two of three handshakes finish
        assert all(n <= limits.MAX_PENDING_PER_HOST for n in a.pending_hosts.values())
        assert len(a.host_buckets) <= 4 * limits.MAX_PENDING_HANDSHAKES + len(a.pending_hosts) + 1
