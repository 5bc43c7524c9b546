"""The knowledge graph: record bodies, the CRDT semantics (docs/graph.md),
the SQLite view against the reference fold, and the operations."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmem.agent.home import Agent, init_home
from p2pmem.errors import RecordError
from p2pmem.graph import ops, tables
from p2pmem.graph.search import entity_documents, query_terms, rank
from p2pmem.graph.view import build_graph
from p2pmem.model.record import decode_record, sign_record
from p2pmem.model.scope import ReplicationInterest, travels
from p2pmem.storage.store import Store
from tests.strategies import BASE_MS, identity

ALICE, BOB, CAROL = identity(0), identity(1), identity(2)
T0 = BASE_MS << 16


def entity(who, ts, name, kind="thing", vis="public"):
    return sign_record(who, "entity", T0 + ts, {"name": name, "type": kind}, visibility=vis)


def observation(who, ts, name, text):
    return sign_record(who, "observation", T0 + ts, {"entity": name, "text": text})


def relation(who, ts, a, kind, b):
    return sign_record(who, "relation", T0 + ts, {"from": a, "type": kind, "to": b})


def unlink(who, ts, **body):
    return sign_record(who, "unlink", T0 + ts, body)


def ref(records):
    return build_graph(records).to_reference()


def stored(records, order=None):
    """The graph the SQLite tables keep for these records, ingested in ``order``."""
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "s.db", verify_workers=1) as store:
        for record in order or records:
            store.ingest([record])
        return tables.read_graph(store.connection)


# -- bodies -------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "body", "reason"), [
    ("entity", {"name": "a"}, "exactly the keys"),
    ("entity", {"name": "a", "type": 3}, "text string"),
    ("entity", {"name": "a" * 1025, "type": ""}, "over the limit"),
    ("observation", {"entity": "a", "text": "x", "extra": ""}, "exactly the keys"),
    ("relation", {"from": "a", "type": "b"}, "exactly the keys"),
    ("unlink", {"name": "a"}, "unlink body"),
    ("unlink", {}, "unlink body"),
    ("entity", "a", "map"),
])
def test_bad_graph_bodies_are_rejected(kind: str, body: object, reason: str) -> None:
    with pytest.raises(RecordError, match=reason):
        sign_record(ALICE, kind, T0, body)  # type: ignore[arg-type]


def test_graph_records_round_trip_and_may_be_private_and_carry_no_refs() -> None:
    for record in (entity(ALICE, 1, "x", vis="private"), unlink(ALICE, 2, entity="x"),
                   unlink(ALICE, 3, entity="x", text="t"), unlink(ALICE, 4, **{"from": "a", "type": "b", "to": "c"})):
        assert decode_record(record.raw) == record
    with pytest.raises(RecordError, match="no refs"):
        sign_record(ALICE, "entity", T0, {"name": "a", "type": "b"}, refs=[bytes(32)])


def test_graph_records_replicate_like_memories() -> None:
    follows_alice = ReplicationInterest(False, frozenset({ALICE.public_key}))
    for kind in ("entity", "observation", "relation", "unlink"):
        assert travels(kind, "public") and not travels(kind, "ask") and not travels(kind, "private")
        assert follows_alice.wants(kind, ALICE.public_key, "public")
        assert not follows_alice.wants(kind, BOB.public_key, "public")
        assert not follows_alice.wants(kind, ALICE.public_key, "private")


# -- semantics ----------------------------------------------------------------------
def test_the_first_entity_record_fixes_the_type() -> None:
    records = [entity(BOB, 5, "x", "company"), entity(ALICE, 3, "x", "person")]
    assert ref(records)["entities"] == [{"name": "x", "entityType": "person", "observations": []}]
    same_ts = [entity(ALICE, 3, "y", "a"), entity(BOB, 3, "y", "b")]
    first = min(same_ts, key=lambda r: (r.ts, r.id))
    assert ref(same_ts)["entities"][0]["entityType"] == first.body["type"]  # type: ignore[index]
    # once the first is removed by its author, the next one holds the type
    assert ref([*records, unlink(ALICE, 6, entity="x")])["entities"][0]["entityType"] == "company"


def test_an_observation_stays_while_one_author_still_has_it() -> None:
    base = [entity(ALICE, 1, "x"), observation(ALICE, 2, "x", "tall"), observation(BOB, 3, "x", "tall")]
    assert ref(base)["entities"][0]["observations"] == ["tall"]
    one_gone = [*base, unlink(ALICE, 4, entity="x", text="tall")]
    assert ref(one_gone)["entities"][0]["observations"] == ["tall"]
    both_gone = [*one_gone, unlink(BOB, 5, entity="x", text="tall")]
    assert ref(both_gone)["entities"][0]["observations"] == []
    # adding it again later brings it back; a removal older than an addition does nothing
    assert ref([*both_gone, observation(BOB, 6, "x", "tall")])["entities"][0]["observations"] == ["tall"]
    assert ref([entity(ALICE, 1, "x"), unlink(ALICE, 2, entity="x", text="t"),
                observation(ALICE, 3, "x", "t")])["entities"][0]["observations"] == ["t"]


def test_removal_by_another_author_has_no_effect() -> None:
    base = [entity(ALICE, 1, "x"), observation(ALICE, 2, "x", "o"), relation(ALICE, 3, "x", "r", "y")]
    attacks = [unlink(BOB, 9, entity="x"), unlink(BOB, 9, entity="x", text="o"),
               unlink(BOB, 9, **{"from": "x", "type": "r", "to": "y"})]
    assert ref(base + attacks) == ref(base)
    assert stored(base + attacks).to_reference() == ref(base)


def test_deleting_an_entity_removes_my_observations_and_relations_only() -> None:
    records = [
        entity(ALICE, 1, "x"), entity(ALICE, 2, "y"),
        observation(ALICE, 3, "x", "mine"), observation(BOB, 4, "x", "bobs"),
        relation(ALICE, 5, "x", "r", "y"), relation(ALICE, 6, "y", "s", "x"), relation(BOB, 7, "y", "t", "x"),
        relation(ALICE, 8, "y", "u", "z"),
        unlink(ALICE, 10, entity="x"),
    ]
    graph = ref(records)
    assert [e["name"] for e in graph["entities"]] == ["y"]  # x is gone: only Alice created it
    assert graph["relations"] == [{"from": "y", "to": "x", "relationType": "t"},
                                  {"from": "y", "to": "z", "relationType": "u"}]
    # Bob creates x again: his observation shows, Alice's does not
    again = ref([*records, entity(BOB, 11, "x", "again")])
    assert again["entities"][1] == {"name": "x", "entityType": "again", "observations": ["bobs"]}


def test_the_store_keeps_the_view_whatever_the_order() -> None:
    records = [
        entity(ALICE, 1, "x"), observation(ALICE, 2, "x", "o"), unlink(ALICE, 3, entity="x"),
        entity(ALICE, 4, "x", "again"), relation(ALICE, 5, "x", "r", "y"), relation(BOB, 6, "x", "r", "y"),
        unlink(BOB, 7, **{"from": "x", "type": "r", "to": "y"}), observation(BOB, 8, "x", "b"),
    ]
    want = build_graph(records).comparable()
    rng = random.Random(7)
    for _ in range(5):
        order = records[:]
        rng.shuffle(order)
        assert stored(records, order).comparable() == want


# -- hypothesis: any delivery order, any split among nodes ----------------------------
NAMES = st.sampled_from(["a", "b", "c"])
TEXTS = st.sampled_from(["x", "y"])


@st.composite
def graph_histories(draw: st.DrawFn, authors: int = 3) -> list:
    out = []
    for _ in range(draw(st.integers(1, 24))):
        who = identity(draw(st.integers(0, authors - 1)))
        ts = draw(st.integers(1, 12))  # few values: ties are broken by id
        kind = draw(st.sampled_from(["entity", "observation", "relation", "unlink-e", "unlink-o", "unlink-r"]))
        a, b, text = draw(NAMES), draw(NAMES), draw(TEXTS)
        if kind == "entity":
            out.append(entity(who, ts, a, draw(st.sampled_from(["t1", "t2"]))))
        elif kind == "observation":
            out.append(observation(who, ts, a, text))
        elif kind == "relation":
            out.append(relation(who, ts, a, text, b))
        elif kind == "unlink-e":
            out.append(unlink(who, ts, entity=a))
        elif kind == "unlink-o":
            out.append(unlink(who, ts, entity=a, text=text))
        else:
            out.append(unlink(who, ts, **{"from": a, "type": text, "to": b}))
    return out


@given(graph_histories(), st.randoms(use_true_random=False))
def test_any_delivery_order_gives_the_same_graph(records: list, rng: random.Random) -> None:
    want = build_graph(records).comparable()
    shuffled = records[:]
    rng.shuffle(shuffled)
    assert build_graph(shuffled).comparable() == want
    assert build_graph(records + shuffled[:3]).comparable() == want  # duplicates are harmless
    assert stored(records, shuffled).comparable() == want


@given(graph_histories(), st.integers(2, 4), st.randoms(use_true_random=False))
def test_any_split_among_nodes_converges(records: list, nodes: int, rng: random.Random) -> None:
    """Each node starts with part of the records, then receives the others
    in its own order: every node ends with the same graph."""
    want = build_graph(records).comparable()
    parts: list[list] = [[] for _ in range(nodes)]
    for record in records:
        parts[rng.randrange(nodes)].append(record)
    for part in parts:
        rest = [r for r in records if r not in part]
        rng.shuffle(rest)
        assert stored(records, part + rest).comparable() == want


@given(graph_histories(authors=2), st.lists(st.tuples(st.integers(1, 14), NAMES, TEXTS, NAMES), max_size=6))
def test_another_authors_removals_change_nothing(records: list, removals: list) -> None:
    """Carol adds nothing; whatever she unlinks, the graph is the same."""
    attacks = []
    for ts, a, text, b in removals:
        attacks += [unlink(CAROL, ts, entity=a), unlink(CAROL, ts, entity=a, text=text),
                    unlink(CAROL, ts, **{"from": a, "type": text, "to": b})]
    assert build_graph(records + attacks).comparable() == build_graph(records).comparable()
    assert stored(records + attacks).comparable() == build_graph(records).comparable()


# -- operations -------------------------------------------------------------------
@pytest.fixture
def agent(tmp_path: Path):
    init_home(tmp_path / "home")
    with Agent.open(tmp_path / "home") as a:
        yield a


def test_operations_of_one_agent(agent: Agent) -> None:
    s = ops.Signer(agent, session="s1")
    assert ops.create_entities(s, [{"name": "A", "entityType": "person", "observations": ["x", "x", "y"]}]) == [
        {"name": "A", "entityType": "person", "observations": ["x", "y"]}]
    assert ops.create_entities(s, [{"name": "A", "entityType": "robot", "observations": []}]) == []
    assert ops.create_relations(s, [{"from": "A", "to": "B", "relationType": "r"}] * 2) == [
        {"from": "A", "to": "B", "relationType": "r"}]
    with pytest.raises(ops.GraphError, match="Entity with name Z not found"):
        ops.add_observations(s, [{"entityName": "A", "contents": ["z"]}, {"entityName": "Z", "contents": []}])
    assert ops.read_graph(agent).to_reference()["entities"][0]["observations"] == ["x", "y"]  # nothing added
    ops.delete_entities(s, ["A", "nothing"])
    assert ops.read_graph(agent).to_reference() == {"entities": [], "relations": []}
    # removing what is not there signs nothing
    before = agent.store.count()
    ops.delete_entities(s, ["A"])
    ops.delete_observations(s, [{"entityName": "A", "observations": ["x"]}])
    ops.delete_relations(s, [{"from": "A", "to": "B", "relationType": "r"}])
    assert agent.store.count() == before
    # sessions and authors are kept for provenance
    ops.create_entities(s, [{"name": "B", "entityType": "t", "observations": ["o"]}])
    described = ops.describe(ops.read_graph(agent))
    source = described["entities"][0]["observations"][0]["sources"][0]
    assert source["author"] == agent.identity.agent_id and source["session"] == "s1"


def test_every_time_an_agent_reads_comes_from_its_clock(tmp_path: Path) -> None:
    """An Agent built with its own ``wall_ms`` (the simulator's virtual
    clock) stamps records, runs of graph records included, and checks
    imports by that clock alone; building it reads no file."""
    from p2pmem.model.clock import physical_ms

    clock = [BASE_MS + 5_000]
    with Store(Path(":memory:"), verify_workers=1) as store:
        agent = Agent(tmp_path / "never-created", ALICE, store, wall_ms=lambda: clock[0])
        assert not (tmp_path / "never-created").exists()
        first = agent.remember("stamped by the injected clock")
        ops.create_entities(ops.Signer(agent), [{"name": "E", "entityType": "t", "observations": ["a", "b"]}])
        graph = agent.store.records_by_kind("entity") + agent.store.records_by_kind("observation")
        stamps = sorted(r.ts for r in [first, *graph])
        assert {physical_ms(ts) for ts in stamps} == {BASE_MS + 5_000}
        assert len(set(stamps)) == len(stamps) == 4
        clock[0] += 1_000
        assert physical_ms(agent.remember("a second later").ts) == BASE_MS + 6_000
        ahead = sign_record(BOB, "memory", (BASE_MS + 10 * 86_400_000) << 16, "from the future")
        result = agent.import_raw([ahead.raw])
        assert not result.added and "ahead of this node's clock" in result.rejected[0][1]
        clock[0] += 20 * 86_400_000
        assert [r.id for r in agent.import_raw([ahead.raw]).added] == [ahead.id]


def test_a_removal_is_as_visible_as_what_it_removes(agent: Agent) -> None:
    ops.create_entities(ops.Signer(agent, visibility="private"), [{"name": "P", "entityType": "t", "observations": ["o"]}])
    ops.delete_observations(ops.Signer(agent), [{"entityName": "P", "observations": ["o"]}])
    unlinks = agent.store.records_by_kind("unlink")
    assert [r.visibility for r in unlinks] == ["private"]


def test_search_finds_by_meaning_and_by_substring(agent: Agent) -> None:
    s = ops.Signer(agent)
    ops.create_entities(s, [
        {"name": "Alice", "entityType": "person", "observations": ["likes tea", "lives in Lyon"]},
        {"name": "Bob", "entityType": "person", "observations": ["drinks coffee"]},
        {"name": "billing service", "entityType": "service", "observations": ["sends invoices"]},
        {"name": "Teapot", "entityType": "object", "observations": []},
    ])
    ops.create_relations(s, [{"from": "Bob", "to": "billing service", "relationType": "maintains"}])
    graph = ops.read_graph(agent)
    assert ops.search_names(graph, "which person likes tea")[0] == "Alice"
    assert ops.search_names(graph, "who maintains the billing service")[0] == "Bob"
    assert set(ops.search_names(graph, "likes coffee or tea")[:2]) == {"Alice", "Bob"}
    assert ops.search_names(graph, "tea")[:2] == ["Alice", "Teapot"]  # the substring matches first
    assert ops.search_names(graph, "zzz") == []
    assert query_terms("Who is the person that...") == ["person"]
    assert rank(entity_documents(graph), "who", 5) == []  # only stopwords: nothing indexed matches
    found = ops.search_nodes(graph, "invoices")
    assert found["relations"] == [{"from": "Bob", "to": "billing service", "relationType": "maintains"}]
