"""TWIN-V2 clustering (summarizer/memory/clustering.py): size bounds, the cap on clusters,
determinism, incremental assignment, the CLI, and a bank's round trip through the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kernels import topk
from summarizer.config import ClusterParams
from summarizer.memory.clustering import (
    MemoryBank,
    assign_new,
    cluster_history,
    cluster_history_with_labels,
    effective_cluster_size,
    engagement_levels,
)


def history(n: int, seed: int = 0, d: int = 16) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d)).astype(np.float32)
    emb = centers[rng.integers(0, 20, n)] + 0.2 * rng.standard_normal((n, d)).astype(np.float32)
    item = rng.integers(0, 10**6, n)
    action = rng.integers(0, 3, n)
    return emb, item, action, engagement_levels(action)


def members(bank: MemoryBank, emb: np.ndarray, level: np.ndarray) -> None:
    """The bank's invariants against the history it was built from."""
    assert bank.sizes.sum() == emb.shape[0]
    assert (bank.sizes >= 1).all()
    for g in np.unique(level):
        # Each level's events are all in that level's clusters.
        assert bank.sizes[bank.levels == g].sum() == (level == g).sum()
        assert np.allclose(
            bank.sums[bank.levels == g].sum(0), emb[level == g].astype(np.float64).sum(0)
        )


@pytest.mark.parametrize("n,gamma", [(1, 4), (50, 8), (3000, 64), (3000, 1000)])
def test_clusters_respect_the_size_bound_and_conserve_events(n: int, gamma: int) -> None:
    emb, item, action, level = history(n)
    params = ClusterParams(max_cluster_size=gamma, max_clusters=10_000)
    bank = cluster_history(emb, item, action, level, params)
    assert bank.sizes.max() <= gamma
    members(bank, emb, level)
    assert len(bank) >= int(np.ceil(n / gamma))


def test_cluster_count_is_capped_by_raising_gamma() -> None:
    emb, item, action, level = history(5000, seed=1)
    params = ClusterParams(max_cluster_size=4, max_clusters=100)
    bank = cluster_history(emb, item, action, level, params)
    assert len(bank) <= 100
    assert bank.sizes.max() <= effective_cluster_size(5000, params) * 2
    members(bank, emb, level)


def test_clustering_is_deterministic_by_seed() -> None:
    emb, item, action, level = history(4000, seed=2)
    a = cluster_history(emb, item, action, level, ClusterParams(max_cluster_size=50, seed=3))
    b = cluster_history(emb, item, action, level, ClusterParams(max_cluster_size=50, seed=3))
    for f in ("sums", "sizes", "levels", "rep_item", "rep_action"):
        assert np.array_equal(getattr(a, f), getattr(b, f))


def test_tokens_are_means_with_the_nearest_members_features() -> None:
    emb, item, action, level = history(600, seed=4)
    bank, labels = cluster_history_with_labels(
        emb, item, action, level, ClusterParams(max_cluster_size=40)
    )
    cent = bank.centroids
    for j in range(len(bank)):
        idx = np.flatnonzero(labels == j)
        assert len(idx) == bank.sizes[j] and (level[idx] == bank.levels[j]).all()
        assert np.allclose(cent[j], emb[idx].mean(0), atol=1e-5)
        nearest = idx[np.argmin(((emb[idx] - emb[idx].mean(0)) ** 2).sum(1))]
        assert (bank.rep_item[j], bank.rep_action[j]) == (item[nearest], action[nearest])
    # Identical points cannot be separated by k-means: they are cut in order.
    flat = np.ones((100, 8), np.float32)
    b2 = cluster_history(
        flat,
        np.arange(100),
        np.zeros(100, int),
        np.zeros(100, int),
        ClusterParams(max_cluster_size=10),
    )
    assert len(b2) == 10 and (b2.sizes == 10).all() and np.allclose(b2.centroids, 1.0)


def test_engagement_levels_split_actions_and_ratings() -> None:
    lv = engagement_levels(np.array([0, 1, 2, 3, 3, 3]), np.array([np.nan] * 3 + [1.0, 3.0, 4.5]))
    assert list(lv[:3]) == [0, 1, 2]
    assert len(set(lv[3:])) == 3 and min(lv[3:]) > 2


def test_assign_new_joins_the_nearest_cluster_of_the_same_level() -> None:
    emb, item, action, level = history(2000, seed=5)
    params = ClusterParams(max_cluster_size=100)
    bank = cluster_history(emb, item, action, level, params)
    new_emb, _, _, new_level = history(30, seed=6)
    keep = np.isin(new_level, bank.levels)
    new_emb, new_level = new_emb[keep], new_level[keep]
    out, recluster = assign_new(bank, new_emb, new_level, params)
    assert out.n_events == bank.n_events + len(new_emb)
    assert bank.n_events == 2000  # the input is not modified
    cent = bank.centroids
    for e, g in zip(new_emb, new_level, strict=True):
        cands = np.flatnonzero(bank.levels == g)
        want = cands[np.argmin(((cent[cands] - e) ** 2).sum(1))]
        # That cluster grew; sums stay exact.
        assert out.sizes[want] > bank.sizes[want]
    members(
        out,
        np.concatenate([emb, new_emb]),
        np.concatenate([level, new_level]),
    )
    assert recluster == bool((out.sizes > 100).any())


def test_assign_new_asks_for_reclustering_on_overflow_or_a_new_level() -> None:
    emb = np.zeros((10, 4), np.float32)
    bank = cluster_history(
        emb, np.arange(10), np.zeros(10, int), np.zeros(10, int), ClusterParams(max_cluster_size=10)
    )
    _, again = assign_new(
        bank, np.zeros((1, 4), np.float32), np.zeros(1, int), ClusterParams(max_cluster_size=10)
    )
    assert again  # 11 > γ
    _, again = assign_new(
        bank, np.zeros((1, 4), np.float32), np.ones(1, int), ClusterParams(max_cluster_size=50)
    )
    assert again  # level 1 has no cluster
    _, again = assign_new(
        bank, np.zeros((1, 4), np.float32), np.zeros(1, int), ClusterParams(max_cluster_size=50)
    )
    assert not again


def test_bad_input_is_named() -> None:
    emb, item, action, level = history(10)
    with pytest.raises(ValueError, match="NaN"):
        cluster_history(np.full((3, 2), np.nan, np.float32), [1, 2, 3], [0, 0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="levels"):
        cluster_history(emb, item, action, level[:5])
    with pytest.raises(ValueError, match="max_cluster_size"):
        ClusterParams(max_cluster_size=0)


def test_cluster_cli_builds_a_bank_and_searches_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    import json

    import torch

    from summarizer.cli import main
    from summarizer.config import ModelSpec
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISTA_SYNTH__MAX_EVENTS", "3000")
    assert main(["data", "synth", "--users", "5", "--quiet"]) == 0
    assert main(["data", "validate", "--quiet"]) == 0
    torch.manual_seed(0)
    artifacts.save(VistaModel(ModelSpec(num_seeds=4, d_model=16, item_buckets=1024)), "model")
    capsys.readouterr()
    args = ["cluster", "0", "--model", "model", "--gamma", "64", "--candidates", "1", "2"]
    assert main([*args, "--k", "4"]) == 0
    human = capsys.readouterr().out
    assert human.startswith("user 0: 3,000 events -> ") and "  candidate 2: cluster " in human
    assert main([*args, "--k", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_events"] == 3000 and report["largest_cluster"] <= 64
    assert sum(report["clusters_per_level"].values()) == report["clusters"] >= 3000 // 64
    assert [g["candidate"] for g in report["gsu"]] == [1, 2]
    top = report["gsu"][0]["top"]
    assert len(top) == 4 and top[0]["score"] >= top[-1]["score"]


def test_bank_round_trips_through_the_store_and_searches_the_same(tmp_path: Path) -> None:
    """Cluster, publish to the store's memory-bank table, read back, GSU: same top-k as on the
    bank's own (float16-rounded) tokens."""
    import datetime as dt

    from summarizer.store import MemoryBankRecord, SummaryStore, memory_bank_schema

    params = ClusterParams(max_cluster_size=32, max_clusters=64)
    banks = {u: cluster_history(*history(500, seed=u), params) for u in (7, 8)}
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    store = SummaryStore(str(tmp_path / "db"))
    store.publish(
        [MemoryBankRecord.from_bank(b, u, "mv", at) for u, b in banks.items()],
        schema=memory_bank_schema(64, 16, "mv"),
    )
    got = store.get_memory_banks([8, 7, 9])
    assert sorted(got) == [7, 8]
    q = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    for u, b in banks.items():
        np.testing.assert_array_equal(got[u].sizes, b.sizes)
        tokens = got[u].tokens.astype(np.float32)
        np.testing.assert_array_equal(tokens, b.centroids.astype(np.float16).astype(np.float32))
        assert np.array_equal(topk(q, tokens, 5)[1], topk(q, b.centroids.astype(np.float16), 5)[1])
