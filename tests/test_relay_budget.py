"""Sealed messages to one recipient are relayed within a budget (issue #11).

The per-sender quotas (p2pmem/model/quota.py) bound what a sender may have
stored, not how fast it sends, and identities are free: Sybil senders can
aim a flood at one recipient. Each node therefore sends the messages
addressed to one recipient, to all its peers together, within a token bucket
(``MESSAGE_RELAY_BYTES_PER_S``, ``MESSAGE_RELAY_BURST_BYTES``), whether by
eager push or by reconciliation. Over the budget a message is only delayed:
the next reconciliation carries it. The node's own agent's messages, sent or
received, are exempt.

The sans-IO cores run on the in-memory network of tests/test_core.py with
virtual time: node 0 relays what a stranger (a test-driven client) sends it
to node 1, and the test counts the bytes of messages that reached node 1.
"""

from __future__ import annotations

import hashlib

from p2pmem import limits
from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import Record
from p2pmem.model.sealed import seal_message
from p2pmem.protocol import wire
from p2pmem.protocol.core import Timing
from tests.test_core import BASE_MS, IDENTS, KEYS, Client, SimNet

RATE = limits.MESSAGE_RELAY_BYTES_PER_S
BURST = limits.MESSAGE_RELAY_BURST_BYTES
RESYNC = Timing().resync
VICTIM = Identity.from_seeds(hashlib.sha256(b"relay victim ed").digest(), hashlib.sha256(b"relay victim x").digest())
OTHER = Identity.from_seeds(hashlib.sha256(b"relay other ed").digest(), hashlib.sha256(b"relay other x").digest())
TEXT = 16_000  # bytes of text per flood message: records of ~16 KiB
PER_SENDER = 12  # 12 x 16 KiB: within one sender's quota (16 messages, 256 KiB), so none is evicted


def _sybil(i: int) -> Identity:
    return Identity.from_seeds(hashlib.sha256(b"sybil ed %d" % i).digest(),
                               hashlib.sha256(b"sybil x %d" % i).digest())


def _seal(sender: Identity, to: Identity, n: int, size: int = TEXT) -> Record:
    return seal_message(sender, to.public_key, to.message_public_key, f"{n} " + "z" * size, from_ms(BASE_MS + n))


def _flood(to: Identity, total: int, first_sender: int = 0) -> list[Record]:
    """Messages to ``to`` of ``total`` bytes or more, from Sybil senders
    each within its storage quota."""
    out: list[Record] = []
    size = 0
    i = 0
    while size < total:
        record = _seal(_sybil(first_sender + i // PER_SENDER), to, i)
        out.append(record)
        size += len(record.raw)
        i += 1
    return out


def _send(client: Client, records: list[Record]) -> None:
    """Send in wire messages well under MAX_MESSAGE."""
    for k in range(0, len(records), 32):
        client.send(wire.Records(tuple(r.raw for r in records[k:k + 32])))
    assert not client.closed


def _relay() -> tuple[SimNet, Client]:
    """Node 0 relays to node 1; a stranger is connected to node 0."""
    net = SimNet(11)
    net.add(1)
    net.add(0, bootstrap=[1])
    net.settle()
    assert net.links() == {frozenset((0, 1))}
    client = Client(net, 0, IDENTS[4])
    client.hello()
    return net, client


def _bytes_to(net: SimNet, node: int, to: Identity) -> int:
    return sum(len(r.raw) for r in net.stores[node].messages_to(to.public_key))


def _ids_to(net: SimNet, node: int, to: Identity) -> set[bytes]:
    return {r.id for r in net.stores[node].messages_to(to.public_key)}


def _bites(net: SimNet) -> int:
    return net.cores[0].limited.get("message_relay_budget", 0)


def test_a_flood_to_one_recipient_is_relayed_within_burst_plus_rate():
    """Sybil senders flood one recipient with 3 bursts' worth of messages, in
    rounds a few seconds apart: what node 0 relays to node 1 for that
    recipient never exceeds burst + rate x elapsed, the budget is really
    used (not just respected), and the counter bites."""
    net, client = _relay()
    flood = _flood(VICTIM, 3 * BURST)
    assert len(flood) > 3 * BURST // (TEXT + 1024)
    start = net.now
    rounds = 4
    step = len(flood) // rounds + 1
    for k in range(rounds):
        _send(client, flood[k * step:(k + 1) * step])
        assert _ids_to(net, 0, VICTIM) == {r.id for r in flood[:(k + 1) * step]}  # node 0 stores them all
        relayed = _bytes_to(net, 1, VICTIM)
        assert relayed <= BURST + RATE * (net.now - start), (k, relayed)
        net.advance(3.0)
    assert relayed >= BURST - 2 * len(flood[0].raw)  # the burst went out at once
    assert relayed < sum(len(r.raw) for r in flood)
    assert _bites(net) > 0
    assert net.cores[0].status(net.now)["limits"]["message_relay_budget"] == _bites(net)


def test_messages_to_another_recipient_still_flow_during_a_flood():
    net, client = _relay()
    _send(client, _flood(VICTIM, 2 * BURST))
    bites = _bites(net)
    assert bites > 0
    # the victim's budget is spent (what is left is less than one flood
    # message): one more as large waits ...
    late = _seal(_sybil(999), VICTIM, 10_000)
    # ... while messages to someone else, at the same virtual instant, go through
    others = [_seal(_sybil(1000 + i), OTHER, 20_000 + i, 2000) for i in range(20)]
    _send(client, [late, *others])
    assert _ids_to(net, 1, OTHER) == {r.id for r in others}
    assert late.id not in _ids_to(net, 1, VICTIM)
    assert _bites(net) == bites + 1


def test_withheld_messages_reach_the_peer_later():
    """Nothing is lost, only delayed: reconciliation carries what the
    budget withheld, still within burst + rate x elapsed."""
    net, client = _relay()
    flood = _flood(VICTIM, 3 * BURST)
    _send(client, flood)
    start = net.now
    assert _ids_to(net, 1, VICTIM) < {r.id for r in flood}
    total = sum(len(r.raw) for r in flood)
    for _ in range(int(total / RATE / RESYNC) + 4):
        net.advance(RESYNC)
        assert _bytes_to(net, 1, VICTIM) <= BURST + RATE * (net.now - start)
        if _ids_to(net, 1, VICTIM) == {r.id for r in flood}:
            break
    assert _ids_to(net, 1, VICTIM) == {r.id for r in flood}
    assert net.links() == {frozenset((0, 1))}


def test_the_nodes_own_agent_is_exempt():
    """Messages to node 0's agent, and from it, are relayed at once even with
    the recipient's budget spent: an agent is never throttled by its own node."""
    net, client = _relay()
    _send(client, _flood(VICTIM, 2 * BURST))
    bites = _bites(net)
    assert bites > 0
    # messages addressed to node 0's own agent: more than a burst, all relayed at once
    to_me = _flood(IDENTS[0], 2 * BURST, first_sender=500)
    _send(client, to_me)
    assert {r.id for r in net.stores[1].messages_to(KEYS[0])} == {r.id for r in to_me}
    # node 0's agent writes to the flooded recipient: relayed at once
    mine = [_seal(IDENTS[0], VICTIM, 50_000 + i, 8000) for i in range(limits.MAX_MESSAGES_PER_SENDER)]
    net.stores[0].ingest(mine)
    net.cores[0].local_records(mine, net.now)
    net.drain()
    net.settle()
    assert {r.id for r in mine} <= _ids_to(net, 1, VICTIM)
    assert _bites(net) == bites


def test_the_relay_buckets_are_bounded(monkeypatch):
    """One bucket per recipient, at most MAX_RELAY_RECIPIENTS of them (the
    least recently used is forgotten, and counted)."""
    monkeypatch.setattr(limits, "MAX_RELAY_RECIPIENTS", 8)
    net, client = _relay()
    recipients = [_sybil(2000 + i) for i in range(20)]
    messages = [_seal(_sybil(3000 + i), to, 30_000 + i, 100) for i, to in enumerate(recipients)]
    _send(client, messages)
    core = net.cores[0]
    assert len(core.relay.buckets) == 8
    assert list(core.relay.buckets) == [to.public_key for to in recipients[-8:]]
    assert core.limited["message_relay_recipients"] == 12
    for to in recipients:  # all small, all relayed
        assert len(_ids_to(net, 1, to)) == 1
