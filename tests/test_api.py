"""The Python API (p2pmem/api.py, docs/python.md): every ```python block of
docs/python.md runs, in order and in one namespace; the `ask` block against
real serving nodes (subprocesses on loopback). Plus the argument checks and
the shapes the API promises."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2pmem
from p2pmem import Memory, MemoryHit, StoreError, Written
from tests.netutil import Net, network_fixture, remember

DOC = Path(__file__).resolve().parent.parent / "docs" / "python.md"
net = network_fixture()


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_every_python_block_of_the_docs_runs(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("P2PMEM_HOME", "P2PMEM_SESSION", "P2PMEM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    namespace: dict[str, object] = {"__name__": "docs_python"}
    found = blocks()
    assert len(found) >= 6
    ran_ask = False
    for code in found:
        if code.startswith("# needs: a serving node"):
            (carol,) = net.homes(1, prefix="carol")
            memory_id = remember(carol, "the kubernetes cluster upgrade is on Friday")
            node_c = net.start(carol, "--replicate", "all")
            home = namespace["home"]
            assert isinstance(home, Path)
            node_a = net.start(home, "--peer", node_c.address)
            net.wait_peers(node_a, 1)
            exec(compile(code, f"{DOC}:ask", "exec"), namespace)  # noqa: S102 - the docs' own code
            hits = namespace["hits"]
            assert isinstance(hits, list) and [h.id for h in hits] == [memory_id]
            assert hits[0].hops == 1 and hits[0].via == net.id_of(carol)
            ran_ask = True
        else:
            exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102
    assert ran_ask


def test_the_api_is_exported_with_all() -> None:
    for name in ("Memory", "MemoryHit", "Written", "AgentInfo", "Message", "P2pmemError", "__version__"):
        assert name in p2pmem.__all__ and getattr(p2pmem, name) is not None
    for cls in (MemoryHit, Written, p2pmem.AgentInfo, p2pmem.Message):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = p2pmem.Nothing  # type: ignore[attr-defined]


@pytest.fixture
def mem(tmp_path: Path):
    with Memory.init(tmp_path / "home", name="tester") as memory:
        yield memory


def test_returns_plain_values_and_closes_the_store(mem: Memory) -> None:
    written = mem.remember("plain values only", topics=["t"], session="s")
    assert isinstance(written, Written) and len(written.id) == 64 and written.author == mem.id
    (hit,) = mem.recall("plain values")
    assert isinstance(hit, MemoryHit) and hit.topics == ("t",) and hit.session == "s"
    assert hit.ts_ms == hit.at_ms == written.ts_ms
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.text = "changed"  # type: ignore[misc]
    with pytest.raises(StoreError):
        mem.update("0123456789abcdef", "no such memory")
    mem.close()
    with Memory.open(mem.home) as again:
        assert [h.id for h in again.recall()] == [written.id]


def test_a_home_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(p2pmem.HomeError):
        Memory.open(tmp_path / "nowhere")


NOT_A_LIST = st.one_of(st.text(max_size=5), st.integers(), st.none(), st.binary(max_size=3),
                       st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(NOT_A_LIST)
def test_topics_that_are_not_a_list_are_a_type_error(mem: Memory, topics: object) -> None:
    before = len(mem.recall(limit=1000))
    with pytest.raises(TypeError):
        mem.remember("x", topics=topics)  # type: ignore[arg-type]
    assert len(mem.recall(limit=1000)) == before  # nothing written


@pytest.mark.parametrize("call, error", [
    (lambda m: m.remember(42), TypeError),
    (lambda m: m.remember("x", visibility="everyone"), ValueError),
    (lambda m: m.remember("x", topics=["t"] * 17), ValueError),
    (lambda m: m.remember("x" * (64 * 1024 + 1)), ValueError),
    (lambda m: m.remember("x", at_ms=-1), ValueError),
    (lambda m: m.remember("x", at_ms=True), TypeError),
    (lambda m: m.recall("x", limit=1001), ValueError),
    (lambda m: m.recall("x", authors="pm1abc"), TypeError),
    (lambda m: m.ask("x", ttl=99), ValueError),
    (lambda m: m.ask("x", timeout="3"), TypeError),
    (lambda m: m.create_entities([("a", "b")]), TypeError),
    (lambda m: m.add_observations("a", "one"), TypeError),
    (lambda m: m.create_entities([("a", "b", [])], visibility="world"), ValueError),
])
def test_bad_arguments_raise(mem: Memory, call, error) -> None:
    with pytest.raises(error):
        call(mem)
