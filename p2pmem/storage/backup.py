"""``p2pmem backup`` and ``p2pmem restore``: a whole home in one file.

A backup is an uncompressed tar (readable by any tar) holding:

* ``p2pmem-backup.json``: the manifest (format, agent id, schema version,
  record count, time, and each member's size and SHA-256);
* ``store.db``: a consistent snapshot of the store taken with SQLite's
  online backup API, so it may run while ``serve`` writes; it holds every
  record, messages (the inbox) included, as one self-contained file;
* ``identity.key``: the agent's private keys (so the backup is as secret
  as the home: it is written 0600);
* ``p2pmem.toml`` and ``model.txt`` when the home has them.

The search indexes are not in it: they are derived, and ``restore`` rebuilds
them from the store. A restore goes into an empty (or new) home only, checks
every member against the manifest, runs the schema migrations of this
release on the snapshot, and checks that the key signed the store's profile.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from p2pmem.errors import P2pmemError, UsageError
from p2pmem.storage import schema
from p2pmem.storage.diskerrors import explain
from p2pmem.storage.files import PRIVATE_FILE, private_dir
from p2pmem.storage.keyfile import KEY_FILE, MAX_KEY_FILE, load_identity
from p2pmem.storage.opening import open_database

MANIFEST = "p2pmem-backup.json"
FORMAT = 1
DB_FILE = "store.db"
OPTIONAL = ("p2pmem.toml", "model.txt")
MAX_SMALL_MEMBER = 1 << 20  # the manifest, the key and the text files are tiny
_CHUNK = 1 << 20


class BackupError(P2pmemError):
    """A backup cannot be made or restored (the message says why)."""


@dataclass(frozen=True)
class Summary:
    agent: str
    records: int
    schema: int
    members: tuple[str, ...]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def snapshot_store(db: Path, target: Path) -> tuple[int, int]:
    """Copy the store to ``target`` as of one moment (the backup API reads
    one consistent snapshot while other connections keep writing); returns
    (schema version, records)."""
    source = open_database(db, create=False, read_only=True).db
    try:
        dest = sqlite3.connect(target, isolation_level=None)
        try:
            source.backup(dest)
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            check = dest.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the snapshot of {db} fails its check ({check}); run `p2pmem doctor`")
            records = dest.execute("SELECT count(*) FROM records").fetchone()[0]
            version = schema.stored_version(dest)
        finally:
            dest.close()
    finally:
        source.close()
    return version, records


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tar.gettarinfo(str(path), arcname=name)
    info.mode, info.uid, info.gid, info.uname, info.gname = PRIVATE_FILE, 0, 0, "", ""
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), PRIVATE_FILE, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def backup(home: Path, out: Path) -> Summary:
    """Write the backup of ``home`` to ``out`` (atomically: a temporary file
    renamed into place once complete and synced)."""
    identity = load_identity(home)  # a home whose key is unreadable is not worth a backup
    db = home / DB_FILE
    if not db.exists():
        raise BackupError(f"no store at {db}: nothing to back up")
    out = out.absolute()
    try:
        with tempfile.TemporaryDirectory(prefix=".p2pmem-backup-", dir=out.parent) as work:
            snap = Path(work) / DB_FILE
            version, records = snapshot_store(db, snap)
            members = {DB_FILE: snap, KEY_FILE: home / KEY_FILE}
            members.update({name: home / name for name in OPTIONAL if (home / name).is_file()})
            manifest = {
                "format": FORMAT, "agent": identity.agent_id, "schema": version, "records": records,
                "created_ms": time.time_ns() // 1_000_000,
                "members": {name: {"size": path.stat().st_size, "sha256": _sha256(path)}
                            for name, path in members.items()},
            }
            partial = Path(work) / "backup.tar"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
                for name, path in members.items():
                    _add(tar, path, name)
                tar.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, out)
    except OSError as exc:
        raise explain(exc, out) from None
    return Summary(identity.agent_id, records, version, tuple(members))


# -- restore -------------------------------------------------------------------

def _read_manifest(tar: tarfile.TarFile, source: Path) -> dict:
    try:
        member = tar.getmember(MANIFEST)
    except KeyError:
        raise BackupError(f"{source} is not a p2pmem backup (no {MANIFEST})") from None
    if not member.isfile() or member.size > MAX_SMALL_MEMBER:
        raise BackupError(f"{source}: the manifest is not a small regular file")
    handle = tar.extractfile(member)
    assert handle is not None
    try:
        manifest = json.loads(handle.read())
        members = manifest["members"]
        if manifest.get("format") != FORMAT or not isinstance(members, dict):
            raise ValueError("unknown format")
        for name, entry in members.items():
            if name not in (DB_FILE, KEY_FILE, *OPTIONAL) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"unexpected member {name[:40]!r}")
        if DB_FILE not in members or KEY_FILE not in members:
            raise ValueError("the store or the key is missing")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{source}: the manifest is not one p2pmem wrote ({exc})") from None
    return manifest


def _extract(tar: tarfile.TarFile, name: str, entry: dict, home: Path, source: Path) -> None:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise BackupError(f"{source} lacks {name}, which its manifest lists") from None
    if not member.isfile() or (name != DB_FILE and member.size > max(MAX_SMALL_MEMBER, MAX_KEY_FILE)):
        raise BackupError(f"{source}: {name} is not a regular file of a sensible size")
    handle = tar.extractfile(member)
    assert handle is not None
    digest = hashlib.sha256()
    target = home / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as out:
        while block := handle.read(_CHUNK):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != entry["sha256"]:
        raise BackupError(f"{source}: {name} does not match its checksum (the backup is damaged)")


def check_empty(home: Path) -> None:
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise UsageError(f"{home} is not an empty directory: restore only into a new or empty home "
                         "(move the old one aside first)")


def restore(source: Path, home: Path) -> Summary:
    """Unpack a backup into an empty ``home``; on any failure the home is
    left empty again, never half restored."""
    check_empty(home)
    try:
        tar = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by the `with tar` below
    except FileNotFoundError:
        raise BackupError(f"no backup at {source}") from None
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{source} is not a p2pmem backup ({exc})") from None
    created = not home.exists()
    written: list[Path] = []
    try:
        with tar:
            manifest = _read_manifest(tar, source)
            private_dir(home)
            for name, entry in manifest["members"].items():
                written.append(home / name)
                _extract(tar, name, entry, home, source)
        return _finish(home, manifest)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        for extra in home.glob(f"{DB_FILE}*"):
            with contextlib.suppress(OSError):
                extra.unlink()
        if created:
            shutil.rmtree(home, ignore_errors=True)
        raise


def _finish(home: Path, manifest: dict) -> Summary:
    """Open the restored store with this release (migrating it), check the
    key is its owner, and rebuild the search indexes."""
    from p2pmem.storage.store import Store

    identity = load_identity(home)
    if identity.agent_id != manifest.get("agent"):
        raise BackupError("the backup's key file is not the agent its manifest names")
    try:
        store = Store(home / DB_FILE, verify_workers=1, create=False, read_only=False)
    except (OSError, sqlite3.Error) as exc:
        raise explain(exc, home / DB_FILE) from None
    with store:
        owner = store.connection.execute(
            "SELECT 1 FROM records WHERE kind = 'profile' AND author = ? LIMIT 1", (identity.public_key,)
        ).fetchone()
        if owner is None and store.count("profile"):
            raise BackupError("the backup's key signed no profile in its store: they do not belong together")
        store.search.rebuild()
        records = store.count()
    return Summary(identity.agent_id, records, schema.SCHEMA_VERSION, tuple(manifest["members"]))
