"""Parsing the contract's WHEN: an ISO 8601 date or date-time (UTC when no
offset is given) or an age such as ``30m``, ``2h``, ``7d``, ``2w``, ``1y`` before now
(s, m, h, d, w; a year ``y`` is 365 days)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from p2pmem.errors import UsageError

_AGE = re.compile(r"^\s*(\d{1,12})\s*(s|m|h|d|w|y)\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 365 * 86_400_000}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


def parse_when(text: str, now_ms: int) -> int:
    """Milliseconds since the Unix epoch named by ``text``."""
    match = _AGE.match(text)
    if match:
        ms = now_ms - int(match.group(1)) * _UNIT_MS[match.group(2)]
        if ms < 0:
            raise UsageError(f"time before 1970 is not supported: {text!r}")
        return ms
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (use an ISO 8601 date or date-time, or an age like 30m, 2h, 7d, 2w, 1y)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ms = (value - _EPOCH) // _MS  # exact: float seconds * 1000 loses a millisecond
    if ms < 0:
        raise UsageError(f"time before 1970 is not supported: {text!r}")
    return ms


def format_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, as the JSON output uses. A record may
    carry any 64-bit time; one past the year 9999 shows as its last millisecond."""
    ms = min(max(ms, 0), _MAX_MS)
    value = _EPOCH + timedelta(milliseconds=ms)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
