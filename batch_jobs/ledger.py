"""The run ledger: which event days each model's published summaries include.

A small lance table (``_runs.lance``) next to the store's tables, one row per
published summarize run, appended by the publish job after its commits. It
makes the batch side idempotent by day:

* ``summarize --incremental --date D`` for a day already published under the
  same model is a no-op (the DAG's rerun of a date changes nothing);
* a day before the last published one is refused (folding it now would put
  its events after later ones: late events belong in the partition of the day
  they arrive, see :mod:`batch_jobs.jobs`);
* a day whose valid row count changed since it was published is refused
  (its partition was rewritten; rerun the full job).

The per-user ``through_day`` in the state table covers the crash between a
run's commits and its ledger row: a rerun finds those users already folded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import lance
import pyarrow as pa

from summarizer.store.location import StoreLocation

LEDGER = "_runs"

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # full | incremental
        pa.field("day", pa.string(), nullable=False),  # the last event day included
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("rows_read", pa.int64(), nullable=False),
        pa.field("users", pa.int64(), nullable=False),
        pa.field("state_version", pa.int64()),
        pa.field("summaries_version", pa.int64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    run_id: str
    mode: str
    day: str
    model_version: str
    rows_read: int
    users: int
    state_version: int | None
    summaries_version: int | None
    finished_at: dt.datetime


def entries(location: StoreLocation, model_version: str | None = None) -> list[LedgerEntry]:
    """Published runs, oldest first (optionally only one model's)."""
    if not location.exists(LEDGER):
        return []
    rows = location.open(LEDGER).to_table().to_pylist()
    out = [LedgerEntry(**r) for r in rows]
    if model_version is not None:
        out = [e for e in out if e.model_version == model_version]
    return sorted(out, key=lambda e: (e.finished_at, e.day))


def append(location: StoreLocation, entry: LedgerEntry) -> None:
    table = pa.Table.from_pylist([dataclasses.asdict(entry)], schema=SCHEMA)
    mode = "append" if location.exists(LEDGER) else "create"
    lance.write_dataset(
        table,
        location.table_uri(LEDGER),
        mode=mode,
        storage_options=dict(location.storage_options) or None,
    )


def covered_through(location: StoreLocation, model_version: str) -> str | None:
    """The last event day this model's published summaries include (None: nothing yet)."""
    days = [e.day for e in entries(location, model_version)]
    return max(days) if days else None


def entry_for_day(location: StoreLocation, model_version: str, day: str) -> LedgerEntry | None:
    """The incremental run that published ``day`` under this model, if any."""
    found = [
        e for e in entries(location, model_version) if e.day == day and e.mode == "incremental"
    ]
    return found[-1] if found else None


def as_dicts(location: StoreLocation) -> list[dict[str, Any]]:
    return [dataclasses.asdict(e) for e in entries(location)]
