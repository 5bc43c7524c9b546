"""Shared pieces of the benchmarks: a varied, seeded corpus of signed records.

Every benchmark prints its figure as a ratio against a baseline measured in
the same run, so the numbers mean something on any machine.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


# -- p2pmem serve processes ----------------------------------------------------
READY_S = 60.0


class Serve:
    """One ``p2pmem serve --json`` process (``args`` added: ``--replicate
    all`` by default); stderr to a log file beside the home."""

    def __init__(self, home: Path, *args: str, replicate: str = "all") -> None:
        self.home = home
        self.log = home.with_name(home.name + ".serve.log")
        self.launched = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p2pmem", "--home", str(home), "serve", "--json",
                 "--replicate", replicate, *args],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=serve_env(),
            )
        self.address = self._ready()
        self.ready = time.monotonic()

    def _ready(self) -> str:
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + READY_S
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                chunk = os.read(fd, 4096) if left > 0 and sel.select(left) else b""
                if not chunk:  # end of file (exited) or out of time
                    self.stop()
                    raise SystemExit(f"benchmark: serve of {self.home.name} not ready\n{self.tail()}")
                buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])["address"]

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped node cannot act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def serve_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("P2PMEM_HOME", None)
    env.pop("P2PMEM_SESSION", None)
    return env
