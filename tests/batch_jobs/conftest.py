"""The batch-job tests' world: a Spark session and a validated synthetic dataset with a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyspark")
from batch_jobs.validate import run_validate  # noqa: E402
from summarizer.config import SynthConfig  # noqa: E402
from summarizer.data.events import EVENT_SCHEMA, dataset, list_days, write_day  # noqa: E402
from tests.batch_jobs.helpers import LATE_USER, MODEL, job_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def spark():  # noqa: ANN201
    from batch_jobs.spark import build_session

    session = build_session(job_config(Path("/nonexistent")).spark)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> dict[str, Any]:
    """Synthetic events (bad rows and one late event included), a model, validated days."""
    import torch

    from summarizer.config import ModelSpec
    from summarizer.data import synth
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel

    root = tmp_path_factory.mktemp("batch")
    cfg = job_config(root)
    scfg = SynthConfig(
        n_users=24,
        n_topics=10,
        items_per_topic=4,
        min_events=20,
        max_events=400,
        span_days=5,
        end_date="2026-11-20",
        bad_row_fraction=0.02,
        seed=3,
    )
    synth.generate(scfg, cfg.data.events_dir, progress=False)
    days = list_days(cfg.data.events_dir)
    # A late event: happened on the first day, delivered on the last one.
    first_t = dataset(cfg.data.events_dir).to_table(filter=pc.field("user_id") == LATE_USER)
    late_ts = int(pc.min(first_t.column("ts")).as_py()) + 17
    late = pa.table(
        {"user_id": [LATE_USER], "ts": [late_ts], "item_id": [7], "action": [1], "weight": [None]},
        schema=EVENT_SCHEMA,
    )
    write_day(late, cfg.data.events_dir, days[-1], name="late-0")
    torch.manual_seed(0)
    artifacts.save(VistaModel(ModelSpec(**MODEL)), cfg.model.model_dir)
    report = run_validate(spark, cfg)
    reports = {r["day"]: r for r in report["days"]}
    assert list(reports) == days
    return {"root": root, "cfg": cfg, "days": days, "validate": reports, "total": report}
