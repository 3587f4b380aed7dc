"""``vista job validate``: day partitions validated by Spark with the data layer's rules.

    validate --day D | --all   events/dt=D -> valid/dt=D + quarantine/dt=D (reasons, counts)

Rows are hash-partitioned by user and sorted by day, then the whole event key, then
each Arrow batch goes through :func:`summarizer.data.validation.validate_table`
(one source of truth for the rules). Exact duplicates are adjacent after the
sort, so the only duplicates a batch cannot see are a batch's first valid row
equal to the previous batch's last valid row; that key is carried across
batches. The result equals the in-process ``vista data validate`` (tested).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch_jobs.runs import JobError, check_day
from batch_jobs.spark_io import ddl, read_remote_days, spark_type, write_days
from summarizer.config import VistaConfig
from summarizer.data import files
from summarizer.data.events import (
    EVENT_SCHEMA,
    PARTITION_KEY,
    day_files,
    day_path,
    list_days,
    write_day,
)
from summarizer.data.validation import (
    QUARANTINE_SCHEMA,
    REASONS,
    check_schema,
    reference_time,
    validate_table,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SORT_KEY = ("user_id", "ts", "item_id", "action", "weight")
DAY = "dt"
# Raw events as the Python workers read them from object storage: the integer columns
# wide (an out-of-range action must reach validation, not wrap), as Spark's reader casts.
RAW_SCHEMA = pa.schema(
    [*(pa.field(c, pa.int64()) for c in ("user_id", "ts", "item_id", "action"))]
    + [pa.field("weight", pa.float32()), pa.field(DAY, pa.string())]
)
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


# -- the driver ---------------------------------------------------------------------------------
def run_validate(
    spark: SparkSession, cfg: VistaConfig, days: list[str] | None = None
) -> dict[str, Any]:
    """Validate day partitions (default: all) in one Spark job; valid + quarantined == read.

    Each day is validated against its own reference time, exactly as
    ``vista data validate`` does in-process.
    """
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    opts = cfg.data.storage_options
    events = files.absolute(cfg.data.events_dir)
    days = sorted(check_day(d) for d in days) if days else list_days(events, opts)
    if not days:
        raise FileNotFoundError(f"no dt=YYYY-MM-DD partitions under {cfg.data.events_dir}")
    for day in days:
        for file in day_files(events, day, opts):  # FileNotFoundError for a missing day
            fs, path = files.filesystem(file, opts)
            try:
                check_schema(pq.read_schema(path, filesystem=fs))
            except ValueError as exc:
                raise JobError(f"{file}: {exc}") from exc
    if files.is_remote(events):
        df = read_remote_days(spark, events, days, opts, RAW_SCHEMA)
    else:
        paths = [day_path(events, d) for d in days]
        df = spark.read.option("basePath", events).option("mergeSchema", "true").parquet(*paths)
    if "weight" not in df.columns:
        df = df.withColumn("weight", F.lit(None).cast("float"))
    df = df.select(
        *[F.col(c).cast("long") for c in ("user_id", "ts", "item_id", "action")],
        F.col("weight").cast("float"),
        F.col(PARTITION_KEY).cast("string"),
    )
    parts = max(1, spark.sparkContext.defaultParallelism)
    checked = (
        df.repartition(parts, "user_id")
        .sortWithinPartitions(PARTITION_KEY, *SORT_KEY)
        .mapInArrow(
            functools.partial(
                validate_partition,
                references={d: reference_time(d) for d in days},
                num_actions=cfg.data.num_actions,
                max_clock_skew_s=cfg.data.max_clock_skew_s,
            ),
            ddl(OUTPUT_SCHEMA),
        )
        .persist()
    )
    try:
        per_day: dict[str, dict[str, int]] = {d: {} for d in days}
        for row in checked.groupBy(PARTITION_KEY, "reason").count().collect():
            per_day[row[PARTITION_KEY]][row["reason"] or ""] = int(row["count"])
        valid = checked.where(F.col("reason").isNull()).select(
            *[F.col(f.name).cast(spark_type(f.type)) for f in EVENT_SCHEMA], PARTITION_KEY
        )
        quarantine = checked.where(F.col("reason").isNotNull())
        with_rows = {d for d, c in per_day.items() if c.get("", 0)}
        with_bad = {d for d, c in per_day.items() if set(c) - {""}}
        write_days(valid, cfg.data.valid_dir, days, with_rows, opts)
        for d in set(days) - with_rows:  # validated, nothing valid: an empty partition
            write_day(EVENT_SCHEMA.empty_table(), cfg.data.valid_dir, d, options=opts)
        write_days(quarantine, cfg.data.quarantine_dir, days, with_bad, opts)
    finally:
        checked.unpersist()
    day_reports: list[dict[str, Any]] = []
    for d in days:
        counts = {r: n for r, n in per_day[d].items() if r}
        read = sum(per_day[d].values())
        day_reports.append(
            {
                "day": d,
                "rows_read": read,
                "rows_valid": per_day[d].get("", 0),
                "quarantined_by_reason": {r: counts[r] for r in REASONS if r in counts},
            }
        )
    total = sum(r["rows_read"] for r in day_reports)
    totals: dict[str, int] = {}
    for r in day_reports:
        for reason, n in r["quarantined_by_reason"].items():
            totals[reason] = totals.get(reason, 0) + n
    n_bad = sum(totals.values())
    return {
        "job": "validate",
        "days": day_reports,
        "rows_read": total,
        "rows_valid": total - n_bad,
        "rows_quarantined": n_bad,
        "quarantined_share": n_bad / total if total else 0.0,
        "quarantined_by_reason": {r: totals[r] for r in REASONS if r in totals},
        "seconds": round(time.perf_counter() - t0, 3),
    }
