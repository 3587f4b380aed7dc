"""``vista job item-vectors``: pretrained item embeddings by Spark MLlib ALS, as TransAct
takes PinSage's -- learned from co-occurrence in every user's history at cluster scale,
written as a new version of the store's ``item_vectors`` table.

Each valid event's response is its rating where it has one, else whether it engaged
(action >= CLICK), as the ridge read-out reads it. With mu the mean response, an item's
bias is its shrunk mean residual ``sum(r - mu) / (n + bias_l2)``; ALS factorizes what is
left, ``r - mu - b_i``, into user and item factors of width ``factors``. The item factors
and biases go to the table; a ridge model trained with ``[train] pretrain_items =
"table"`` starts its read-out from them (the user side is never stored: serving folds
each user in from their own history).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from batch_jobs.runs import JobError, job_days
from batch_jobs.spark_io import read_valid
from summarizer.config import VistaConfig
from summarizer.store import SummaryStore, item_vectors_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

ENGAGED = 1  # summarizer.data.events.Action.CLICK


def _indexed(df: DataFrame, col: str, name: str) -> DataFrame:
    """Distinct values of ``col`` numbered 0.. (ALS takes int ids), by zipWithIndex."""
    distinct = df.select(col).distinct()
    rdd = distinct.rdd.zipWithIndex().map(lambda r: (r[0][0], int(r[1])))
    return rdd.toDF([col, name])


def run_item_vectors(
    spark: Any, cfg: VistaConfig, *, day: str | None = None, before_ts: int | None = None
) -> dict[str, Any]:
    """ALS item vectors from every valid day up to ``day`` (default: the last), only events
    before ``before_ts`` if given (a model's training window: vectors that saw its
    validation or test events would leak them); one write."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    p = cfg.item_vectors
    day, days, _ = job_days(cfg, "item-vectors", "full", day)
    ev = read_valid(spark, cfg.data.valid_dir, days, cfg.data.storage_options)
    r = F.when(F.col("weight").isNotNull() & ~F.isnan("weight"), F.col("weight")).otherwise(
        (F.col("action") >= ENGAGED).cast("double")
    )
    if before_ts is not None:
        ev = ev.where(F.col("ts") < before_ts)
    ev = ev.select("user_id", "item_id", "ts", r.cast("double").alias("r")).cache()
    stats = ev.agg(F.count("*").alias("n"), F.avg("r").alias("mu"), F.max("ts").alias("t")).first()
    assert stats is not None  # a global aggregate has one row
    n_events = int(stats["n"])
    if n_events == 0:
        raise JobError(f"no valid events on or before {day}: nothing to learn item vectors from")
    max_ts = int(stats["t"])
    mu = float(stats["mu"])
    bias = ev.groupBy("item_id").agg(
        (F.sum(F.col("r") - mu) / (F.count("*") + p.bias_l2)).alias("b")
    )
    users, items = _indexed(ev, "user_id", "u"), _indexed(ev, "item_id", "i")
    resid = (
        ev.join(bias, "item_id")
        .join(users, "user_id")
        .join(items, "item_id")
        .select("u", "i", (F.col("r") - mu - F.col("b")).alias("y"))
    )
    als = ALS(
        rank=p.factors,
        regParam=p.l2,
        maxIter=p.iterations,
        seed=p.seed,
        userCol="u",
        itemCol="i",
        ratingCol="y",
        nonnegative=False,
        implicitPrefs=False,
        coldStartStrategy="drop",
    )
    model = als.fit(resid)
    factors = (
        model.itemFactors.withColumnRenamed("id", "i")
        .join(items, "i")
        .join(bias, "item_id")
        .select("item_id", "features", "b")
        .orderBy("item_id")
    )
    # The driver writes the table: one row of k floats an item, streamed (not collected).
    ids, vecs, bs = [], [], []
    for row in factors.toLocalIterator():
        ids.append(row["item_id"])
        vecs.append(row["features"])
        bs.append(row["b"])
    ev.unpersist()
    meta = {
        "mean_response": mu,
        "l2": p.l2,
        "bias_l2": p.bias_l2,
        "iterations": p.iterations,
        "through_day": day,
        "max_ts": max_ts,
        "events": n_events,
        "method": "spark-als",
    }
    table = item_vectors_table(
        np.asarray(ids, dtype=np.int64),
        np.asarray(vecs, dtype=np.float32).reshape(len(ids), p.factors),
        np.asarray(bs, dtype=np.float32),
        meta,
    )
    version = SummaryStore.from_config(cfg.store).write_item_vectors(table)
    return {
        "job": "item-vectors",
        "through_day": day,
        "days": len(days),
        "events": n_events,
        "max_ts": max_ts,
        "before_ts": before_ts,
        "items": len(ids),
        "factors": p.factors,
        "version": version,
        "seconds": round(time.perf_counter() - t0, 3),
    }
