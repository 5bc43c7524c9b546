"""``p2pmem doctor``: check a home and repair what can be repaired safely.

Checks, each independent of the others (a damaged key file does not hide
the state of the store):

* **modes**: the home 0700, every file 0600 (repair: chmod);
* **key file**: present, a regular file, 0600, parses as an identity;
* **store**: opens, ``PRAGMA integrity_check`` says ok, its schema version
  is one this code knows;
* **owner**: the key's agent signed a profile in the store (init writes one),
  so the key belongs to this store;
* **search index**: the memories the lexical index holds are exactly the
  store's current memories, by rowid, counting what the index log says is
  still to apply (repair: rebuild the index from the store).

Nothing here rewrites records: a damaged store is reported with the way out
(a backup), never "fixed" by dropping what SQLite cannot read.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from p2pmem.errors import P2pmemError
from p2pmem.retrieval.lexical import Filters, LexicalIndex
from p2pmem.retrieval.sync import IndexSync
from p2pmem.storage import schema
from p2pmem.storage.diskerrors import explain
from p2pmem.storage.files import PRIVATE_FILE, loose_paths, tighten
from p2pmem.storage.keyfile import KEY_FILE, load_identity
from p2pmem.storage.store import DB_FILE, HEAD, Store


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    repaired: bool = False

    def line(self) -> str:
        word = "repaired" if self.repaired else ("ok" if self.ok else "PROBLEM")
        return f"{word:8}  {self.name}: {self.detail}"


def check_modes(home: Path, repair: bool) -> Check:
    loose = list(loose_paths(home))
    if not loose:
        return Check("modes", True, "the home is 0700 and every file in it 0600")
    names = ", ".join(f"{p.relative_to(home) if p != home else p} ({mode:o})" for p, mode, _ in loose[:5])
    more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
    if not repair:
        return Check("modes", False, f"readable by others: {names}{more} (--repair sets 0600/0700)")
    left = [p for p, _mode, wanted in loose if not tighten(p, wanted)]
    if left:
        return Check("modes", False, f"could not change the mode of {left[0]} (not ours, or read-only)")
    return Check("modes", True, f"set 0600/0700 on {len(loose)} paths: {names}{more}", repaired=True)


def check_key(home: Path) -> tuple[Check, bytes | None]:
    try:
        identity = load_identity(home)
    except P2pmemError as exc:
        return Check("key file", False, str(exc)), None
    return Check("key file", True, f"{home / KEY_FILE} is agent {identity.agent_id}"), identity.public_key


def check_store(db: Path, repair: bool) -> tuple[Check, Store | None]:
    if not db.exists():
        return Check("store", False, f"{db} is missing: restore a backup (`p2pmem restore`) or "
                     "run `p2pmem init --new-store` for an empty one"), None
    try:
        # without --repair nothing is written, not even a schema migration
        store = Store(db, verify_workers=1, create=False, read_only=None if repair else True)
    except (P2pmemError, OSError, sqlite3.Error) as exc:
        return Check("store", False, str(explain(exc, db) if not isinstance(exc, P2pmemError) else exc)), None
    try:
        rows = [r[0] for r in store.connection.execute("PRAGMA integrity_check(20)")]
        version = schema.stored_version(store.connection)
    except sqlite3.Error as exc:
        store.close()
        return Check("store", False, str(explain(exc, db))), None
    if rows != ["ok"]:
        store.close()
        return Check("store", False, f"PRAGMA integrity_check found damage in {db}: {rows[0]}"
                     f"{f' (+{len(rows) - 1} more)' if len(rows) > 1 else ''}; restore a backup "
                     "(`p2pmem restore`)"), None
    mode = " (the home is read-only)" if store.read_only and repair else ""
    return Check("store", True, f"{db}: integrity ok, schema {version} (this p2pmem: "
                 f"{schema.SCHEMA_VERSION}), {store.count()} records{mode}"), store


def check_owner(store: Store, key: bytes) -> Check:
    authors = {row[0] for row in store.connection.execute("SELECT author FROM records WHERE kind = 'profile'")}
    if key in authors:
        return Check("owner", True, "the key file's agent signed this store's profile")
    if not authors:
        return Check("owner", True, "no profile in the store yet (nothing to match the key against)")
    return Check("owner", False, "the key file's agent signed no profile in this store: the key "
                 "belongs to another home; restore this home's identity.key from its backup")


def _disk_index(store: Store) -> LexicalIndex | None:
    """The lexical index the home's pointer names, opened as it is."""
    sync = IndexSync(store, store.path.parent / f"{store.path.stem}.index")
    sync._open_current()  # reads the pointer and opens that generation; writes nothing
    return sync.index


def index_difference(store: Store) -> tuple[int, int, int, int]:
    """(current memories, documents in the index, missing, extra): the index
    as it is on disk, forgiving what the log still has to apply."""
    heads = {row[0] for row in store.connection.execute(
        f"SELECT rowid FROM records WHERE kind = 'memory' AND state = {HEAD}")}
    index = _disk_index(store)
    if index is None:
        return len(heads), -1, 0, 0
    seq = index.state()["seq"]
    pending = {rid for _, rid, _ in store.log_entries(seq, 1 << 62)} if seq >= 0 else set(heads)
    held = set(index.newest(Filters(), index.size)) if index.size else set()
    missing = heads - held - pending
    extra = held - heads - pending
    return len(heads), len(held), len(missing), len(extra)


def check_index(store: Store, repair: bool) -> Check:
    try:
        heads, held, missing, extra = index_difference(store)
    except (OSError, ValueError) as exc:
        heads, held, missing, extra = -1, -1, -1, -1
        trouble = f"the search index cannot be read ({exc})"
    else:
        trouble = "" if not (missing or extra) else (
            f"the search index lacks {missing} of the store's {heads} current memories and holds "
            f"{extra} it should not")
    if not trouble and held < 0:
        return Check("search index", True, "none yet (the first search builds it from the store)")
    if not trouble:
        return Check("search index", True, f"{held} documents for {heads} current memories")
    if not repair or store.read_only:
        why = " (the home is read-only)" if store.read_only and repair else " (--repair rebuilds it)"
        return Check("search index", False, trouble + why)
    try:
        store.search.rebuild()
        store.search.sync.current()
        heads, held, missing, extra = index_difference(store)
    except (OSError, ValueError, sqlite3.Error) as exc:
        return Check("search index", False, f"{trouble}; the rebuild failed: {exc}")
    ok = not (missing or extra)
    return Check("search index", ok, f"rebuilt from the store: {held} documents for {heads} current "
                 "memories", repaired=ok)


def doctor(home: Path, *, repair: bool = False) -> list[Check]:
    """Every check of ``home`` (repairing first where asked)."""
    if not home.is_dir():
        return [Check("home", False, f"no p2pmem home at {home}")]
    checks = [check_modes(home, repair)]
    key_check, key = check_key(home)
    if repair and not key_check.ok and "readable by others" in key_check.detail:
        tighten(home / KEY_FILE, PRIVATE_FILE)
        key_check, key = check_key(home)
        key_check.repaired = key_check.ok
    checks.append(key_check)
    store_check, store = check_store(home / DB_FILE, repair)
    checks.append(store_check)
    if store is not None:
        try:
            if key is not None:
                checks.append(check_owner(store, key))
            checks.append(check_index(store, repair))
        finally:
            store.close()
    return checks


def report_json(home: Path, checks: list[Check]) -> dict[str, object]:
    return {"home": str(home), "healthy": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}
