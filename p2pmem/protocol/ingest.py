"""One ingest job's work outside the core: screen the decoded records
(verification failures, scope, the clock check), store the accepted ones,
and report the outcome the core's :meth:`NodeCore.ingest_done` takes. Run by
the test harnesses in line (:func:`run_ingest`), by the trio node's pipeline
(p2pmem/node/ingest.py) and the simulator's virtual one through
:mod:`p2pmem.protocol.commit`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from p2pmem.errors import P2pmemError
from p2pmem.model.record import Record, admission_error
from p2pmem.protocol.events import IngestJob
from p2pmem.protocol.ports import IngestReport, StorePort

__all__ = ["IngestOutcome", "record_stored", "run_ingest", "screen_ingest"]


@dataclass
class IngestOutcome:
    added: list[Record] = field(default_factory=list)
    skipped_future: int = 0
    evicted: int = 0  # records (new or old) removed by a quota (p2pmem/model/quota.py)
    offered: int = 0  # records that passed verification, scope and clock and went to the store
    duplicates: int = 0  # of those, records the store already held
    error: str | None = None  # a record failed verification: the sender misbehaved


def run_ingest(store: StorePort, job: IngestJob) -> IngestOutcome:
    """Verify and store one job: CPU and disk work, no core state touched
    (the test harnesses' ingest). The trio node runs the same steps,
    :func:`screen_ingest` and :func:`record_stored`, in its pipeline
    (p2pmem/node/ingest.py) with verification in worker processes; the
    simulator in its virtual one (p2pmem/sim/ingest.py). The job's ``wall_ms``
    snapshot decides what is too far in the future."""
    accepted, outcome = screen_ingest(job, store.decode_many(list(job.raws)))
    if outcome.error is None:
        record_stored(outcome, store.ingest(accepted))  # applies the quotas of p2pmem/model/quota.py
    return outcome


def screen_ingest(
    job: IngestJob, decoded: Sequence[Record | P2pmemError]
) -> tuple[list[Record], IngestOutcome]:
    """Which of a job's decoded records to store: none if one failed
    verification (the sender misbehaved, ``outcome.error``), else those in
    the job's interest and not stamped too far ahead."""
    outcome = IngestOutcome()
    accepted: list[Record] = []
    for item in decoded:
        if isinstance(item, P2pmemError):
            outcome.error = str(item)
            return [], outcome
        if not job.interest.wants(item.kind, item.author, item.visibility):
            continue  # out of our scope: not an error, just not kept
        # the same clock check as `import` (record.admission_error), on the job's clock
        if admission_error(item, job.wall_ms) is not None:
            outcome.skipped_future += 1
            continue
        accepted.append(item)
    outcome.offered = len(accepted)
    return accepted, outcome


def record_stored(outcome: IngestOutcome, result: IngestReport) -> None:
    """Fill in what the store did with a screened job's records."""
    outcome.added = list(result.added)
    outcome.evicted = result.evicted
    outcome.duplicates = result.duplicates
