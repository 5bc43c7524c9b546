"""How records look to users: the contract's JSON objects and human lines."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping
from typing import Any

from p2pmem.errors import UsageError
from p2pmem.model.clock import physical_ms
from p2pmem.model.identity import agent_id, short_id
from p2pmem.model.record import Record
from p2pmem.model.when import format_ms


def ack_json(record: Record) -> dict[str, Any]:
    """`remember`, `update`, `forget`: what was signed."""
    return {"id": record.id.hex(), "author": agent_id(record.author), "ts": format_ms(physical_ms(record.ts))}


def memory_json(record: Record, /, **extra: Any) -> dict[str, Any]:
    """The contract's memory object."""
    out: dict[str, Any] = {
        "id": record.id.hex(),
        "author": agent_id(record.author),
        "text": record.text,
        "topics": list(record.topics),
        "session": record.session,
        "ts": format_ms(physical_ms(record.ts)),
        "at": format_ms(record.at_ms),
        "visibility": record.visibility,
        "lineage": record.lineage.hex(),
        "supersedes": [ref.hex() for ref in record.refs],
    }
    out.update(extra)
    return out


def export_line(record: Record) -> str:
    """One line of `export`: the signed bytes plus readable fields that
    `import` ignores except to check the id."""
    return json.dumps(
        {
            "id": record.id.hex(),
            "kind": record.kind,
            "visibility": record.visibility,
            "author": agent_id(record.author),
            "ts": format_ms(physical_ms(record.ts)),
            "record": base64.b64encode(record.raw).decode("ascii"),
        },
        separators=(",", ":"),
    )


def agent_label(key: bytes, names: Mapping[bytes, str] | None = None) -> str:
    """An agent in human output: its name (when known) and short id."""
    name = (names or {}).get(key)
    return f"{name} ({short_id(key)})" if name else short_id(key)


def memory_lines(index: int, record: Record, *, hops: int | None = None, via: bytes | None = None,
                 conflicts: int = 0, names: Mapping[bytes, str] | None = None) -> str:
    text = record.text.strip().replace("\n", " ")
    if len(text) > 240:
        text = text[:237] + "..."
    detail = [f"id {record.id.hex()[:12]}", f"by {agent_label(record.author, names)}",
              format_ms(record.at_ms)[:16].replace("T", " ")]
    if record.topics:
        detail.append("topics " + ", ".join(record.topics))
    if record.session:
        detail.append(f"session {record.session}")
    if record.visibility != "public":
        detail.append(record.visibility)
    if hops is not None:
        detail.append(f"{hops} hop{'s' if hops != 1 else ''}" + (f" via {agent_label(via, names)}" if via else ""))
    if conflicts:
        detail.append(f"{conflicts} concurrent version{'s' if conflicts > 1 else ''}")
    return f"{index:>3}. {text}\n     " + " · ".join(detail)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=None)
    sys.stdout.write("\n")


def explain_line(ranked: Any) -> str:
    """How the engine placed a result, for `recall --explain`."""
    if ranked is None:
        return "ranked: newest first (no query words)"
    info = ranked.explain()
    parts = [f"score {info['score']:.3f}"]
    parts.append(f"lexical rank {info['lexical_rank']}" if info["lexical_rank"] else "context of a match")
    for name in ("turn", "window", "session"):
        if name in info:
            parts.append(f"{name} {info[name]:.2f}")
    if info.get("speaker"):
        parts.append("speaker named")
    if info["semantic_rank"] is not None:
        parts.append(f"semantic rank {info['semantic_rank']}")
    if info["time_weight"] is not None:
        phrase = info["time"]["phrase"] if isinstance(info.get("time"), dict) else "time"
        parts.append(f"time weight {info['time_weight']:.2f} for {phrase!r}")
    return "ranked: " + ", ".join(parts)


def parse_json_object(line: str) -> dict[str, Any]:
    """One JSON-lines input line that must hold an object (``remember
    --batch``, ``graph import``); UsageError with the reason otherwise."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise UsageError("each line must be a JSON object")
    return obj
