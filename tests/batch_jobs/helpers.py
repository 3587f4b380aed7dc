"""Helpers of the batch-job tests: the model, config, table readers and in-process references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyspark")
from batch_jobs.publish import run_publish  # noqa: E402
from batch_jobs.summarize import run_summarize  # noqa: E402
from summarizer.config import VistaConfig  # noqa: E402
from summarizer.data.events import dataset  # noqa: E402
from summarizer.store import STATE, SUMMARIES, SummaryStore  # noqa: E402

pytestmark = pytest.mark.integration


MODEL = {
    "num_seeds": 8,
    "d_model": 16,
    "num_heads": 2,
    "feature_dim": 8,
    "num_layers": 2,
    "item_buckets": 1024,
    "chunk_size": 64,  # users span several chunks
}


LATE_USER = 3


def job_config(root: Path, store: str = "store") -> VistaConfig:
    return VistaConfig.model_validate(
        {
            "data": {
                "events_dir": str(root / "events"),
                "valid_dir": str(root / "valid"),
                "quarantine_dir": str(root / "quarantine"),
                "runs_dir": str(root / f"runs-{store}"),
            },
            "model": {**MODEL, "model_dir": str(root / "model")},
            "store": {"uri": str(root / store), "max_age_s": 0},
            "spark": {
                "master": "local[2]",
                "partitions": 3,
                "users_per_flush": 4,  # several fragments per task
                "conf": {"spark.sql.shuffle.partitions": "3", "spark.ui.enabled": "false"},
            },
        }
    )


def state_table(store: SummaryStore) -> pa.Table:
    return store.location.open(STATE).to_table().sort_by("user_id")


def summary_table(store: SummaryStore) -> pa.Table:
    return store.location.open(SUMMARIES).to_table().sort_by("user_id")


def assert_same_sums(got: pa.Table, want: pa.Table) -> None:
    """States equal up to fp32 rounding of per-chunk sums (chunks cut at other places)."""
    g = got.column("kv").combine_chunks().flatten().to_numpy()
    w = want.column("kv").combine_chunks().flatten().to_numpy()
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * np.abs(w).max())


def run_job(spark: Any, cfg: VistaConfig, mode: str, day: str | None, **kw: Any) -> dict[str, Any]:
    report = run_summarize(spark, cfg, mode=mode, day=day, **kw)
    if report["status"] == "staged":
        run_publish(cfg, report["run_dir"])
    return report


# -- summarize ----------------------------------------------------------------------------------
def in_process_summary(
    cfg: VistaConfig, user_id: int, through: str | None = None
) -> tuple[Any, Any]:
    """The reference: the summarizer run in this process on the user's valid events."""
    from summarizer.model import artifacts
    from summarizer.model.encoder import EventBatch

    model, _ = artifacts.load(cfg.model.model_dir)
    t = dataset(cfg.data.valid_dir).to_table(filter=pc.field("user_id") == user_id)
    if through is not None:
        t = t.filter(pc.field("dt") <= through)
    t = t.sort_by([(k, "ascending") for k in ("dt", "ts", "item_id", "action")])
    w = t.column("weight").cast(pa.float32()).fill_null(float("nan")).to_numpy()
    events = EventBatch.from_numpy(
        t.column("item_id").to_numpy(), t.column("ts").to_numpy(), t.column("action").to_numpy(), w
    )
    return model.require_summarizer().summarize(events)


def config_toml(cfg: VistaConfig) -> str:
    from summarizer.config import config_to_toml

    return config_to_toml(cfg)
