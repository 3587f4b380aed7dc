"""`vista job cluster`: full equals in-process clustering, incremental days add to each bank."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyspark")
from batch_jobs.cluster import run_cluster  # noqa: E402
from batch_jobs.runs import JobError  # noqa: E402
from summarizer.config import VistaConfig  # noqa: E402
from summarizer.data.events import dataset, read_day  # noqa: E402
from summarizer.store import SummaryStore  # noqa: E402
from tests.batch_jobs.helpers import MODEL, job_config

pytestmark = pytest.mark.integration


# -- cluster (memory banks) ---------------------------------------------------------------------
def _gsu_cfg(world: dict[str, Any], store: str) -> VistaConfig:
    """The world's config with a VISTA + GSU model and small banks (gamma 24, C 64)."""
    import torch

    from summarizer.config import ModelSpec
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel

    cfg = job_config(world["root"], store)
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
        run_cluster(spark, job_config(world["root"], "cluster-nogsu"), mode="full")
    cfg = _gsu_cfg(world, "cluster-empty")
    with pytest.raises(JobError, match="cluster --full"):
        run_cluster(spark, cfg, mode="incremental", day=world["days"][-1])
