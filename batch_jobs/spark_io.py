"""Reading and writing event days with Spark: what the drivers hand their workers.

Workers receive Arrow batches (``mapInArrow``) of a DataFrame hashed by user and
sorted in fold order (:func:`fold_ordered`); validated days are read with their
schema named (:func:`read_valid`), and day partitions are written so that a
failed job leaves the old days (:func:`write_days`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_jobs.runs import is_local
from batch_jobs.worker import FOLD_ORDER
from summarizer.data.events import EVENT_SCHEMA, PARTITION_KEY, day_path

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def spark_type(arrow_type: Any) -> str:
    import pyarrow as pa

    names = {pa.int64(): "long", pa.int16(): "short", pa.float32(): "float", pa.string(): "string"}
    return names[arrow_type]


def ddl(schema: Any) -> str:
    """A flat Arrow schema as a Spark DDL string (what mapInArrow takes)."""
    return ", ".join(f"{f.name} {spark_type(f.type)}" for f in schema)


def read_valid(spark: SparkSession, root: str, days: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    paths = [str(day_path(root, d)) for d in days]
    # valid/ holds what validate wrote, in EVENT_SCHEMA: naming the schema spares Spark a
    # schema-inference job on every read (~0.05-0.1 s of a one-day incremental run).
    schema = f"{ddl(EVENT_SCHEMA)}, {PARTITION_KEY} string"
    df = spark.read.schema(schema).option("basePath", str(root)).parquet(*paths)
    return df.select(
        F.col("user_id").cast("long"),
        F.col("ts").cast("long"),
        F.col("item_id").cast("long"),
        F.col("action").cast("long"),
        F.col("weight").cast("float"),
        F.col(PARTITION_KEY).cast("string"),
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


def write_days(df: DataFrame, root: str, days: list[str], present: set[str]) -> None:
    """Write a DataFrame partitioned by ``dt`` under ``root``, replacing those days.

    Local folders: written to a staging folder first, then each day's folder is
    swapped in (a failed job leaves the old days). Object storage: Spark's
    dynamic partition overwrite. Days in ``days`` but not ``present`` (nothing
    to write, e.g. no quarantined rows) lose an earlier run's folder.
    """
    if not is_local(root):
        (
            df.write.mode("overwrite")
            .option("partitionOverwriteMode", "dynamic")
            .partitionBy(PARTITION_KEY)
            .parquet(root)
        )
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(root) / f".staging-{uuid.uuid4().hex}"
    try:
        if present:
            df.write.mode("overwrite").partitionBy(PARTITION_KEY).parquet(str(staging))
        for day in days:
            final = day_path(root, day)
            if day in present:
                _replace_dir(day_path(staging, day), final)
            else:
                shutil.rmtree(final, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
