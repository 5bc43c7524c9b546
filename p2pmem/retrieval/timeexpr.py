"""Time words in a question become a soft time preference.

``parse_time_preference("what did we decide last week?", now_ms)`` names the
interval the phrase refers to; ``time_weight`` turns a memory's timestamp into
a prior in (0, 1] that ranking multiplies in. It is a preference, never a
filter: a memory outside the interval keeps a small, non-zero weight.

Conventions (all in UTC, relative to ``now_ms``):

* Intervals are half-open, ``[start_ms, end_ms)``; ``end_ms`` is the first
  millisecond after the named period (for "recently" and "earlier this ..."
  it is ``now_ms`` itself).
* Weeks start on Monday (ISO 8601). "last week" is the previous calendar
  week; "the past week" / "the last 3 days" are rolling windows ending now.
* "N days/weeks/months/years ago" names the calendar day/week/month/year that
  contains that moment. Counts are digits or words: one..twelve, a/an = 1,
  (a) couple (of) = 2, (a) few = 3. A count of zero names nothing.
* Weekdays ("Friday", "on Friday", "last Friday") name the most recent such
  day strictly before today ("next Friday": the first one after today).
  "last weekend" is the Saturday and Sunday before
  the current week; "this weekend" is the current week's.
* "this morning", "this afternoon", "this evening", "tonight" are today;
  "last night" is yesterday.
* A month without a year ("in May", "May 8th") is the most recent one that
  does not start after now; "last May" is the most recent May before the
  current month.
* Seasons are northern-hemisphere meteorological ones: spring = March-May,
  summer = June-August, autumn/fall = September-November, winter =
  December-February, and "the winter of 2022" starts in December 2022.
  "last summer" is the most recent summer that has ended; "this summer" and
  "in (the) summer" are the most recent one that has begun (the current one
  while it lasts).
* "recently" / "lately", and the present ("now", "currently", "these days",
  "at the moment", "nowadays", "at present") are the last 30 days; "the other day" is the week
  before today; "earlier this year/month/week/today" run from the period's
  start to now.

When a text holds several time phrases the **first** one (leftmost; the
longest of those starting at the same place) wins: questions usually put the
time they mean up front, and leftmost-longest keeps "in May 2023" from being
read as "in May". Phrases that name an impossible date ("February 30") or fall
outside what ``datetime`` can represent are skipped, so the parser never
raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "DAY_MS",
    "MIN_WEIGHT",
    "RECENT_DAYS",
    "TimePreference",
    "parse_time_preference",
    "time_weight",
]

DAY_MS = 86_400_000
RECENT_DAYS = 30  # what "recently" and "lately" span
MIN_WEIGHT = 0.05  # the weight far outside the interval: a prior must never zero a strong match

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class TimePreference:
    """The interval a time phrase names, and where the phrase sits in the text."""

    start_ms: int
    end_ms: int  # exclusive
    phrase: str  # the matched words, as written, for --explain
    span: tuple[int, int]  # character offsets of ``phrase`` in the text


# --- calendar helpers -------------------------------------------------------

Interval = tuple[datetime, datetime]


def _to_ms(value: datetime) -> int:
    return (value - _EPOCH) // _MS  # integer division: float seconds would drop a millisecond


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _midnight(value: datetime) -> datetime:
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _day(value: datetime) -> Interval:
    start = _midnight(value)
    return start, start + _DAY


def _week_start(value: datetime) -> datetime:
    return _midnight(value) - timedelta(days=value.weekday())


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def _month(year: int, month: int) -> Interval:
    next_year, next_month = _shift_month(year, month, 1)
    return datetime(year, month, 1, tzinfo=UTC), datetime(next_year, next_month, 1, tzinfo=UTC)


def _year(year: int) -> Interval:
    return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)


def _months_before(now: datetime, count: int) -> datetime:
    """``now`` moved back ``count`` calendar months, the day clamped to the month's end."""
    year, month = _shift_month(now.year, now.month, -count)
    end = _month(year, month)[1] - _DAY
    return now.replace(year=year, month=month, day=min(now.day, end.day))


# --- vocabulary ---------------------------------------------------------------

_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3,
    "april": 4, "apr": 4, "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7,
    "august": 8, "aug": 8, "september": 9, "sept": 9, "sep": 9, "october": 10,
    "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}  # fmt: skip
_WEEKDAYS = {
    "monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4,
    "saturday": 5, "sunday": 6,
}  # fmt: skip
_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "couple": 2, "few": 3,
}  # fmt: skip
_SEASON_START = {"spring": 3, "summer": 6, "autumn": 9, "fall": 9, "winter": 12}

# Longest alternatives first so "september" is not read as "sep" + "tember".
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_FULL_MONTH_RE = "|".join(name for name in _MONTHS if len(name) > 3 or name == "may")
_WEEKDAY_RE = "|".join(_WEEKDAYS)
_COUNT_RE = (
    r"(?:a\s+)?couple(?:\s+of)?|(?:a\s+)?few|an?|one|two|three|four|five|six|seven|eight"
    r"|nine|ten|eleven|twelve|\d{1,4}"
)
_UNIT_RE = r"days?|weeks?|months?|years?"
_SEASON_RE = r"spring|summer|autumn|fall|winter"
_YEAR_RE = r"(?:19|20|21)\d\d"
_ORD = r"(?:st|nd|rd|th)?"
_IN = r"(?:(?:in|on|during)\s+)?"  # a preposition folds into the phrase shown to the user


def _count(word: str) -> int:
    word = word.lower().split()
    key = "couple" if "couple" in word else "few" if "few" in word else word[0]
    return int(key) if key.isdigit() else _NUMBER_WORDS[key]


def _unit(word: str) -> str:
    return word.lower().rstrip("s")


# --- rules: a pattern and what interval its match names ----------------------

Resolver = Callable[[re.Match[str], datetime], Interval | None]
_RULES: list[tuple[re.Pattern[str], Resolver]] = []


def _rule(pattern: str, end: str = r"\b") -> Callable[[Resolver], Resolver]:
    """Register ``resolver`` for ``pattern``, matched as whole words, ignoring case."""

    def register(resolver: Resolver) -> Resolver:
        regex = re.compile(rf"\b(?:{pattern}){end}", re.IGNORECASE | re.ASCII)
        _RULES.append((regex, resolver))
        return resolver

    return register


@_rule(r"today|tonight|this\s+(?:morning|afternoon|evening)")
def _today(m: re.Match[str], now: datetime) -> Interval:
    return _day(now)


@_rule(r"yesterday|last\s+night")
def _yesterday(m: re.Match[str], now: datetime) -> Interval:
    return _day(now - _DAY)


@_rule(r"(?:the\s+)?day\s+before\s+yesterday")
def _day_before_yesterday(m: re.Match[str], now: datetime) -> Interval:
    return _day(now - 2 * _DAY)


@_rule(r"tomorrow")
def _tomorrow(m: re.Match[str], now: datetime) -> Interval:
    return _day(now + _DAY)


@_rule(r"(?:the\s+)?day\s+after\s+tomorrow")
def _day_after_tomorrow(m: re.Match[str], now: datetime) -> Interval:
    return _day(now + 2 * _DAY)


@_rule(r"(?P<which>this|last|next)\s+(?P<unit>week|month|year)")
def _calendar_unit(m: re.Match[str], now: datetime) -> Interval:
    delta = {"this": 0, "last": -1, "next": 1}[m["which"].lower()]
    unit = m["unit"].lower()
    if unit == "week":
        start = _week_start(now) + timedelta(weeks=delta)
        return start, start + timedelta(weeks=1)
    if unit == "month":
        return _month(*_shift_month(now.year, now.month, delta))
    return _year(now.year + delta)


@_rule(rf"(?P<n>{_COUNT_RE})\s+(?P<unit>{_UNIT_RE})\s+ago")
def _ago(m: re.Match[str], now: datetime) -> Interval | None:
    count, unit = _count(m["n"]), _unit(m["unit"])
    if count == 0:
        return None  # "0 days ago" is today, not a past time; not worth a special case
    if unit == "day":
        return _day(now - timedelta(days=count))
    if unit == "week":
        start = _week_start(now) - timedelta(weeks=count)
        return start, start + timedelta(weeks=1)
    if unit == "month":
        return _month(*_shift_month(now.year, now.month, -count))
    return _year(now.year - count)


@_rule(rf"(?:the\s+)?(?P<which>past|last)\s+(?:(?P<n>{_COUNT_RE})\s+)?(?P<unit>{_UNIT_RE})")
def _rolling(m: re.Match[str], now: datetime) -> Interval | None:
    unit = _unit(m["unit"])
    if m["n"] is None:
        if m["which"].lower() == "last":
            return None  # bare "last week" is the calendar week, matched by _calendar_unit
        if m["unit"].lower().endswith("s"):
            return None  # "past days" names no amount
        count = 1
    elif m["n"].lower() in ("a", "an"):
        return None  # "the last a day" is not a phrase; "a day ago" is handled by _ago
    else:
        count = _count(m["n"])
    if count == 0:
        return None
    if unit == "day":
        return now - timedelta(days=count), now
    if unit == "week":
        return now - timedelta(weeks=count), now
    if unit == "month":
        return _months_before(now, count), now
    return _months_before(now, 12 * count), now


@_rule(r"(?P<which>last|this)\s+weekend")
def _weekend(m: re.Match[str], now: datetime) -> Interval:
    monday = _week_start(now)
    if m["which"].lower() == "last":
        return monday - 2 * _DAY, monday
    return monday + 5 * _DAY, monday + 7 * _DAY


@_rule(rf"(?:(?P<which>on|last|next)\s+)?(?P<day>{_WEEKDAY_RE})")
def _weekday(m: re.Match[str], now: datetime) -> Interval:
    weekday = _WEEKDAYS[m["day"].lower()]
    if m["which"] and m["which"].lower() == "next":
        ahead = (weekday - now.weekday()) % 7 or 7
        return _day(now + timedelta(days=ahead))
    back = (now.weekday() - weekday) % 7 or 7
    return _day(now - timedelta(days=back))


@_rule(rf"{_IN}(?P<month>{_MONTH_RE})\.?,?\s+(?P<year>{_YEAR_RE})")
def _month_year(m: re.Match[str], now: datetime) -> Interval:
    return _month(int(m["year"]), _MONTHS[m["month"].lower()])


@_rule(rf"(?:in|during)\s+(?P<month>{_FULL_MONTH_RE})")
def _month_alone(m: re.Match[str], now: datetime) -> Interval:
    month = _MONTHS[m["month"].lower()]
    return _month(now.year if month <= now.month else now.year - 1, month)


@_rule(rf"last\s+(?P<month>{_FULL_MONTH_RE})")
def _last_month_name(m: re.Match[str], now: datetime) -> Interval:
    month = _MONTHS[m["month"].lower()]
    return _month(now.year if month < now.month else now.year - 1, month)


@_rule(rf"(?:in|during)\s+(?P<year>{_YEAR_RE})")
def _year_alone(m: re.Match[str], now: datetime) -> Interval:
    return _year(int(m["year"]))


def _date(year: int | None, month: int, day: int, now: datetime) -> Interval | None:
    """A calendar day; without a year, the most recent one not after today."""
    if year is not None:
        return _day(datetime(year, month, day, tzinfo=UTC))
    for candidate in range(now.year, now.year - 8, -1):  # 8 years always holds a 29 February
        try:
            start = datetime(candidate, month, day, tzinfo=UTC)
        except ValueError:
            continue
        if start <= now:
            return start, start + _DAY
    return None


@_rule(
    rf"{_IN}(?:the\s+)?(?P<day>\d{{1,2}}){_ORD}\s+(?:of\s+)?(?P<month>{_MONTH_RE})\.?"
    rf"(?:,?\s+(?P<year>{_YEAR_RE}))?"
)
def _day_month(m: re.Match[str], now: datetime) -> Interval | None:
    year = int(m["year"]) if m["year"] else None
    return _date(year, _MONTHS[m["month"].lower()], int(m["day"]), now)


@_rule(
    rf"{_IN}(?P<month>{_MONTH_RE})\.?\s+(?:the\s+)?(?P<day>\d{{1,2}}){_ORD}"
    rf"(?:,?\s+(?P<year>{_YEAR_RE}))?"
)
def _month_day(m: re.Match[str], now: datetime) -> Interval | None:
    year = int(m["year"]) if m["year"] else None
    return _date(year, _MONTHS[m["month"].lower()], int(m["day"]), now)


# No word boundary at the end: "2023-05-08T10:00Z" still names its day.
@_rule(rf"{_IN}(?P<year>\d{{4}})-(?P<month>\d\d)(?:-(?P<day>\d\d))?", end=r"(?!\d)")
def _iso(m: re.Match[str], now: datetime) -> Interval:
    year, month = int(m["year"]), int(m["month"])
    if m["day"] is None:
        return _month(year, month)
    return _day(datetime(year, month, int(m["day"]), tzinfo=UTC))


def _season(name: str, year: int) -> Interval:
    """The season that starts in ``year`` (winter runs into the next year)."""
    start = datetime(year, _SEASON_START[name], 1, tzinfo=UTC)
    end_year, end_month = _shift_month(year, _SEASON_START[name], 3)
    return start, datetime(end_year, end_month, 1, tzinfo=UTC)


def _season_name(m: re.Match[str]) -> str:
    return m["season"].lower()


@_rule(rf"{_IN}(?:the\s+)?(?P<season>{_SEASON_RE})\s+(?:of\s+)?(?P<year>{_YEAR_RE})")
def _season_year(m: re.Match[str], now: datetime) -> Interval:
    return _season(_season_name(m), int(m["year"]))


@_rule(rf"(?P<which>last|this|(?:in|during)(?:\s+the)?)\s+(?P<season>{_SEASON_RE})")
def _season_relative(m: re.Match[str], now: datetime) -> Interval:
    name, which = _season_name(m), m["which"].lower()
    year = now.year
    if which == "last":
        while _season(name, year)[1] > now:  # most recent one that has ended
            year -= 1
    else:
        while _season(name, year)[0] > now:  # most recent one that has begun
            year -= 1
    return _season(name, year)


@_rule(r"earlier\s+(?:this\s+(?P<unit>year|month|week)|(?P<today>today))")
def _earlier(m: re.Match[str], now: datetime) -> Interval:
    unit = m["unit"].lower() if m["unit"] else "day"
    if unit == "year":
        return datetime(now.year, 1, 1, tzinfo=UTC), now
    if unit == "month":
        return datetime(now.year, now.month, 1, tzinfo=UTC), now
    if unit == "week":
        return _week_start(now), now
    return _midnight(now), now


@_rule(r"recently|lately")
def _recently(m: re.Match[str], now: datetime) -> Interval:
    return now - timedelta(days=RECENT_DAYS), now


@_rule(r"(?:right\s+)?now|currently|nowadays|these\s+days|at\s+the\s+moment|at\s+present")
def _present(m: re.Match[str], now: datetime) -> Interval:
    # a question about how things stand now: the latest of several matching
    # memories is the one meant (an update supersedes what it updates)
    return now - timedelta(days=RECENT_DAYS), now


@_rule(r"the\s+other\s+day")
def _other_day(m: re.Match[str], now: datetime) -> Interval:
    today = _midnight(now)
    return today - timedelta(days=7), today


# --- public API ---------------------------------------------------------------


def parse_time_preference(text: str, now_ms: int) -> TimePreference | None:
    """The first time phrase in ``text`` as an interval relative to ``now_ms``,
    or None when the text names no time. Never raises on any string."""
    try:
        now = _from_ms(now_ms)
    except OverflowError:
        return None
    found: list[tuple[int, int, re.Match[str], Resolver]] = []
    for regex, resolver in _RULES:
        for match in regex.finditer(text):
            found.append((match.start(), -len(match.group(0)), match, resolver))
    found.sort(key=lambda item: (item[0], item[1]))
    for _, _, match, resolver in found:
        try:
            interval = resolver(match, now)
            if interval is None:
                continue
            start_ms, end_ms = _to_ms(interval[0]), _to_ms(interval[1])
        except (ValueError, OverflowError):
            continue  # an impossible date or one datetime cannot hold: try the next phrase
        return TimePreference(start_ms, end_ms, match.group(0), match.span())
    return None


def time_weight(at_ms: int, pref: TimePreference) -> float:
    """A soft prior in (0, 1] for a memory made at ``at_ms``.

    1.0 inside ``[start_ms, end_ms]``; outside, it decays as
    ``MIN_WEIGHT + (1 - MIN_WEIGHT) * exp(-distance / scale)`` where
    ``scale = max(end_ms - start_ms, 1 day)``: a miss by one interval width
    keeps about 40% of the weight, whether the interval is a day or a year.
    The floor keeps it a preference rather than a filter (and keeps the
    exponential's underflow from ever reaching 0).
    """
    if pref.start_ms <= at_ms <= pref.end_ms:
        return 1.0
    distance = pref.start_ms - at_ms if at_ms < pref.start_ms else at_ms - pref.end_ms
    scale = max(pref.end_ms - pref.start_ms, DAY_MS)
    return MIN_WEIGHT + (1.0 - MIN_WEIGHT) * math.exp(-distance / scale)
