"""`vista job summarize` and `publish`: full equals in-process, incremental days equal one full
run, a failure half way changes nothing, reruns are no-ops, the CLI's JSON reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyspark")
from batch_jobs import ledger  # noqa: E402
from batch_jobs.publish import run_publish  # noqa: E402
from batch_jobs.runs import JobError, default_run_dir  # noqa: E402
from batch_jobs.summarize import run_summarize, summarize_partitions  # noqa: E402
from summarizer.data.events import read_day, write_day  # noqa: E402
from summarizer.store import STATE, SUMMARIES, SummaryStore  # noqa: E402
from tests.batch_jobs.helpers import (
    LATE_USER,
    MODEL,
    assert_same_sums,
    config_toml,
    in_process_summary,
    job_config,
    run_job,
    state_table,
    summary_table,
)

pytestmark = pytest.mark.integration


def test_full_summarize_equals_the_in_process_summarizer(spark: Any, world: dict[str, Any]) -> None:
    cfg = job_config(world["root"], "full")
    report = run_job(spark, cfg, "full", None)
    assert report["rows_read"] == sum(r["rows_valid"] for r in world["validate"].values())
    store = SummaryStore.from_config(cfg.store)
    summaries = summary_table(store)
    states = store.get_states(summaries.column("user_id").to_pylist())
    assert summaries.num_rows == report["users_updated"] == len(states) > 10
    K, d = MODEL["num_seeds"], MODEL["d_model"]
    tokens = summaries.column("tokens").combine_chunks().flatten().to_numpy()
    tokens = tokens.reshape(-1, K, d).astype(np.float32)
    for i, uid in enumerate(summaries.column("user_id").to_pylist()):
        state, expect = in_process_summary(cfg, uid)
        want = state.kv.numpy()  # fp32 per-chunk sums, cut elsewhere: rounding-level differences
        np.testing.assert_allclose(states[uid].kv, want, rtol=0, atol=1e-6 * np.abs(want).max())
        assert states[uid].n_events == state.n_events == summaries.column("n_events")[i].as_py()
        assert summaries.column("last_ts")[i].as_py() == state.last_ts
        # float16 storage: ~1e-3 relative
        np.testing.assert_allclose(tokens[i], expect.numpy(), rtol=2e-3, atol=2e-3)
    late = states[LATE_USER]
    assert late.first_ts == in_process_summary(cfg, LATE_USER)[0].first_ts


def test_incremental_days_equal_one_full_run_and_reruns_are_no_ops(
    spark: Any, world: dict[str, Any]
) -> None:
    days = world["days"]
    full = job_config(world["root"], "full-ref")
    run_job(spark, full, "full", None)
    inc = job_config(world["root"], "inc")
    first = run_job(spark, inc, "full", days[1])  # the first two days at once
    assert first["days"] == 2
    for day in days[2:]:
        report = run_job(spark, inc, "incremental", day)
        assert report["status"] == "staged"
        assert report["users_updated"] > 0
    a = state_table(SummaryStore.from_config(full.store))
    b = state_table(SummaryStore.from_config(inc.store))
    assert a.column("user_id").equals(b.column("user_id"))
    assert a.column("n_events").equals(b.column("n_events"))
    assert a.column("first_ts").equals(b.column("first_ts"))
    assert a.column("last_ts").equals(b.column("last_ts"))
    assert_same_sums(b, a)
    sa = summary_table(SummaryStore.from_config(full.store))
    sb = summary_table(SummaryStore.from_config(inc.store))
    ta = sa.column("tokens").combine_chunks().flatten().to_numpy().astype(np.float32)
    tb = sb.column("tokens").combine_chunks().flatten().to_numpy().astype(np.float32)
    np.testing.assert_allclose(ta, tb, atol=2e-3)

    # Rerunning the last day changes nothing: skipped, no new table version.
    store = SummaryStore.from_config(inc.store)
    versions = (store.latest_version(STATE), store.latest_version(SUMMARIES))
    again = run_summarize(spark, inc, mode="incremental", day=days[-1])
    assert again["status"] == "skipped"
    assert run_publish(inc, again["run_dir"])["status"] == "skipped"
    # Re-publishing an already published manifest is a no-op too.
    republish = run_publish(inc, default_run_dir(inc, "incremental", days[-2]))
    assert republish["status"] == "skipped"
    assert (store.latest_version(STATE), store.latest_version(SUMMARIES)) == versions
    # A day before the last published one is refused; days in a full run are skipped.
    assert run_summarize(spark, inc, mode="incremental", day=days[0])["status"] == "skipped"
    runs = ledger.entries(store.location)
    assert [e.mode for e in runs] == ["full"] + ["incremental"] * (len(days) - 2)


def test_a_failure_half_way_leaves_the_store_unchanged(spark: Any, world: dict[str, Any]) -> None:
    days = world["days"]
    cfg = job_config(world["root"], "fail")
    run_job(spark, cfg, "full", days[-2])
    store = SummaryStore.from_config(cfg.store)
    store.promote()
    before = (state_table(store), summary_table(store), store.serving_version())
    versions = (store.latest_version(STATE), store.latest_version(SUMMARIES))
    with pytest.raises(Exception, match="injected failure"):
        run_summarize(spark, cfg, mode="incremental", day=days[-1], fail_after_users=4)
    assert (store.latest_version(STATE), store.latest_version(SUMMARIES)) == versions
    assert state_table(store).equals(before[0])
    assert summary_table(store).equals(before[1])
    assert store.serving_version() == before[2]

    # Publish dies between its two commits: summaries (what readers see) unchanged...
    report = run_summarize(spark, cfg, mode="incremental", day=days[-1])
    real_commit = SummaryStore.commit_upsert

    def flaky(self: SummaryStore, table: str, staged: Any) -> Any:
        if table == SUMMARIES:
            raise OSError("injected: connection lost")
        return real_commit(self, table, staged)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SummaryStore, "commit_upsert", flaky)
        with pytest.raises(OSError, match="injected"):
            run_publish(cfg, report["run_dir"])
    assert summary_table(store).equals(before[1])
    # ...and the retry finishes it without folding the day twice.
    done = run_publish(cfg, report["run_dir"])
    assert done["tables"][STATE] == {"status": "already committed"}
    assert done["tables"][SUMMARIES]["replaced"] > 0
    ref = job_config(world["root"], "fail-ref")
    run_job(spark, ref, "full", days[-1])
    a = state_table(SummaryStore.from_config(ref.store))
    assert_same_sums(state_table(store), a)


def test_a_rewritten_partition_is_refused(spark: Any, world: dict[str, Any]) -> None:
    days = world["days"]
    cfg = job_config(world["root"], "rewrite")
    run_job(spark, cfg, "full", days[-2])
    run_job(spark, cfg, "incremental", days[-1])
    # Someone appends rows to the already processed last day.
    extra = read_day(cfg.data.valid_dir, days[-1]).slice(0, 3)
    write_day(extra, cfg.data.valid_dir, days[-1], name="zz-extra")
    try:
        with pytest.raises(JobError, match="partition changed"):
            run_summarize(spark, cfg, mode="incremental", day=days[-1])
    finally:
        (Path(cfg.data.valid_dir) / f"dt={days[-1]}" / "zz-extra.parquet").unlink()


def test_job_cli_writes_json_reports(world: dict[str, Any], tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = job_config(world["root"], "cli")
    toml = tmp_path / "vista.toml"
    toml.write_text(config_toml(cfg))
    report = tmp_path / "summ.json"
    run = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--config", str(toml), "job", "summarize",
         "--full", "--report", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("summarize full through ")  # a summary for people
    data = json.loads(report.read_text())
    assert data["status"] == "staged" and data["users_updated"] > 0
    pub = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--config", str(toml), "job", "--json",
         "publish", "--run-dir", data["run_dir"], "--promote"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr[-2000:]
    assert json.loads(pub.stdout)["serving_version"] is not None
    assert json.loads((Path(data["run_dir"]) / "publish.json").read_text())["job"] == "publish"
    bad = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--config", str(toml), "job", "summarize",
         "--incremental", "--date", "2026-13-01"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr


def test_summarize_partitions_by_mode() -> None:
    """Full runs: two tasks a core (long histories balance); incremental days: one a core
    (many short users, less per-task start-up); a configured number always wins."""
    assert summarize_partitions(0, 2, "full") == 4
    assert summarize_partitions(0, 2, "incremental") == 2
    assert summarize_partitions(0, 0, "incremental") == 1
    assert summarize_partitions(3, 2, "full") == summarize_partitions(3, 2, "incremental")
