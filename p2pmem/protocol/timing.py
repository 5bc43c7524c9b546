"""The node's timers and peer targets (seconds, counts): one value object
read by the core and its sub-machines, tunable per node for simulations and
tests (the shells build it; `serve --max-peers` and `--push-rate` set two)."""

from __future__ import annotations

from dataclasses import dataclass

from p2pmem import limits

KEEPALIVE_S = 5.0
DEAD_AFTER_S = 20.0
RESYNC_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
TARGET_PEERS = 8
PEX_INTERVAL_S = 15.0


@dataclass
class Timing:
    keepalive: float = KEEPALIVE_S
    dead_after: float = DEAD_AFTER_S
    resync: float = RESYNC_S
    backoff_base: float = BACKOFF_BASE_S
    backoff_max: float = BACKOFF_MAX_S
    target_peers: int = TARGET_PEERS
    max_peers: int = limits.MAX_ACTIVE_PEERS
    pex_interval: float = PEX_INTERVAL_S
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT_S
    push_rate: float = limits.PUSH_BYTES_PER_S  # an operator may lower it (serve --push-rate)

    @classmethod
    def for_max_peers(cls, max_peers: int) -> Timing:
        """Defaults for a node allowed ``max_peers`` connections. It dials
        out only up to half of them (as the defaults do, 8 of 16): the other
        half stays free for incoming peers, or nodes that fill every slot by
        dialling refuse newcomers and a restarted node is shut out for good."""
        return cls(max_peers=max_peers, target_peers=min(TARGET_PEERS, max(1, max_peers // 2)))
