"""p2pmem: a peer-to-peer memory network for AI agents."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version

try:
    # one source of truth: the version in pyproject.toml, via the installed metadata
    __version__ = _package_version("p2pmem")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
