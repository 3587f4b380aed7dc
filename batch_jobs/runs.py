"""Run folders, reports and day arithmetic shared by the batch-job drivers.

A summarize run writes its manifest (``R/manifest.json``: the staged fragments and
counters) and every job its JSON report under ``data.runs_dir``; publish reads the
manifest back. :class:`WorkerParams` is what each driver hands its Spark workers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from batch_jobs.worker import WorkerParams
from summarizer.config import ClusterParams, VistaConfig
from summarizer.data.events import day_bounds, day_path, list_days
from summarizer.store import SummaryStore

MANIFEST = "manifest.json"


class JobError(RuntimeError):
    """A batch job refused to run or failed; the message says what to do."""


def worker_params(
    cfg: VistaConfig,
    store: SummaryStore,
    *,
    model_dir: str,
    model_version: str,
    day: str,
    mode: str,
    base_version: int | None,
    users_per_flush: int,
    cluster: ClusterParams | None = None,
    fail_after_users: int | None = None,
) -> WorkerParams:
    """The workers' parameters of a run over days up to ``day``."""
    return WorkerParams(
        # Executors resolve relative paths against their own working folder.
        model_dir=str(Path(model_dir).resolve()) if is_local(model_dir) else model_dir,
        model_version=model_version,
        store_uri=store.uri,
        storage_options=dict(cfg.store.storage_options),
        run_time=end_of_day(day),
        through_day=dt.date.fromisoformat(day),
        base_version=base_version,
        incremental=mode == "incremental",
        users_per_flush=users_per_flush,
        cluster=cluster,
        fail_after_users=fail_after_users,
    )


# -- small helpers ------------------------------------------------------------------------------
def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def check_day(day: str) -> str:
    day_bounds(day)  # raises a clear ValueError for anything but YYYY-MM-DD
    return day


def end_of_day(day: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(day_bounds(day)[1], dt.UTC)


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def day_rows(root: str, day: str) -> int:
    folder = day_path(root, day)
    if not folder.exists():
        raise FileNotFoundError(f"no partition {folder}; validate the day first")
    return int(pads.dataset(str(folder), format="parquet").count_rows())


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


def job_days(
    cfg: VistaConfig, job: str, mode: str, day: str | None
) -> tuple[str, list[str], list[str]]:
    """(the run's day, the days it reads, every valid day) for a full or incremental job."""
    valid_days = list_days(cfg.data.valid_dir)
    if not valid_days:
        raise FileNotFoundError(f"no validated days under {cfg.data.valid_dir}; validate first")
    if mode == "incremental":
        if day is None:
            raise JobError(f"{job} --incremental needs --date YYYY-MM-DD")
        check_day(day)
        if day not in valid_days:
            raise FileNotFoundError(f"no validated partition for {day} under {cfg.data.valid_dir}")
        return day, [day], valid_days
    day = check_day(day) if day is not None else valid_days[-1]
    days = [d for d in valid_days if d <= day]
    if not days:
        raise FileNotFoundError(f"no validated days on or before {day}")
    return day, days, valid_days
