"""Social features: trust ranks answers, the directory finds specialists, and
following decides whose memories replicate.

Ranking and the trust model run in process on temporary homes; the
directory and one ranking check run through the `p2pmem` command; the
replication scope runs on two real `p2pmem serve` nodes (default
`--replicate follows`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netutil import Net, cli_json, memory_ids, network_fixture, remember, run_cli, wait_until

from p2pmem.agent.home import Agent, init_home, wall_ms
from p2pmem.agent.ranking import rank_hits
from p2pmem.model.clock import physical_ms
from p2pmem.model.identity import agent_id, parse_agent_id
from p2pmem.model.record import Record
from p2pmem.model.trust import ENDORSEMENT_WEIGHT, STRANGER, TrustModel
from p2pmem.protocol.query import VerifiedHit

net = network_fixture()

TEXT = "the staging database password rotates every ninety days"
QUERY = "staging database password"
FILLER = [
    "the build cache lives on the second disk",
    "lunch orders close at eleven",
    "the release train leaves on thursdays",
    "backups are verified every night",
]


# -- in-process helpers ----------------------------------------------------------
@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Any]:
    """A factory of agents on fresh homes, all closed at the end."""
    opened: list[Agent] = []

    def make(name: str, skills: tuple[str, ...] = ()) -> Agent:
        home = tmp_path / name
        init_home(home, name=name, skills=skills)
        agent = Agent.open(home)
        opened.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in opened:
            agent.close()


def share(dst: Agent, *sources: Agent) -> None:
    """Give ``dst`` every record of ``sources`` (what gossip would do)."""
    for src in sources:
        result = dst.store.ingest_raw(list(src.store.raw_records()))
        assert not result.rejected


def authors(memories: list[Any]) -> list[bytes]:
    return [m.record.author for m in memories]


def next_millisecond(record: Record | None) -> None:
    """Return once the wall clock is past ``record``'s millisecond, so a
    record another agent signs next is strictly newer."""
    assert record is not None
    wait_until(lambda: wall_ms() > physical_ms(record.ts), timeout=5, interval=0.001,
               what="the next millisecond")


def two_equal_memories(make: Any) -> tuple[Agent, Agent, Agent, Record, Record]:
    """A viewer with filler memories, and the same text from two other
    agents; the second agent's copy is the newer, so it wins every tie."""
    viewer, first, second = make("viewer"), make("first"), make("second")
    for text in FILLER:
        viewer.remember(text)
    older = first.remember(TEXT)
    next_millisecond(older)
    newer = second.remember(TEXT)
    assert newer.ts > older.ts
    share(viewer, first, second)
    return viewer, first, second, older, newer


def baseline(viewer: Agent, older: Record, newer: Record) -> None:
    """Equal relevance and equal trust: the newer one comes first."""
    found = viewer.recall(QUERY)
    assert [m.record.id for m in found] == [newer.id, older.id]
    assert found[0].score == found[1].score > 0  # identical BM25 relevance


# -- ranking -------------------------------------------------------------------
def test_followed_author_ranks_above_stranger(agents):
    viewer, followed, stranger, older, newer = two_equal_memories(agents)
    baseline(viewer, older, newer)
    viewer.follow(followed.key)
    assert authors(viewer.recall(QUERY)) == [followed.key, stranger.key]
    viewer.follow(followed.key, active=False)  # unfollow: back to the tie-break
    assert authors(viewer.recall(QUERY)) == [stranger.key, followed.key]


def test_endorsed_author_ranks_above_stranger(agents):
    viewer, endorsed, stranger, older, newer = two_equal_memories(agents)
    baseline(viewer, older, newer)
    viewer.endorse(endorsed.key, "agent")
    assert authors(viewer.recall(QUERY)) == [endorsed.key, stranger.key]


def test_memory_endorsement_lifts_that_memory(agents):
    viewer, _first, _second, older, newer = two_equal_memories(agents)
    baseline(viewer, older, newer)
    viewer.endorse(older.id, "memory")
    assert [m.record.id for m in viewer.recall(QUERY)] == [older.id, newer.id]


def test_ask_ranking_uses_the_same_trust(agents):
    viewer, followed, stranger, older, newer = two_equal_memories(agents)
    other = stranger.remember("nothing to do with the question")
    hits = [
        VerifiedHit(newer, hops=2, responder=stranger.key),
        VerifiedHit(older, hops=1, responder=followed.key),
        VerifiedHit(other, hops=1, responder=stranger.key),
    ]
    before = rank_hits(viewer, QUERY, hits, limit=2)
    assert [r["id"] for r in before] == [newer.id.hex(), older.id.hex()]
    viewer.follow(followed.key)
    after = rank_hits(viewer, QUERY, hits, limit=2)
    assert [r["id"] for r in after] == [older.id.hex(), newer.id.hex()]
    assert after[0]["via"] == agent_id(followed.key) and after[0]["author"] == agent_id(followed.key)
    assert after[0]["hops"] == 1 and after[1]["hops"] == 2
    # the same order as local recall gives for the same records
    assert [m.record.id.hex() for m in viewer.recall(QUERY, limit=2)] == [r["id"] for r in after]


def test_relevance_still_dominates_trust(agents):
    viewer, followed, stranger = agents("viewer"), agents("followed"), agents("stranger")
    for text in FILLER:
        viewer.remember(text)
    weak = followed.remember("a password, and many other words about the weather and the garden and lunch")
    strong = stranger.remember("staging database password: staging database password")
    share(viewer, followed, stranger)
    viewer.follow(followed.key)
    # both match (any word may), the much more relevant stranger still first
    assert [m.record.id for m in viewer.recall(QUERY)] == [strong.id, weak.id]


# -- the trust model -------------------------------------------------------------
def key(n: int) -> bytes:
    return bytes([n]) * 32


V, A, B, C, D, E = (key(i) for i in range(6))


def test_trust_by_follow_distance():
    model = TrustModel(V, [(V, A), (A, B), (B, C), (C, D)], [])
    assert model.agent(V) == 1.0
    assert model.agent(A) == 0.8
    assert model.agent(B) == 0.5
    assert model.agent(C) == 0.3
    assert model.agent(D) == STRANGER  # four follows away is a stranger
    assert model.agent(E) == STRANGER
    # the shortest path counts, and others' follows of the viewer do not help
    model = TrustModel(V, [(V, A), (A, B), (B, C), (V, C), (E, V)], [])
    assert model.agent(C) == 0.8 and model.agent(E) == STRANGER


def test_endorsements():
    # the viewer's endorsement: a real lift
    assert TrustModel(V, [], [(V, A, "agent")]).agent(A) == pytest.approx(STRANGER + ENDORSEMENT_WEIGHT)
    # a stranger's endorsement: small
    by_stranger = TrustModel(V, [], [(E, A, "agent")]).agent(A)
    assert STRANGER < by_stranger <= STRANGER + 0.03
    # a ring of strangers endorsing each other stays small
    ring = TrustModel(V, [], [(A, B, "agent"), (B, C, "agent"), (C, A, "agent")])
    assert all(ring.agent(x) <= STRANGER + 0.03 for x in (A, B, C))
    # endorsing twice is one endorsement (the store keeps a set of triples)
    assert TrustModel(V, [], {(V, A, "agent"), (V, A, "agent")}).agent(A) == pytest.approx(0.3)
    # an endorsement by a followed agent weighs more than a stranger's
    assert TrustModel(V, [(V, B)], [(B, A, "agent")]).agent(A) > by_stranger


def test_self_endorsement_is_ignored():
    assert TrustModel(V, [], [(A, A, "agent")]).agent(A) == STRANGER
    memory = key(200)
    model = TrustModel(V, [(V, A)], [(A, memory, "memory")])  # an author endorsing its own memory
    assert model.memory(A, memory) == model.agent(A) == 0.8
    # someone else's endorsement of that memory does count
    assert TrustModel(V, [(V, A)], [(V, memory, "memory")]).memory(A, memory) == pytest.approx(1.0)
    assert TrustModel(V, [], [(B, memory, "memory")]).memory(A, memory) > STRANGER


def test_trust_is_capped_at_one():
    endorsements = [(V, A, "agent"), (B, A, "agent"), (C, A, "agent")]
    model = TrustModel(V, [(V, A), (V, B), (V, C)], endorsements)
    assert model.agent(A) == 1.0
    memory = key(201)
    model = TrustModel(V, [(V, A), (V, B)], [(V, A, "agent"), (V, memory, "memory"), (B, memory, "memory")])
    assert model.memory(A, memory) == 1.0
    assert TrustModel(V, [(A, V)], [(A, V, "agent")]).agent(V) == 1.0


POOL = [key(i) for i in range(7)]
MEMORIES = [key(100 + i) for i in range(3)]
pairs = st.tuples(st.sampled_from(POOL), st.sampled_from(POOL))
endorsement = st.one_of(
    st.tuples(st.sampled_from(POOL), st.sampled_from(POOL), st.just("agent")),
    st.tuples(st.sampled_from(POOL), st.sampled_from(MEMORIES), st.just("memory")),
)


def all_trust(model: TrustModel) -> list[float]:
    return [model.agent(x) for x in POOL] + [model.memory(x, m) for x in POOL for m in MEMORIES]


@given(st.lists(pairs, max_size=20), st.lists(endorsement, max_size=20), pairs)
def test_trust_is_bounded_and_a_follow_never_lowers_it(follows, endorsements, extra):
    viewer = POOL[0]
    before = all_trust(TrustModel(viewer, follows, endorsements))
    assert all(STRANGER <= t <= 1.0 for t in before)
    after = all_trust(TrustModel(viewer, [*follows, extra], endorsements))
    assert all(STRANGER <= t <= 1.0 for t in after)
    assert all(a >= b for a, b in zip(after, before, strict=True))


# -- through the command -------------------------------------------------------------
def init(home: Path, *args: str) -> str:
    return cli_json(home, "init", *args)["id"]


def carry(dst: Path, *sources: Path) -> None:
    """Copy records between homes in process (the command's own `export` and
    `import` are tested elsewhere; this keeps the test to the commands it is about)."""
    with Agent.open(dst) as target:
        for src in sources:
            with Agent.open(src) as source:
                share(target, source)


def test_recall_command_ranks_by_follow_and_endorsement(tmp_path):
    viewer, first, second = (tmp_path / n for n in ("viewer", "first", "second"))
    for home in (viewer, first, second):
        init_home(home, name=home.name)
    with Agent.open(viewer) as agent:
        for text in FILLER:
            agent.remember(text)
    with Agent.open(first) as agent:
        first_id, older = agent.identity.agent_id, agent.remember(TEXT).id.hex()
        next_millisecond(agent.store.get(bytes.fromhex(older)))
    with Agent.open(second) as agent:
        second_id, newer = agent.identity.agent_id, agent.remember(TEXT).id.hex()
    carry(viewer, first, second)

    def order() -> list[str]:
        return [m["id"] for m in cli_json(viewer, "recall", QUERY)]

    assert order() == [newer, older]
    cli_json(viewer, "follow", first_id)
    assert order() == [older, newer]
    cli_json(viewer, "unfollow", first_id)
    assert order() == [newer, older]
    cli_json(viewer, "endorse", older[:16])  # a memory, by id prefix
    found = cli_json(viewer, "recall", QUERY)
    assert [(m["id"], m["author"]) for m in found] == [(older, first_id), (newer, second_id)]


def test_directory_skill_search_and_profiles(tmp_path):
    viewer, expert, writer, other = (tmp_path / n for n in ("viewer", "expert", "writer", "other"))
    init(viewer)
    expert_id = init(expert, "--name", "Ferris", "--skill", "rust", "--skill", "wasm")
    writer_id = init(writer, "--name", "Scribe")
    other_id = init(other, "--name", "Other")
    with Agent.open(writer) as agent:
        for i in range(3):
            agent.remember(f"borrow checker note {i}", topics=["rust"])
    with Agent.open(other) as agent:
        agent.remember("a python note", topics=["python"])
    profile = cli_json(other, "profile", "--name", "Chef", "--skill", "cooking", "--description", "cooks things")
    assert profile["name"] == "Chef" and profile["skills"] == ["cooking"]
    carry(viewer, expert, writer, other)

    ranked = cli_json(viewer, "agents", "--skill", "rust")
    assert [row["id"] for row in ranked] == [expert_id, writer_id]  # declared above topical; other excluded
    assert ranked[1]["topic_memories"] == 3
    assert [row["id"] for row in cli_json(viewer, "agents", "--skill", "cooking")] == [other_id]
    assert cli_json(viewer, "agents", "--skill", "haskell") == []

    rows = {row["id"]: row for row in cli_json(viewer, "agents")}
    assert set(rows) == {init(viewer), expert_id, writer_id, other_id}
    assert (rows[expert_id]["name"], rows[expert_id]["skills"]) == ("Ferris", ["rust", "wasm"])
    assert (rows[writer_id]["name"], rows[writer_id]["skills"]) == ("Scribe", [])
    assert (rows[other_id]["name"], rows[other_id]["skills"]) == ("Chef", ["cooking"])
    assert rows[other_id]["description"] == "cooks things"
    # a later profile change only touches what it names
    cli_json(expert, "profile", "--description", "systems programmer")
    carry(viewer, expert)
    row = next(r for r in cli_json(viewer, "agents") if r["id"] == expert_id)
    assert (row["name"], row["skills"], row["description"]) == ("Ferris", ["rust", "wasm"], "systems programmer")


# -- replication scope follows the follows -------------------------------------------
def profile_description(net: Net, home: Path, agent: str) -> str | None:
    record = net.store(home).profiles().get(parse_agent_id(agent))
    return None if record is None else record.body.get("description")  # type: ignore[union-attr]


def mark(net: Net, src: Path, dst: Path, text: str) -> None:
    """Change ``src``'s profile (a record every node wants) and wait until
    ``dst`` holds it: records pushed before it have had their chance."""
    cli_json(src, "profile", "--description", text)
    agent = net.id_of(src)
    wait_until(lambda: profile_description(net, dst, agent) == text,
               what=f"{dst.name} to see the profile change {text!r}", describe=net.logs)


def test_follow_and_unfollow_change_what_replicates(net):
    ha, hb = net.homes(2)
    na = net.start(ha)
    nb = net.start(hb, "--peer", na.address)
    net.wait_peers(na, {nb.id})
    net.wait_peers(nb, {na.id})
    a_id = na.id

    before_follow = remember(ha, "written before anyone followed")
    mark(net, ha, hb, "marker one")
    assert net.missing(hb, {before_follow}) and before_follow not in memory_ids(hb)

    result = run_cli(hb, "follow", a_id)  # while B serves
    assert result.returncode == 0, result.stderr
    net.wait_has([hb], {before_follow})  # the sync after the interest changed brings it
    while_following = remember(ha, "written while followed")
    net.wait_has([hb], {while_following})  # eager push

    unfollow = cli_json(hb, "unfollow", a_id)["id"]
    # A holds the unfollow only once B's node pushed it, which it does after
    # narrowing its own interest (and telling A so)
    wait_until(lambda: not net.missing(ha, {unfollow}), what="A to receive B's unfollow", describe=net.logs)
    assert (parse_agent_id(nb.id), parse_agent_id(a_id)) not in net.store(ha).follows()
    after_unfollow = remember(ha, "written after the unfollow")
    written = time.monotonic()
    mark(net, ha, hb, "marker two")
    time.sleep(max(0.0, written + 3.0 - time.monotonic()))
    assert net.missing(hb, {after_unfollow})
    held = memory_ids(hb)
    assert after_unfollow not in held
    assert {before_follow, while_following} <= held
    assert net.missing(hb, {after_unfollow})
    assert na.alive() and nb.alive()
