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

_models: dict[tuple[str, str, str], Any] = {}
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
    device: str = "task"  # SparkConfig.device: where the fold runs (task_device)


@dataclasses.dataclass(frozen=True)
class TaskDevice:
    """Where one task folds: ``device`` (a torch device string), and the GPU address Spark
    gave the task when it could not be used (``unusable``, with the reason)."""

    device: str
    gpu_address: str | None = None
    unusable: str | None = None


def task_device(mode: str, gpu_addresses: list[str] | None = None) -> TaskDevice:
    """The torch device of this Spark task. ``mode`` "task": the first GPU address Spark
    assigned the task (``spark.task.resource.gpu.amount`` > 0), as ``cuda:<address>``, when
    torch there sees that CUDA device; the CPU otherwise (with the reason when a GPU was
    given). "cuda": the same, but a task with no GPU address takes ``cuda:0``, and no
    usable CUDA device is an error. "cpu": always the CPU. ``gpu_addresses``: the task's
    (None: read from Spark's TaskContext; outside a Spark task there are none)."""
    import torch

    if mode not in ("task", "cuda", "cpu"):
        raise ValueError(f"spark.device must be task, cuda or cpu, got {mode!r}")
    if mode == "cpu":
        return TaskDevice("cpu")
    if gpu_addresses is None:
        gpu_addresses = spark_task_gpus()
    address = gpu_addresses[0] if gpu_addresses else None
    if address is None and mode == "task":
        return TaskDevice("cpu")
    index = 0 if address is None else int(address)
    if not torch.cuda.is_available():
        reason = f"torch {torch.__version__} on this worker has no CUDA"
    elif index >= torch.cuda.device_count():
        reason = f"torch sees {torch.cuda.device_count()} CUDA device(s), not index {index}"
    else:
        return TaskDevice(f"cuda:{index}", address)
    if mode == "cuda":
        raise RuntimeError(f"spark.device is cuda, but {reason}")
    return TaskDevice("cpu", address, reason)


def spark_task_gpus() -> list[str]:
    """The GPU addresses Spark assigned the running task (empty outside a task, or when
    the task asked for none)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return []
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def worker_model(
    model_dir: str,
    expected_version: str,
    options: dict[str, str] | None = None,
    device: str = "cpu",
) -> Any:
    """The model on ``device``, loaded once per worker process and device (Spark reuses
    Python workers); an object-store folder is copied into this node's cache once
    (artifacts.local_folder)."""
    key = (model_dir, expected_version, device)
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
            _models[key] = model.to(device)
        return _models[key]
