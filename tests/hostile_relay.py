"""A hostile relay, run as its own process by tests/test_ask_hostile.py.

``python tests/hostile_relay.py HOME PEER...`` serves HOME like ``p2pmem
serve --json`` (it prints the same ready line) and dials each PEER, but its
query router, besides routing honestly, answers every query it receives with:

* a forged answer: a matching memory of a stranger, in a hits message that
  names another neighbour as the responder but is signed with this relay's
  key (the relay claims someone else answered);
* junk: hits messages full of record-sized garbage;
* a flood of valid answers: matching memories from many throw-away
  identities (Sybils), more bytes than the asker's per-query budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

import p2pmem.protocol.core as core_module
from p2pmem import limits
from p2pmem.agent.home import Agent
from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import sign_record
from p2pmem.node.shell import run_serve
from p2pmem.protocol.query import QueryError, QueryHits, QueryRouter, decode_query, encode_hits

FORGED_TEXT = "forged answer"
JUNK_MESSAGES = 12
JUNK_PER_MESSAGE = 7  # 7 x 128 KiB fits one wire message
SYBILS = 30
SYBIL_RECORDS = 6  # each ~60 KiB: 30 x 6 x 60 KiB = ~10.5 MiB, over the 8 MiB budget


class HostileRouter(QueryRouter):
    def receive_query(self, peer, data, now, neighbours, answer, *echo):  # type: ignore[no-untyped-def]
        super().receive_query(peer, data, now, neighbours, answer, *echo)
        try:
            query = decode_query(data)
        except QueryError:
            return
        assert self._sign is not None
        word = query.text.split()[0] if query.text.split() else "x"
        ts = from_ms(int(now * 1000))
        stranger = Identity.generate()
        others = [n for n in neighbours if n != peer]
        claimed = others[0] if others else Identity.generate().public_key
        forged_record = sign_record(stranger, "memory", ts, f"{word} {FORGED_TEXT}")
        forged = QueryHits(query.qid, 1, claimed, (forged_record.raw,)).signed(self._sign)
        self._outbox.append((peer, "hits", encode_hits(forged)))
        junk = tuple(bytes([i]) * limits.MAX_RECORD for i in range(JUNK_PER_MESSAGE))
        for _ in range(JUNK_MESSAGES):
            msg = QueryHits(query.qid, 1, self.local_id, junk).signed(self._sign)
            self._outbox.append((peer, "hits", encode_hits(msg)))
        for s in range(SYBILS):
            sybil = Identity.generate()
            records = tuple(
                sign_record(sybil, "memory", ts + k, f"{word} sybil {s} {k} " + "padding " * 7_000).raw
                for k in range(SYBIL_RECORDS)
            )
            msg = QueryHits(query.qid, 1, sybil.public_key, records).signed(sybil.sign)
            self._outbox.append((peer, "hits", encode_hits(msg)))


def main() -> int:
    home, peers = Path(sys.argv[1]), sys.argv[2:]
    core_module.QueryRouter = HostileRouter  # type: ignore[misc]
    with Agent.open(home) as agent:
        return run_serve(agent, listen="127.0.0.1:0", peers=peers, replicate_all=False, json_out=True)


if __name__ == "__main__":
    sys.exit(main())
