"""Run folders, reports and day arithmetic shared by the batch-job drivers.

A summarize run writes its manifest (``R/manifest.json``: the staged fragments and
counters) and every job its JSON report under ``data.runs_dir`` (a local folder or an
object-store URI, shared by every host that runs a step of the chain); publish reads the
manifest back. :class:`WorkerParams` is what each driver hands its Spark workers.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pyarrow.dataset as pads

from batch_jobs.worker import WorkerParams
from summarizer.config import ClusterParams, VistaConfig
from summarizer.data import files
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
        # Executors resolve relative paths against their own working folder: every location
        # goes out absolute (the store's is made so by StoreLocation).
        model_dir=files.absolute(model_dir),
        model_version=model_version,
        store_uri=store.uri,
        storage_options=dict(cfg.store.storage_options),
        data_options=dict(cfg.data.storage_options),
        run_time=end_of_day(day),
        through_day=dt.date.fromisoformat(day),
        base_version=base_version,
        incremental=mode == "incremental",
        users_per_flush=users_per_flush,
        cluster=cluster,
        fail_after_users=fail_after_users,
        device=cfg.spark.device,
    )


# -- small helpers ------------------------------------------------------------------------------
def write_json(uri: str, data: dict[str, Any], options: Mapping[str, str] | None = None) -> None:
    """A report or manifest, local or on object storage, replaced whole."""
    files.write_text(uri, json.dumps(data, indent=2, sort_keys=True, default=str), options)


def read_json(uri: str, options: Mapping[str, str] | None = None) -> dict[str, Any]:
    data = json.loads(files.read_text(uri, options))
    if not isinstance(data, dict):
        raise JobError(f"{uri}: not a JSON object")
    return data


def check_day(day: str) -> str:
    day_bounds(day)  # raises a clear ValueError for anything but YYYY-MM-DD
    return day


def end_of_day(day: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(day_bounds(day)[1], dt.UTC)


def day_rows(root: str, day: str, options: Mapping[str, str] | None = None) -> int:
    """Rows of a day partition (local or object storage)."""
    folder = day_path(root, day)
    if not files.exists(folder, options):
        raise FileNotFoundError(f"no partition {folder}; validate the day first")
    fs, path = files.filesystem(folder, options)
    return int(pads.dataset(path, filesystem=fs, format="parquet").count_rows())


def default_run_dir(cfg: VistaConfig, mode: str, day: str) -> str:
    """``data.runs_dir/MODE-DAY``, absolute (local) or an object-store URI."""
    return files.join(files.absolute(cfg.data.runs_dir), f"{mode}-{day}")


def latest_run_dir(cfg: VistaConfig) -> str:
    """The most recently staged summarize run under ``data.runs_dir``."""
    root, opts = files.absolute(cfg.data.runs_dir), cfg.data.storage_options
    found = []
    for name, folder in files.list_dir(root, opts):
        manifest = files.join(root, name, MANIFEST)
        got = files.stat(manifest, opts) if folder else None
        if got is not None:
            found.append((got.mtime_ns or 0, files.join(root, name)))
    if not found:
        raise FileNotFoundError(f"no summarize run under {cfg.data.runs_dir}; run one first")
    return max(found)[1]


def job_days(
    cfg: VistaConfig, job: str, mode: str, day: str | None
) -> tuple[str, list[str], list[str]]:
    """(the run's day, the days it reads, every valid day) for a full or incremental job."""
    valid_days = list_days(cfg.data.valid_dir, cfg.data.storage_options)
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
