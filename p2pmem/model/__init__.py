"""The data model: the signed record, canonical CBOR, identities, the hybrid
logical clock, sealed messages, scopes, quotas, CRDT views and trust.

Pure: no I/O, no clock, no randomness (tests/test_layout.py)."""
