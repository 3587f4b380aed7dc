"""``vista job cluster``: TWIN-V2 memory banks for the GSU -- whole histories (full) or day
D added to each stored bank (incremental); the workers (:mod:`batch_jobs.clusterer`)
stage banks, the driver makes one commit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import TYPE_CHECKING, Any

from batch_jobs.clusterer import ClusterStats, cluster_partition
from batch_jobs.runs import JobError, default_run_dir, job_days, worker_params, write_json
from batch_jobs.spark_io import ddl, fold_ordered, read_valid
from batch_jobs.worker import OUTPUT_SCHEMA, WorkerParams
from summarizer.config import VistaConfig
from summarizer.data import files
from summarizer.store import MEMORY_BANK, StagedFragments, SummaryStore

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _cluster_pass(
    spark: SparkSession, events: DataFrame, params: WorkerParams, parts: int
) -> tuple[list[StagedFragments], list[int], Any]:
    """One mapInArrow pass of the cluster worker: staged banks, users to re-cluster, stats."""
    rows = (
        fold_ordered(events, parts)
        .mapInArrow(functools.partial(cluster_partition, params=params), ddl(OUTPUT_SCHEMA))
        .collect()  # small: fragment metadata, counters and user ids, never banks
    )
    stats, staged, recluster = ClusterStats(), [], []
    for r in rows:
        if r["kind"] == "stats":
            stats.add(ClusterStats(**json.loads(r["payload"])))
        elif r["kind"] == "recluster":
            recluster.extend(json.loads(r["payload"]))
        else:
            staged.append(StagedFragments.from_json(r["payload"]))
    return staged, sorted(recluster), stats


def run_cluster(
    spark: SparkSession,
    cfg: VistaConfig,
    *,
    mode: str,
    day: str | None = None,
    model_dir: str | None = None,
    fail_after_users: int | None = None,
) -> dict[str, Any]:
    """Build (full) or extend (incremental, one day) every user's memory bank; one commit.

    Incremental: users whose bank would break its bounds, or who have none, are
    re-clustered from all their valid days up to ``day`` in a second pass. Nothing is
    visible until the single commit at the end, so a failed run leaves the table as it
    was; a bank already through ``day`` is skipped, so a rerun commits nothing.
    """
    from pyspark.sql import functions as F

    from summarizer.model import artifacts

    t0 = time.perf_counter()
    if mode not in ("full", "incremental"):
        raise JobError(f"mode must be 'full' or 'incremental', got {mode!r}")
    model_dir = model_dir or cfg.model.model_dir
    opts = cfg.data.storage_options
    spec, model_version = artifacts.describe(model_dir, opts)  # the workers load the weights
    spec.require_summarizer()
    if not spec.uses_memory_bank:
        raise JobError(
            f"model {model_version[:12]} has no GSU (model.gsu_k = 0): its scorer reads no "
            "memory banks; train one with model.gsu_k > 0 first"
        )
    store = SummaryStore.from_config(cfg.store)
    day, days, valid_days = job_days(cfg, "cluster", mode, day)
    base = None
    if mode == "incremental":
        base = store.latest_version(MEMORY_BANK)
        if base is None:
            raise JobError("no memory banks yet: run `vista job cluster --full` first")
    params = worker_params(
        cfg,
        store,
        model_dir=model_dir,
        model_version=model_version,
        day=day,
        mode=mode,
        base_version=base,
        users_per_flush=cfg.memory.users_per_flush,
        cluster=cfg.memory,
        fail_after_users=fail_after_users,
    )
    parts = cfg.spark.partitions or 2 * spark.sparkContext.defaultParallelism
    staged, recluster, stats = _cluster_pass(
        spark, read_valid(spark, cfg.data.valid_dir, days, opts), params, parts
    )
    if recluster:  # their whole history, from every valid day up to this one
        ids = spark.createDataFrame([(u,) for u in recluster], "user_id long")
        history = read_valid(spark, cfg.data.valid_dir, [d for d in valid_days if d <= day], opts)
        more, _, again = _cluster_pass(
            spark,
            history.join(F.broadcast(ids), "user_id"),
            dataclasses.replace(params, incremental=False, base_version=None),
            parts,
        )
        staged += more
        stats.clustered += again.clustered
        stats.clusters += again.clusters
        stats.max_events_held = max(stats.max_events_held, again.max_events_held)
    report: dict[str, Any] = {
        "job": "cluster",
        "mode": mode,
        "day": day,
        "days": len(days),
        "model_version": model_version,
        "base_version": base,
        "rows_read": stats.events,
        "users": stats.users,
        "users_clustered": stats.clustered,
        "users_appended": stats.appended,
        "users_reclustered": len(recluster),
        "users_already_through_day": stats.skipped,
        "clusters_written": stats.clusters,
        "max_events_held": stats.max_events_held,
    }
    if staged:
        result = store.commit_upsert(MEMORY_BANK, staged)
        report.update(status="published", version=result.version, rows=result.rows)
    else:
        report.update(status="unchanged", version=store.latest_version(MEMORY_BANK))
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["events_per_s"] = round(stats.events / report["seconds"]) if report["seconds"] else None
    out = default_run_dir(cfg, f"cluster-{mode}", day)
    write_json(files.join(out, "cluster.json"), report, opts)
    return report
