"""Shared pieces of the benchmarks: a varied, seeded corpus of signed records.

Every benchmark prints its figure as a ratio against a baseline measured in
the same run, so the numbers mean something on any machine.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Iterator

from p2pmem.model.clock import from_ms
from p2pmem.model.identity import Identity
from p2pmem.model.record import Record, sign_record

TOPICS = [
    "ops", "deploy", "database", "security", "billing", "frontend", "backend", "ml", "infra",
    "oncall", "api", "docs", "testing", "network", "storage", "auth", "search", "mobile",
]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "de", "fi", "gor", "han"]


FUNCTION_WORDS = ["the", "a", "of", "to", "and", "in", "is", "that", "for", "it", "on", "with", "as", "was", "we", "by", "at", "be", "this", "from", "or", "are", "an", "not", "but", "have", "has", "had", "they", "which", "you", "were", "their", "will", "there", "been", "if", "when", "then", "so"]


def vocabulary(rng: random.Random, size: int = 20000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class ContentWords:
    """Content words drawn by a Zipf-Mandelbrot law, p(rank) ~ 1 / (rank + 100):
    the long-tailed, flat-headed distribution of content words in real text
    once function words are set apart."""

    def __init__(self, words: list[str], offset: float = 100.0) -> None:
        self.words = words
        total, self.cumulative = 0.0, []
        for rank in range(1, len(words) + 1):
            total += 1.0 / (rank + offset)
            self.cumulative.append(total)

    def draw(self, rng: random.Random, k: int) -> list[str]:
        top = self.cumulative[-1]
        return [self.words[bisect.bisect_left(self.cumulative, rng.random() * top)] for _ in range(k)]


def sentence(rng: random.Random, content: ContentWords, length: int) -> str:
    """About 40% function words, the rest content words."""
    return " ".join(
        rng.choice(FUNCTION_WORDS) if rng.random() < 0.4 else content.draw(rng, 1)[0] for _ in range(length)
    )


def identities(count: int, seed: int = 7) -> list[Identity]:
    rng = random.Random(seed)
    return [Identity.from_seeds(rng.randbytes(32), rng.randbytes(32)) for _ in range(count)]


def corpus(count: int, *, seed: int = 1, authors: int = 20) -> Iterator[Record]:
    """``count`` varied memories: function and Zipf-Mandelbrot content words, 1-3 topics, a few
    sessions per author, `at` times spread over two years."""
    rng = random.Random(seed)
    content = ContentWords(vocabulary(rng))
    ids = identities(authors, seed)
    base_ms = 1_700_000_000_000
    for i in range(count):
        author = ids[rng.randrange(authors)]
        text = sentence(rng, content, rng.randint(8, 40))
        yield sign_record(
            author, "memory", from_ms(base_ms + i * 10), text,
            topics=rng.sample(TOPICS, rng.randint(1, 3)),
            session=f"s{rng.randrange(5)}",
            at=base_ms - rng.randrange(0, 2 * 365 * 86_400_000),
        )


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
