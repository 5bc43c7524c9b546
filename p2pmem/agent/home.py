"""An agent's home: its identity, its store and its clock, and the local
operations every front end (CLI, MCP server, serving node) shares.

The home is a directory (``--home``, else ``$P2PMEM_HOME``, else the
platform's user data directory) holding ``identity.key`` (mode 0600),
``store.db`` (SQLite, WAL) and, while ``serve`` runs, ``node.sock``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import platformdirs

from p2pmem import limits
from p2pmem.agent.ranking import rank_by_trust
from p2pmem.errors import HomeError, RecordError, StoreError, UsageError
from p2pmem.model.clock import HybridClock
from p2pmem.model.identity import AGENT_ID_PREFIX, Identity, agent_id, parse_agent_id
from p2pmem.model.record import Record, sign_record
from p2pmem.model.trust import TrustModel
from p2pmem.retrieval.embed import configured_model_path
from p2pmem.retrieval.text import query_terms, words
from p2pmem.storage.diskerrors import explain
from p2pmem.storage.files import private_dir, secure_home
from p2pmem.storage.keyfile import KEY_FILE, load_identity, save_identity
from p2pmem.storage.store import DB_FILE, IngestResult, Memory, Store

CONTROL_SOCKET = "node.sock"
MIN_AGENT_PREFIX = 8  # characters of an agent id prefix, "pm1" included


def check_query(query: str) -> None:
    """Refuse a query that has characters but no word to search ("?",
    "..."): without this it listed the newest memories as if it were empty.
    An empty query still lists the newest; a query of common words only
    ("who is it") still searches them (docs/retrieval.md)."""
    if query.strip() and not words(query):
        raise UsageError(f"the query has no searchable words: {query.strip()[:80]!r}")


def default_home() -> Path:
    env = os.environ.get("P2PMEM_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("p2pmem", appauthor=False))


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def init_home(
    home: Path, *, name: str | None = None, skills: Sequence[str] = (), new_store: bool = False
) -> tuple[Identity, bool]:
    """Create identity and store; on an existing home change nothing.
    Returns the identity and whether it was created now. ``new_store``: an
    identity whose store is gone gets a new, empty one (peers send back what
    they hold)."""
    try:
        private_dir(home)
    except OSError as exc:
        raise HomeError(f"cannot create home {home}: {exc.strerror}") from None
    key, db = home / KEY_FILE, home / DB_FILE
    if key.exists():
        identity = load_identity(home)
        if not db.exists():
            if not new_store:
                raise HomeError(missing_store(home))
            with Agent.open(home, create=True) as agent:
                agent.set_profile(name=name, skills=list(skills) if skills else None)
        return identity, False
    if db.exists():
        raise HomeError(f"{home} has a store but no key file {key}: restore identity.key from a "
                        "backup (`p2pmem restore`); a new identity could not change its records")
    identity = Identity.generate()
    try:
        save_identity(identity, home)
        with Agent.open(home, create=True) as agent:
            agent.set_profile(name=name or "", skills=list(skills))
    except OSError as exc:
        raise explain(exc, home) from None
    return identity, True


def missing_store(home: Path) -> str:
    return (f"the store {home / DB_FILE} is missing beside the identity {home / KEY_FILE}; "
            "restore a backup with `p2pmem restore FILE --home NEWDIR`, or start an empty "
            "store for this identity with `p2pmem init --new-store`")


class Agent:
    """One agent's local node state: sign, store and read records.

    ``wall_ms`` is the wall clock in milliseconds: every time the agent reads
    (its hybrid clock, the clock check of imports, "now" of recall) comes
    from it. Front ends keep the real one; the simulator passes its virtual
    clock. Constructing an Agent touches neither the filesystem nor the
    environment (``home`` is read by :meth:`open` and the serving node only).
    """

    def __init__(
        self, home: Path, identity: Identity, store: Store, *, wall_ms: Callable[[], int] = wall_ms
    ) -> None:
        self.home = home
        self.identity = identity
        self.store = store
        self.wall_ms = wall_ms
        self.clock = HybridClock(store.last_ts(identity.public_key))

    @classmethod
    def open(
        cls, home: Path, *, model: Path | None = None, read_only: bool | None = None,
        create: bool = False,
    ) -> Agent:
        """The agent of ``home``. ``model`` (else $P2PMEM_MODEL, else the
        home's ``model`` folder or ``model.txt``) turns on the semantic stage
        of recall (docs/models.md). A home on a disk that refuses writes
        opens read-only unless ``read_only=False``; a missing store is an
        error unless ``create`` (docs/operations.md, "Disk states")."""
        if not home.is_dir():
            raise HomeError(f"no p2pmem home at {home} (run `p2pmem init`)")
        identity = load_identity(home)
        if not create and not (home / DB_FILE).exists():
            raise HomeError(missing_store(home))
        secure_home(home, home / DB_FILE)
        store = Store(home / DB_FILE, read_only=read_only)
        store.search.model_path = model or configured_model_path(os.environ, home)
        if model is not None:
            # a model asked for by name is loaded now, so a bad path is one
            # line at once, not a silent lexical-only recall (issue #16)
            try:
                _ = store.search.semantic
            except BaseException:
                store.close()
                raise
        return cls(home, identity, store)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    def next_ts(self) -> int:
        """The next tick of this agent's clock, after anything another
        process of this home (the CLI beside `serve`) signed since."""
        now = self.wall_ms()
        self.clock.observe(self.store.last_ts(self.key), now, limits.MAX_FUTURE_SKEW_MS)
        return self.clock.now(now)

    def tick(self) -> int:
        """The next tick without looking at the store again: for the rest of
        a run of records whose first took :meth:`next_ts`."""
        return self.clock.now(self.wall_ms())

    # -- writing: every record of this agent is signed and stored here -----
    # The CLI, the MCP server, the graph's tools and the simulator (one Agent
    # per virtual node, on the virtual clock) write through these methods;
    # nothing else signs with the agent's key or ingests into its store (the
    # node's ingest pipeline stores what peers send).
    def sign(self, kind: str, body: object, *, ts: int | None = None, **fields: object) -> Record:
        """A record of ``kind`` signed by this agent, not stored yet (see
        :meth:`commit`); ``ts`` defaults to the next tick of its clock.
        A schema error is the caller's: :class:`UsageError`."""
        try:
            return sign_record(self.identity, kind, self.next_ts() if ts is None else ts,
                               body, **fields)  # type: ignore[arg-type]
        except RecordError as exc:
            raise UsageError(str(exc)) from None

    def commit(self, records: Sequence[Record]) -> list[Record]:
        """Store records this agent signed, in one transaction."""
        records = list(records)
        for record in records:
            if record.author != self.key:
                raise UsageError("an agent commits only records it signed itself")
        if records:
            self.store.ingest(records)
        return records

    def _commit(self, record: Record) -> Record:
        self.commit([record])
        return record

    def import_raw(self, raws: Sequence[bytes]) -> IngestResult:
        """Verify and store records from outside (an exported file): the same
        checks as records from a peer (Store.ingest_raw)."""
        return self.store.ingest_raw(raws, wall_ms=self.wall_ms())

    # -- memories --------------------------------------------------------
    def make_memory(
        self,
        text: str,
        *,
        topics: Sequence[str] = (),
        session: str = "",
        at: int | None = None,
        visibility: str = "public",
        refs: Sequence[bytes] = (),
        root: bytes | None = None,
        meta: dict[str, str | int] | None = None,
    ) -> Record:
        if not text.strip():
            raise UsageError("a memory needs some text")
        return self.sign(
            "memory", text, topics=list(topics), session=session, at=at,
            visibility=visibility, refs=list(refs), root=root, meta=meta,
        )

    def remember(self, text: str, **fields: object) -> Record:
        return self._commit(self.make_memory(text, **fields))  # type: ignore[arg-type]

    def own_memory(self, id_text: str) -> Record:
        try:
            record_id = self.store.resolve_prefix(id_text)
        except StoreError as exc:
            # A malformed id is a usage error (exit 2); a well-formed one that
            # matches nothing, or more than one record, is not (exit 1).
            if not re.fullmatch(r"[0-9a-f]{8,64}", id_text.strip().lower()):
                raise UsageError(str(exc)) from None
            raise
        record = self.store.get(record_id)
        if record is None or record.kind != "memory":
            raise StoreError(f"{id_text} is not a memory in this store")
        if record.author != self.key:
            raise StoreError(f"{id_text} was written by another agent; only its author can change it")
        return record

    def update(self, id_text: str, text: str, *, topics: Sequence[str] | None = None) -> Record:
        """Supersede every current head of the memory's lineage (resolving
        any conflict) with a new version."""
        old = self.own_memory(id_text)
        heads = self.store.lineage_heads(old.lineage, self.key) or [old]
        current = heads[0]
        return self._commit(
            self.make_memory(
                text,
                topics=current.topics if topics is None else topics,
                session=current.session,
                at=current.at,
                visibility=current.visibility,
                refs=[h.id for h in heads][: limits.MAX_REFS],
                root=old.lineage,
            )
        )

    def forget(self, id_text: str) -> Record:
        """Retract the whole lineage: every version, known or not yet seen."""
        old = self.own_memory(id_text)
        refs = sorted({old.lineage, old.id})
        return self._commit(self.sign("retract", "", refs=refs))

    # -- social ----------------------------------------------------------
    def set_profile(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        skills: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
    ) -> Record:
        current = self.store.profiles().get(self.key)
        body = dict(current.body) if current is not None and isinstance(current.body, dict) else {
            "name": "", "description": "", "skills": [], "addresses": [],
        }
        if name is not None:
            body["name"] = name
        if description is not None:
            body["description"] = description
        if skills is not None:
            body["skills"] = sorted(set(skills))
        if addresses is not None:
            body["addresses"] = sorted(set(addresses))
        body["skills"] = list(body["skills"])
        body["addresses"] = list(body["addresses"])
        body["xkey"] = self.identity.message_public_key
        return self._commit(self.sign("profile", body))

    def follow(self, target: bytes, active: bool = True) -> Record:
        if target == self.key:
            raise UsageError("an agent cannot follow itself")
        return self._commit(self.sign("follow", {"target": target, "active": active}))

    def follows(self, target: bytes) -> bool:
        """Whether this agent follows ``target`` now."""
        return (self.key, target) in self.store.follows()

    def set_follow(self, target: bytes, active: bool = True) -> Record | None:
        """Follow or unfollow ``target``; None, and nothing written, when
        that is already the state (a no-op is no new record)."""
        if target == self.key:
            raise UsageError("an agent cannot follow itself")
        if self.follows(target) == active:
            return None
        return self.follow(target, active)

    # -- agent ids ---------------------------------------------------------
    def known_agents(self) -> set[bytes]:
        """Every agent this store knows of: authors of records here and
        agents followed by someone."""
        return set(self.store.authors()) | {followee for _, followee in self.store.follows()}

    def resolve_agent(self, text: str) -> bytes:
        """The agent named by a full id, or by a unique prefix (at least
        :data:`MIN_AGENT_PREFIX` characters, ``pm1`` included) of an agent
        known here. A malformed id is a :class:`UsageError`; a prefix that
        names no known agent, or several, a :class:`StoreError`."""
        text = text.strip().lower()
        if len(text) >= len(AGENT_ID_PREFIX) + 58:
            return parse_agent_id(text)
        if not re.fullmatch(AGENT_ID_PREFIX + r"[a-z2-7]+", text) or len(text) < MIN_AGENT_PREFIX:
            raise UsageError(
                f"not an agent id nor a prefix of one (pm1 and at least {MIN_AGENT_PREFIX - 3} "
                f"more base32 characters): {text[:80]!r}"
            )
        found = [key for key in self.known_agents() if agent_id(key).startswith(text)]
        if not found:
            raise StoreError(f"no agent known here has an id starting with {text}")
        if len(found) > 1:
            raise StoreError(f"agent id prefix {text} is ambiguous ({len(found)} agents); give more characters")
        return found[0]

    def agent_names(self) -> dict[bytes, str]:
        """Each known agent's display name (from its profile), where it has one."""
        return {
            key: str(rec.body.get("name", "")) for key, rec in self.store.profiles().items()
            if isinstance(rec.body, dict) and rec.body.get("name")
        }

    def agent_label(self, key: bytes) -> str:
        """An agent for human output: its name and id, or its id alone."""
        name = self.agent_names().get(key)
        return f"{name} ({agent_id(key)})" if name else agent_id(key)

    def endorse(self, target: bytes, what: str) -> Record:
        if what == "agent" and target == self.key:
            raise UsageError("an agent cannot endorse itself")
        return self._commit(self.sign("endorse", {"target": target, "what": what}))

    # -- messages --------------------------------------------------------
    def send_message(self, recipient: bytes, text: str) -> Record:
        """Seal ``text`` to the recipient's message key (from its profile)
        and store the signed record; gossip carries it until it arrives."""
        from p2pmem.model.sealed import seal_message

        profile = self.store.profiles().get(recipient)
        if profile is None or not isinstance(profile.body, dict):
            raise StoreError(
                "no profile of that agent is known here yet, so its message key is unknown "
                "(serve and connect to the network first)"
            )
        try:
            record = seal_message(self.identity, recipient, profile.body["xkey"], text, self.next_ts())
        except RecordError as exc:
            raise UsageError(str(exc)) from None
        return self._commit(record)

    def inbox(self) -> list[dict[str, object]]:
        """Messages to this agent, opened, newest first (contract objects)."""
        return [m.to_json() for m in self.opened_messages()]

    def opened_messages(self) -> list[object]:
        from p2pmem.model.sealed import SealedError, open_message

        out = []
        for record in self.store.messages_to(self.key):
            try:
                out.append(open_message(self.identity, record))
            except SealedError:
                continue  # a message that does not open is not for us to show
        return out

    # -- directory -------------------------------------------------------
    def directory(self, skill: str | None = None) -> list[dict[str, object]]:
        """Known agents as the contract's objects. With ``skill``: only agents
        that declare it or wrote memories on that topic, best first (a
        declared skill counts as ten memories on the topic; trust breaks ties)."""
        from p2pmem.model.identity import agent_id

        profiles = self.store.profiles()
        counts = self.store.authors()
        topical = self.store.topic_authors(skill) if skill else {}
        trust = self.trust()
        rows: list[tuple[float, str, dict[str, object]]] = []
        for key in set(profiles) | set(counts):
            body = profiles[key].body if key in profiles else {}
            assert isinstance(body, dict)
            skills = list(body.get("skills", []))
            declared = bool(skill) and skill.lower() in (s.lower() for s in skills)
            score = 10.0 * declared + topical.get(key, 0)
            if skill and score == 0:
                continue
            rows.append((
                -(score + trust.agent(key)), agent_id(key),
                {
                    "id": agent_id(key), "name": body.get("name", ""), "skills": skills,
                    "description": body.get("description", ""), "memories": counts.get(key, 0),
                    "topic_memories": topical.get(key, 0), "trust": round(trust.agent(key), 3),
                    "self": key == self.key,
                },
            ))
        rows.sort(key=lambda row: (row[0], row[1]) if skill else (0.0, row[1]))
        return [row[2] for row in rows]

    # -- trust -----------------------------------------------------------
    def trust(self) -> TrustModel:
        """Rebuilt only when a follow or endorse record arrived or left: the
        store reads those incrementally (issue #11: recall no longer decodes
        every social record)."""
        version = self.store.social_version()
        cached = getattr(self, "_trust_cache", None)
        if cached is None or cached[0] != version:
            cached = (version, TrustModel(self.key, self.store.follows(), self.store.endorsements()))
            self._trust_cache = cached
        return cached[1]

    def recall(
        self, query: str = "", *, limit: int = 10, now_ms: int | None = None, **filters: object
    ) -> list[Memory]:
        """The retrieval engine's ranking with trust as a gentle prior
        (docs/retrieval.md). Time words in the query ("last week") are read
        relative to ``now_ms`` (default: now, by the agent's clock). Without
        query words the order stays newest first."""
        check_query(query)
        now = self.wall_ms() if now_ms is None else now_ms
        if not query_terms(query):
            return self.store.recall(query, limit=limit, now_ms=now, **filters)  # type: ignore[arg-type]
        wanted = min(limits.MAX_RECALL_LIMIT, max(limit * 2, 20))
        candidates = self.store.recall(query, limit=wanted, now_ms=now, **filters)  # type: ignore[arg-type]
        return rank_by_trust(candidates, self.trust())[:limit]
