"""Plain-text summaries: the same bytes for the same run, whatever the terminal.

Tables are laid out here rather than by rich, whose layout follows the
terminal's width; a summary must not change when it is piped or resized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def num(value: float | int | None, digits: int = 1) -> str:
    """A number for a table: integers as they are, floats with ``digits``."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method (values need not be sorted)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        self.rows.append([c if isinstance(c, str) else num(c) for c in cells])

    def render(self) -> list[str]:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def line(cells: Sequence[str]) -> str:
            out = [cells[0].ljust(widths[0])]
            out += [cell.rjust(widths[i]) for i, cell in enumerate(cells) if i > 0]
            return "  ".join(out).rstrip()

        lines = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        lines += [line(row) for row in self.rows]
        if self.note:
            lines.append(self.note)
        return lines


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Result:
    """What one scenario run found: tables for people, series for plots."""

    scenario: str
    header: str
    rerun: str
    seed: int
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    footer: list[str] = field(default_factory=list)
    error: str | None = None
    network: Any = None  # the SimNetwork, for tests to inspect (not part of the summary)

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def text(self) -> str:
        lines = [f"p2pmem simulation: {self.scenario}", self.header, ""]
        for table in self.tables:
            lines += table.render()
            lines.append("")
        if self.checks or self.error:
            lines.append("checks")
            for c in self.checks:
                lines.append(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}" + (f" ({c.detail})" if c.detail else ""))
            if self.error:
                lines.append(f"  FAIL  {self.error}")
            lines.append("")
        lines += self.footer
        if self.ok:
            lines.append("result: ok")
        else:
            lines.append(f"result: FAILED with seed {self.seed}; rerun: {self.rerun}")
        return "\n".join(lines) + "\n"
