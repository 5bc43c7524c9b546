"""A shared knowledge graph of entities, observations and relations, signed
and merged without conflicts (docs/graph.md): the records and their bodies
(:mod:`.records`), the CRDT view (:mod:`.view`, reference fold; :mod:`.tables`,
kept in SQLite), ranked search (:mod:`.search`), the operations of the
reference MCP memory server (:mod:`.ops`), its JSONL format (:mod:`.jsonl`),
and the MCP tools and CLI commands built on them."""
