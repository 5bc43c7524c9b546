"""How log lines are written: on standard error, timestamped (ISO 8601 UTC
with milliseconds), levelled, as text or as one JSON object per line, with
repeated lines rate-limited.

What is logged is p2pmem/logevents.py (the closed set of events). Lines of
other libraries (the MCP SDK, ...) come through the same handler as the
event ``other`` with their logger's name. docs/operations.md, "Logs".
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from p2pmem import limits
from p2pmem.logevents import FIELDS, LogEvent

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")
Key = tuple[str, ...]


def utc_timestamp(created: float) -> str:
    """``2026-12-03T07:01:02.345Z`` for a time.time() value."""
    ms = int(created * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _clip(text: str) -> str:
    """A message or field, bounded (a peer's words may reach a log line)."""
    if len(text) <= limits.LOG_FIELD_CHARS:
        return text
    return text[: limits.LOG_FIELD_CHARS] + f"... ({len(text)} chars)"


def event_of(record: logging.LogRecord) -> str:
    event = getattr(record, "event", None)
    return str(event) if event is not None else LogEvent.OTHER.value


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The record's fields in FIELDS order (a foreign line: its logger)."""
    fields = getattr(record, "fields", None)
    if fields is None:
        return {"logger": record.name}
    ordered = {k: fields[k] for k in FIELDS if fields.get(k) is not None}
    ordered.update({k: v for k, v in fields.items() if k not in ordered and v is not None})
    return {k: v if isinstance(v, (int, float, bool)) else _clip(str(v)) for k, v in ordered.items()}


class JsonFormatter(logging.Formatter):
    """One object per line; keys ts, level, event, msg, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_timestamp(record.created), "level": record.levelname.lower(),
            "event": event_of(record), "msg": _clip(record.getMessage()),
        }
        for key, value in fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TS LEVEL event message key=value ...``; one line per record (a
    newline in a message or field is written as ``\\n``), except the trace of
    a bug, which follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [utc_timestamp(record.created), f"{record.levelname:<7}", event_of(record),
                 _one_line(_clip(record.getMessage()))]
        for key, value in fields_of(record).items():
            text = _one_line(str(value))
            parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


# --- rate limiting ----------------------------------------------------------

@dataclass
class _Window:
    start: float
    lines: int = 0
    suppressed: int = 0
    level: int = logging.DEBUG


@dataclass(frozen=True)
class Suppressed:
    """Lines of one key left out in a window that has ended."""

    key: Key
    count: int
    level: int


class RateLimiter:
    """At most ``lines`` lines per key in each ``window`` seconds (a fixed
    window from the key's first line); the rest are counted, and once the
    window is over the count is handed out (:meth:`take`) to be written as
    one summary line. At most ``keys`` keys are remembered (least recently
    seen dropped, its count handed out), so many distinct keys (addresses a
    peer made up) cannot grow it."""

    def __init__(
        self, *, lines: int = limits.LOG_REPEAT_LINES, window: float = limits.LOG_REPEAT_WINDOW_S,
        keys: int = limits.LOG_REPEAT_KEYS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines, self.window, self.keys, self.clock = lines, window, keys, clock
        self._windows: OrderedDict[Key, _Window] = OrderedDict()
        self._ready: list[Suppressed] = []
        self._next_sweep = clock() + window

    def admit(self, key: Key, level: int) -> bool:
        """Whether a line of ``key`` is written now."""
        now = self.clock()
        if now >= self._next_sweep:
            self._sweep(now)
        window = self._windows.get(key)
        if window is None or now - window.start >= self.window:
            if window is not None:
                self._hand_out(key, window)
            window = self._windows[key] = _Window(start=now)
        self._windows.move_to_end(key)
        while len(self._windows) > self.keys:
            old_key, old = self._windows.popitem(last=False)
            self._hand_out(old_key, old)
        if window.lines < self.lines:
            window.lines += 1
            return True
        window.suppressed += 1
        window.level = max(window.level, level)
        return False

    def take(self) -> list[Suppressed]:
        """The counts of windows that ended since the last call."""
        ready, self._ready = self._ready, []
        return ready

    def drain(self) -> list[Suppressed]:
        """Every count still held (the log is closing)."""
        for key, window in self._windows.items():
            self._hand_out(key, window)
        self._windows.clear()
        return self.take()

    def _sweep(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w.start >= self.window]:
            self._hand_out(key, self._windows.pop(key))
        self._next_sweep = now + min(1.0, self.window)

    def _hand_out(self, key: Key, window: _Window) -> None:
        if window.suppressed:
            self._ready.append(Suppressed(key, window.suppressed, window.level))
            window.suppressed = 0


def rate_key(record: logging.LogRecord) -> Key:
    """Lines alike: the same event about the same peer or address (a foreign
    line: the same logger and message template)."""
    fields = getattr(record, "fields", None)
    if fields is None:
        return (LogEvent.OTHER.value, record.name, str(record.msg))
    return (event_of(record), str(fields.get("peer", "")), str(fields.get("addr", "")))


class LogHandler(logging.Handler):
    """Writes formatted lines to a stream through a :class:`RateLimiter`."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter, limiter: RateLimiter) -> None:
        super().__init__()
        self.stream = stream
        self.limiter = limiter
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            admitted = self.limiter.admit(rate_key(record), record.levelno)
            for gone in self.limiter.take():
                self._write(summary(gone))
            if admitted:
                self._write(record)
        except Exception:  # a log line must never take the node down
            self.handleError(record)

    def _write(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        try:
            for gone in self.limiter.drain():
                self._write(summary(gone))
        except (OSError, ValueError):  # the stream is already closed at exit
            pass
        super().close()


def summary(gone: Suppressed) -> logging.LogRecord:
    """The line that stands for ``gone.count`` suppressed lines."""
    of, peer, addr = gone.key if gone.key[0] != LogEvent.OTHER.value else (LogEvent.OTHER.value, "", "")
    record = logging.LogRecord("p2pmem.log", gone.level, __file__, 0,
                               f"suppressed {gone.count} similar lines", None, None)
    record.event = LogEvent.LOG_SUPPRESSED
    record.fields = {"peer": peer or None, "addr": addr or None, "of": of, "count": gone.count}
    return record


def setup(
    level: str = "info", fmt: str = "text", *, stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LogHandler:
    """Send every log line of this process (p2pmem's and other libraries')
    to ``stream`` (standard error by default: standard output belongs to
    command output and, for ``p2pmem mcp``, to the protocol)."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = LogHandler(stream if stream is not None else sys.stderr, formatter, RateLimiter(clock=clock))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, LogHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    return handler
