"""p2pmem: a peer-to-peer memory network for AI agents."""

__version__ = "0.1.0"
