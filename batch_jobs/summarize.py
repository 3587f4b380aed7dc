"""``vista job summarize``: fold events into per-user states and stage state + summary rows.

    summarize --full [--date D]        every valid day (<= D) -> per-user state + tokens, staged
    summarize --incremental --date D   valid/dt=D folded into each affected user's stored state

Summarize writes nothing visible: its workers (:mod:`batch_jobs.fold`) stage lance
fragments for the ``state`` and ``summaries`` tables and the driver records them,
with the run's counters, in ``R/manifest.json``; :mod:`batch_jobs.publish` commits
them. A run that fails before publish leaves the store exactly as it was.

Fold order and late events. A user's events are folded in (arrival day
``dt``, ``ts``, ``item_id``, ``action``) order, by both the full and the
incremental job, so incremental day by day equals one full run exactly.
Events that arrive late land in the partition of the day they arrive (that is
how :func:`summarizer.data.events.write_partitioned` files them) and are folded in
that day's run with a time gap of 0; processed partitions are immutable (the
ledger refuses a day whose row count changed, and a day older than the last
one published). To rebuild everything, run ``summarize --full``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from batch_jobs import ledger
from batch_jobs.fold import PartitionStats, fold_partition
from batch_jobs.runs import (
    MANIFEST,
    JobError,
    day_rows,
    default_run_dir,
    job_days,
    worker_params,
    write_json,
)
from batch_jobs.spark_io import ddl, fold_ordered, read_valid
from batch_jobs.worker import OUTPUT_SCHEMA
from summarizer.config import VistaConfig
from summarizer.data import files
from summarizer.store import STATE, SUMMARIES, SummaryStore
from summarizer.store.schema import model_version_of

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def _incremental_plan(
    store: SummaryStore, cfg: VistaConfig, model_version: str, day: str
) -> tuple[str | None, int | None]:
    """(why this day is already done, or None; the state version to fold into)."""
    loc = store.location
    runs = ledger.entries(loc, model_version)
    rows_now = day_rows(cfg.data.valid_dir, day, cfg.data.storage_options)
    for e in runs:
        if e.mode == "full" and e.day >= day:
            return f"day {day} is included in full run {e.run_id} (through {e.day})", None
    done = ledger.entry_for_day(loc, model_version, day)
    if done is not None:
        if done.rows_read != rows_now:
            raise JobError(
                f"day {day} was published by run {done.run_id} from {done.rows_read:,} valid "
                f"rows but now has {rows_now:,}: its partition changed after processing. Late "
                "events belong in the partition of the day they arrive; to rebuild, run "
                "`vista job summarize --full`"
            )
        return f"day {day} was already published by run {done.run_id}", None
    later = [e.day for e in runs if e.day > day]
    if later:
        raise JobError(
            f"day {day} is before day {max(later)}, already published under this model: days "
            "fold in order (late events belong in the partition of the day they arrive); "
            "run `vista job summarize --full` to rebuild"
        )
    base = store.latest_version(STATE)
    if base is not None:
        stored = model_version_of(store.schema(STATE))
        if stored != model_version and not runs:
            raise JobError(
                f"the state table holds model {str(stored)[:12]}, not {model_version[:12]}: "
                "run `vista job summarize --full` under this model before incremental days"
            )
    return None, base


def summarize_partitions(configured: int, parallelism: int, mode: str) -> int:
    """The configured number, else: full runs two tasks a core, so a few 10^6-event users
    do not leave cores idle at the end; incremental days (many users with a few events
    each, hashed evenly) one a core, which saves a second wave of per-task start-up (a warm
    day on local[2]: median 1.92 s against 2.11 s with four tasks, BENCHMARKS.md)."""
    if configured:
        return configured
    return max(1, parallelism if mode == "incremental" else 2 * parallelism)


def run_summarize(
    spark: SparkSession,
    cfg: VistaConfig,
    *,
    mode: str,
    day: str | None = None,
    model_dir: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    fail_after_users: int | None = None,
) -> dict[str, Any]:
    """Fold events into per-user states and stage state + summary rows (invisible until publish).

    ``mode`` "full": all valid days up to ``day`` (default: the last one), from
    empty states. "incremental": only ``day``, into the stored states.
    ``fail_after_users`` (tests) makes every task die after staging that many users.
    """
    from summarizer.model import artifacts

    t0 = time.perf_counter()
    if mode not in ("full", "incremental"):
        raise JobError(f"mode must be 'full' or 'incremental', got {mode!r}")
    model_dir = model_dir or cfg.model.model_dir
    # The driver only needs the version (and that the model summarizes); the workers load
    # the weights and check them against it. Loading and hashing 68 MB here cost ~0.25 s
    # of every run, a tenth of an incremental day.
    opts = cfg.data.storage_options
    spec, model_version = artifacts.describe(model_dir, opts)
    spec.require_summarizer()
    store = SummaryStore.from_config(cfg.store)
    day, days, _ = job_days(cfg, "summarize", mode, day)
    skipped, base = None, None
    if mode == "incremental":
        skipped, base = _incremental_plan(store, cfg, model_version, day)
    out = files.absolute(run_dir) if run_dir is not None else default_run_dir(cfg, mode, day)
    report: dict[str, Any] = {
        "job": "summarize",
        "mode": mode,
        "day": day,
        "days": len(days),
        "model_version": model_version,
        "run_dir": out,
    }
    if skipped is not None:
        report.update(status="skipped", reason=skipped, seconds=round(time.perf_counter() - t0, 3))
        write_json(files.join(out, "summarize.json"), report, opts)
        return report

    run_id = f"{mode}-{day}-{uuid.uuid4().hex[:12]}"
    params = worker_params(
        cfg,
        store,
        model_dir=model_dir,
        model_version=model_version,
        day=day,
        mode=mode,
        base_version=base,
        users_per_flush=cfg.spark.users_per_flush,
        fail_after_users=fail_after_users,
    )
    parts = summarize_partitions(cfg.spark.partitions, spark.sparkContext.defaultParallelism, mode)
    events = read_valid(spark, cfg.data.valid_dir, days, opts)
    rows = (
        fold_ordered(events, parts)
        .mapInArrow(functools.partial(fold_partition, params=params), ddl(OUTPUT_SCHEMA))
        .collect()  # small: fragment metadata and counters, never tokens or states
    )
    stats = PartitionStats()
    staged: dict[str, list[str]] = {STATE: [], SUMMARIES: []}
    for r in rows:
        if r["kind"] == "stats":
            stats.add(PartitionStats(**json.loads(r["payload"])))
        else:
            staged[r["kind"]].append(r["payload"])
    report.update(
        status="staged",
        run_id=run_id,
        base_state_version=base,
        partitions=parts,
        rows_read=stats.events,
        users_updated=stats.users - stats.users_skipped,
        users_already_folded=stats.users_skipped,
        new_users=stats.new_users,
        max_events_held=stats.max_events_held,
        fragments=stats.fragments,
        # Where the tasks folded (spark.device; a GPU when Spark assigned the task one).
        devices={
            "tasks": stats.tasks,
            "on_gpu": stats.tasks_on_gpu,
            "gpu_unusable": stats.gpu_unusable,
            "gpu_unusable_reason": stats.gpu_unusable_reason,
        },
        seconds=round(time.perf_counter() - t0, 3),
    )
    if stats.gpu_unusable:
        log.warning(
            "%d of %d summarize tasks were given a GPU they could not use and folded on the "
            "CPU (%s)",
            stats.gpu_unusable,
            stats.tasks,
            stats.gpu_unusable_reason,
        )
    report["events_per_s"] = round(stats.events / report["seconds"]) if report["seconds"] else None
    # The ledger compares a day's row count on reruns: record what the partition holds.
    report["rows_in_days"] = sum(day_rows(cfg.data.valid_dir, d, opts) for d in days)
    write_json(files.join(out, MANIFEST), {**report, "staged": staged}, opts)
    write_json(files.join(out, "summarize.json"), report, opts)
    return report
