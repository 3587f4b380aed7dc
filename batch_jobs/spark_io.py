"""Reading and writing event days with Spark: what the drivers hand their workers.

Workers receive Arrow batches (``mapInArrow``) of a DataFrame hashed by user and
sorted in fold order (:func:`fold_ordered`); validated days are read with their
schema named (:func:`read_valid`), and day partitions are written so that a
failed job leaves the old days (:func:`write_days`). Local folders go through Spark's
own Parquet reader and writer; object storage (``s3://``, ``gs://``) through the Python
workers and ``pyarrow.fs`` (:mod:`summarizer.data.files`), so no Hadoop S3 connector is
needed.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from batch_jobs.worker import FOLD_ORDER
from summarizer.data import files
from summarizer.data.events import EVENT_SCHEMA, PARTITION_KEY, day_files, day_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def spark_type(arrow_type: Any) -> str:
    import pyarrow as pa

    names = {
        pa.int64(): "long",
        pa.int16(): "short",
        pa.float32(): "float",
        pa.float64(): "double",
        pa.string(): "string",
    }
    return names[arrow_type]


def ddl(schema: Any) -> str:
    """A flat Arrow schema as a Spark DDL string (what mapInArrow takes)."""
    return ", ".join(f"{f.name} {spark_type(f.type)}" for f in schema)


def read_valid(
    spark: SparkSession, root: str, days: list[str], options: Mapping[str, str] | None = None
) -> DataFrame:
    """Validated days (EVENT_SCHEMA plus ``dt``): local folders through Spark's own Parquet
    reader, object storage through the Python workers (:func:`read_remote_days`)."""
    from pyspark.sql import functions as F

    schema = f"{ddl(EVENT_SCHEMA)}, {PARTITION_KEY} string"
    if files.is_remote(root):
        day = pa.field(PARTITION_KEY, pa.string())
        df = read_remote_days(spark, root, days, options, EVENT_SCHEMA.append(day))
    else:
        root = files.absolute(root)
        paths = [day_path(root, d) for d in days]
        # valid/ holds what validate wrote, in EVENT_SCHEMA: naming the schema spares Spark a
        # schema-inference job on every read (~0.05-0.1 s of a one-day incremental run).
        df = spark.read.schema(schema).option("basePath", root).parquet(*paths)
    return df.select(
        F.col("user_id").cast("long"),
        F.col("ts").cast("long"),
        F.col("item_id").cast("long"),
        F.col("action").cast("long"),
        F.col("weight").cast("float"),
        F.col(PARTITION_KEY).cast("string"),
    )


def _read_files(
    batches: Iterable[pa.RecordBatch], options: dict[str, str], schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: (path, dt) rows in, each file's rows out (``schema``'s columns; a missing
    optional column as nulls, the day as ``dt``)."""
    import pyarrow.parquet as pq

    for batch in batches:
        for path, day in zip(
            batch.column("path").to_pylist(), batch.column("dt").to_pylist(), strict=True
        ):
            fs, inner = files.filesystem(path, options)
            table = pq.read_table(inner, filesystem=fs)
            cols = []
            for f in schema:
                if f.name == PARTITION_KEY:
                    cols.append(pa.array([day] * table.num_rows, pa.string()))
                elif f.name in table.column_names:
                    cols.append(table.column(f.name).cast(f.type, safe=False))
                else:
                    cols.append(pa.nulls(table.num_rows, f.type))
            yield from pa.Table.from_arrays(cols, schema=schema).to_batches()


def read_remote_days(
    spark: SparkSession,
    root: str,
    days: list[str],
    options: Mapping[str, str] | None,
    schema: pa.Schema,
) -> DataFrame:
    """Day partitions on object storage, read by Spark's Python workers through pyarrow.fs
    (no Hadoop S3 connector): the driver lists the files, each task reads a share of them
    (integer columns as int64: an unsigned id past 2^63-1 wraps to a negative one, which
    validation quarantines)."""
    listing = [(f, d) for d in days for f in day_files(root, d, options)]
    paths = spark.createDataFrame(listing or [("", "")], "path string, dt string")
    if not listing:
        paths = paths.limit(0)
    parts = max(1, min(len(listing), 2 * spark.sparkContext.defaultParallelism))
    return paths.repartition(parts).mapInArrow(
        functools.partial(_read_files, options=dict(options or {}), schema=schema), ddl(schema)
    )


def fold_ordered(events: DataFrame, parts: int) -> DataFrame:
    """Events hashed by user into ``parts`` partitions, each user's events in fold order.

    The day column orders the fold but the workers never read it: it is dropped after
    the sort (order is kept), so one string column less crosses into Python (Arrow).
    """
    return (
        events.repartition(parts, "user_id").sortWithinPartitions(*FOLD_ORDER).drop(PARTITION_KEY)
    )


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap a freshly written folder into place (readers see the old or the new one)."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_files(
    batches: Iterable[pa.RecordBatch], staging: str, options: dict[str, str]
) -> Iterator[pa.RecordBatch]:
    """mapInArrow: rows with a ``dt`` column in, one Parquet file a day under ``staging``
    (streamed: a writer a day), then one (path, dt, rows) row per file out."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    writers: dict[str, tuple[Any, str, int]] = {}
    task = uuid.uuid4().hex
    try:
        for batch in batches:
            if not batch.num_rows:
                continue
            table = pa.Table.from_batches([batch])
            day_col = table.column(PARTITION_KEY)
            for day in pc.unique(day_col).to_pylist():
                part = table.filter(pc.equal(day_col, day)).drop_columns([PARTITION_KEY])
                # Every column nullable, as Spark's own writer leaves them.
                part = part.cast(pa.schema([f.with_nullable(True) for f in part.schema]))
                if day not in writers:
                    path = files.join(staging, f"{PARTITION_KEY}={day}", f"part-{task}.parquet")
                    fs, inner = files.filesystem(path, options)
                    writer = pq.ParquetWriter(inner, part.schema, filesystem=fs, compression="zstd")
                    writers[day] = (writer, path, 0)
                writer, path, n = writers[day]
                writer.write_table(part)
                writers[day] = (writer, path, n + part.num_rows)
    finally:
        for writer, _, _ in writers.values():
            writer.close()
    yield pa.RecordBatch.from_pylist(
        [{"path": p, "dt": d, "rows": n} for d, (_, p, n) in writers.items()],
        schema=pa.schema([("path", pa.string()), ("dt", pa.string()), ("rows", pa.int64())]),
    )


def _write_remote_days(
    df: DataFrame,
    root: str,
    days: list[str],
    present: set[str],
    options: Mapping[str, str] | None,
) -> None:
    """Object storage: the Python workers write each day's files under a staging prefix of
    ``root``; then each day's new files are moved in and its old ones removed (no rename
    there: a reader listing a day during this swap may see both; the nightly chain reads a
    day only after its validate finished). A failed job leaves the old days and a staging
    prefix that the next run does not read."""
    opts = dict(options or {})
    staging = files.join(root, f"_staging-{uuid.uuid4().hex}")
    written = (
        df.mapInArrow(
            functools.partial(_write_files, staging=staging, options=opts),
            "path string, dt string, rows long",
        ).collect()
        if present
        else []
    )
    for day in days:
        final = day_path(root, day)
        old = files.files_with_suffix(final, ".parquet", opts)
        for row in written:
            if row["dt"] == day:
                files.move(row["path"], files.join(final, files.name(row["path"])), opts)
        for f in old:
            files.delete(f, opts)
    files.delete(staging, opts)


def write_days(
    df: DataFrame,
    root: str,
    days: list[str],
    present: set[str],
    options: Mapping[str, str] | None = None,
) -> None:
    """Write a DataFrame partitioned by ``dt`` under ``root``, replacing those days.

    Local folders: Spark writes to a staging folder first, then each day's folder is
    swapped in (a failed job leaves the old days). Object storage: the Python workers
    write through pyarrow.fs (:func:`_write_remote_days`). Days in ``days`` but not
    ``present`` (nothing to write, e.g. no quarantined rows) lose an earlier run's files.
    """
    if files.is_remote(root):
        _write_remote_days(df, root, days, present, options)
        return
    root = files.absolute(root)
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(root) / f".staging-{uuid.uuid4().hex}"
    try:
        if present:
            df.write.mode("overwrite").partitionBy(PARTITION_KEY).parquet(str(staging))
        for day in days:
            final = Path(day_path(root, day))
            if day in present:
                _replace_dir(Path(day_path(str(staging), day)), final)
            else:
                shutil.rmtree(final, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
