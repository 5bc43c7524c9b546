"""Run the scenarios at several sizes and draw docs/img/*.png.

    python -m simulations.plots --sizes 100 300 1000 --seed 1 --out docs/img --text /tmp/simres

Needs matplotlib (``pip install -e '.[plots]'``); the simulations themselves
do not. Each summary is also written to ``--text`` as ``NAME-N.txt``: the same
bytes ``python -m simulations NAME --nodes N --seed S`` prints.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.scenarios import SCENARIOS, Options, run


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        sys.exit("error: plots need matplotlib: pip install -e '.[plots]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dissemination(results: dict[int, Any], path: Path) -> None:
    plt = _matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, result in sorted(results.items()):
        times = result.series["times_ms"]
        if times:
            left.step(times, [(k + 1) / len(times) for k in range(len(times))], where="post", label=f"N = {n}")
        hops = result.series["hops"]
        if hops:
            top = max(hops)
            xs = list(range(1, top + 1))
            right.plot(xs, [hops.count(h) / len(hops) for h in xs], marker="o", label=f"N = {n}, first arrival")
            dist = result.series["distances"]
            right.plot(xs, [dist.count(h) / len(dist) for h in xs], linestyle=":", color=right.lines[-1].get_color(),
                       label=f"N = {n}, BFS distance")
            right.axvline(math.log(n) / math.log(3), color=right.lines[-1].get_color(), alpha=0.3)
    left.set_xlabel("virtual ms after the write")
    left.set_ylabel("share of nodes holding the record")
    left.set_title("dissemination of one record (4-regular graph)")
    left.grid(alpha=0.3)
    left.legend()
    right.set_xlabel("hops from the author")
    right.set_ylabel("share of nodes")
    right.set_title("hops: first arrival vs shortest path (lines: log3 N)")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_partition(results: dict[int, Any], path: Path) -> None:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for n, result in sorted(results.items()):
        done = result.series.get("completion_s") or []
        if done:
            ax.step(done, [(k + 1) / len(done) for k in range(len(done))], where="post",
                    label=f"N = {n} (all equal at {result.series['converge_s']:.1f} s)")
    ax.set_xlabel("virtual seconds after the heal")
    ax.set_ylabel("share of nodes holding the final record set")
    ax.set_title("partition (2 sides, 60 s) healed: convergence")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_churn(results: dict[int, Any], path: Path) -> None:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for n, result in sorted(results.items()):
        rows = result.series.get("rows") or []
        if not rows:
            continue
        ts = [r[0] for r in rows]
        line = ax.plot(ts, [100 * r[3] for r in rows], marker=".", label=f"N = {n}, all records")[0]
        ax.plot(ts, [100 * r[4] for r in rows], linestyle=":", color=line.get_color(), label=f"N = {n}, worst node")
        ax.plot(ts, [100 * r[6] for r in rows], linestyle="--", color=line.get_color(),
                label=f"N = {n}, records >= 5 s old")
    ax.set_xlabel("virtual seconds (churn stops at the end; last point: converged)")
    ax.set_ylabel("share of records a live node holds (%)")
    ax.set_title("churn: 30% of nodes leave; half come back, half are replaced")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_query(results: dict[int, Any], path: Path) -> None:
    plt = _matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, result in sorted(results.items()):
        rows = result.series["per_ttl"]
        ttl = [r["ttl"] for r in rows]
        recall = [r["recall"] if r["recall"] is not None else float("nan") for r in rows]
        reached = [r["reached_recall"] if r["reached_recall"] is not None else float("nan") for r in rows]
        line = left.plot(ttl, recall, marker="o", label=f"N = {n}, within reach (BFS)")[0]
        left.plot(ttl, reached, linestyle=":", marker="x", color=line.get_color(), label=f"N = {n}, nodes reached")
        right.plot(ttl, [r["msgs"] / r["links"] if r["links"] else 0 for r in rows], marker="o",
                   color=line.get_color(), label=f"N = {n}, per link in reach")
        right.plot(ttl, [r["msgs"] / r["edges"] for r in rows], linestyle="--", color=line.get_color(),
                   label=f"N = {n}, per link of the graph")
    right.axhline(2.0, color="black", linewidth=1, label="bound: once per direction")
    left.set_xlabel("TTL")
    left.set_ylabel("recall")
    left.set_ylim(0.8, 1.01)
    left.set_title("recall of ask")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set_xlabel("TTL")
    right.set_ylabel("query messages per link")
    right.set_title("cost of ask")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTTERS = {
    "dissemination": plot_dissemination,
    "partition": plot_partition,
    "churn": plot_churn,
    "query": plot_query,
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(PLOTTERS))
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--text", type=Path, default=None, help="also write each summary to DIR/NAME-N.txt")
    args = p.parse_args(argv)
    _matplotlib()
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in args.scenarios:
        results = {}
        for n in args.sizes:
            started = time.perf_counter()
            result = run(name, Options(nodes=n, seed=args.seed))
            result.network = None  # free the nodes before the next run
            print(f"{name} N={n}: {'ok' if result.ok else 'FAILED'} in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
            failed += not result.ok
            if args.text is not None:
                args.text.mkdir(parents=True, exist_ok=True)
                (args.text / f"{name}-{n}.txt").write_text(result.text())
            results[n] = result
        PLOTTERS[name](results, args.out / f"{name}.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
