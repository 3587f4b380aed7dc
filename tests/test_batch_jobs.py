"""Spark batch jobs on real Spark (local[2]) and real LanceDB folders, small data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyspark")

from batch_jobs import ledger  # noqa: E402
from batch_jobs.cluster import run_cluster  # noqa: E402
from batch_jobs.publish import run_publish  # noqa: E402
from batch_jobs.runs import JobError, default_run_dir  # noqa: E402
from batch_jobs.summarize import run_summarize, summarize_partitions  # noqa: E402
from batch_jobs.validate import run_validate  # noqa: E402
from summarizer.config import SynthConfig, VistaConfig  # noqa: E402
from summarizer.data.events import EVENT_SCHEMA, dataset, list_days, read_day, write_day  # noqa: E402
from summarizer.data.validation import reference_time, validate_table  # noqa: E402
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


def _cfg(root: Path, store: str = "store") -> VistaConfig:
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


@pytest.fixture(scope="module")
def spark():  # noqa: ANN201
    from batch_jobs.spark import build_session

    session = build_session(_cfg(Path("/nonexistent")).spark)
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
    cfg = _cfg(root)
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


def _state_table(store: SummaryStore) -> pa.Table:
    return store.location.open(STATE).to_table().sort_by("user_id")


def _summary_table(store: SummaryStore) -> pa.Table:
    return store.location.open(SUMMARIES).to_table().sort_by("user_id")


def _same_sums(got: pa.Table, want: pa.Table) -> None:
    """States equal up to fp32 rounding of per-chunk sums (chunks cut at other places)."""
    g = got.column("kv").combine_chunks().flatten().to_numpy()
    w = want.column("kv").combine_chunks().flatten().to_numpy()
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-6 * np.abs(w).max())


def _run(spark: Any, cfg: VistaConfig, mode: str, day: str | None, **kw: Any) -> dict[str, Any]:
    report = run_summarize(spark, cfg, mode=mode, day=day, **kw)
    if report["status"] == "staged":
        run_publish(cfg, report["run_dir"])
    return report


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
    cfg = _cfg(tmp_path)
    bad = pa.table({"user_id": [1], "ts": [1], "item_id": ["x"], "action": [1]})
    write_day(bad, cfg.data.events_dir, "2026-11-01")
    with pytest.raises(JobError, match="item_id"):
        run_validate(spark, cfg, ["2026-11-01"])


# -- summarize ----------------------------------------------------------------------------------
def _in_process(cfg: VistaConfig, user_id: int, through: str | None = None) -> tuple[Any, Any]:
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


def test_full_summarize_equals_the_in_process_summarizer(spark: Any, world: dict[str, Any]) -> None:
    cfg = _cfg(world["root"], "full")
    report = _run(spark, cfg, "full", None)
    assert report["rows_read"] == sum(r["rows_valid"] for r in world["validate"].values())
    store = SummaryStore.from_config(cfg.store)
    summaries = _summary_table(store)
    states = store.get_states(summaries.column("user_id").to_pylist())
    assert summaries.num_rows == report["users_updated"] == len(states) > 10
    K, d = MODEL["num_seeds"], MODEL["d_model"]
    tokens = summaries.column("tokens").combine_chunks().flatten().to_numpy()
    tokens = tokens.reshape(-1, K, d).astype(np.float32)
    for i, uid in enumerate(summaries.column("user_id").to_pylist()):
        state, expect = _in_process(cfg, uid)
        want = state.kv.numpy()  # fp32 per-chunk sums, cut elsewhere: rounding-level differences
        np.testing.assert_allclose(states[uid].kv, want, rtol=0, atol=1e-6 * np.abs(want).max())
        assert states[uid].n_events == state.n_events == summaries.column("n_events")[i].as_py()
        assert summaries.column("last_ts")[i].as_py() == state.last_ts
        # float16 storage: ~1e-3 relative
        np.testing.assert_allclose(tokens[i], expect.numpy(), rtol=2e-3, atol=2e-3)
    late = states[LATE_USER]
    assert late.first_ts == _in_process(cfg, LATE_USER)[0].first_ts


def test_incremental_days_equal_one_full_run_and_reruns_are_no_ops(
    spark: Any, world: dict[str, Any]
) -> None:
    days = world["days"]
    full = _cfg(world["root"], "full-ref")
    _run(spark, full, "full", None)
    inc = _cfg(world["root"], "inc")
    first = _run(spark, inc, "full", days[1])  # the first two days at once
    assert first["days"] == 2
    for day in days[2:]:
        report = _run(spark, inc, "incremental", day)
        assert report["status"] == "staged"
        assert report["users_updated"] > 0
    a = _state_table(SummaryStore.from_config(full.store))
    b = _state_table(SummaryStore.from_config(inc.store))
    assert a.column("user_id").equals(b.column("user_id"))
    assert a.column("n_events").equals(b.column("n_events"))
    assert a.column("first_ts").equals(b.column("first_ts"))
    assert a.column("last_ts").equals(b.column("last_ts"))
    _same_sums(b, a)
    sa = _summary_table(SummaryStore.from_config(full.store))
    sb = _summary_table(SummaryStore.from_config(inc.store))
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
    cfg = _cfg(world["root"], "fail")
    _run(spark, cfg, "full", days[-2])
    store = SummaryStore.from_config(cfg.store)
    store.promote()
    before = (_state_table(store), _summary_table(store), store.serving_version())
    versions = (store.latest_version(STATE), store.latest_version(SUMMARIES))
    with pytest.raises(Exception, match="injected failure"):
        run_summarize(spark, cfg, mode="incremental", day=days[-1], fail_after_users=4)
    assert (store.latest_version(STATE), store.latest_version(SUMMARIES)) == versions
    assert _state_table(store).equals(before[0])
    assert _summary_table(store).equals(before[1])
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
    assert _summary_table(store).equals(before[1])
    # ...and the retry finishes it without folding the day twice.
    done = run_publish(cfg, report["run_dir"])
    assert done["tables"][STATE] == {"status": "already committed"}
    assert done["tables"][SUMMARIES]["replaced"] > 0
    ref = _cfg(world["root"], "fail-ref")
    _run(spark, ref, "full", days[-1])
    a = _state_table(SummaryStore.from_config(ref.store))
    _same_sums(_state_table(store), a)


def test_a_rewritten_partition_is_refused(spark: Any, world: dict[str, Any]) -> None:
    days = world["days"]
    cfg = _cfg(world["root"], "rewrite")
    _run(spark, cfg, "full", days[-2])
    _run(spark, cfg, "incremental", days[-1])
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

    cfg = _cfg(world["root"], "cli")
    toml = tmp_path / "vista.toml"
    toml.write_text(_toml(cfg))
    report = tmp_path / "summ.json"
    run = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--config", str(toml), "job", "summarize",
         "--full", "--report", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["status"] == "staged" and data["users_updated"] > 0
    pub = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--config", str(toml), "job", "publish",
         "--run-dir", data["run_dir"], "--promote"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr[-2000:]
    assert json.loads(pub.stdout)["serving_version"] is not None
    bad = subprocess.run(
        [sys.executable, "-m", "summarizer.cli", "--config", str(toml), "job", "summarize",
         "--incremental", "--date", "2026-13-01"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr


def _toml(cfg: VistaConfig) -> str:
    from summarizer.config import config_to_toml

    return config_to_toml(cfg)


# -- cluster (memory banks) ---------------------------------------------------------------------
def _gsu_cfg(world: dict[str, Any], store: str) -> VistaConfig:
    """The world's config with a VISTA + GSU model and small banks (gamma 24, C 64)."""
    import torch

    from summarizer.config import ModelSpec
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel

    cfg = _cfg(world["root"], store)
    model_dir = world["root"] / "model-gsu"
    if not model_dir.exists():
        torch.manual_seed(1)
        artifacts.save(VistaModel(ModelSpec(**MODEL, gsu_k=4)), model_dir)
    cfg.model.model_dir = str(model_dir)
    cfg.memory.max_cluster_size, cfg.memory.max_clusters, cfg.memory.users_per_flush = 24, 64, 4
    return cfg


def _user_events(cfg: VistaConfig, user_id: int, days: list[str]) -> tuple[np.ndarray, ...]:
    t = dataset(cfg.data.valid_dir).to_table(filter=pc.field("user_id") == user_id)
    t = t.filter(pc.field("dt").isin(days))
    t = t.sort_by([(k, "ascending") for k in ("dt", "ts", "item_id", "action")])
    w = t.column("weight").cast(pa.float32()).fill_null(float("nan")).to_numpy()
    cols = [t.column(c).to_numpy().astype(np.int64) for c in ("item_id", "ts", "action")]
    return (*cols, w.astype(np.float32))


def _expected_full(cfg: VistaConfig, user_id: int, days: list[str]) -> Any:
    """The reference: the user's valid events encoded and clustered in this process."""
    from summarizer.config import ClusterParams
    from summarizer.memory.clustering import cluster_history, engagement_levels
    from summarizer.model import artifacts
    from summarizer.training.banks import encode_events

    model, _ = artifacts.load(cfg.model.model_dir)
    item, ts, action, w = _user_events(cfg, user_id, days)
    emb = encode_events(model, item, ts, action, w, None)
    params = ClusterParams(max_cluster_size=24, max_clusters=64)
    return cluster_history(emb, item, action, engagement_levels(action, w), params)


def _assert_same_bank(got: Any, want: Any) -> None:
    np.testing.assert_array_equal(got.sizes, want.sizes)
    np.testing.assert_array_equal(got.levels, want.levels)
    np.testing.assert_array_equal(got.rep_item, want.rep_item)
    np.testing.assert_allclose(got.sums, want.sums, rtol=1e-9, atol=1e-9)


def test_cluster_full_equals_in_process_clustering(spark: Any, world: dict[str, Any]) -> None:

    cfg = _gsu_cfg(world, "cluster-full")
    report = run_cluster(spark, cfg, mode="full")
    assert report["status"] == "published"
    assert report["rows_read"] == sum(r["rows_valid"] for r in world["validate"].values())
    store = SummaryStore.from_config(cfg.store)
    users = sorted(set(dataset(cfg.data.valid_dir).to_table().column("user_id").to_pylist()))
    banks = store.get_memory_banks(users)
    assert sorted(banks) == users and report["users_clustered"] == len(users)
    assert report["clusters_written"] == sum(len(b.sizes) for b in banks.values())
    for u in users:
        rec = banks[u]
        bank = rec.to_bank()
        _assert_same_bank(bank, _expected_full(cfg, u, world["days"]))
        assert bank.sizes.max() <= max(24, int(np.ceil(2 * bank.n_events / 64)))
        assert rec.n_events == bank.n_events and rec.through_day.isoformat() == world["days"][-1]
    # The online reader sees the same banks (serving columns only).
    online = store.open_bank_reader().get(users[:3])
    for u in users[:3]:
        np.testing.assert_array_equal(online[u].tokens, banks[u].tokens)
        assert online[u].sums is None


def test_cluster_incremental_adds_the_day_reclusters_overflows_and_reruns_are_no_ops(
    spark: Any, world: dict[str, Any]
) -> None:

    from summarizer.config import ClusterParams
    from summarizer.memory.clustering import (
        assign_new,
        engagement_levels,
    )
    from summarizer.model import artifacts
    from summarizer.training.banks import encode_events

    days = world["days"]
    cfg = _gsu_cfg(world, "cluster-inc")
    run_cluster(spark, cfg, mode="full", day=days[-2])
    store = SummaryStore.from_config(cfg.store)
    before_users = sorted(store.get_memory_banks(list(range(100))))
    base = store.get_memory_banks(before_users)
    version = store.latest_version("memory_bank")

    # A run that dies half way leaves the banks as they were.
    with pytest.raises(Exception, match="injected failure"):
        run_cluster(spark, cfg, mode="incremental", day=days[-1], fail_after_users=1)
    assert store.latest_version("memory_bank") == version

    report = run_cluster(spark, cfg, mode="incremental", day=days[-1])
    assert report["status"] == "published" and report["base_version"] == version
    day_users = sorted(set(read_day(cfg.data.valid_dir, days[-1]).column("user_id").to_pylist()))
    assert report["users"] == len(day_users)
    assert report["users_appended"] + report["users_reclustered"] == len(day_users)
    # This data exercises both paths.
    assert report["users_appended"] > 0 and report["users_reclustered"] > 0
    model, _ = artifacts.load(cfg.model.model_dir)
    params = ClusterParams(max_cluster_size=24, max_clusters=64)
    after = store.get_memory_banks(day_users + before_users)
    for u in day_users:
        got = after[u].to_bank()
        item, ts, action, w = _user_events(cfg, u, [days[-1]])
        old = base.get(u)
        if old is not None:
            emb = encode_events(model, item, ts, action, w, old.last_ts)
            added, needs = assign_new(old.to_bank(), emb, engagement_levels(action, w), params)
            if not needs:  # appended: exactly the stored bank plus the day
                _assert_same_bank(got, added)
                assert after[u].last_ts == max(old.last_ts, int(ts.max()))
                continue
        # re-clustered from the whole history
        _assert_same_bank(got, _expected_full(cfg, u, days))
    for u in set(before_users) - set(day_users):  # users without events that day: untouched
        _assert_same_bank(after[u].to_bank(), base[u].to_bank())
        assert after[u].through_day == base[u].through_day

    # Rerunning the day commits nothing.
    version = store.latest_version("memory_bank")
    again = run_cluster(spark, cfg, mode="incremental", day=days[-1])
    assert again["status"] == "unchanged" and again["users_already_through_day"] == len(day_users)
    assert store.latest_version("memory_bank") == version


def test_cluster_refuses_a_model_without_a_gsu(spark: Any, world: dict[str, Any]) -> None:
    with pytest.raises(JobError, match="no GSU"):
        run_cluster(spark, _cfg(world["root"], "cluster-nogsu"), mode="full")
    cfg = _gsu_cfg(world, "cluster-empty")
    with pytest.raises(JobError, match="cluster --full"):
        run_cluster(spark, cfg, mode="incremental", day=world["days"][-1])


def test_summarize_partitions_by_mode() -> None:
    """Full runs: two tasks a core (long histories balance); incremental days: one a core
    (many short users, less per-task start-up); a configured number always wins."""
    assert summarize_partitions(0, 2, "full") == 4
    assert summarize_partitions(0, 2, "incremental") == 2
    assert summarize_partitions(0, 0, "incremental") == 1
    assert summarize_partitions(3, 2, "full") == summarize_partitions(3, 2, "incremental")
