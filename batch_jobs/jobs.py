"""The batch jobs: validate a day, summarize (full or one day incremental), publish, cluster.

    validate  --day D              events/dt=D -> valid/dt=D + quarantine/dt=D (reasons, counts)
    summarize --full [--through D] every valid day (<= D) -> per-user state + tokens, staged
    summarize --incremental --date D
                                   valid/dt=D folded into each affected user's stored state
    publish   --run-dir R          one commit per table makes run R's staged rows visible
    cluster   --full | --incremental --date D
                                   TWIN-V2 memory banks (GSU): whole histories, or day D
                                   added to each stored bank; staged, then one commit

Summarize writes nothing visible: its workers stage lance fragments for the
``state`` and ``summaries`` tables and the driver records them, with the
run's counters, in ``R/manifest.json``. Publish commits them (state first,
then summaries; one commit each, see :mod:`summarizer.store.write`) and
appends the run to the ledger (:mod:`batch_jobs.ledger`). A run that fails
before publish leaves the store exactly as it was; readers see the new
summaries once the ``serving`` tag moves (``--promote`` or the DAG's check).

Fold order and late events. A user's events are folded in (arrival day
``dt``, ``ts``, ``item_id``, ``action``) order, by both the full and the
incremental job, so incremental day by day equals one full run exactly.
Events that arrive late land in the partition of the day they arrive (that is
how :func:`summarizer.data.events.write_partitioned` files them) and are folded in
that day's run with a time gap of 0; processed partitions are immutable (the
ledger refuses a day whose row count changed, and a day older than the last
one published). To rebuild everything, run ``summarize --full``.

Every job returns a report (dict) that the CLI prints and writes as JSON.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.dataset as pads
import pyarrow.parquet as pq

from batch_jobs import ledger
from batch_jobs.fold import FOLD_ORDER, OUTPUT_SCHEMA, FoldParams, PartitionStats, fold_partition
from batch_jobs.validate import OUTPUT_SCHEMA as VALIDATE_SCHEMA
from batch_jobs.validate import SORT_KEY, validate_partition
from summarizer.config import VistaConfig
from summarizer.data.events import (
    EVENT_SCHEMA,
    PARTITION_KEY,
    day_bounds,
    day_path,
    list_days,
    write_day,
)
from summarizer.data.validation import REASONS, check_schema, reference_time
from summarizer.store import MEMORY_BANK, STATE, SUMMARIES, StagedFragments, SummaryStore
from summarizer.store.schema import model_version_of

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

MANIFEST = "manifest.json"


class JobError(RuntimeError):
    """A batch job refused to run or failed; the message says what to do."""


# -- small helpers ------------------------------------------------------------------------------
def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _check_day(day: str) -> str:
    day_bounds(day)  # raises a clear ValueError for anything but YYYY-MM-DD
    return day


def _end_of_day(day: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(day_bounds(day)[1], dt.UTC)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap a freshly written folder into place (readers see the old or the new one)."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_days(df: DataFrame, root: str, days: list[str], present: set[str]) -> None:
    """Write a DataFrame partitioned by ``dt`` under ``root``, replacing those days.

    Local folders: written to a staging folder first, then each day's folder is
    swapped in (a failed job leaves the old days). Object storage: Spark's
    dynamic partition overwrite. Days in ``days`` but not ``present`` (nothing
    to write, e.g. no quarantined rows) lose an earlier run's folder.
    """
    if not _is_local(root):
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


def _day_rows(root: str, day: str) -> int:
    folder = day_path(root, day)
    if not folder.exists():
        raise FileNotFoundError(f"no partition {folder}; validate the day first")
    return int(pads.dataset(str(folder), format="parquet").count_rows())


# -- validate -----------------------------------------------------------------------------------
def run_validate(
    spark: SparkSession, cfg: VistaConfig, days: list[str] | None = None
) -> dict[str, Any]:
    """Validate day partitions (default: all) in one Spark job; valid + quarantined == read.

    Each day is validated against its own reference time, exactly as
    ``vista data validate`` does in-process.
    """
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    days = sorted(_check_day(d) for d in days) if days else list_days(cfg.data.events_dir)
    if not days:
        raise FileNotFoundError(f"no dt=YYYY-MM-DD partitions under {cfg.data.events_dir}")
    for day in days:
        src = day_path(cfg.data.events_dir, day)
        if not src.exists():
            raise FileNotFoundError(f"no events partition {src}")
        for file in sorted(src.glob("*.parquet")):
            try:
                check_schema(pq.read_schema(file))
            except ValueError as exc:
                raise JobError(f"{file}: {exc}") from exc
    paths = [str(day_path(cfg.data.events_dir, d)) for d in days]
    df = (
        spark.read.option("basePath", cfg.data.events_dir)
        .option("mergeSchema", "true")
        .parquet(*paths)
    )
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
            _ddl(VALIDATE_SCHEMA),
        )
        .persist()
    )
    try:
        per_day: dict[str, dict[str, int]] = {d: {} for d in days}
        for r in checked.groupBy(PARTITION_KEY, "reason").count().collect():
            per_day[r[PARTITION_KEY]][r["reason"] or ""] = int(r["count"])
        valid = checked.where(F.col("reason").isNull()).select(
            *[F.col(f.name).cast(_spark_type(f.type)) for f in EVENT_SCHEMA], PARTITION_KEY
        )
        quarantine = checked.where(F.col("reason").isNotNull())
        with_rows = {d for d, c in per_day.items() if c.get("", 0)}
        with_bad = {d for d, c in per_day.items() if set(c) - {""}}
        _write_days(valid, cfg.data.valid_dir, days, with_rows)
        for d in set(days) - with_rows:  # validated, nothing valid: an empty partition
            write_day(EVENT_SCHEMA.empty_table(), cfg.data.valid_dir, d)
        _write_days(quarantine, cfg.data.quarantine_dir, days, with_bad)
    finally:
        checked.unpersist()
    day_reports = []
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


def _spark_type(arrow_type: Any) -> str:
    import pyarrow as pa

    names = {pa.int64(): "long", pa.int16(): "short", pa.float32(): "float", pa.string(): "string"}
    return names[arrow_type]


def _ddl(schema: Any) -> str:
    """A flat Arrow schema as a Spark DDL string (what mapInArrow takes)."""
    return ", ".join(f"{f.name} {_spark_type(f.type)}" for f in schema)


# -- summarize ----------------------------------------------------------------------------------
def default_run_dir(cfg: VistaConfig, mode: str, day: str) -> Path:
    return Path(cfg.data.runs_dir) / f"{mode}-{day}"


def latest_run_dir(cfg: VistaConfig) -> Path:
    """The most recently staged summarize run under ``data.runs_dir``."""
    manifests = sorted(
        Path(cfg.data.runs_dir).glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime
    )
    if not manifests:
        raise FileNotFoundError(f"no summarize run under {cfg.data.runs_dir}; run one first")
    return manifests[-1].parent


def _read_valid(spark: SparkSession, root: str, days: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    paths = [str(day_path(root, d)) for d in days]
    # valid/ holds what validate wrote, in EVENT_SCHEMA: naming the schema spares Spark a
    # schema-inference job on every read (~0.05-0.1 s of a one-day incremental run).
    schema = f"{_ddl(EVENT_SCHEMA)}, {PARTITION_KEY} string"
    df = spark.read.schema(schema).option("basePath", str(root)).parquet(*paths)
    return df.select(
        F.col("user_id").cast("long"),
        F.col("ts").cast("long"),
        F.col("item_id").cast("long"),
        F.col("action").cast("long"),
        F.col("weight").cast("float"),
        F.col(PARTITION_KEY).cast("string"),
    )


def _fold_ordered(events: DataFrame, parts: int) -> DataFrame:
    """Events hashed by user into ``parts`` partitions, each user's events in fold order.

    The day column orders the fold but the workers never read it: it is dropped after
    the sort (order is kept), so one string column less crosses into Python (Arrow).
    """
    return (
        events.repartition(parts, "user_id").sortWithinPartitions(*FOLD_ORDER).drop(PARTITION_KEY)
    )


def _incremental_plan(
    store: SummaryStore, cfg: VistaConfig, model_version: str, day: str
) -> tuple[str | None, int | None]:
    """(why this day is already done, or None; the state version to fold into)."""
    loc = store.location
    runs = ledger.entries(loc, model_version)
    rows_now = _day_rows(cfg.data.valid_dir, day)
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


def _job_days(
    cfg: VistaConfig, job: str, mode: str, day: str | None
) -> tuple[str, list[str], list[str]]:
    """(the run's day, the days it reads, every valid day) for a full or incremental job."""
    valid_days = list_days(cfg.data.valid_dir)
    if not valid_days:
        raise FileNotFoundError(f"no validated days under {cfg.data.valid_dir}; validate first")
    if mode == "incremental":
        if day is None:
            raise JobError(f"{job} --incremental needs --date YYYY-MM-DD")
        _check_day(day)
        if day not in valid_days:
            raise FileNotFoundError(f"no validated partition for {day} under {cfg.data.valid_dir}")
        return day, [day], valid_days
    day = _check_day(day) if day is not None else valid_days[-1]
    days = [d for d in valid_days if d <= day]
    if not days:
        raise FileNotFoundError(f"no validated days on or before {day}")
    return day, days, valid_days


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
    spec, model_version = artifacts.describe(model_dir)
    spec.require_summarizer()
    store = SummaryStore.from_config(cfg.store)
    day, days, _ = _job_days(cfg, "summarize", mode, day)
    skipped, base = None, None
    if mode == "incremental":
        skipped, base = _incremental_plan(store, cfg, model_version, day)
    out = Path(run_dir) if run_dir is not None else default_run_dir(cfg, mode, day)
    report: dict[str, Any] = {
        "job": "summarize",
        "mode": mode,
        "day": day,
        "days": len(days),
        "model_version": model_version,
        "run_dir": str(out),
    }
    if skipped is not None:
        report.update(status="skipped", reason=skipped, seconds=round(time.perf_counter() - t0, 3))
        _write_json(out / "summarize.json", report)
        return report

    run_id = f"{mode}-{day}-{uuid.uuid4().hex[:12]}"
    params = FoldParams(
        model_dir=str(Path(model_dir).resolve()) if _is_local(model_dir) else model_dir,
        model_version=model_version,
        store_uri=store.uri,
        storage_options=dict(cfg.store.storage_options),
        computed_at=_end_of_day(day),
        through_day=dt.date.fromisoformat(day),
        base_state_version=base,
        incremental=mode == "incremental",
        users_per_flush=cfg.spark.users_per_flush,
        fail_after_users=fail_after_users,
    )
    parts = summarize_partitions(cfg.spark.partitions, spark.sparkContext.defaultParallelism, mode)
    events = _read_valid(spark, cfg.data.valid_dir, days)
    rows = (
        _fold_ordered(events, parts)
        .mapInArrow(functools.partial(fold_partition, params=params), _ddl(OUTPUT_SCHEMA))
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
        seconds=round(time.perf_counter() - t0, 3),
    )
    report["events_per_s"] = round(stats.events / report["seconds"]) if report["seconds"] else None
    # The ledger compares a day's row count on reruns: record what the partition holds.
    report["rows_in_days"] = sum(_day_rows(cfg.data.valid_dir, d) for d in days)
    _write_json(out / MANIFEST, {**report, "staged": staged})
    _write_json(out / "summarize.json", report)
    return report


# -- publish ------------------------------------------------------------------------------------
def _already_committed(store: SummaryStore, table: str, staged: list[StagedFragments]) -> bool:
    """Whether these staged files are part of the table already (a retried publish)."""
    files = {json.loads(j)["files"][0]["path"] for s in staged for j in s.fragments}
    if not files or not store.exists(table):
        return False
    ds = store.location.open(table)
    present = {f.path for frag in ds.get_fragments() for f in frag.data_files()}
    hit = files & present
    if hit and hit != files:
        raise JobError(
            f"table '{table}' holds some but not all of this run's files: it was changed "
            "after a partial publish; rerun summarize and publish"
        )
    return bool(hit)


def run_publish(
    cfg: VistaConfig, run_dir: str | os.PathLike[str], *, promote: bool = False
) -> dict[str, Any]:
    """Commit a summarize run: one commit per table, then the ledger row; optionally promote."""
    t0 = time.perf_counter()
    path = Path(run_dir) / MANIFEST
    skipped = Path(run_dir) / "summarize.json"
    if not path.exists():
        if skipped.exists() and json.loads(skipped.read_text()).get("status") == "skipped":
            info = json.loads(skipped.read_text())
            return {"job": "publish", "status": "skipped", "reason": info["reason"], "seconds": 0}
        raise FileNotFoundError(f"no {MANIFEST} in {run_dir}; run `vista job summarize` first")
    manifest = json.loads(path.read_text())
    store = SummaryStore.from_config(cfg.store)
    loc = store.location
    report: dict[str, Any] = {"job": "publish", "run_id": manifest["run_id"], "tables": {}}
    if any(e.run_id == manifest["run_id"] for e in ledger.entries(loc)):
        report.update(status="skipped", reason=f"run {manifest['run_id']} is already published")
    else:
        versions: dict[str, int | None] = {}
        for table in (STATE, SUMMARIES):
            staged = [StagedFragments.from_json(j) for j in manifest["staged"][table]]
            if _already_committed(store, table, staged):
                versions[table] = store.latest_version(table)
                report["tables"][table] = {"status": "already committed"}
                continue
            result = store.commit_upsert(table, staged)
            versions[table] = result.version
            report["tables"][table] = {
                "version": result.version,
                "rows": result.rows,
                "inserted": result.inserted,
                "replaced": result.replaced,
            }
        ledger.append(
            loc,
            ledger.LedgerEntry(
                run_id=manifest["run_id"],
                mode=manifest["mode"],
                day=manifest["day"],
                model_version=manifest["model_version"],
                rows_read=int(manifest["rows_in_days"]),
                users=int(manifest["users_updated"]),
                state_version=versions[STATE],
                summaries_version=versions[SUMMARIES],
                finished_at=dt.datetime.now(dt.UTC),
            ),
        )
        report["status"] = "published"
    report["summaries_version"] = store.latest_version(SUMMARIES)
    if promote and report["summaries_version"] is not None:
        report["serving_version"] = store.promote(report["summaries_version"])
    report["seconds"] = round(time.perf_counter() - t0, 3)
    _write_json(Path(run_dir) / "publish.json", report)
    return report


# -- cluster (memory banks) ---------------------------------------------------------------------
def _cluster_pass(
    spark: SparkSession, events: DataFrame, params: Any, parts: int
) -> tuple[list[StagedFragments], list[int], Any]:
    """One mapInArrow pass of the cluster worker: staged banks, users to re-cluster, stats."""
    from batch_jobs.cluster import ClusterStats, cluster_partition

    rows = (
        _fold_ordered(events, parts)
        .mapInArrow(functools.partial(cluster_partition, params=params), _ddl(OUTPUT_SCHEMA))
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

    from batch_jobs.cluster import ClusterJobParams
    from summarizer.memory.clustering import ClusterParams
    from summarizer.model import artifacts

    t0 = time.perf_counter()
    if mode not in ("full", "incremental"):
        raise JobError(f"mode must be 'full' or 'incremental', got {mode!r}")
    model_dir = model_dir or cfg.model.model_dir
    spec, model_version = artifacts.describe(model_dir)  # the workers load the weights
    spec.require_summarizer()
    if not spec.uses_memory_bank:
        raise JobError(
            f"model {model_version[:12]} has no GSU (model.gsu_k = 0): its scorer reads no "
            "memory banks; train one with model.gsu_k > 0 first"
        )
    store = SummaryStore.from_config(cfg.store)
    day, days, valid_days = _job_days(cfg, "cluster", mode, day)
    base = None
    if mode == "incremental":
        base = store.latest_version(MEMORY_BANK)
        if base is None:
            raise JobError("no memory banks yet: run `vista job cluster --full` first")
    m = cfg.memory
    params = ClusterJobParams(
        model_dir=str(Path(model_dir).resolve()) if _is_local(model_dir) else model_dir,
        model_version=model_version,
        store_uri=store.uri,
        storage_options=dict(cfg.store.storage_options),
        updated_at=_end_of_day(day),
        through_day=dt.date.fromisoformat(day),
        base_version=base,
        incremental=mode == "incremental",
        cluster=ClusterParams(
            max_cluster_size=m.max_cluster_size,
            max_clusters=m.max_clusters,
            branching=m.branching,
            iterations=m.iterations,
            seed=m.seed,
        ),
        users_per_flush=m.users_per_flush,
        fail_after_users=fail_after_users,
    )
    parts = cfg.spark.partitions or 2 * spark.sparkContext.defaultParallelism
    staged, recluster, stats = _cluster_pass(
        spark, _read_valid(spark, cfg.data.valid_dir, days), params, parts
    )
    if recluster:  # their whole history, from every valid day up to this one
        ids = spark.createDataFrame([(u,) for u in recluster], "user_id long")
        history = _read_valid(spark, cfg.data.valid_dir, [d for d in valid_days if d <= day])
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
    _write_json(out / "cluster.json", report)
    return report
