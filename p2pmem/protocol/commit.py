"""The writer's step of the ingest pipeline, shared by the trio node
(p2pmem/node/ingest.py, in its writer thread) and the simulator
(p2pmem/sim/disk.py, at the end of a virtual commit): screen each verified
job, store what passed in one transaction, say what each job added.

Sans-IO like the rest of ``protocol/``: the store comes in as a
:class:`GroupStore` and the records already decoded
(by worker processes, or the simulator's shared decoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from p2pmem.errors import P2pmemError
from p2pmem.model.record import Record
from p2pmem.protocol.events import IngestJob
from p2pmem.protocol.ingest import IngestOutcome, record_stored, screen_ingest
from p2pmem.protocol.ports import IngestReport

#: One job and its records as verification left them (a record, or why not).
Verified = tuple[IngestJob, Sequence[Record | P2pmemError]]


class GroupStore(Protocol):
    """The part of :class:`p2pmem.protocol.ports.StorePort` a commit uses."""

    def ingest_groups(self, groups: Sequence[Sequence[Record]]) -> Sequence[IngestReport]: ...


def commit_group(store: GroupStore, group: Sequence[Verified]) -> tuple[list[IngestOutcome], Exception | None]:
    """Store a group of verified jobs at once (group commit): an outcome per
    job in order, and what the disk raised, if it did. A write that fails
    (disk full, a file locked by hand, the simulator's failed commit)
    finishes its jobs with nothing added: reconciliation brings their records
    again; the shell says so. A job with a forged record keeps its error
    whatever the disk did (the sender misbehaved)."""
    screened = [screen_ingest(job, decoded) for job, decoded in group]
    stored = [(accepted, outcome) for accepted, outcome in screened if outcome.error is None]
    try:
        results = store.ingest_groups([accepted for accepted, _ in stored])
    except Exception as exc:  # noqa: BLE001 - whatever the disk raised, the node keeps serving
        return [outcome if outcome.error is not None else IngestOutcome() for _, outcome in screened], exc
    for (_accepted, outcome), result in zip(stored, results, strict=True):
        record_stored(outcome, result)
    return [outcome for _, outcome in screened], None
