"""The import rule of the package layout (docs/architecture.md, "Layout").

Modules in ``p2pmem/model/`` and ``p2pmem/protocol/`` are pure: they import
no ``trio``, ``socket``, ``sqlite3``, ``time``, ``random``, ``os``,
``threading`` or ``subprocess``, and nothing from ``p2pmem.storage``,
``p2pmem.node``, ``p2pmem.interfaces`` or ``p2pmem.agent``. What the core
needs from the world comes in as arguments: the current time as ``now``, a
store as anything with the methods of :class:`p2pmem.protocol.ports.StorePort`,
randomness as an object with the methods of :class:`p2pmem.protocol.ports.Rng`
(a ``random.Random`` in practice, seeded by the shell).

Every ``import`` and ``from ... import`` statement counts, wherever it is: at
the top, inside a function, under ``if TYPE_CHECKING:``. No exception is made
for type-only imports; the ports are Protocols defined in protocol/, so none
is needed. Relative imports are resolved against the module's package.

The rule holds transitively: a p2pmem module outside model/ and protocol/
that a pure module imports (``errors``, ``limits``, ``graph.records``, and
the packages' ``__init__``) must keep it too, so the core cannot reach
SQLite or the agent through a detour.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "p2pmem"
PURE = ("model", "protocol")
FORBIDDEN_MODULES = ("trio", "socket", "sqlite3", "time", "random", "os", "threading", "subprocess")
FORBIDDEN_PACKAGES = ("p2pmem.storage", "p2pmem.node", "p2pmem.interfaces", "p2pmem.agent")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    """The file of p2pmem module ``name``, or None (not a p2pmem module, or
    a name inside one, such as ``p2pmem.model.record.Record``)."""
    if name != "p2pmem" and not name.startswith("p2pmem."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module an import statement in ``path``
    names; for ``from X import a, b`` both ``X`` and ``X.a``, ``X.b`` (one of
    them may be a submodule)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    return imports_in(path.read_text(), package, str(path))


def imports_in(source: str, package: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """The imports of ``source``, a module of ``package`` (for relative ones)."""
    tree = ast.parse(source, filename=filename)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def forbidden(name: str) -> str | None:
    """What rule ``name`` breaks, or None."""
    top = name.split(".")[0]
    if top in FORBIDDEN_MODULES:
        return f"the standard library module {top!r} (I/O, clock or randomness)"
    for package in FORBIDDEN_PACKAGES:
        if name == package or name.startswith(package + "."):
            return f"{package} (a layer above the pure core)"
    return None


def violations(start: Path) -> list[str]:
    """Every forbidden import of ``start`` and of the p2pmem modules it
    imports, directly or not (with the parent packages they run), each
    with the chain of imports that leads to it."""
    chains: dict[Path, list[str]] = {start: [module_name(start)]}
    todo = [start]
    out: list[str] = []
    while todo:
        path = todo.pop()
        chain = chains[path]
        lines_seen = set()  # one report a statement (``from X import a`` names X and X.a)
        for line, name in imported_names(path):
            why = forbidden(name)
            if why:
                if line not in lines_seen:
                    lines_seen.add(line)
                    via = f" (reached by {' -> '.join(chain)})" if len(chain) > 1 else ""
                    out.append(f"{path.relative_to(ROOT)}:{line}: {chain[-1]} imports {name}: "
                               f"forbidden, {why}{via}")
                continue
            parts = name.split(".")
            # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
            for depth in range(1, len(parts) + 1):
                target = module_path(".".join(parts[:depth]))
                if target is not None and target not in chains:
                    chains[target] = [*chain, module_name(target)]
                    todo.append(target)
    return out


def pure_modules() -> list[Path]:
    return sorted(p for sub in PURE for p in (PACKAGE / sub).rglob("*.py"))


def test_the_pure_packages_exist_and_hold_modules() -> None:
    for sub in PURE:
        assert (PACKAGE / sub / "__init__.py").is_file(), f"p2pmem/{sub}/ is not a package"
    assert len(pure_modules()) > 2 * len(PURE)


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: module_name(p))
def test_model_and_protocol_import_nothing_impure(path: Path) -> None:
    breaks = violations(path)
    assert not breaks, "import rule of docs/architecture.md broken:\n" + "\n".join(breaks)


def test_the_checker_sees_imports_everywhere() -> None:
    """The walker finds imports in functions, under TYPE_CHECKING and
    relative ones, and names the forbidden one."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from p2pmem.storage.store import Store\n"
        "def f():\n    import time\n    from ..node import shell\n"
        "from . import wire\n"
    )
    names = [name for _, name in imports_in(source, "p2pmem.protocol")]
    assert "p2pmem.storage.store" in names
    assert "time" in names
    assert "p2pmem.node.shell" in names
    assert "p2pmem.protocol.wire" in names
    assert forbidden("p2pmem.storage.store") and forbidden("time") and forbidden("p2pmem.node.shell")
    assert not forbidden("p2pmem.protocol.wire") and not forbidden("timeit")


def test_the_checker_follows_imports_out_of_the_pure_packages() -> None:
    """A detour through another p2pmem module is caught and named: the
    store (outside the rule) imports sqlite3, so a module importing it would
    be reported with the chain."""
    broken = violations(PACKAGE / "storage" / "store.py")
    assert any("imports sqlite3" in line for line in broken)
    assert any("reached by p2pmem.storage.store -> p2pmem.graph.tables" in line for line in broken)
