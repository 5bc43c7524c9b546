"""``python -m simulations NAME --nodes N --seed S [options]``.

Prints the scenario's summary on standard output (the same bytes for the same
arguments) and exits 0 when its checks hold, 1 when one fails (the seed is
printed, with the command that repeats the run), 2 for a usage error. A
progress bar goes to standard error when it is a terminal.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from simulations.scenarios import SCENARIOS, Options, Progress, describe, run


class _Bar(Progress):
    """A rich progress bar on standard error, over virtual time."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("starting", total=1.0, info="")
        self._start = 0.0
        self._end = 1.0

    def phase(self, description: str, start: float, end: float) -> None:
        self._start, self._end = start, max(end, start + 1e-9)
        self._progress.update(self._task, description=description, completed=0.0)

    def update(self, net: object) -> None:
        now = getattr(net, "now", 0.0)
        events = getattr(net, "events", 0)
        done = min(1.0, (now - self._start) / (self._end - self._start))
        self._progress.update(self._task, completed=done, info=f"t={now:8.2f}s  {events:,} events")

    def done(self) -> None:
        self._progress.stop()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m simulations",
        description="Many p2pmem nodes (the real core and store) on a virtual network and clock.",
        epilog="Scenarios: " + "; ".join(f"{k}: {v}" for k, v in describe().items()),
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS), help="what to simulate")
    p.add_argument("--nodes", type=_positive_int, default=d.nodes, help=f"number of nodes (default {d.nodes})")
    p.add_argument("--seed", type=int, default=d.seed, help="the seed of everything random (default 1)")
    net = p.add_argument_group("network")
    net.add_argument("--topology", default=d.topology,
                     choices=("line", "ring", "star", "grid", "tree", "random", "er"),
                     help="bootstrap graph (default: random regular)")
    net.add_argument("--degree", type=_positive_int, default=d.degree, help="degree of random graphs (default 4)")
    net.add_argument("--latency-ms", type=_positive_float, default=d.latency_ms,
                     help="median one-way link latency (default 40)")
    net.add_argument("--latency-sigma", type=float, default=d.latency_sigma,
                     help="lognormal spread of link latencies (default 0.5)")
    net.add_argument("--jitter", type=float, default=d.jitter,
                     help="lognormal spread of each message's latency (default 0.1)")
    net.add_argument("--spike", type=_probability, default=d.spike,
                     help="probability that a message is delayed ~1 s, as by a retransmission")
    net.add_argument("--loss", type=_probability, default=d.loss,
                     help="probability that a message is lost, which resets its connection")
    net.add_argument("--connect-fail", type=_probability, default=d.connect_fail,
                     help="probability that a dial fails")
    net.add_argument("--link-mbit", type=_positive_float, default=d.link_mbit,
                     help="what one direction of a connection carries, Mbit/s (default 100)")
    net.add_argument("--window-kib", type=_positive_float, default=d.window_kib,
                     help="receive window: KiB on the wire or unread before a sender waits (default 256)")
    net.add_argument("--commit-fail", type=_probability, default=d.commit_fail,
                     help="probability that a node's commit of received records fails (default 0)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-time", type=_positive_float, default=d.max_time,
                     help="virtual seconds each phase may take before the run fails (default 600)")
    lim.add_argument("--max-events", type=_positive_int, default=d.max_events,
                     help="events the whole run may take before it fails")
    sc = p.add_argument_group("scenarios")
    sc.add_argument("--records", type=_positive_int, default=d.records,
                    help="dissemination: records written at once, on distinct nodes (default 1)")
    sc.add_argument("--groups", type=_positive_int, default=d.groups, help="partition: sides (default 2)")
    sc.add_argument("--writes", type=_positive_int, default=d.writes,
                    help="partition: writes before the split and on each side (default 20)")
    sc.add_argument("--duration", type=_positive_float, default=None,
                    help="partition length (default 60) or churn length (default 300), virtual seconds")
    sc.add_argument("--churn", type=_probability, default=d.churn,
                    help="churn: fraction of the nodes that leave (default 0.3)")
    sc.add_argument("--rate", type=float, default=d.rate, help="churn: memories written per virtual second")
    sc.add_argument("--sample", type=_positive_float, default=None,
                    help="churn: seconds between samples (default duration/15)")
    sc.add_argument("--memories", type=_positive_int, default=d.memories, help="query: memories per node")
    sc.add_argument("--queries", type=_positive_int, default=d.queries, help="query: queries per TTL")
    sc.add_argument("--max-ttl", type=_positive_int, default=d.max_ttl, help="query: TTLs 1..this (default 6)")
    sc.add_argument("--timeout", type=_positive_float, default=d.timeout, help="query: seconds per query")
    sc.add_argument("--min-recall", type=_probability, default=d.min_recall,
                    help="query: the recall within reach each TTL must reach (default 0.8; see docs/simulations.md)")
    p.add_argument("--stats", action="store_true",
                   help="print wall time and peak memory to standard error")
    return p


def options_from(args: argparse.Namespace) -> Options:
    values = {k: v for k, v in vars(args).items() if k not in ("scenario", "stats")}
    return Options(**values)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = options_from(args)
    if args.max_ttl > 8:
        print("error: --max-ttl is at most 8 (the protocol's TTL cap)", file=sys.stderr)
        return 2
    bar = _Bar() if sys.stderr.isatty() else None
    started = time.perf_counter()
    try:
        result = run(args.scenario, opts, bar or Progress())
    except ValueError as exc:  # e.g. no 3-regular graph on an odd number of nodes
        if bar:
            bar.done()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if bar:
            bar.done()
        print(f"error: simulation {args.scenario} with seed {opts.seed} failed: {exc!r}", file=sys.stderr)
        print(f"rerun: {opts.rerun(args.scenario)}", file=sys.stderr)
        return 1
    if bar:
        bar.done()
    sys.stdout.write(result.text())
    sys.stdout.flush()
    if args.stats:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"wall time {time.perf_counter() - started:.1f} s, peak RSS {peak:.0f} MiB", file=sys.stderr)
    if not result.ok:
        print(f"simulation {args.scenario} failed with seed {opts.seed}; rerun: {opts.rerun(args.scenario)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
