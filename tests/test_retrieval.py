"""The retrieval engine: exact lexical ranking over every current memory,
the derived index kept consistent with the store through updates,
retractions, replays, restarts and lost index commits, and the ranking
rules (context, time words, stopwords, ties)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from p2pmem.agent.home import Agent
from p2pmem.model.identity import Identity
from p2pmem.model.record import Record
from p2pmem.retrieval.diversity import diversify
from p2pmem.retrieval.lexical import STATE_FILE
from p2pmem.retrieval.text import query_terms, stem
from p2pmem.storage.keyfile import save_identity
from p2pmem.storage.store import DB_FILE, Store

WORDS = ["kettle", "proxy", "harbour", "violin", "glacier", "pepper"]
SESSIONS = ["", "s1", "s2"]
DAY = 86_400_000


def _agent(home: Path, seed: int = 1) -> Agent:
    identity = Identity.from_seeds(bytes([seed]) * 32, bytes([seed + 1]) * 32)
    save_identity(identity, home)
    return Agent(home, identity, Store(home / DB_FILE))


def _ids(found: list) -> list[bytes]:
    return [m.record.id for m in found]


# -- ranking rules ---------------------------------------------------------------
def test_an_old_memory_is_not_buried_by_newer_ones_sharing_a_word(tmp_path: Path) -> None:
    """The old window design ranked only the newest 200 matches."""
    agent = _agent(tmp_path)
    old = agent.remember("the zeppelin hangar key is under the blue mat", at=1_600_000_000_000)
    agent.store.ingest([agent.make_memory(f"hangar inventory note number {i}") for i in range(400)])
    found = agent.recall("zeppelin hangar key", limit=5)
    assert _ids(found)[0] == old.id


def test_every_match_is_ranked_whatever_the_count(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    records = [agent.make_memory(f"common word alpha item {i}") for i in range(1500)]
    special = agent.make_memory("common common common alpha")  # the highest term frequency
    agent.store.ingest([special, *records])
    assert _ids(agent.recall("common", limit=1)) == [special.id]
    assert len(agent.recall("common", limit=1000)) == 1000


def test_a_query_of_stopwords_only_still_finds_them(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    it = agent.remember("who is it")
    agent.remember("the proxy restarts nightly")
    assert _ids(agent.recall("who is it")) == [it.id]


def test_filters_are_exact_for_matches_and_for_context(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    inside = agent.remember("glacier survey notes", session="trip", topics=["geo"], at=1_700_000_000_000)
    outside = agent.remember("what we ate that day", session="trip", topics=["food"], at=1_700_000_000_000 + 40 * DAY)
    assert set(_ids(agent.recall("glacier", topics=["geo"]))) == {inside.id}
    assert set(_ids(agent.recall("glacier"))) == {inside.id, outside.id}  # context of the same session
    found = agent.recall("glacier", until=1_700_000_000_000 + DAY)
    assert _ids(found) == [inside.id]
    assert agent.recall("glacier", session="other") == []
    assert agent.recall("glacier", visibilities=["private"]) == []


def test_the_answer_next_to_the_question_is_found_through_its_session(tmp_path: Path) -> None:
    """The turn that answers shares no word with the question; its neighbour does."""
    agent = _agent(tmp_path)
    agent.store.ingest([
        agent.make_memory("Ann: did you ever fix the harbour crane?", session="s1"),
        agent.make_memory("Bob: yes, replaced the winch cable on Tuesday", session="s1"),
        *[agent.make_memory(f"Ann: unrelated chatter {i}", session="s2") for i in range(20)],
    ])
    texts = [m.record.text for m in agent.recall("harbour crane fix", limit=3)]
    assert "Bob: yes, replaced the winch cable on Tuesday" in texts


def test_time_words_prefer_that_time_without_filtering(tmp_path: Path) -> None:
    now = 1_700_000_000_000
    agent = _agent(tmp_path)
    last_week = agent.remember("violin lesson moved", at=now - 8 * DAY)
    long_ago = agent.remember("violin lesson moved", at=now - 400 * DAY)
    plain = _ids(agent.recall("violin lesson", now_ms=now))
    assert set(plain) == {last_week.id, long_ago.id}
    found = agent.recall("violin lesson last week", now_ms=now)
    assert _ids(found) == [last_week.id, long_ago.id]  # a preference, not a filter
    assert found[0].ranked is not None and found[0].ranked.time_weight == 1.0
    explained = found[0].ranked.explain()
    assert explained["time"]["phrase"] == "last week"  # type: ignore[index]
    assert explained["time"]["until_ms"] <= now  # type: ignore[index]


def test_equal_scores_go_to_the_newest(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    first = agent.remember("pepper grinder broke")
    second = agent.remember("pepper grinder broke")
    assert _ids(agent.recall("pepper grinder")) == [second.id, first.id]


def test_a_superseded_text_is_not_found_and_its_update_is(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    old = agent.remember("the proxy listens on port 8080")
    new = agent.update(old.id.hex(), "the gateway listens on port 9090")
    assert _ids(agent.recall("proxy")) == []
    assert _ids(agent.recall("gateway")) == [new.id]


def test_forget_purges_the_index_at_once(tmp_path: Path) -> None:
    """No search needed: the process that commits a retraction rewrites the
    index, so a reader opening it from disk finds no trace of the words."""
    from p2pmem.retrieval.lexical import LexicalIndex

    agent = _agent(tmp_path)
    agent.remember("keep this harbour note")
    secret = agent.remember("the vault code is zorblax", session="s")
    agent.recall("harbour")  # the index exists and holds both
    agent.forget(secret.id.hex())
    root = agent.store.search.sync.root
    assert root is not None
    generation = (root / "lexical.current").read_text().strip()
    fresh = LexicalIndex(root / generation)
    for field in ("text", "body", "window", "plain"):
        assert fresh._searcher.doc_freq(field, "zorblax") == 0
    assert fresh.size == 1
    agent.close()


def test_a_network_query_reads_the_index_as_it_is(tmp_path: Path) -> None:
    """`fresh=False` (a serving node answering `ask`, on its event loop)
    never writes the index; `serve`'s worker thread brings it up to date."""
    agent = _agent(tmp_path)
    agent.remember("the glacier survey is done")
    agent.recall("glacier")  # the index exists
    newer = agent.remember("the glacier camp moved north")
    stale = agent.store.recall("glacier camp", fresh=False)
    assert newer.id not in [m.record.id for m in stale]
    assert agent.store.recall("glacier camp")[0].record.id == newer.id
    assert newer.id in [m.record.id for m in agent.store.recall("glacier camp", fresh=False)]
    agent.close()


# -- consistency with the store, as a state machine ------------------------------
class IndexMatchesStore(RuleBasedStateMachine):
    """Any interleaving of remember / update / forget / replayed old records
    / restart / a lost index commit gives exactly the current memories from
    the index, and a retracted text never comes back from it."""

    memories = Bundle("memories")

    def __init__(self) -> None:
        super().__init__()
        self.home = Path(tempfile.mkdtemp(prefix="p2pmem-sm-"))
        self.agent = _agent(self.home)
        self.records: list[Record] = []  # everything ever signed, for replays
        self.current: dict[bytes, str] = {}  # lineage -> current text
        self.heads: dict[bytes, bytes] = {}  # lineage -> current record id
        self.retracted: list[str] = []  # unique tokens of retracted texts
        self.counter = 0

    def teardown(self) -> None:
        self.agent.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def _text(self, word: str) -> tuple[str, str]:
        self.counter += 1
        token = f"uniq{self.counter}x"
        return f"{word} {token} note", token

    @rule(target=memories, word=st.sampled_from(WORDS), session=st.sampled_from(SESSIONS))
    def remember(self, word: str, session: str) -> bytes:
        text, _ = self._text(word)
        record = self.agent.remember(text, session=session)
        self.records.append(record)
        self.current[record.lineage] = text
        self.heads[record.lineage] = record.id
        return record.lineage

    @rule(lineage=memories, word=st.sampled_from(WORDS))
    def update(self, lineage: bytes, word: str) -> None:
        if lineage not in self.current:
            return
        text, _ = self._text(word)
        record = self.agent.update(self.heads[lineage].hex(), text)
        self.records.append(record)
        self.current[lineage] = text
        self.heads[lineage] = record.id

    @rule(lineage=memories)
    def forget(self, lineage: bytes) -> None:
        if lineage not in self.current:
            return
        record = self.agent.forget(self.heads[lineage].hex())
        self.records.append(record)
        self.retracted.append(self.current.pop(lineage).split()[1])
        del self.heads[lineage]

    @rule(data=st.data())
    def replay_an_old_record(self, data: st.DataObject) -> None:
        if self.records:
            self.agent.store.ingest([data.draw(st.sampled_from(self.records))])

    @rule()
    def restart(self) -> None:
        identity = self.agent.identity
        self.agent.close()
        self.agent = Agent(self.home, identity, Store(self.home / DB_FILE))

    @rule(rewind=st.integers(min_value=1, max_value=5))
    def lose_the_last_index_commits(self, rewind: int) -> None:
        """As if killed after the store committed but before the index did."""
        index = self.agent.store.search.sync.index
        if index is None or index.directory is None:
            return
        state_file = index.directory / STATE_FILE
        state = json.loads(state_file.read_text())
        state["seq"] = max(0, state["seq"] - rewind)
        state_file.write_text(json.dumps(state))
        self.restart()

    @invariant()
    def recall_gives_exactly_the_current_memories(self) -> None:
        for word in WORDS:
            found = self.agent.recall(word, limit=1000)
            texts = [m.record.text for m in found]
            assert set(texts) <= set(self.current.values())  # nothing superseded or retracted
            expected = {t for t in self.current.values() if t.split()[0] == word}
            assert expected <= set(texts)  # every current match, whatever its age

    @invariant()
    def retracted_text_has_left_the_index(self) -> None:
        index = self.agent.store.search.sync.current()
        for token in self.retracted:
            assert self.agent.recall(token) == []
            for field in ("text", "body", "window", "plain"):
                # doc_freq counts deleted documents still held in segments
                assert index._searcher.doc_freq(field, stem(token)) == 0, (field, token)


IndexMatchesStore.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_index_matches_store = IndexMatchesStore.TestCase


# -- SIGKILL during ingest and during reindex -----------------------------------
CRASH_CHILD = r"""
import sys
from pathlib import Path

from p2pmem.agent.home import Agent

home, run, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with Agent.open(home) as agent:
    if mode == "reindex":
        while True:
            agent.store.search.rebuild()
            sys.stdout.write("rebuilt\n")
            sys.stdout.flush()
    i = 0
    while True:
        batch = [agent.make_memory(f"crash{run}x{i}x{j} sample note", session=f"s{j % 3}") for j in range(40)]
        agent.store.ingest(batch)
        if i % 3 == 2:
            agent.forget(batch[0].id.hex())
        agent.recall(f"crash{run}x{i}x0")  # the index catches up here
        sys.stdout.write("batch\n")
        sys.stdout.flush()
        i += 1
"""


def _kill_after_output(cmd: list[str], rng, env) -> None:
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no output"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_sigkill_during_ingest_and_reindex_leaves_a_consistent_index(tmp_path: Path) -> None:
    import os
    import random
    import sys

    rng = random.Random(7)
    home = tmp_path / "home"
    home.mkdir()
    _agent(home).close()
    env = {k: v for k, v in os.environ.items() if k not in ("P2PMEM_HOME", "P2PMEM_MODEL")}
    for run in range(10):
        mode = "reindex" if run % 3 == 2 else "ingest"
        _kill_after_output([sys.executable, "-c", CRASH_CHILD, str(home), str(run), mode], rng, env)

    store = Store(home / DB_FILE)
    try:
        assert store.integrity_check() == "ok"
        heads = {
            r.id: r for r in store.records_by_kind("memory") if store.current_version(r.id) == r
        }
        assert heads, "the children stored nothing"
        for record in list(heads.values())[::7]:
            token = record.text.split()[0]
            assert [m.record.id for m in store.recall(token, limit=50)][:1] == [record.id]
        found = store.recall("sample note", limit=1000)
        assert {m.record.id for m in found} <= set(heads)
        index = store.search.sync.current()
        assert index.size == len(heads)
    finally:
        store.close()


# -- session diversity (p2pmem/retrieval/diversity.py) ---------------------------
_scored = st.lists(
    st.tuples(st.floats(0.0, 100.0, allow_nan=False), st.integers(0, 4)), min_size=0, max_size=40
)


@settings(max_examples=200, deadline=None)
@hypothesis.given(items=_scored, decay=st.floats(0.05, 1.0), limit=st.integers(0, 50))
def test_diversity_only_reorders(items: list[tuple[float, int]], decay: float, limit: int) -> None:
    """Never drops nor repeats a memory: all of them, when all are asked for;
    the best stays first; the same input gives the same order."""
    scores = [s for s, _ in items]
    sessions = [k for _, k in items]
    tiebreak = [(i,) for i in range(len(items))]
    everything = diversify(scores, sessions, tiebreak, decay, len(items))
    assert sorted(everything) == list(range(len(items)))
    top = diversify(scores, sessions, tiebreak, decay, limit)
    assert top == everything[:limit]
    assert top == diversify(scores, sessions, tiebreak, decay, limit)
    if items and limit:
        assert scores[top[0]] == max(scores)


@settings(max_examples=100, deadline=None)
@hypothesis.given(items=_scored)
def test_diversity_off_is_the_score_order(items: list[tuple[float, int]]) -> None:
    scores = [s for s, _ in items]
    order = diversify(scores, [k for _, k in items], [(i,) for i in range(len(items))], 1.0, len(items))
    assert order == sorted(range(len(items)), key=lambda i: (-scores[i], i))


def test_diversity_lets_another_session_in() -> None:
    # session 1 holds the three best; with decay 0.5 the second of session 2 wins over session 1's third
    scores, sessions = [10.0, 9.0, 8.0, 6.0], [1, 1, 1, 2]
    assert diversify(scores, sessions, [(i,) for i in range(4)], 0.5, 2) == [0, 3]
    assert diversify(scores, sessions, [(i,) for i in range(4)], 1.0, 2) == [0, 1]
    assert diversify(scores, [0, 0, 0, 2], [(i,) for i in range(4)], 0.5, 2) == [0, 1]  # no session: no penalty
    with pytest.raises(ValueError):
        diversify(scores, sessions, [(i,) for i in range(4)], 0.0, 2)


def test_first_person_words_are_search_terms(tmp_path: Path) -> None:
    """A question in the first person prefers what its asker said of themselves."""
    agent = _agent(tmp_path)
    # the other one is shorter: without "my" as a term, BM25 would put it first
    mine = agent.remember("User: my flight leaves from gate B7, I think")
    agent.remember("Assistant: flight leaves from gate B7")
    found = agent.recall("which gate does my flight leave from", limit=1)
    assert _ids(found) == [mine.id]
    assert "my" in query_terms("where is my car") and "the" not in query_terms("where is the car")


def test_a_question_about_now_prefers_the_latest_update(tmp_path: Path) -> None:
    """"now", "these days", "currently": the update beats the fact it superseded,
    even when the older one shares more words with the question ("run")."""
    agent = _agent(tmp_path)
    now = 1_700_000_000_000
    # other memories, so that the shared words are rare and the one extra word is not everything
    agent.store.ingest([agent.make_memory(f"lunch order {i} for the office") for i in range(60)])
    old = agent.remember("the billing service runs on python 3.9", at=now - 90 * DAY)
    new = agent.remember("we moved the billing service over to python 3.12 at last", at=now - 2 * DAY)
    assert _ids(agent.recall("which python does the billing service run on", limit=1, now_ms=now)) == [old.id]
    for phrase in ("now", "these days", "currently", "at the moment"):
        question = f"which python does the billing service run on {phrase}"
        assert _ids(agent.recall(question, limit=1, now_ms=now)) == [new.id], phrase
