"""Distributed validation of one day partition: the data layer's rules, run by Spark.

Rows are hash-partitioned by user and sorted by day, then the whole event key, then
each Arrow batch goes through :func:`summarizer.data.validation.validate_table`
(one source of truth for the rules). Exact duplicates are adjacent after the
sort, so the only duplicates a batch cannot see are a batch's first valid row
equal to the previous batch's last valid row; that key is carried across
batches. The result equals the in-process ``vista data validate`` (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from summarizer.data.validation import QUARANTINE_SCHEMA, validate_table

SORT_KEY = ("user_id", "ts", "item_id", "action", "weight")
DAY = "dt"
# Every row with its day and reason; null reason = valid.
OUTPUT_SCHEMA = QUARANTINE_SCHEMA.append(pa.field(DAY, pa.string()))


def _key(table: pa.Table, i: int) -> tuple[object, ...]:
    return tuple(table.column(c)[i].as_py() for c in SORT_KEY)


def _rows(table: pa.Table, day: str, reason: str | None) -> pa.Table:
    cols = {f.name: table.column(f.name).cast(f.type) for f in QUARANTINE_SCHEMA.remove(5)}
    if reason is None and "reason" in table.column_names:
        cols["reason"] = table.column("reason")
    else:
        cols["reason"] = pa.array([reason] * table.num_rows, pa.string())
    cols[DAY] = pa.array([day] * table.num_rows, pa.string())
    return pa.table(cols, schema=OUTPUT_SCHEMA)


def validate_partition(
    batches: Iterable[pa.RecordBatch],
    references: dict[str, int],
    num_actions: int,
    max_clock_skew_s: int,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow entry point: rows sorted by (dt, key) -> the same rows with a reason each.

    ``references``: each day's reference time for "future" (see reference_time).
    """
    last_valid: tuple[object, ...] | None = None  # (day, *key) of the last valid row
    for batch in batches:
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        days = table.column(DAY).to_pylist()
        starts = [i for i in range(len(days)) if i == 0 or days[i] != days[i - 1]]
        for a, b in zip(starts, [*starts[1:], len(days)], strict=True):
            day = days[a]
            part = table.slice(a, b - a).drop_columns([DAY])
            result = validate_table(part, references[day], num_actions, max_clock_skew_s)
            valid, outs = result.valid, [_rows(result.quarantine, day, None)]
            if valid.num_rows and last_valid == (day, *_key(valid, 0)):
                outs.append(_rows(valid.slice(0, 1), day, "duplicate"))
                valid = valid.slice(1)
            if valid.num_rows:
                last_valid = (day, *_key(valid, valid.num_rows - 1))
            yield from pa.concat_tables([_rows(valid, day, None), *outs]).to_batches()
