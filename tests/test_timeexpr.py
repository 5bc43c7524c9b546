"""Time phrases in questions (p2pmem.retrieval.timeexpr): a table of examples
against a fixed now, and the laws every preference and weight obeys."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmem.retrieval.timeexpr import (
    DAY_MS,
    MIN_WEIGHT,
    TimePreference,
    parse_time_preference,
    time_weight,
)

# Wednesday 13 March 2024, 15:30 UTC.
NOW = datetime(2024, 3, 13, 15, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


EXAMPLES: list[tuple[str, tuple[int, ...], tuple[int, ...] | None, str]] = [
    # text, start, end (None: now), phrase
    ("what did we do today?", (2024, 3, 13), (2024, 3, 14), "today"),
    ("TODAY", (2024, 3, 13), (2024, 3, 14), "TODAY"),
    ("this morning's standup", (2024, 3, 13), (2024, 3, 14), "this morning"),
    ("plans for tonight", (2024, 3, 13), (2024, 3, 14), "tonight"),
    ("what broke yesterday", (2024, 3, 12), (2024, 3, 13), "yesterday"),
    ("last night's deploy", (2024, 3, 12), (2024, 3, 13), "last night"),
    ("the day before yesterday", (2024, 3, 11), (2024, 3, 12), "the day before yesterday"),
    ("due tomorrow", (2024, 3, 14), (2024, 3, 15), "tomorrow"),
    ("this week", (2024, 3, 11), (2024, 3, 18), "this week"),
    ("last week", (2024, 3, 4), (2024, 3, 11), "last week"),
    ("next week", (2024, 3, 18), (2024, 3, 25), "next week"),
    ("this month", (2024, 3, 1), (2024, 4, 1), "this month"),
    ("last month", (2024, 2, 1), (2024, 3, 1), "last month"),
    ("next month", (2024, 4, 1), (2024, 5, 1), "next month"),
    ("this year", (2024, 1, 1), (2025, 1, 1), "this year"),
    ("last year", (2023, 1, 1), (2024, 1, 1), "last year"),
    ("next year", (2025, 1, 1), (2026, 1, 1), "next year"),
    ("3 days ago", (2024, 3, 10), (2024, 3, 11), "3 days ago"),
    ("two days ago", (2024, 3, 11), (2024, 3, 12), "two days ago"),
    ("a few days ago", (2024, 3, 10), (2024, 3, 11), "a few days ago"),
    ("a week ago", (2024, 3, 4), (2024, 3, 11), "a week ago"),
    ("three weeks ago", (2024, 2, 19), (2024, 2, 26), "three weeks ago"),
    ("a couple of months ago", (2024, 1, 1), (2024, 2, 1), "a couple of months ago"),
    ("twelve months ago", (2023, 3, 1), (2023, 4, 1), "twelve months ago"),
    ("an year ago", (2023, 1, 1), (2024, 1, 1), "an year ago"),
    ("2 years ago", (2022, 1, 1), (2023, 1, 1), "2 years ago"),
    ("last weekend", (2024, 3, 9), (2024, 3, 11), "last weekend"),
    ("this weekend", (2024, 3, 16), (2024, 3, 18), "this weekend"),
    ("on Monday", (2024, 3, 11), (2024, 3, 12), "on Monday"),
    ("last Friday", (2024, 3, 8), (2024, 3, 9), "last Friday"),
    ("wednesday", (2024, 3, 6), (2024, 3, 7), "wednesday"),  # today is Wednesday: a week back
    ("next Friday", (2024, 3, 15), (2024, 3, 16), "next Friday"),
    ("in May 2023", (2023, 5, 1), (2023, 6, 1), "in May 2023"),
    ("May 2023", (2023, 5, 1), (2023, 6, 1), "May 2023"),
    ("Sept. 2021", (2021, 9, 1), (2021, 10, 1), "Sept. 2021"),
    ("in May", (2023, 5, 1), (2023, 6, 1), "in May"),
    ("in March", (2024, 3, 1), (2024, 4, 1), "in March"),  # the current month counts
    ("last March", (2023, 3, 1), (2023, 4, 1), "last March"),
    ("in 2023", (2023, 1, 1), (2024, 1, 1), "in 2023"),
    ("8 May 2023", (2023, 5, 8), (2023, 5, 9), "8 May 2023"),
    ("the 8th of May, 2023", (2023, 5, 8), (2023, 5, 9), "the 8th of May, 2023"),
    ("May 8, 2023", (2023, 5, 8), (2023, 5, 9), "May 8, 2023"),
    ("May 8th", (2023, 5, 8), (2023, 5, 9), "May 8th"),
    ("on March 2nd", (2024, 3, 2), (2024, 3, 3), "on March 2nd"),
    ("on Feb 29", (2024, 2, 29), (2024, 3, 1), "on Feb 29"),
    ("2023-05-08", (2023, 5, 8), (2023, 5, 9), "2023-05-08"),
    ("at 2023-05-08T10:00:00Z", (2023, 5, 8), (2023, 5, 9), "2023-05-08"),
    ("in 2023-05", (2023, 5, 1), (2023, 6, 1), "in 2023-05"),
    ("in the summer of 2022", (2022, 6, 1), (2022, 9, 1), "in the summer of 2022"),
    ("winter 2022", (2022, 12, 1), (2023, 3, 1), "winter 2022"),
    ("last summer", (2023, 6, 1), (2023, 9, 1), "last summer"),
    ("last winter", (2023, 12, 1), (2024, 3, 1), "last winter"),  # ended on 1 March
    ("this winter", (2023, 12, 1), (2024, 3, 1), "this winter"),
    ("in the fall", (2023, 9, 1), (2023, 12, 1), "in the fall"),
    ("earlier this year", (2024, 1, 1), None, "earlier this year"),
    ("earlier this month", (2024, 3, 1), None, "earlier this month"),
    ("earlier today", (2024, 3, 13), None, "earlier today"),
    ("recently", (2024, 2, 12, 15, 30), None, "recently"),
    ("the past week", (2024, 3, 6, 15, 30), None, "the past week"),
    ("in the last 3 days", (2024, 3, 10, 15, 30), None, "the last 3 days"),
    ("over the past two months", (2024, 1, 13, 15, 30), None, "the past two months"),
    ("the other day", (2024, 3, 6), (2024, 3, 13), "the other day"),
    # Several phrases: the leftmost wins; at one place, the longest.
    ("yesterday or last week?", (2024, 3, 12), (2024, 3, 13), "yesterday"),
    ("last week, not yesterday", (2024, 3, 4), (2024, 3, 11), "last week"),
    # An impossible date is skipped in favour of the next phrase.
    ("Feb 30 2023, or was it in 2022", (2022, 1, 1), (2023, 1, 1), "in 2022"),
]


@pytest.mark.parametrize(("text", "start", "end", "phrase"), EXAMPLES)
def test_examples(
    text: str, start: tuple[int, ...], end: tuple[int, ...] | None, phrase: str
) -> None:
    pref = parse_time_preference(text, NOW_MS)
    assert pref is not None
    assert (pref.start_ms, pref.end_ms) == (ms(*start), NOW_MS if end is None else ms(*end))
    assert pref.phrase == phrase
    assert text[pref.span[0] : pref.span[1]] == phrase


@pytest.mark.parametrize(
    "text",
    [
        "",
        "how do I configure the proxy?",
        "I may go",  # "may" the verb, not the month
        "an hour ago",  # hours are not covered
        "0 days ago",
        "Feb 30 2023",
        "9999 years ago",
        "in 1000 steps",
        "weekdays and weekends",
    ],
)
def test_no_time(text: str) -> None:
    assert parse_time_preference(text, NOW_MS) is None


def test_now_out_of_range_is_no_time() -> None:
    assert parse_time_preference("today", 10**20) is None


# --- properties -------------------------------------------------------------

# 1971..2100: every phrase's interval is representable around these.
nows = st.integers(min_value=ms(1971, 1, 1), max_value=ms(2100, 1, 1))

# Phrases about a period that has ended by now.
PAST_PHRASES = [
    "yesterday",
    "the day before yesterday",
    "last night",
    "last week",
    "last month",
    "last year",
    "last weekend",
    "last Monday",
    "last Sunday",
    "on Friday",
    "last May",
    "last December",
    "last summer",
    "last winter",
    "recently",
    "earlier this year",
    "the other day",
    "the last 3 days",
    "the past month",
    "a few days ago",
    "two weeks ago",
    "a couple of months ago",
    "11 months ago",
    "one year ago",
]
# Phrases about a period that has begun by now (it may still be going on).
BEGUN_PHRASES = ["today", "this week", "in May", "May 8th", "on Feb 29", "in the summer"]
ANY_PHRASES = (
    PAST_PHRASES
    + BEGUN_PHRASES
    + [
        "tomorrow",
        "next month",
        "next year",
        "this weekend",
        "next Friday",
        "this summer",
        "in 2023",
        "May 2023",
        "2021-12-31",
        "in the winter of 2099",
    ]
)


@given(st.sampled_from(ANY_PHRASES), nows)
def test_start_not_after_end(phrase: str, now_ms: int) -> None:
    pref = parse_time_preference(f"what about {phrase}?", now_ms)
    assert pref is not None
    assert pref.start_ms <= pref.end_ms


@given(st.sampled_from(PAST_PHRASES), nows)
def test_past_phrases_end_by_now(phrase: str, now_ms: int) -> None:
    pref = parse_time_preference(phrase, now_ms)
    assert pref is not None
    assert pref.end_ms <= now_ms


@given(st.sampled_from(BEGUN_PHRASES), nows)
def test_begun_phrases_start_by_now(phrase: str, now_ms: int) -> None:
    pref = parse_time_preference(phrase, now_ms)
    assert pref is not None
    assert pref.start_ms <= now_ms


@given(st.text(), nows)
def test_never_raises(text: str, now_ms: int) -> None:
    pref = parse_time_preference(text, now_ms)
    if pref is not None:
        assert pref.start_ms <= pref.end_ms
        assert text[pref.span[0] : pref.span[1]] == pref.phrase


PLAIN_WORDS = [
    "what", "did", "we", "decide", "about", "the", "proxy", "cache", "agent", "memory",
    "deploy", "config", "bug", "fix", "with", "alice", "bob", "in", "on", "of", "a", "an",
    "few", "couple", "last", "this", "next", "earlier", "day", "days", "before", "after",
    "i", "go", "weekday", "months", "summery", "8", "?", ",", ".", "-",
]  # fmt: skip


@given(st.lists(st.sampled_from(PLAIN_WORDS), max_size=30), nows)
def test_plain_text_has_no_time(words: list[str], now_ms: int) -> None:
    # Words that name a time only in some combinations ("last" + "week",
    # "in" + a year) appear here, but no combination of these completes one
    # (no unit follows "last", no year follows "in").
    assert parse_time_preference(" ".join(words), now_ms) is None


# --- the weight -------------------------------------------------------------

prefs = st.builds(
    lambda start, width: TimePreference(start, start + width, "x", (0, 1)),
    st.integers(min_value=0, max_value=ms(2100, 1, 1)),
    st.integers(min_value=0, max_value=400 * DAY_MS),
)
offsets = st.integers(min_value=0, max_value=10**14)


@given(prefs, st.integers(min_value=-(10**15), max_value=10**15))
def test_weight_in_unit_interval(pref: TimePreference, at_ms: int) -> None:
    weight = time_weight(at_ms, pref)
    assert 0.0 < weight <= 1.0
    assert weight >= MIN_WEIGHT


@given(prefs, st.floats(min_value=0.0, max_value=1.0))
def test_weight_is_one_inside(pref: TimePreference, fraction: float) -> None:
    at_ms = pref.start_ms + math.floor((pref.end_ms - pref.start_ms) * fraction)
    assert time_weight(at_ms, pref) == 1.0


@given(prefs, offsets, offsets)
def test_weight_falls_with_distance(pref: TimePreference, a: int, b: int) -> None:
    near, far = sorted((a, b))
    assert time_weight(pref.end_ms + far, pref) <= time_weight(pref.end_ms + near, pref)
    assert time_weight(pref.start_ms - far, pref) <= time_weight(pref.start_ms - near, pref)


def test_weight_scale() -> None:
    day = TimePreference(0, DAY_MS, "x", (0, 1))
    year = TimePreference(0, 365 * DAY_MS, "x", (0, 1))
    # One width away keeps the same share, whatever the width.
    assert time_weight(2 * DAY_MS, day) == pytest.approx(time_weight(730 * DAY_MS, year))
    assert time_weight(2 * DAY_MS, day) == pytest.approx(MIN_WEIGHT + (1 - MIN_WEIGHT) / math.e)
    # Even an instant (zero width) decays over a day, not a millisecond.
    instant = TimePreference(0, 0, "x", (0, 0))
    assert time_weight(DAY_MS, instant) == pytest.approx(time_weight(2 * DAY_MS, day))
