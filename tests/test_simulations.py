"""The simulations: many real nodes (NodeCore + Store) on a virtual network.

Fast by construction: small networks, virtual time. N = 1000 runs are in
docs/simulations.md, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from p2pmem.model.views import build_views
from simulations.__main__ import main
from simulations.scenarios import Options, churn, dissemination, partition, query
from tests.conftest import PROJECT_ROOT


def _check_names(result) -> dict[str, bool]:
    return {c.name: c.ok for c in result.checks}


@pytest.mark.parametrize("seed", range(20))
def test_partition_converges_to_identical_views(seed: int) -> None:
    """Over 20 seeds, a partitioned network with writes on both sides
    converges after the heal: the same record set and the same CRDT views on
    every node, compared in full, not by counts."""
    opts = Options(nodes=8 + seed % 5, seed=seed, writes=8, duration=40.0)
    result = partition(opts)
    assert result.ok, result.text()
    net = result.network
    live = net.live_nodes()
    assert len(live) == opts.nodes
    ids = [net.record_ids(i) for i in live]
    assert all(x == ids[0] for x in ids), f"seed {seed}: record sets differ"
    views = [build_views(net.records(i)).comparable() for i in live]
    assert all(v == views[0] for v in views), f"seed {seed}: views differ"
    checks = _check_names(result)
    assert checks["identical CRDT views (build_views) on every live node"]
    assert checks["every store's own views (heads, profiles, follows, endorsements) agree"]
    assert checks["nothing lost: the sets are what was written minus retracted memories"]


def test_thirty_nodes_disseminate_and_answer() -> None:
    """A 30-node network: one record reaches every node, at flooding's
    exact cost; asking with TTL 1..6 finds what is within reach."""
    result = dissemination(Options(nodes=30, seed=7))
    assert result.ok, result.text()
    net = result.network
    assert net.converged() and net.stores_equal()
    record_id = next(iter(net.arrivals))
    assert net.holders(record_id) == 30

    result = query(Options(nodes=30, seed=7, queries=6))
    assert result.ok, result.text()
    rows = result.series["per_ttl"]
    assert [r["ttl"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        if row["reached_recall"] is not None:
            assert row["reached_recall"] == 1.0
        assert row["outside"] == 0
        assert row["msgs"] <= 2 * row["links"] + 1e-9
    # TTL 1 reaches the neighbours only, and every node is reached at TTL >= the diameter
    assert rows[0]["reach"] == pytest.approx(4.0)
    assert rows[-1]["reach"] == pytest.approx(29.0)


def test_churn_small() -> None:
    result = churn(Options(nodes=12, seed=3, duration=90.0, churn=0.4, rate=0.5))
    assert result.ok, result.text()
    net = result.network
    assert len(net.nodes) > 12  # some nodes were replaced by new ones
    assert net.stores_equal()


def test_same_seed_same_output() -> None:
    opts = Options(nodes=10, seed=11, writes=6, duration=35.0)
    first, second = partition(opts).text(), partition(opts).text()
    assert first == second
    assert partition(Options(nodes=10, seed=12, writes=6, duration=35.0)).text() != first
    opts = Options(nodes=10, seed=5, duration=60.0, rate=0.5)
    assert churn(opts).text() == churn(opts).text()


# The wire digest of `python -m simulations dissemination --nodes 1000 --seed 1`
# (docs/simulations.md). It changes exactly when the bytes on the wire or the
# order they are read in change: the protocol, the handshake, or the
# simulator's model (last: send buffers at link rate, 64 KiB reads, the
# virtual ingest pipeline). Update it then, and say why in the commit.
DISSEMINATION_1000_DIGEST = "e757b5691ab82760a48d3d8858b02185"


def test_a_thousand_nodes_replay_byte_for_byte_handshakes_included() -> None:
    """The 1000-node dissemination run twice from one seed: every byte on
    every connection (Noise handshakes, whose keys come from the seed,
    included) is the same, in the same order, and is the digest pinned
    above; another seed differs. The run goes through the send buffers
    (``sent``) and the ingest pipeline (``ingest_done``)."""
    opts = Options(nodes=1000, seed=1)
    first, second = dissemination(opts), dissemination(opts)
    assert first.ok, first.text()
    digest = [line for line in first.text().splitlines() if line.startswith("wire digest")]
    assert len(digest) == 1
    assert digest[0].endswith(DISSEMINATION_1000_DIGEST)
    assert first.text() == second.text()
    counts = first.network.counts
    assert counts["sent"] > 0 and counts["ingest_done"] == counts["ingest"] >= 999
    other = dissemination(Options(nodes=1000, seed=2)).text()
    assert digest[0] not in other


def _cli(*args: str, hashseed: str = "0") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    return subprocess.run(
        [sys.executable, "-m", "simulations", *args], capture_output=True, text=True, env=env,
        cwd=PROJECT_ROOT, timeout=120,
    )


def test_cli_output_is_the_same_bytes_whatever_the_hash_seed() -> None:
    """Same arguments, same bytes, even with str/bytes hashing randomised differently."""
    args = ("dissemination", "--nodes", "12", "--seed", "4")
    a, b = _cli(*args, hashseed="1"), _cli(*args, hashseed="2")
    assert a.returncode == 0, a.stdout + a.stderr
    assert a.stdout == b.stdout
    assert "result: ok" in a.stdout
    assert a.stderr == ""  # no progress bar without a terminal


def test_cli_failure_prints_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["partition", "--nodes", "6", "--seed", "42", "--max-time", "0.01"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "seed 42" in out and "seed 42" in err
    assert "python -m simulations partition --nodes 6 --seed 42 --max-time 0.01" in err


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nosuchscenario"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["query", "--loss", "2"])
    assert exc.value.code == 2
    assert main(["dissemination", "--nodes", "5", "--degree", "3"]) == 2  # no 3-regular graph on 5 nodes
    assert "n*d must be even" in capsys.readouterr().err
