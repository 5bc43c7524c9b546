"""Storage: the SQLite store (the source of truth) and the key file."""
