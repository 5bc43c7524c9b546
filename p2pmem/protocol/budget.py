"""The token bucket of every rate in the protocol (the per-peer budgets of
:mod:`p2pmem.limits`, the query router's per-peer query rate), sans-IO: the
time comes in as an argument, as everywhere in the core."""

from __future__ import annotations


class Bucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    :meth:`take` spends a whole token (or ``n``) if available; :meth:`spend`
    charges a cost after the fact (it may go negative: one large message is
    not split, the debt delays the next one)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def level(self, now: float) -> float:
        """The balance at ``now``, without touching the bucket."""
        if now > self.stamp:
            return min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        return self.tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def ready(self, now: float) -> bool:
        """Whether anything may be spent now (the balance is positive)."""
        self._refill(now)
        return self.tokens > 0

    def spend(self, now: float, n: float) -> None:
        self._refill(now)
        self.tokens -= n

    def ready_at(self, n: float = 0.0) -> float:
        """When the balance will exceed ``n`` (now if it already does)."""
        if self.tokens > n:
            return self.stamp
        return self.stamp + (n - self.tokens) / self.rate + 1e-6
