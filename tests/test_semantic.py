"""The semantic stage end to end: a real model2vec-format model folder,
vectors kept in step with the store through the index log, a model change
re-embedding everything, a retraction's vector gone, and the CLI's
`reindex --model` and `recall --explain` showing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from test_embed import make_static_model  # noqa: E402

from p2pmem.agent.home import Agent, init_home  # noqa: E402


def _agent(home: Path, model: Path) -> Agent:
    init_home(home)
    return Agent.open(home, model=model)


def test_recall_uses_the_model_and_follows_the_store(tmp_path: Path) -> None:
    model = tmp_path / "model-a"
    make_static_model(model, seed=1)
    agent = _agent(tmp_path / "home", model)
    try:
        keep = agent.remember("the proxy cache config", session="s")
        gone = agent.remember("gossip peer network", session="s")
        found = agent.recall("proxy cache")
        assert found[0].record.id == keep.id
        assert found[0].ranked is not None and found[0].ranked.semantic_rank is not None
        semantic = agent.store.search.semantic
        assert semantic is not None
        rowids = semantic.vectors.keys()
        assert len(rowids) == 2

        agent.forget(gone.id.hex())
        assert len(semantic.vectors.keys()) == 1  # deleted as the retraction committed
        updated = agent.update(keep.id.hex(), "the deploy server config")
        agent.recall("deploy")
        assert len(semantic.vectors.keys()) == 1  # the superseded text lost its vector
        assert agent.recall("deploy server")[0].record.id == updated.id
    finally:
        agent.close()


def test_a_model_change_reembeds_everything(tmp_path: Path) -> None:
    first, second = tmp_path / "model-a", tmp_path / "model-b"
    make_static_model(first, seed=1)
    make_static_model(second, seed=2, dim=32)
    home = tmp_path / "home"
    agent = _agent(home, first)
    for i in range(5):
        agent.remember(f"agent memory number {i} about the cache")
    agent.recall("cache")
    label = agent.store.search.semantic.embedder.fingerprint.label()
    agent.close()

    agent = Agent.open(home, model=second)
    try:
        semantic = agent.store.search.semantic
        assert semantic.embedder.fingerprint.label() != label
        assert semantic.vectors.count() == 0  # another model's vectors are dropped
        agent.store.search.rebuild()
        assert semantic.vectors.count() == 5
        assert semantic.vectors.fingerprint.dim == 32
    finally:
        agent.close()


def test_cli_reindex_and_explain_with_a_model(tmp_path: Path) -> None:
    model = tmp_path / "model"
    make_static_model(model)
    home = tmp_path / "home"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p2pmem", "--home", str(home), *args],
            capture_output=True, text=True, timeout=120, check=True,
        )

    run("init")
    run("remember", "the gossip network peer", "--session", "s")
    run("remember", "the proxy server config", "--session", "s")
    done = json.loads(run("reindex", "--model", str(model), "--json").stdout)
    assert done["memories"] == 2 and done["model"].startswith("model/64d/")
    found = json.loads(run("recall", "proxy server", "--model", str(model), "--explain", "--json").stdout)
    assert found[0]["text"] == "the proxy server config"
    assert found[0]["explain"]["semantic_rank"] is not None
    plain = json.loads(run("recall", "proxy server", "--explain", "--json").stdout)
    assert plain[0]["explain"]["semantic_rank"] is None  # no model, no semantic stage
