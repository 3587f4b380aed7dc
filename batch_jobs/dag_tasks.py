"""What the Airflow DAGs do, as plain functions (testable without Airflow).

The DAG files in ``dags/`` are thin: each task calls one function here. Spark
jobs run in the task's process as a Spark driver (client mode) on the
session built from the ``[spark]`` config: ``local[*]`` by default, a cluster
when ``spark.master`` says so; no code change either way.

Nightly, for event day D:
  partition_ready -> validate (fails above ``pipeline.max_quarantine_share``)
  -> summarize --incremental -> publish -> check_summaries (coverage of D's
  active users, finite tokens, token-norm drift vs the serving version)
  -> promote (move ``serving``) -> cluster (``memory.enabled``: the day joins
  each active user's memory bank; the first run builds them all) -> compact
  (clean old untagged versions).

Retrain: train_candidate -> compare_with_serving (same test window; refuses a
model more than ``pipeline.retrain_margin`` AUC below serving) -> full
summarize + publish under the candidate -> switch_model (promote its
summaries, then make it the serving model). Until the switch the old
summaries stay served; the scorer refuses tokens of a model it does not hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from summarizer.config import VistaConfig, load_config
from summarizer.data import files
from summarizer.data.events import dataset, day_bounds, day_path
from summarizer.store import SUMMARIES, SummaryStore


class CheckFailed(RuntimeError):
    """A pipeline check refused to let the run continue; the message says why."""


def config() -> VistaConfig:
    """The config the DAG tasks use: $VISTA_CONFIG (or ./vista.toml) plus VISTA_* variables."""
    return load_config()


def _session(cfg: VistaConfig) -> Any:
    from batch_jobs.spark import build_session

    return build_session(cfg.spark)


# -- nightly ------------------------------------------------------------------------------------
def partition_ready(cfg: VistaConfig, day: str) -> bool:
    """The day's raw events partition exists and holds at least one Parquet file."""
    folder = day_path(cfg.data.events_dir, day)
    return bool(files.files_with_suffix(folder, ".parquet", cfg.data.storage_options))


def validate(cfg: VistaConfig, day: str) -> dict[str, Any]:
    """Validate the day with Spark; raise CheckFailed above the quarantine threshold."""
    from batch_jobs.validate import run_validate

    report = run_validate(_session(cfg), cfg, [day])
    share, limit = report["quarantined_share"], cfg.pipeline.max_quarantine_share
    if share > limit:
        raise CheckFailed(
            f"{day}: {share:.2%} of {report['rows_read']:,} rows quarantined "
            f"(limit {limit:.2%}; by reason: {report['quarantined_by_reason']}); fix the "
            f"upstream data or raise pipeline.max_quarantine_share, then clear this task"
        )
    return report


def summarize(cfg: VistaConfig, day: str) -> dict[str, Any]:
    from batch_jobs.summarize import run_summarize

    return run_summarize(_session(cfg), cfg, mode="incremental", day=day)


def publish(cfg: VistaConfig, run_dir: str) -> dict[str, Any]:
    from batch_jobs.publish import run_publish

    return run_publish(cfg, run_dir)


def cluster(cfg: VistaConfig, day: str) -> dict[str, Any]:
    """Add day D to every active user's memory bank (``memory.enabled``), or build the
    banks from the whole history the first time; a no-op when memory is disabled."""
    from batch_jobs.cluster import run_cluster
    from summarizer.store import MEMORY_BANK

    if not cfg.memory.enabled:
        return {"job": "cluster", "status": "disabled", "reason": "memory.enabled is false"}
    store = SummaryStore.from_config(cfg.store)
    mode = "incremental" if store.exists(MEMORY_BANK) else "full"
    return run_cluster(_session(cfg), cfg, mode=mode, day=day)


def _tokens(
    store: SummaryStore, ids: list[int], version: int | None, through: str | None = None
) -> tuple[np.ndarray, list[int]]:
    """Tokens (B, K, d) of the ids found in ``version`` (and computed through day ``through``)."""
    batch = store.get(ids, version=version)
    end = dt.datetime.fromtimestamp(day_bounds(through)[1], dt.UTC) if through else None
    found = [
        r
        for r in batch.results
        if r.tokens is not None and (end is None or (r.computed_at and r.computed_at >= end))
    ]
    if not found:
        return np.zeros((0, 0, 0), np.float32), []
    return np.stack([np.asarray(r.tokens, np.float32) for r in found]), [r.user_id for r in found]


def check_summaries(cfg: VistaConfig, day: str) -> dict[str, Any]:
    """Check the latest summaries before they are served; raise CheckFailed if they fail.

    * coverage: every user with valid events on ``day`` has a summary through ``day``;
    * tokens of those users are finite;
    * the mean token norm moved by at most ``pipeline.max_norm_drift`` (relative)
      against the serving version, over the users present in both.
    """
    store = SummaryStore.from_config(cfg.store)
    latest = store.latest_version(SUMMARIES)
    if latest is None:
        raise CheckFailed("the store has no summaries table; did publish run?")
    active = (
        dataset(day_path(cfg.data.valid_dir, day), cfg.data.storage_options)
        .to_table(columns=["user_id"])
        .column("user_id")
    )
    users = pc.unique(active).to_pylist()
    new, found = _tokens(store, users, latest, through=day)
    coverage = len(found) / len(users) if users else 1.0
    report: dict[str, Any] = {
        "day": day,
        "version": latest,
        "active_users": len(users),
        "coverage": coverage,
    }
    if coverage < cfg.pipeline.min_coverage:
        missing = sorted(set(users) - set(found))[:10]
        raise CheckFailed(
            f"{day}: only {coverage:.2%} of {len(users):,} active users have a summary in "
            f"version {latest} (e.g. missing {missing})"
        )
    finite = bool(np.isfinite(new).all())
    report["finite"] = finite
    if not finite:
        raise CheckFailed(f"version {latest}: NaN or Inf in the tokens of day {day}'s users")
    serving = store.serving_version()
    report["serving_version"] = serving
    if serving is not None and serving != latest and found:
        old, both = _tokens(store, found, serving)
        if both:
            idx = {u: i for i, u in enumerate(found)}
            now = new[[idx[u] for u in both]]
            before, after = (
                float(np.linalg.norm(old, axis=-1).mean()),
                float(np.linalg.norm(now, axis=-1).mean()),
            )
            drift = abs(after - before) / max(before, 1e-12)
            report.update(norm_before=before, norm_after=after, norm_drift=drift)
            if drift > cfg.pipeline.max_norm_drift:
                raise CheckFailed(
                    f"version {latest}: mean token norm moved {drift:.1%} against serving "
                    f"version {serving} ({before:.4f} -> {after:.4f}; limit "
                    f"{cfg.pipeline.max_norm_drift:.0%})"
                )
    return report


def promote(cfg: VistaConfig, version: int | None = None) -> int:
    """Move the serving tag to ``version`` (default: the latest summaries version)."""
    return SummaryStore.from_config(cfg.store).promote(version)


def promote_day(cfg: VistaConfig, day: str, version: int) -> dict[str, Any]:
    """Serve ``version`` unless the serving version already holds ``day``'s publish.

    A rerun of a day that is already served leaves the tag where it is (the
    run changes nothing); a day published but never served (its check failed,
    then passed on a retry) is served now.
    """
    from batch_jobs import ledger

    store = SummaryStore.from_config(cfg.store)
    serving = store.serving_version()
    covering = [
        e.summaries_version
        for e in ledger.entries(store.location)
        if e.day >= day and e.summaries_version is not None
    ]
    if serving is not None and covering and serving >= min(covering):
        return {"serving_version": serving, "moved": False}
    return {"serving_version": store.promote(version), "moved": True}


def compact(cfg: VistaConfig) -> list[dict[str, Any]]:
    """Compact every table and remove untagged versions older than the configured age."""
    store = SummaryStore.from_config(cfg.store)
    older = dt.timedelta(hours=cfg.pipeline.cleanup_older_than_hours)
    return [dataclasses.asdict(r) for r in store.compact(cleanup_older_than=older)]


# -- retrain ------------------------------------------------------------------------------------
def train_candidate(cfg: VistaConfig, name: str) -> dict[str, Any]:
    """Train a new model on the validated events into ``candidates_dir/name``."""
    from summarizer.training.workflow import train_and_save

    out = Path(cfg.pipeline.candidates_dir) / name
    shutil.rmtree(out, ignore_errors=True)
    vectors = SummaryStore.training_item_vectors(cfg)
    done = train_and_save(cfg, out_dir=out, progress=False, item_vectors=vectors)
    return {"model_dir": str(out), "version": done.version, "test": done.test.to_dict()}


def compare_with_serving(cfg: VistaConfig, candidate_dir: str) -> dict[str, Any]:
    """Evaluate the serving model on the candidate's test window; accept unless it is worse.

    Both models are scored on the same users, targets and window (the
    candidate's temporal split), so the comparison is like for like.
    """
    from summarizer.data.histories import load_histories
    from summarizer.model import artifacts
    from summarizer.training.targets import Window
    from summarizer.training.train import evaluate

    meta = json.loads((Path(candidate_dir) / "config.json").read_text())
    t2 = int(meta["metadata"]["split"][1])
    hist = load_histories(cfg.data.valid_dir)
    tc = cfg.train
    window = Window(t2, 2**62)
    candidate, cand_version = artifacts.load(candidate_dir)
    cand_auc = evaluate(candidate, hist, window, tc).auc
    result: dict[str, Any] = {"candidate": cand_version, "candidate_auc": cand_auc}
    serving_dir = Path(cfg.model.model_dir)
    if not (serving_dir / "config.json").exists():
        result.update(serving=None, serving_auc=None, accept=True, reason="no serving model yet")
        return result
    serving, serving_version = artifacts.load(serving_dir)
    serving_auc = evaluate(serving, hist, window, tc).auc
    margin = cfg.pipeline.retrain_margin
    accept = bool(cand_auc >= serving_auc - margin)
    result.update(
        serving=serving_version,
        serving_auc=serving_auc,
        margin=margin,
        accept=accept,
        reason=(f"candidate AUC {cand_auc:.4f} vs serving {serving_auc:.4f} (margin {margin})"),
    )
    return result


def resummarize(cfg: VistaConfig, candidate_dir: str) -> dict[str, Any]:
    """Every user under the candidate model (full job), published but not served yet."""
    from batch_jobs.publish import run_publish
    from batch_jobs.summarize import run_summarize

    staged = run_summarize(
        _session(cfg),
        cfg,
        mode="full",
        model_dir=candidate_dir,
        run_dir=files.join(files.absolute(cfg.data.runs_dir), f"retrain-{uuid.uuid4().hex[:8]}"),
    )
    return {"summarize": staged, "publish": run_publish(cfg, staged["run_dir"])}


def switch_model(cfg: VistaConfig, candidate_dir: str, summaries_version: int) -> dict[str, Any]:
    """Serve the candidate: promote its summaries, then make it ``model.model_dir``.

    The model folder is swapped by renames (the old one is kept as
    ``<model_dir>.previous`` for rollback).
    """
    version = promote(cfg, summaries_version)
    serving = Path(cfg.model.model_dir)
    staging = serving.with_name(f".{serving.name}.{uuid.uuid4().hex[:8]}")
    shutil.copytree(candidate_dir, staging)
    previous = serving.with_name(f"{serving.name}.previous")
    if serving.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(serving, previous)
    os.replace(staging, serving)
    return {"serving_version": version, "model_dir": str(serving)}
