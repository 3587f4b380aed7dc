"""What the Spark Python workers of the summarize and cluster jobs share: their parameters,
the model (loaded once per worker process), the order their events arrive in and the
schema of what a partition returns (small rows: staged fragments' metadata, counters).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Any

import pyarrow as pa

from summarizer.config import ClusterParams

FOLD_ORDER = ("user_id", "dt", "ts", "item_id", "action")
OUTPUT_SCHEMA = pa.schema([pa.field("kind", pa.string()), pa.field("payload", pa.string())])

_models: dict[tuple[str, str], Any] = {}
_models_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class WorkerParams:
    """What every worker of a summarize or cluster pass needs; pickled into the Spark
    closure (small)."""

    model_dir: str
    model_version: str
    store_uri: str
    storage_options: dict[str, str]  # the store's
    run_time: dt.datetime  # the run's logical time (end of its day): reruns write equal rows
    through_day: dt.date  # the last event day this run reads
    base_version: int | None  # incremental: the table version every worker reads
    incremental: bool
    users_per_flush: int
    torch_threads: int = 1
    cluster: ClusterParams | None = None  # the cluster job's TWIN-V2 parameters
    # Failpoint for tests: raise once this many users are staged (a run dying half way).
    fail_after_users: int | None = None
    data_options: dict[str, str] = dataclasses.field(default_factory=dict)  # the model folder's


def worker_model(
    model_dir: str, expected_version: str, options: dict[str, str] | None = None
) -> Any:
    """The model, loaded once per worker process (Spark reuses Python workers); an
    object-store folder is copied into this node's cache once (artifacts.local_folder)."""
    key = (model_dir, expected_version)
    with _models_lock:
        if key not in _models:
            from summarizer.model import artifacts

            model, version = artifacts.load(model_dir, options)

            if version != expected_version:
                raise RuntimeError(
                    f"model folder {model_dir} holds version {version[:12]} on this worker, "
                    f"but the job started with {expected_version[:12]}: the folder changed "
                    "during the run (or workers see another copy)"
                )
            model.require_summarizer()
            _models[key] = model
        return _models[key]
