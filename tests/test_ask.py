"""Asking the network, end to end: five `p2pmem serve` processes in a line on
loopback, none following another and all with the default `--replicate
follows`, so no memory replicates and every answer must come from a flooded
query. Only the `p2pmem` command is used.

The line (n0 - n1 - n2 - n3 - n4, `--max-peers 2`) and its memories are
built once per module; each test asks its own questions about its own
memories, so no test depends on another or on their order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netutil import (
    NodeProc,
    cli_command,
    cli_json,
    exported_ids,
    line,
    network_fixture,
    remember,
    remember_batch,
    run_cli,
    wait_until,
)

ask_net = network_fixture("ask_net", scope="module")
net = network_fixture()

TIMEOUT = "2.5"  # seconds each ask waits for answers; loopback needs milliseconds


@dataclass
class AskLine:
    homes: list[Path]
    nodes: list[NodeProc]
    ids: dict[str, str] = field(default_factory=dict)

    def ask(self, asker: int, *args: str) -> list[dict]:
        return cli_json(self.homes[asker], "ask", *args, "--timeout", TIMEOUT)

    def ask_many(self, asker: int, *questions: tuple[str, ...]) -> list:
        """Several asks at once (each waits the whole timeout): the node
        handles concurrent control requests, and the test stays short. Each
        answer is parsed JSON, or the human output for a question that
        starts with ``--human``."""
        procs = []
        for q in questions:
            human = q[0] == "--human"
            argv = cli_command(self.homes[asker], "ask", *q[human:], "--timeout", TIMEOUT,
                               *(() if human else ("--json",)))
            procs.append((human, subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)))
        out = []
        for q, (human, proc) in zip(questions, procs, strict=True):
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"ask {q}: {stderr.strip()}"
            out.append(stdout if human else json.loads(stdout))
        return out


def _line_of_five(net, *args: str) -> tuple[list[Path], list[NodeProc]]:
    homes = net.homes(5)
    nodes = line(net, homes, "--max-peers", "2", *args)
    for i, node in enumerate(nodes):
        net.wait_peers(node, {nodes[j].id for j in (i - 1, i + 1) if 0 <= j < 5})
    return homes, nodes


@pytest.fixture(scope="module")
def ask_line(ask_net) -> AskLine:
    homes, nodes = _line_of_five(ask_net)
    al = AskLine(homes, nodes)
    batches = {
        4: [("zebra", {"text": "zebra migration across the far plains", "topics": ["wildlife"]}),
            ("okapi private", {"text": "okapi private notes", "visibility": "private"})],
        3: [(f"quokka {year}", {"text": f"quokka sighting of {year}", "at": at}) for year, at in (
                ("2020", "2020-03-01T10:00:00Z"), ("2021", "2021-06-15"), ("2022", "2022-11-30T23:00:00Z"))]
           + [("axolotl 3", {"text": "axolotl lives in lakes"})],
        2: [("narwhal ask", {"text": "narwhal tusks are teeth", "visibility": "ask"}),
            ("narwhal private", {"text": "narwhal secret location", "visibility": "private"}),
            ("lemur a", {"text": "lemur troop one", "topics": ["madagascar"]}),
            ("lemur b", {"text": "lemur troop two", "topics": ["zoo"]}),
            ("lemur c", {"text": "lemur troop three", "topics": ["madagascar"], "session": "s-7"})],
        1: [("axolotl 1", {"text": "axolotl regrows limbs"})],
    }
    for node, items in batches.items():
        ids = remember_batch(homes[node], [memory for _, memory in items])
        al.ids.update(zip([label for label, _ in items], ids, strict=True))
    return al


@pytest.mark.slow
def test_found_from_the_other_end_with_ttl_4_not_with_ttl_3_or_1(ask_line):
    al = ask_line
    ttl4, ttl3, ttl1 = al.ask_many(0, ("zebra", "--ttl", "4"), ("zebra", "--ttl", "3"), ("zebra", "--ttl", "1"))
    assert [m["id"] for m in ttl4] == [al.ids["zebra"]]
    (hit,) = ttl4
    assert hit["hops"] == 4
    assert hit["via"] == al.nodes[4].id and hit["author"] == al.nodes[4].id
    assert hit["text"] == "zebra migration across the far plains" and hit["topics"] == ["wildlife"]
    assert hit["visibility"] == "public"
    assert set(hit) >= {"id", "author", "text", "topics", "session", "ts", "at", "visibility", "hops", "via"}
    assert ttl3 == [] and ttl1 == []
    # nothing replicated: the answer was never stored on the asker's side
    assert al.ids["zebra"] not in exported_ids(al.homes[0])


@pytest.mark.slow
def test_since_and_until_filter_on_at(ask_line):
    al = ask_line
    everything, only_2021, from_2022, until_2020 = al.ask_many(
        0,
        ("quokka",),
        ("quokka", "--since", "2021-01-01", "--until", "2021-12-31"),
        ("quokka", "--since", "2022-01-01"),
        ("quokka", "--until", "2020-12-31T23:59:59Z"),
    )
    assert {m["id"] for m in everything} == {al.ids[f"quokka {y}"] for y in ("2020", "2021", "2022")}
    assert [m["id"] for m in only_2021] == [al.ids["quokka 2021"]]
    assert only_2021[0]["at"].startswith("2021-06-15") and only_2021[0]["hops"] == 3
    assert [m["id"] for m in from_2022] == [al.ids["quokka 2022"]]
    assert from_2022[0]["at"].startswith("2022-11-30T23:00")
    assert [m["id"] for m in until_2020] == [al.ids["quokka 2020"]]
    for m in everything:
        assert m["ts"] != m["at"]  # recorded now, happened years ago


@pytest.mark.slow
def test_ask_visibility_is_answered_but_never_replicated_and_private_never_returned(ask_line):
    al = ask_line
    narwhal, okapi_far, okapi_near = al.ask_many(
        0, ("narwhal",), ("okapi", "--ttl", "4"), ("okapi private notes", "--ttl", "8"))
    okapi_from_n3 = al.ask(3, "okapi")
    assert [m["id"] for m in narwhal] == [al.ids["narwhal ask"]]
    assert narwhal[0]["visibility"] == "ask" and narwhal[0]["hops"] == 2
    assert narwhal[0]["via"] == al.nodes[2].id
    assert okapi_far == [] and okapi_near == [] and okapi_from_n3 == []
    # the private memories are where they were written, and only there
    assert al.ids["okapi private"] in {m["id"] for m in cli_json(al.homes[4], "recall", "okapi")}
    for i, home in enumerate(al.homes):
        exported = exported_ids(home)
        if i != 2:
            assert al.ids["narwhal ask"] not in exported and al.ids["narwhal private"] not in exported
        if i != 4:
            assert al.ids["okapi private"] not in exported


@pytest.mark.slow
def test_agent_asks_one_agent_only(ask_line):
    al = ask_line
    n1, n3 = al.nodes[1].id, al.nodes[3].id
    everyone, only_n3, only_n1, only_n4 = al.ask_many(
        0, ("axolotl",), ("axolotl", "--agent", n3), ("axolotl", "--agent", n1), ("axolotl", "--agent", al.nodes[4].id),
    )
    assert {(m["id"], m["hops"], m["via"]) for m in everyone} == {
        (al.ids["axolotl 1"], 1, n1), (al.ids["axolotl 3"], 3, n3)}
    assert [(m["id"], m["author"]) for m in only_n3] == [(al.ids["axolotl 3"], n3)]
    assert [(m["id"], m["author"]) for m in only_n1] == [(al.ids["axolotl 1"], n1)]
    assert only_n4 == []


@pytest.mark.slow
def test_topic_limit_and_human_output(ask_line):
    al = ask_line
    madagascar, one, zoo, human = al.ask_many(
        0, ("lemur", "--topic", "madagascar"), ("lemur", "--limit", "1"), ("lemur", "--topic", "zoo", "--limit", "5"),
        ("--human", "lemur troop three", "--limit", "1"),
    )
    assert {m["id"] for m in madagascar} == {al.ids["lemur a"], al.ids["lemur c"]}
    assert all("madagascar" in m["topics"] for m in madagascar)
    assert len(one) == 1 and one[0]["id"] in {al.ids[f"lemur {x}"] for x in "abc"}
    assert [m["id"] for m in zoo] == [al.ids["lemur b"]]
    session = [m for m in madagascar if m["id"] == al.ids["lemur c"]]
    assert session[0]["session"] == "s-7"
    assert "lemur troop three" in human and "2 hops via" in human


@pytest.mark.slow
def test_ask_ends_when_its_flood_is_done_not_at_its_timeout(ask_line):
    """Every node of the line echoes: a 20 s ask over four hops returns in
    about a second, complete, with every node counted."""
    al = ask_line
    started = time.monotonic()
    results = cli_json(al.homes[0], "ask", "zebra", "--ttl", "4", "--timeout", "20")
    elapsed = time.monotonic() - started
    assert [m["id"] for m in results] == [al.ids["zebra"]]
    assert elapsed < 5.0, f"ask took {elapsed:.1f} s: it waited for its 20 s timeout"


@pytest.mark.slow
def test_json_lines_streams_each_hit_then_a_summary(ask_line):
    al = ask_line
    result = run_cli(al.homes[0], "ask", "quokka axolotl", "--ttl", "4", "--timeout", "20", "--json-lines")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    hits, summary = lines[:-1], lines[-1]["summary"]
    expected = {al.ids[f"quokka {y}"] for y in ("2020", "2021", "2022")} | {al.ids["axolotl 1"], al.ids["axolotl 3"]}
    assert {h["id"] for h in hits} == expected and len(hits) == len(expected)
    assert all({"id", "text", "hops", "via", "author"} <= set(h) and "record" not in h for h in hits)
    assert set(summary["ranked"]) == expected and summary["hits"] == len(expected)
    assert summary["reached"] == 4 and summary["complete"] is True
    assert 0 < summary["elapsed_s"] < 5.0
    both = run_cli(al.homes[0], "ask", "quokka", "--json-lines", "--json")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [
    ("--ttl", "0"), ("--ttl", "9"), ("--ttl", "x"), ("--timeout", "abc"), ("--timeout", "0"),
    ("--agent", "not-an-agent"), ("--since", "yesterday-ish"), ("--limit", "0"),
])
def test_bad_ask_arguments_are_usage_errors(tmp_path, args):
    result = run_cli(tmp_path / "no-home-needed", "ask", "question", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_node_that_stops_answering_does_not_delay_the_answer(net):
    homes, nodes = _line_of_five(net)
    near = remember(homes[1], "capybara bathing nearby")
    far = remember(homes[4], "capybara bathing far away")
    timeout = 2.0
    middle = nodes[2]
    started = time.monotonic()
    proc = subprocess.Popen(
        cli_command(homes[0], "ask", "capybara", "--ttl", "4", "--timeout", str(timeout), "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        # the asking command is still starting: the middle node stops before
        # the query reaches it and stays stopped until the answer is back
        middle.send_signal(signal.SIGSTOP)
        stdout, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        middle.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert elapsed < timeout + 3.0, f"ask took {elapsed:.1f} s with a {timeout} s timeout"
    results = json.loads(stdout)
    assert near in {m["id"] for m in results}, "the answer of the live side was lost"
    # resumed, the middle node passes queries on again
    def found_far() -> bool:
        return far in {m["id"] for m in cli_json(homes[0], "ask", "capybara far", "--timeout", TIMEOUT)}

    wait_until(found_far, timeout=30, what="the far memory once the middle node resumed")
    assert middle.alive()
