"""Distributed validation of one day partition: the data layer's rules, run by Spark.

Rows are hash-partitioned by user and sorted by the whole event key, then
each Arrow batch goes through :func:`summarizer.validation.validate_table`
(one source of truth for the rules). Exact duplicates are adjacent after the
sort, so the only duplicates a batch cannot see are a batch's first valid row
equal to the previous batch's last valid row; that key is carried across
batches. The result equals the in-process ``vista data validate`` (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from summarizer.validation import QUARANTINE_SCHEMA, validate_table

SORT_KEY = ("user_id", "ts", "item_id", "action", "weight")
# Every row of the day with its reason; null reason = valid.
OUTPUT_SCHEMA = QUARANTINE_SCHEMA


def _key(table: pa.Table, i: int) -> tuple[object, ...]:
    return tuple(table.column(c)[i].as_py() for c in SORT_KEY)


def _valid_rows(valid: pa.Table) -> pa.Table:
    cols = {f.name: valid.column(f.name).cast(f.type) for f in OUTPUT_SCHEMA if f.name != "reason"}
    cols["reason"] = pa.nulls(valid.num_rows, pa.string())
    return pa.table(cols, schema=OUTPUT_SCHEMA)


def validate_partition(
    batches: Iterable[pa.RecordBatch], reference_ts: int, num_actions: int, max_clock_skew_s: int
) -> Iterator[pa.RecordBatch]:
    """mapInArrow entry point: sorted rows of a partition -> the same rows with a reason each."""
    last_valid: tuple[object, ...] | None = None
    for batch in batches:
        if not batch.num_rows:
            continue
        result = validate_table(
            pa.Table.from_batches([batch]), reference_ts, num_actions, max_clock_skew_s
        )
        valid, quarantine = result.valid, result.quarantine
        if valid.num_rows and last_valid is not None and _key(valid, 0) == last_valid:
            dup = _valid_rows(valid.slice(0, 1))
            dup = dup.set_column(
                dup.schema.get_field_index("reason"), "reason", pa.array(["duplicate"])
            )
            quarantine = pa.concat_tables([quarantine, dup])
            valid = valid.slice(1)
        if valid.num_rows:
            last_valid = _key(valid, valid.num_rows - 1)
        out = pa.concat_tables([_valid_rows(valid), quarantine.cast(OUTPUT_SCHEMA)])
        yield from out.to_batches()
