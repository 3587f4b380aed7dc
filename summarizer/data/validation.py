"""Event validation: good rows pass, bad rows go to quarantine with a reason.

Nothing is dropped silently: for every input, ``valid + quarantined == input``.
A row gets the first reason that applies, in the order of ``REASONS``. A schema
problem (a missing column, or a column whose type cannot hold the contract's)
is not a row problem: it raises ``EventSchemaError`` naming the column.

The reference time for "future" is fixed per day partition (the end of that
day, or now if earlier), so validating the same partition twice gives the same
result.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from summarizer.data import files
from summarizer.data.events import (
    EVENT_SCHEMA,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    EventSchemaError,
    conform,
    day_bounds,
    day_path,
    list_days,
    read_day,
    write_day,
)

REASONS = (
    "null_user_id",
    "null_ts",
    "null_item_id",
    "null_action",
    "negative_id",
    "id_out_of_range",
    "negative_ts",
    "future_ts",
    "action_out_of_range",
    "invalid_weight",
    "duplicate",
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64()),
        pa.field("ts", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("action", pa.int64()),  # wide: out-of-range codes must survive
        pa.field("weight", pa.float32()),
        pa.field("reason", pa.string()),
    ]
)


@dataclasses.dataclass
class ValidationResult:
    valid: pa.Table
    quarantine: pa.Table
    counts: dict[str, int]

    @property
    def n_input(self) -> int:
        return self.valid.num_rows + self.quarantine.num_rows


def _expected(name: str) -> str:
    return str(EVENT_SCHEMA.field(name).type)


def check_schema(schema: pa.Schema) -> None:
    """Raise EventSchemaError unless every contract column is present with a usable type."""
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            raise EventSchemaError(
                f"column {name!r} is missing; expected {_expected(name)} "
                f"(input columns: {', '.join(schema.names)})"
            )
        typ = schema.field(name).type
        if not (pa.types.is_integer(typ) or pa.types.is_null(typ)):
            raise EventSchemaError(f"column {name!r} has type {typ}; expected {_expected(name)}")
    for name in OPTIONAL_COLUMNS:
        if name in schema.names:
            typ = schema.field(name).type
            if not (pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_null(typ)):
                raise EventSchemaError(
                    f"column {name!r} has type {typ}; expected {_expected(name)} (or absent)"
                )


INT64_MAX = np.iinfo(np.int64).max


def _int_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values as int64 with nulls and overflows as 0, null mask, overflow mask) of an
    integer column; overflow: an unsigned value above int64's range (a bad row, not a
    failed run)."""
    col = table.column(name)
    null = col.is_null().to_numpy(zero_copy_only=False)
    over = np.zeros(len(null), dtype=bool)
    if pa.types.is_unsigned_integer(col.type) and col.type.bit_width == 64:
        over = pc.fill_null(pc.greater(col, pa.scalar(INT64_MAX, pa.uint64())), False)
        over = over.to_numpy(zero_copy_only=False)
        col = pc.if_else(over, pa.scalar(0, col.type), col)
    values = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    return values, null, over


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of every distinct row of a 2-D key array."""
    _, first = np.unique(keys, axis=0, return_index=True)
    return first


def validate_table(
    table: pa.Table, reference_ts: int, num_actions: int, max_clock_skew_s: int = 0
) -> ValidationResult:
    """Split a table of events into valid rows and quarantined rows with reasons."""
    check_schema(table.schema)
    n = table.num_rows
    user, user_null, user_over = _int_column(table, "user_id")
    ts, ts_null, ts_over = _int_column(table, "ts")
    item, item_null, item_over = _int_column(table, "item_id")
    action, action_null, action_over = _int_column(table, "action")
    has_weight = "weight" in table.column_names
    if has_weight:
        wcol = table.column("weight").cast(pa.float64())
        w_null = wcol.is_null().to_numpy(zero_copy_only=False)
        w = pc.fill_null(wcol, 0.0).to_numpy(zero_copy_only=False)
    else:
        w_null, w = np.ones(n, dtype=bool), np.zeros(n)

    reason = np.full(n, "", dtype=object)

    def mark(mask: np.ndarray, why: str) -> None:
        reason[mask & (reason == "")] = why

    mark(user_null, "null_user_id")
    mark(ts_null, "null_ts")
    mark(item_null, "null_item_id")
    mark(action_null, "null_action")
    mark(((user < 0) & ~user_null) | ((item < 0) & ~item_null), "negative_id")
    mark(user_over | item_over, "id_out_of_range")  # above 2^63-1: no int64 holds it
    mark((ts < 0) & ~ts_null, "negative_ts")
    mark(((ts > reference_ts + max_clock_skew_s) & ~ts_null) | ts_over, "future_ts")
    mark(
        ((action < 0) | (action >= num_actions)) & ~action_null | action_over, "action_out_of_range"
    )
    with np.errstate(invalid="ignore", over="ignore"):
        mark(~w_null & (~np.isfinite(w) | (np.abs(w) > np.finfo(np.float32).max)), "invalid_weight")

    ok = np.flatnonzero(reason == "")
    if len(ok):
        keys = np.stack(
            [
                user[ok],
                ts[ok],
                item[ok],
                action[ok],
                w[ok].view(np.int64),
                w_null[ok].astype(np.int64),
            ],
            axis=1,
        )
        dup = np.ones(len(ok), dtype=bool)
        dup[_first_occurrences(keys)] = False
        dup_mask = np.zeros(n, dtype=bool)
        dup_mask[ok[dup]] = True
        mark(dup_mask, "duplicate")

    bad = reason != ""
    valid = (
        conform(table.take(pa.array(np.flatnonzero(~bad))))
        if (~bad).any()
        else EVENT_SCHEMA.empty_table()
    )
    # Quarantined values keep their bits: an unsigned id above 2^63-1 is stored as the
    # int64 with the same bits (2^64-1 as -1); its reason says so.
    bad_rows = table.take(pa.array(np.flatnonzero(bad), pa.int64()))
    quarantine = pa.table(
        {
            f.name: (
                bad_rows.column(f.name).cast(f.type, safe=False)
                if f.name in bad_rows.column_names
                else pa.nulls(bad_rows.num_rows, f.type)
            )
            for f in QUARANTINE_SCHEMA
            if f.name != "reason"
        }
        | {"reason": pa.array(reason[bad].astype(str), pa.string())},
        schema=QUARANTINE_SCHEMA,
    )
    counts = dict(Counter(reason[bad].tolist()))
    return ValidationResult(valid=valid, quarantine=quarantine, counts=counts)


@dataclasses.dataclass
class DayReport:
    day: str
    n_input: int
    n_valid: int
    counts: dict[str, int]

    @property
    def n_quarantined(self) -> int:
        return sum(self.counts.values())


@dataclasses.dataclass
class ValidationReport:
    days: list[DayReport]
    seconds: float

    @property
    def n_input(self) -> int:
        return sum(d.n_input for d in self.days)

    @property
    def n_valid(self) -> int:
        return sum(d.n_valid for d in self.days)

    @property
    def counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for d in self.days:
            total.update(d.counts)
        return {r: total[r] for r in REASONS if total[r]}

    @property
    def n_quarantined(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_read": self.n_input,
            "rows_valid": self.n_valid,
            "rows_quarantined": self.n_quarantined,
            "quarantined_by_reason": self.counts,
            "days": [dataclasses.asdict(d) for d in self.days],
            "seconds": round(self.seconds, 3),
        }


def reference_time(day: str, now: float | None = None) -> int:
    """The 'now' a day partition is validated against: the day's end, or now if that is earlier."""
    _, end = day_bounds(day)
    now_s = int(time.time() if now is None else now)
    return min(end, now_s)


def validate_day(
    events_dir: str | os.PathLike[str],
    day: str,
    valid_dir: str | os.PathLike[str],
    quarantine_dir: str | os.PathLike[str],
    num_actions: int,
    max_clock_skew_s: int = 3600,
    now: float | None = None,
    options: Mapping[str, str] | None = None,
) -> DayReport:
    """Validate one day partition and write its valid rows and quarantine (replacing earlier
    output); the folders are local paths or object-store URIs (``options``: data.storage_options)."""
    # Files that cannot be combined: read_day names the partition.
    table = read_day(events_dir, day, options)
    try:
        result = validate_table(table, reference_time(day, now), num_actions, max_clock_skew_s)
    except EventSchemaError as exc:
        raise EventSchemaError(f"{day_path(events_dir, day)}: {exc}") from exc
    write_day(result.valid, valid_dir, day, options=options)
    if result.quarantine.num_rows:
        write_day(result.quarantine, quarantine_dir, day, options=options)
    else:  # a rerun must not leave an earlier run's quarantine behind
        files.delete(files.join(day_path(quarantine_dir, day), "part-0.parquet"), options)
    assert result.n_input == table.num_rows, "validation lost rows"
    return DayReport(
        day=day, n_input=table.num_rows, n_valid=result.valid.num_rows, counts=result.counts
    )


def validate_dataset(
    events_dir: str | os.PathLike[str],
    valid_dir: str | os.PathLike[str],
    quarantine_dir: str | os.PathLike[str],
    num_actions: int,
    max_clock_skew_s: int = 3600,
    days: list[str] | None = None,
    now: float | None = None,
    progress: bool = True,
    options: Mapping[str, str] | None = None,
) -> ValidationReport:
    """Validate every (or the given) day partition of a dataset, one day in memory at a time."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    todo = list_days(events_dir, options) if days is None else days
    if not todo:
        raise FileNotFoundError(f"no dt=YYYY-MM-DD partitions under {events_dir}")
    reports = [
        validate_day(
            events_dir, d, valid_dir, quarantine_dir, num_actions, max_clock_skew_s, now, options
        )
        for d in tqdm(
            todo, desc="validate", unit="day", disable=not progress or not sys.stderr.isatty()
        )
    ]
    return ValidationReport(days=reports, seconds=time.perf_counter() - t0)
