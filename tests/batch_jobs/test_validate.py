"""`vista job validate`: equals the in-process validation, loses nothing, reruns the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyspark")
from batch_jobs.runs import JobError  # noqa: E402
from batch_jobs.validate import run_validate  # noqa: E402
from summarizer.data.events import dataset, list_days, read_day, write_day  # noqa: E402
from summarizer.data.validation import reference_time, validate_table  # noqa: E402
from tests.batch_jobs.helpers import job_config

pytestmark = pytest.mark.integration


# -- validate -----------------------------------------------------------------------------------
def test_validate_equals_in_process_and_loses_nothing(world: dict[str, Any]) -> None:
    cfg = world["cfg"]
    injected = 0
    for day, report in world["validate"].items():
        raw = read_day(cfg.data.events_dir, day)
        expected = validate_table(
            raw, reference_time(day), cfg.data.num_actions, cfg.data.max_clock_skew_s
        )
        assert report["rows_read"] == raw.num_rows
        n_bad = sum(report["quarantined_by_reason"].values())
        assert report["rows_valid"] + n_bad == raw.num_rows
        assert report["quarantined_by_reason"] == {r: c for r, c in expected.counts.items() if c}, (
            day
        )
        got = dataset(cfg.data.valid_dir).to_table(filter=pc.field("dt") == day)
        assert got.num_rows == expected.valid.num_rows
        keys = ["user_id", "ts", "item_id", "action"]
        assert (
            got.select(keys)
            .sort_by([(k, "ascending") for k in keys])
            .equals(expected.valid.select(keys).sort_by([(k, "ascending") for k in keys]))
        )
        assert got.schema.field("action").type == pa.int16()
        injected += n_bad
        quarantined = Path(cfg.data.quarantine_dir) / f"dt={day}"
        assert quarantined.exists() == (n_bad > 0)
    assert injected == world["total"]["rows_quarantined"] > 0  # the bad rows really were there


def test_validate_rerun_gives_the_same_output(spark: Any, world: dict[str, Any]) -> None:
    cfg, day = world["cfg"], world["days"][-1]
    before = dataset(cfg.data.valid_dir).to_table(filter=pc.field("dt") == day).sort_by("ts")
    again = run_validate(spark, cfg, [day])
    after = dataset(cfg.data.valid_dir).to_table(filter=pc.field("dt") == day).sort_by("ts")
    assert again["quarantined_by_reason"] == world["validate"][day]["quarantined_by_reason"]
    assert list_days(cfg.data.valid_dir) == world["days"]  # other days untouched
    assert before.num_rows == after.num_rows
    assert before.column("user_id").equals(after.column("user_id"))


def test_validate_refuses_a_schema_mismatch(spark: Any, tmp_path: Path) -> None:
    cfg = job_config(tmp_path)
    bad = pa.table({"user_id": [1], "ts": [1], "item_id": ["x"], "action": [1]})
    write_day(bad, cfg.data.events_dir, "2026-11-01")
    with pytest.raises(JobError, match="item_id"):
        run_validate(spark, cfg, ["2026-11-01"])
