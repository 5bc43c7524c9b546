"""The sans-IO protocol: NodeCore, wire messages, Noise XX, range
reconciliation, flooding queries and token buckets.

Pure: no I/O, no clock, no randomness of its own (tests/test_layout.py); the
shells (p2pmem.node, p2pmem.sim) carry out its actions and feed it events."""
