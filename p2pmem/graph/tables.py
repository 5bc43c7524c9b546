"""The graph view kept in SQLite, updated in the transaction that stores each
graph record (the store calls :func:`on_insert`), so reading the graph is one
indexed scan of effective additions.

``graph_adds`` holds every addition with a ``live`` flag: 1 while no unlink of
its author covers it (rule 1 of :mod:`p2pmem.graph.view`). ``graph_unlinks``
holds every removal. An addition arriving after an unlink that covers it is
stored dead; an unlink arriving kills the additions it covers. Records are
never deleted, so ``live`` only ever goes from 1 to 0 and the outcome does
not depend on the order records arrive in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from p2pmem.graph.records import ENTITY, OBSERVATION, RELATION, Item, item_of
from p2pmem.graph.view import Graph, assemble

SCHEMA = """
CREATE TABLE IF NOT EXISTS graph_adds (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    ts INTEGER NOT NULL,
    what TEXT NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    c TEXT NOT NULL,
    visibility TEXT NOT NULL,
    session TEXT NOT NULL,
    live INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS graph_adds_key ON graph_adds(what, a, b, c);
CREATE INDEX IF NOT EXISTS graph_adds_to ON graph_adds(c) WHERE what = 'relation';
CREATE INDEX IF NOT EXISTS graph_adds_live ON graph_adds(live, ts, id);
CREATE TABLE IF NOT EXISTS graph_unlinks (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    ts INTEGER NOT NULL,
    what TEXT NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    c TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS graph_unlinks_key ON graph_unlinks(author, what, a, b, c);
"""

_COLUMNS = "what, a, b, c, author, ts, id, visibility, session"


def create(db: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _covered(db: sqlite3.Connection, item: Item) -> bool:
    """Whether a stored unlink of the item's author covers it."""
    later = "author = ? AND (ts, id) > (?, ?)"
    mine = (item.author, item.ts, item.id)
    checks: list[tuple[str, tuple[object, ...]]] = [
        (f"what = 'entity' AND a = ? AND {later}", (item.a, *mine)),
    ]
    if item.what == OBSERVATION:
        checks.append((f"what = 'observation' AND a = ? AND b = ? AND {later}", (item.a, item.b, *mine)))
    elif item.what == RELATION:
        checks.append((f"what = 'entity' AND a = ? AND {later}", (item.c, *mine)))
        checks.append((f"what = 'relation' AND a = ? AND b = ? AND c = ? AND {later}",
                       (item.a, item.b, item.c, *mine)))
    return any(
        db.execute(f"SELECT 1 FROM graph_unlinks WHERE {where} LIMIT 1", params).fetchone()
        for where, params in checks
    )


def on_insert(db: sqlite3.Connection, record: object) -> None:
    """Fold one newly stored graph record into the tables."""
    item = item_of(record)
    if not item.removal:
        db.execute(
            f"INSERT OR IGNORE INTO graph_adds({_COLUMNS}, live) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (item.what, item.a, item.b, item.c, item.author, item.ts, item.id, item.visibility,
             item.session, 0 if _covered(db, item) else 1),
        )
        return
    db.execute(
        "INSERT OR IGNORE INTO graph_unlinks(id, author, ts, what, a, b, c) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (item.id, item.author, item.ts, item.what, item.a, item.b, item.c),
    )
    older = "live = 1 AND author = ? AND (ts, id) < (?, ?)"
    mine = (item.author, item.ts, item.id)
    if item.what == ENTITY:
        db.execute(f"UPDATE graph_adds SET live = 0 WHERE what IN ('entity', 'observation', 'relation') "
                   f"AND a = ? AND {older}", (item.a, *mine))
        db.execute(f"UPDATE graph_adds SET live = 0 WHERE what = 'relation' AND c = ? AND {older}",
                   (item.a, *mine))
    else:
        db.execute(f"UPDATE graph_adds SET live = 0 WHERE what = ? AND a = ? AND b = ? AND c = ? AND {older}",
                   (item.what, item.a, item.b, item.c, *mine))


def _items(rows: Iterable[Sequence[object]]) -> list[Item]:
    return [Item(False, w, a, b, c, au, ts, i, v, s) for w, a, b, c, au, ts, i, v, s in rows]  # type: ignore[arg-type]


def read_graph(db: sqlite3.Connection, *, visibilities: Sequence[str] | None = None) -> Graph:
    """The whole graph view (optionally of additions with these visibilities only)."""
    where = "live = 1"
    params: list[object] = []
    if visibilities is not None:
        where += f" AND visibility IN ({','.join('?' * len(visibilities))})"
        params.extend(visibilities)
    rows = db.execute(f"SELECT {_COLUMNS} FROM graph_adds WHERE {where} ORDER BY ts, id", params)
    return assemble(_items(rows))


def version(db: sqlite3.Connection) -> tuple[int, int]:
    """Changes whenever the view may have: rows are only ever added."""
    row = db.execute("SELECT (SELECT count(*) FROM graph_adds), (SELECT count(*) FROM graph_unlinks)").fetchone()
    return (row[0], row[1])


def present_entities(db: sqlite3.Connection, names: Iterable[str]) -> set[str]:
    """Which of ``names`` are entities of the graph."""
    found: set[str] = set()
    names = list(dict.fromkeys(names))
    for i in range(0, len(names), 500):
        part = names[i : i + 500]
        marks = ",".join("?" * len(part))
        found.update(row[0] for row in db.execute(
            f"SELECT DISTINCT a FROM graph_adds WHERE what = 'entity' AND a IN ({marks}) AND live = 1", part))
    return found


def present_observations(db: sqlite3.Connection, entity: str) -> set[str]:
    return {row[0] for row in db.execute(
        "SELECT b FROM graph_adds WHERE what = 'observation' AND a = ? AND live = 1", (entity,))}


def relation_present(db: sqlite3.Connection, key: tuple[str, str, str]) -> bool:
    return db.execute(
        "SELECT 1 FROM graph_adds WHERE what = 'relation' AND a = ? AND b = ? AND c = ? AND live = 1 LIMIT 1",
        key,
    ).fetchone() is not None


def own_live(db: sqlite3.Connection, author: bytes, what: str, a: str, b: str = "", c: str = "") -> list[str]:
    """Visibilities of ``author``'s effective additions an unlink of
    (what, a, b, c) would cover: empty when it would remove nothing."""
    if what == ENTITY:
        rows = db.execute(
            "SELECT visibility FROM graph_adds WHERE live = 1 AND author = ? AND ("
            "(what IN ('entity', 'observation', 'relation') AND a = ?) OR (what = 'relation' AND c = ?))",
            (author, a, a),
        )
    else:
        rows = db.execute(
            "SELECT visibility FROM graph_adds WHERE live = 1 AND author = ? AND what = ? AND a = ? "
            "AND b = ? AND c = ?",
            (author, what, a, b, c),
        )
    return [row[0] for row in rows]
