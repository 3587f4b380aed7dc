"""Airflow DAGs: import cleanly, run end to end with `airflow dags test`, refuse bad days and
worse models. Real Airflow (SQLite in a temp AIRFLOW_HOME), real Spark local, real LanceDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("airflow")
pytest.importorskip("pyspark")

from summarizer.config import SynthConfig, config_to_toml, load_config  # noqa: E402
from summarizer.data.events import EVENT_SCHEMA, dataset, list_days, write_day  # noqa: E402
from summarizer.store import SUMMARIES, SummaryStore  # noqa: E402
from tests.helpers import REPO

pytestmark = pytest.mark.integration


DAGS = REPO / "dags"
MODEL = {
    "num_seeds": 8,
    "d_model": 16,
    "num_heads": 2,
    "feature_dim": 8,
    "num_layers": 1,
    "item_buckets": 1024,
    "gsu_k": 4,  # a GSU model: the nightly DAG keeps memory banks too
}


def _airflow_env(home: Path, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISTA_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        VISTA_CONFIG=str(config),
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        PYTHONWARNINGS="ignore",
    )
    return env


def _airflow(world: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        cwd=world["root"],
        env=world["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Events for 6 days; everything but the last day summarized and served already."""
    import torch

    from batch_jobs.cluster import run_cluster
    from batch_jobs.publish import run_publish
    from batch_jobs.spark import build_session
    from batch_jobs.summarize import run_summarize
    from batch_jobs.validate import run_validate
    from summarizer.config import ModelSpec
    from summarizer.data import synth
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel

    root = tmp_path_factory.mktemp("dags")
    toml = root / "vista.toml"
    raw = {
        "data": {
            "events_dir": str(root / "events"),
            "valid_dir": str(root / "valid"),
            "quarantine_dir": str(root / "quarantine"),
            "runs_dir": str(root / "runs"),
        },
        "model": {**MODEL, "model_dir": str(root / "model")},
        "store": {"uri": str(root / "store"), "max_age_s": 0},
        "spark": {
            "master": "local[2]",
            "partitions": 2,
            "conf": {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"},
        },
        "pipeline": {"cleanup_older_than_hours": 0},
        "memory": {"enabled": True, "max_cluster_size": 24, "max_clusters": 64},
    }
    from summarizer.config import VistaConfig

    cfg = VistaConfig.model_validate(raw)
    toml.write_text(config_to_toml(cfg))
    cfg = load_config(toml, env={})
    synth.generate(
        SynthConfig(
            n_users=20,
            n_topics=10,
            items_per_topic=4,
            min_events=20,
            max_events=300,
            span_days=6,
            end_date="2026-11-20",
            bad_row_fraction=0.0,
            seed=5,
        ),
        cfg.data.events_dir,
        progress=False,
    )
    torch.manual_seed(0)
    artifacts.save(VistaModel(ModelSpec(**MODEL)), cfg.model.model_dir)
    days = list_days(cfg.data.events_dir)
    spark = build_session(cfg.spark)
    try:
        run_validate(spark, cfg, days[:-1])
        staged = run_summarize(spark, cfg, mode="full", day=days[-2])
        run_publish(cfg, staged["run_dir"], promote=True)
        run_cluster(spark, cfg, mode="full", day=days[-2])
    finally:
        spark.stop()
    env = _airflow_env(root / "airflow_home", toml)
    w = {"root": root, "cfg": cfg, "days": days, "env": env}
    migrate = _airflow(w, "db", "migrate")
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return w


def test_every_dag_imports_and_is_wired_as_documented(tmp_path: Path) -> None:
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        "import json, sys\n"
        f"b = DagBag(dag_folder={str(DAGS)!r})\n"
        "out = {'errors': {k: str(v) for k, v in b.import_errors.items()}, 'dags': {}}\n"
        "for d in b.dags.values():\n"
        "    out['dags'][d.dag_id] = {t.task_id: sorted(t.downstream_task_ids) for t in d.tasks}\n"
        "print('JSON' + json.dumps(out))\n"
    )
    env = _airflow_env(tmp_path / "home", tmp_path / "none.toml")
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("JSON", 1)[1])
    assert out["errors"] == {}
    nightly = out["dags"]["vista_nightly"]
    chain = [
        "wait_for_events",
        "validate",
        "summarize",
        "publish",
        "check",
        "promote",
        "cluster",
        "compact",
    ]
    for a, b in zip(chain, chain[1:], strict=False):
        assert b in nightly[a], (a, b)
    retrain = out["dags"]["vista_retrain"]
    assert retrain["gate"] == ["resummarize"]  # the gate stops the re-summarize and switch
    assert retrain["resummarize"] == ["switch"]


def _summaries(cfg: Any) -> pa.Table:
    store = SummaryStore.from_config(cfg.store)
    return store.location.open(SUMMARIES).to_table().sort_by("user_id")


def test_nightly_runs_end_to_end_equals_a_full_run_and_a_rerun_changes_nothing(
    world: dict[str, Any],
) -> None:
    from batch_jobs import ledger

    cfg, day = world["cfg"], world["days"][-1]
    store = SummaryStore.from_config(cfg.store)
    serving_before = store.serving_version()
    run = _airflow(world, "dags", "test", "vista_nightly", day)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]

    serving = store.serving_version()
    assert serving is not None and serving != serving_before
    active = pc.unique(
        dataset(Path(cfg.data.valid_dir) / f"dt={day}").to_table().column("user_id")
    ).to_pylist()
    got = store.get(active)
    assert got.version == serving
    assert all(r.found for r in got.results)
    end = np.datetime64(day) + np.timedelta64(1, "D")
    assert all(np.datetime64(r.computed_at.replace(tzinfo=None)) >= end for r in got.results)
    assert [e.day for e in ledger.entries(store.location)][-1] == day
    # The day joined every active user's memory bank (memory.enabled).
    banks = store.get_memory_banks(active)
    assert sorted(banks) == sorted(active)
    assert all(b.through_day.isoformat() == day for b in banks.values())
    bank_version = store.latest_version("memory_bank")

    # The nightly run (full through D-1, then day D) equals one full run through D.
    from batch_jobs.publish import run_publish
    from batch_jobs.spark import build_session
    from batch_jobs.summarize import run_summarize

    ref = cfg.model_copy(
        update={"store": cfg.store.model_copy(update={"uri": str(world["root"] / "ref")})}
    )
    spark = build_session(ref.spark)
    try:
        staged = run_summarize(spark, ref, mode="full", day=day, run_dir=world["root"] / "ref-run")
    finally:
        spark.stop()
    run_publish(ref, staged["run_dir"])
    a = SummaryStore.from_config(ref.store).location.open("state").to_table().sort_by("user_id")
    b = store.location.open("state").to_table().sort_by("user_id")
    assert a.column("user_id").equals(b.column("user_id"))
    assert a.column("n_events").equals(b.column("n_events"))
    kv_a = a.column("kv").combine_chunks().flatten().to_numpy()
    kv_b = b.column("kv").combine_chunks().flatten().to_numpy()
    np.testing.assert_allclose(kv_b, kv_a, rtol=0, atol=1e-6 * np.abs(kv_a).max())

    table, runs = _summaries(cfg), ledger.entries(store.location)
    again = _airflow(world, "dags", "test", "vista_nightly", day)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert _summaries(cfg).equals(table)
    assert ledger.entries(store.location) == runs
    assert store.serving_version() == serving
    assert store.latest_version("memory_bank") == bank_version


def test_a_day_with_too_many_bad_rows_fails_at_validate(world: dict[str, Any]) -> None:
    cfg = world["cfg"]
    day = "2026-11-21"
    good = dataset(cfg.data.events_dir).to_table(filter=pc.field("dt") == world["days"][-1])
    good = good.drop_columns(["dt"]).slice(0, 50)
    bad = good.set_column(1, "ts", pa.array([-5] * good.num_rows, pa.int64()))  # negative ts
    write_day(pa.concat_tables([good, bad]).cast(EVENT_SCHEMA), cfg.data.events_dir, day)
    store = SummaryStore.from_config(cfg.store)
    serving, latest = store.serving_version(), store.latest_version(SUMMARIES)
    run = _airflow(world, "dags", "test", "vista_nightly", day)
    assert run.returncode != 0
    assert "quarantined" in run.stdout + run.stderr
    assert store.serving_version() == serving
    assert store.latest_version(SUMMARIES) == latest


def test_the_retrain_gate_refuses_a_worse_model(world: dict[str, Any], tmp_path: Path) -> None:
    """The gate compares both models on the same window; a model scoring in reverse loses."""
    import torch

    from batch_jobs import dag_tasks
    from summarizer.data.histories import temporal_split
    from summarizer.model import artifacts

    cfg = world["cfg"]
    model, _ = artifacts.load(cfg.model.model_dir)
    flipped, _ = artifacts.load(cfg.model.model_dir)
    with torch.no_grad():  # the same model with its logit negated: AUC becomes 1 - AUC
        flipped.ranker.logit.weight.neg_()
        flipped.ranker.logit.bias.neg_()
    split = list(temporal_split(cfg.data.valid_dir))
    dirs = {}
    for name, m in (("a", model), ("b", flipped)):
        dirs[name] = tmp_path / name
        artifacts.save(m, dirs[name], metadata={"split": split, "test": {}})
    serving_dir = tmp_path / "serving"
    probe = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"model_dir": str(dirs["a"])})}
    )
    first = dag_tasks.compare_with_serving(probe, str(dirs["b"]))
    # Serve whichever orientation is better; the other one is the worse candidate.
    better, worse = ("a", "b") if first["candidate_auc"] < first["serving_auc"] else ("b", "a")
    import shutil

    shutil.copytree(dirs[better], serving_dir)
    gated = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"model_dir": str(serving_dir)})}
    )
    refused = dag_tasks.compare_with_serving(gated, str(dirs[worse]))
    assert refused["serving_auc"] - refused["candidate_auc"] > cfg.pipeline.retrain_margin
    assert refused["accept"] is False
    assert dag_tasks.compare_with_serving(gated, str(dirs[better]))["accept"] is True
