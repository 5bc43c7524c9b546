"""Hybrid logical clock (Kulkarni et al., 2014), sans-IO.

A timestamp is one unsigned 64-bit integer: wall-clock milliseconds in the high
48 bits and a logical counter in the low 16. It never goes backwards on one
node, stays close to real time, and orders causally related records
correctly across nodes. The wall clock is passed in, never read here.
"""

from __future__ import annotations

COUNTER_BITS = 16
_COUNTER_MASK = (1 << COUNTER_BITS) - 1
MAX_HLC = (1 << 64) - 1


def physical_ms(ts: int) -> int:
    """The wall-clock milliseconds of a timestamp."""
    return ts >> COUNTER_BITS


def from_ms(ms: int, counter: int = 0) -> int:
    return (ms << COUNTER_BITS) | counter


class HybridClock:
    """Issues strictly increasing timestamps for one node."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def now(self, wall_ms: int) -> int:
        """A new timestamp, greater than every one issued or observed."""
        last_ms, last_counter = self.last >> COUNTER_BITS, self.last & _COUNTER_MASK
        if wall_ms > last_ms:
            ts = from_ms(wall_ms)
        elif last_counter < _COUNTER_MASK:
            ts = from_ms(last_ms, last_counter + 1)
        else:  # counter exhausted within one millisecond: borrow the next one
            ts = from_ms(last_ms + 1)
        self.last = ts
        return ts

    def observe(self, ts: int, wall_ms: int, max_skew_ms: int) -> bool:
        """Take a remote timestamp into account; refuse (False) one further
        ahead of our wall clock than ``max_skew_ms``, so a peer with a broken
        clock cannot drag ours into the future."""
        if physical_ms(ts) > wall_ms + max_skew_ms:
            return False
        if ts > self.last:
            self.last = ts
        return True
