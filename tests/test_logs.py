"""Log lines (p2pmem/node/logs.py, p2pmem/logevents.py, docs/operations.md
"Logs"): ISO 8601 UTC timestamps with milliseconds, levels, text or JSON
lines with stable keys on standard error, a closed set of events, and
repeated lines rate-limited. Real ``serve`` and ``mcp`` processes; the rate
limiter with an injected clock.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from p2pmem import limits
from p2pmem.logevents import LogEvent, log_event
from p2pmem.node import logs
from tests.conftest import PROJECT_ROOT
from tests.netutil import Net, cli_command, network_fixture, wait_until

net = network_fixture()
EVENTS = {e.value for e in LogEvent}
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_LINE = re.compile(r"^(\S+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) +([a-z_]+) ")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parse_ts(text: str) -> datetime:
    assert TS.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object with the stable keys."""
    out = []
    for line in text.splitlines():
        obj = json.loads(line)  # a line that is not JSON fails here
        assert isinstance(obj, dict), line
        assert {"ts", "level", "event", "msg"} <= set(obj), line
        assert obj["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert obj["event"] in EVENTS, line
        parse_ts(obj["ts"])
        out.append(obj)
    return out


# --- the rate limiter, on an injected clock ----------------------------------

def test_the_limiter_passes_n_lines_a_window_then_counts():
    clock = Clock()
    limiter = logs.RateLimiter(lines=3, window=10.0, keys=100, clock=clock)
    key = ("dial_failed", "", "10.0.0.1:7")
    assert [limiter.admit(key, logging.INFO) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.admit(("dial_failed", "", "10.0.0.2:7"), logging.INFO)  # another key: its own window
    assert limiter.take() == []  # the window is not over
    clock.now += 9.9
    assert not limiter.admit(key, logging.WARNING)
    clock.now += 0.1  # the window is over: the count is handed out, a new window starts
    assert limiter.admit(key, logging.INFO)
    assert limiter.take() == [logs.Suppressed(key, 3, logging.WARNING)]
    assert limiter.take() == []


def test_the_limiter_hands_out_ended_windows_without_a_line_of_their_key():
    clock = Clock()
    limiter = logs.RateLimiter(lines=1, window=5.0, keys=100, clock=clock)
    quiet = ("peer_closed", "pm1abc", "")
    for _ in range(4):
        limiter.admit(quiet, logging.INFO)
    clock.now += 6.0
    limiter.admit(("node_stopping", "", ""), logging.INFO)  # any line sweeps
    assert limiter.take() == [logs.Suppressed(quiet, 3, logging.INFO)]


def test_the_limiter_remembers_a_bounded_number_of_keys():
    clock = Clock()
    limiter = logs.RateLimiter(lines=1, window=60.0, keys=4, clock=clock)
    first = ("dial_failed", "", "a:1")
    limiter.admit(first, logging.INFO)
    limiter.admit(first, logging.INFO)  # one suppressed
    for i in range(10):  # made-up addresses push the first key out
        limiter.admit(("dial_failed", "", f"b:{i}"), logging.INFO)
    assert len(limiter._windows) == 4
    assert limiter.take() == [logs.Suppressed(first, 1, logging.INFO)]
    limiter.admit(("dial_failed", "", "b:9"), logging.INFO)
    assert limiter.drain() == [logs.Suppressed(("dial_failed", "", "b:9"), 1, logging.INFO)]


def test_the_handler_writes_a_summary_line_later(tmp_path):
    clock = Clock()
    stream = io.StringIO()
    handler = logs.setup("info", "json", stream=stream, clock=clock)
    log = logging.getLogger("p2pmem.test")
    try:
        for _ in range(limits.LOG_REPEAT_LINES + 5):
            log_event(log, logging.INFO, LogEvent.DIAL_FAILED, "dial x:1 failed: refused", addr="x:1")
        lines = json_lines(stream.getvalue())
        assert len(lines) == limits.LOG_REPEAT_LINES
        assert {(x["event"], x["addr"]) for x in lines} == {("dial_failed", "x:1")}
        clock.now += limits.LOG_REPEAT_WINDOW_S
        log_event(log, logging.INFO, LogEvent.DIAL_FAILED, "dial x:1 failed: refused", addr="x:1")
        lines = json_lines(stream.getvalue())[limits.LOG_REPEAT_LINES:]
        assert [x["event"] for x in lines] == ["log_suppressed", "dial_failed"]
        assert lines[0]["msg"] == "suppressed 5 similar lines"
        assert (lines[0]["count"], lines[0]["of"], lines[0]["addr"]) == (5, "dial_failed", "x:1")
        for _ in range(limits.LOG_REPEAT_LINES + 2):  # the new window fills up again
            log_event(log, logging.WARNING, LogEvent.DIAL_FAILED, "dial x:1 failed", addr="x:1")
        handler.close()  # at exit: what is still held is said
        last = json_lines(stream.getvalue())[-1]
        assert (last["event"], last["count"], last["level"]) == ("log_suppressed", 3, "warning")
    finally:
        logging.getLogger().removeHandler(handler)


# --- formats ------------------------------------------------------------------

def test_timestamps_are_utc_with_milliseconds():
    assert logs.utc_timestamp(0.345) == "1970-01-01T00:00:00.345Z"
    assert logs.utc_timestamp(1796281262.0456) == "2026-12-03T07:01:02.045Z"


def test_one_record_is_one_line_and_fields_are_bounded():
    record = logging.LogRecord("p2pmem.x", logging.WARNING, __file__, 1, "bye: %s", ("evil\nINFO fake",), None)
    record.event = LogEvent.PEER_CLOSED
    record.fields = {"peer": "pm1abc", "detail": "x" * (limits.LOG_FIELD_CHARS + 50), "reason": "a b"}
    text = logs.TextFormatter().format(record)
    assert "\n" not in text and "evil\\nINFO fake" in text
    assert TEXT_LINE.match(text).groups()[1:] == ("WARNING", "peer_closed")
    assert ' reason="a b"' in text and f"({limits.LOG_FIELD_CHARS + 50} chars)" in text
    obj = json.loads(logs.JsonFormatter().format(record))
    assert list(obj)[:6] == ["ts", "level", "event", "msg", "peer", "reason"]
    assert obj["msg"] == "bye: evil\nINFO fake" and len(obj["detail"]) < limits.LOG_FIELD_CHARS + 30


def test_a_line_of_another_library_is_the_event_other():
    stream = io.StringIO()
    handler = logs.setup("warning", "json", stream=stream)
    try:
        logging.getLogger("mcp.server").warning("client went %s", "away")
        logging.getLogger("mcp.server").info("not at this level")
        (line,) = json_lines(stream.getvalue())
        assert (line["event"], line["logger"], line["msg"]) == ("other", "mcp.server", "client went away")
    finally:
        logging.getLogger().removeHandler(handler)


def test_the_docs_list_the_closed_set_of_events():
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Logs", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert documented == EVENTS


# --- real processes -------------------------------------------------------------

def test_serve_logs_json_lines_with_stable_keys(net: Net):
    a, b = net.homes(2)
    started = datetime.now(UTC) - timedelta(seconds=1)
    na = net.start(a, "--log-format", "json", "--log-level", "debug")
    # b also dials a closed port: a dial failure is logged
    nb = net.start(b, "--log-format", "json", "--peer", na.address, "--peer", "127.0.0.1:1")
    net.wait_peers(nb, {na.id})
    wait_until(lambda: "dial_failed" in nb.log_path.read_text(), what="b's dial failure in its log")
    na.stop()
    nb.stop()
    stopped = datetime.now(UTC) + timedelta(seconds=1)
    for node, home in ((na, a), (nb, b)):
        lines = json_lines(node.log_path.read_text())
        assert all(started < parse_ts(x["ts"]) < stopped for x in lines)  # UTC, now
        events = [x["event"] for x in lines]
        assert events[-1] == "node_stopped", events
        assert {"node_started", "node_stopping", "peer_ready"} <= set(events), events
        ready = next(x for x in lines if x["event"] == "peer_ready")
        assert ready["peer"].startswith("pm1") and "conn" in ready
        start = next(x for x in lines if x["event"] == "node_started")
        assert start["addr"] == node.address and net.id_of(home).startswith(start["peer"])
    dial = next(x for x in json_lines(nb.log_path.read_text()) if x["event"] == "dial_failed")
    assert dial["addr"] == "127.0.0.1:1" and dial["level"] == "info" and dial["reason"]


def test_serve_logs_text_with_date_time_and_level(net: Net):
    (a,) = net.homes(1)
    node = net.start(a)  # the default: text, info
    node.stop()
    lines = node.log_path.read_text().splitlines()
    assert lines, "no log lines"
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, line
        parse_ts(match.group(1))
        assert match.group(3) in EVENTS, line
    assert "node_started" in lines[0] and "node_stopped" in lines[-1]
    assert "serving pm1" in lines[0] and f"addr={node.address}" in lines[0]


def test_the_level_filters(net: Net):
    (a,) = net.homes(1)
    node = net.start(a, "--log-level", "warning")
    node.stop()
    assert node.log_path.read_text() == ""


def test_a_serve_that_cannot_run_says_so_in_json(net: Net):
    (a,) = net.homes(1)
    node = net.start(a)
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PMEM_")}
    proc = subprocess.run(cli_command(a, "serve", "--log-format", "json"), capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL)
    node.stop()
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = json_lines(proc.stderr)
    assert (line["event"], line["level"]) == ("serve_failed", "error") and line["error"], line


def test_the_mcp_server_logs_json_on_stderr_only(tmp_path: Path):
    home = tmp_path / "a"
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PMEM_")}
    subprocess.run(cli_command(home, "init"), check=True, capture_output=True, env=env, timeout=60)
    errlog = tmp_path / "mcp.err"
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "p2pmem", "--home", str(home), "mcp"], cwd=PROJECT_ROOT,
        env={**env, "P2PMEM_LOG_FORMAT": "json", "P2PMEM_LOG_LEVEL": "debug"},
    )

    async def body() -> None:
        with anyio.fail_after(90), errlog.open("w") as err:
            async with stdio_client(params, errlog=err) as (read, write), ClientSession(read, write) as s:
                await s.initialize()  # standard output is only the protocol: a log line would break it
                assert (await s.list_tools()).tools
                result = await s.call_tool("recall", {"query": "anything"})
                assert not result.is_error

    anyio.run(body)
    lines = json_lines(errlog.read_text())
    assert any(x["event"] == "mcp_started" and x["session"] for x in lines), lines


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_setup_replaces_its_own_handler(fmt):
    first = logs.setup("info", fmt, stream=io.StringIO())
    second = logs.setup("info", fmt, stream=io.StringIO())
    try:
        assert [h for h in logging.getLogger().handlers if isinstance(h, logs.LogHandler)] == [second]
        assert first not in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(second)


def test_every_log_line_of_p2pmem_names_an_event():
    """No module logs around the closed set: every call is log_event (a raw
    ``log.info(...)`` would be the event ``other`` with no fields)."""
    import ast

    raw = []
    for path in (PROJECT_ROOT / "p2pmem").rglob("*.py"):
        if path.name == "logevents.py":  # the one call
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger")
                    and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical", "log")):
                raw.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert not raw, f"log through p2pmem.logevents.log_event: {raw}"
