"""The simulated network: many real NodeCores and Stores in one process on a
virtual clock and network, a second shell around the same core as the trio
node. Users reach it through :mod:`p2pmem.testing`, which re-exports it."""
