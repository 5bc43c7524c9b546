"""p2pmem: a peer-to-peer memory network for AI agents."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version

try:
    # one source of truth: the version in pyproject.toml, via the installed metadata
    __version__ = _package_version("p2pmem")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

# The public Python API (docs/python.md), imported on first use so that
# `import p2pmem.model...` (the sans-IO layers) does not load the store.
_API = ("Memory", "MemoryHit", "Written", "AgentInfo", "Message")
_ERRORS = ("P2pmemError", "StoreError", "UsageError", "HomeError")

__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str) -> object:
    # by name, at first use: the pure layers import this package (for
    # __version__) and must not reach the store through it (tests/test_layout.py)
    from importlib import import_module

    if name in _API:
        return getattr(import_module("p2pmem.api"), name)
    if name in _ERRORS:
        return getattr(import_module("p2pmem.errors"), name)
    raise AttributeError(f"module 'p2pmem' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
