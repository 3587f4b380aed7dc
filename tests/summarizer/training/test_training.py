"""Training and the evaluation harness on small real (generated) data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from summarizer.config import ModelSpec, SynthConfig, TrainConfig
from summarizer.data import synth
from summarizer.data.histories import event_labels, load_histories, temporal_split
from summarizer.data.validation import validate_dataset
from summarizer.model.vista_model import VistaModel
from summarizer.training import harness
from summarizer.training.metrics import auc_score, compute_metrics
from summarizer.training.targets import Window, iter_batches, select_targets
from summarizer.training.train import bank_labels_for, batch_loss, train

TINY = ModelSpec(
    num_seeds=8, d_model=32, num_heads=4, feature_dim=8, num_layers=1, item_buckets=2048, last_k=20
)
FAST = TrainConfig(
    epochs=3,
    lr=3e-3,
    targets_per_user=24,
    batch_requests=128,
    eval_targets_per_user=16,
    patience=3,
    recon_weight=0.1,  # the reconstruction path is trained and tested here too
)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(
        n_users=60,
        n_topics=20,
        items_per_topic=5,
        n_old_interests=3,
        min_events=40,
        max_events=400,
        span_days=60,
        bad_row_fraction=0.0,
        seed=1,
    )
    synth.generate(cfg, root / "events", progress=False)
    validate_dataset(root / "events", root / "valid", root / "q", 8, progress=False)
    return root / "valid"


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = s[y], s[~y]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc_score(y, s) == pytest.approx(brute)
    m = compute_metrics(
        {
            "label": y.astype(float),
            "prob": np.full(300, y.mean()),
            "rating_true": np.full(300, np.nan),
        }
    )
    assert m.ne == pytest.approx(1.0, abs=1e-6)  # predicting the base rate has NE 1


def test_labels_for_ratings_and_actions() -> None:
    action = np.array([0, 1, 2, 3, 3, 3])
    weight = np.array([np.nan, np.nan, np.nan, 4.0, 3.5, np.nan], dtype=np.float32)
    assert event_labels(action, weight).tolist() == [0, 1, 1, 1, 0, 0]


def test_temporal_split_orders_windows(small_data: Path) -> None:
    t1, t2 = temporal_split(small_data)
    ts = load_histories(small_data).ts
    assert t1 < t2
    assert 0.75 < (ts < t1).mean() < 0.85 and 0.05 < (ts >= t2).mean() < 0.15


def test_batches_cover_every_selected_target_once(small_data: Path) -> None:
    hist = load_histories(small_data)
    targets = select_targets(hist, Window(-(2**62), 2**62), 10, np.random.default_rng(0))
    seen = 0
    for b in iter_batches(hist, targets, FAST.replace(batch_events=2000), np.random.default_rng(0)):
        assert int(b.offsets[-1]) == len(b.events) <= max(2000, int(b.req_pos.max()) + 1)
        assert torch.all(b.req_summary_pos <= b.req_pos)
        seen += b.req_pos.numel()
    assert seen == sum(len(t) for t in targets)


@pytest.mark.parametrize(
    ("gsu_k", "memory", "readout"),
    [
        (0, "events", "transformer"),
        (0, "events", "state"),
        (4, "events", "transformer"),
        (4, "clusters", "transformer"),
    ],
)
def test_training_reduces_loss_and_learns(
    small_data: Path, gsu_k: int, memory: str, readout: str
) -> None:
    """VISTA alone (seed or state read-out), and VISTA with the GSU over raw events or TWIN-V2
    clusters (trained through its gathered attention)."""
    hist = load_histories(small_data)
    t1, t2 = temporal_split(small_data)
    torch.manual_seed(0)
    state = {"num_seeds": 8, "values": "events", "feature_map": "softmax"}
    model = VistaModel(
        TINY.replace(
            gsu_k=gsu_k,
            memory=memory,
            readout=readout,
            **(state if readout == "state" else {}),
        )
    )
    targets = select_targets(hist, Window(-(2**62), t1), 24, np.random.default_rng(5))
    banks = bank_labels_for(model, hist, t1, FAST)  # None unless memory == "clusters"
    assert (banks is not None) == (memory == "clusters")
    batch = next(
        iter_batches(
            hist,
            targets,
            FAST.replace(batch_requests=10_000, batch_events=10**9),
            None,
            None,
            banks,
        )
    )
    with torch.no_grad():
        before = float(batch_loss(model.eval(), batch, FAST)[0])
    result = train(model, hist, Window(-(2**62), t1), Window(t1, t2), FAST, progress=False)
    with torch.no_grad():
        after = float(batch_loss(result.model.eval(), batch, FAST)[0])
    assert after < before - 0.03
    assert result.epochs_run >= 1 and 0.0 <= result.val.auc <= 1.0


def test_implicit_feedback_gets_sampled_negatives(small_data: Path) -> None:
    hist = load_histories(small_data)
    cfg = FAST.replace(negatives=3)
    targets = select_targets(hist, Window(-(2**62), 2**62), 4, np.random.default_rng(0))
    b = next(
        iter_batches(
            hist, targets, cfg, np.random.default_rng(0), item_pool=np.unique(hist.item_id)
        )
    )
    assert torch.all(b.cand_offsets[1:] - b.cand_offsets[:-1] == 4)
    assert float(b.cand_label.view(-1, 4)[:, 1:].sum()) == 0.0


def test_harness_table_and_plot(small_data: Path, tmp_path: Path) -> None:
    default = "VISTA K=8 + ridge read-out k=64 (MF start)"
    variants = [
        v for v in harness.default_variants(TINY, last_k=20) if v.name in ("no history", default)
    ]
    rows = harness.run(
        small_data, variants, FAST.replace(epochs=1), out_dir=tmp_path, progress=False
    )
    assert [r.model for r in rows] == ["no history", default]
    assert all(0.0 <= r.auc <= 1.0 for r in rows)
    assert rows[1].online_mflops_per_candidate > rows[0].online_mflops_per_candidate
    assert (tmp_path / "quality_vs_cost.png").stat().st_size > 1000
    table = (tmp_path / "results.md").read_text()
    assert f"| {default} |" in table and "| cache |" in table and "| no history |" in table


def test_online_cost_model_orders_the_baselines() -> None:
    spec = ModelSpec()
    cost = {
        k: harness.online_flops_per_candidate(spec.replace(kind=k), 100_000)
        for k in ("none", "mean", "vista", "din", "full")
    }
    assert cost["none"] < cost["mean"] < cost["vista"] < cost["full"]
    assert cost["full"] > 100 * cost["vista"]  # full-history attention grows with n; VISTA does not
    gsu = spec.replace(gsu_k=32)
    sim = harness.online_flops_per_candidate(gsu.replace(kind="sim"), 100_000)
    vista_gsu = harness.online_flops_per_candidate(gsu, 100_000)
    assert cost["vista"] < vista_gsu and cost["din"] < sim < cost["full"]  # the search grows with n


def test_cached_modules_cost_the_same_for_any_history_and_raw_event_ones_grow() -> None:
    """The cost column and the "served from" column of the long-sequence rows: DV365 and
    VISTA read cached tokens (flat in n); HSTU, LONGER, TransAct V2 and full attention run
    over raw events (grow with n)."""
    spec = ModelSpec(num_seeds=16)
    for kind in ("vista", "dv365"):
        s = spec.replace(kind=kind)
        assert harness.serving_form(s) == "cache"
        short, long = (harness.online_flops_per_candidate(s, n) for n in (1_000, 1_000_000))
        assert long == short
    for kind in ("hstu", "longer", "transact2", "full"):
        s = spec.replace(kind=kind)
        assert harness.serving_form(s) == "raw events"
        short, long = (harness.online_flops_per_candidate(s, n) for n in (1_000, 1_000_000))
        assert long > 5 * short, kind  # the search (TransAct V2) or the attention
    assert harness.serving_form(spec.replace(kind="sim", gsu_k=8, memory="clusters")) == "cache"
    assert harness.serving_form(spec.replace(kind="sim", gsu_k=8)) == "raw events"
    assert harness.serving_form(spec.replace(kind="none")) == "no history"


def test_bucketed_reading_covers_every_user_once(small_data: Path) -> None:
    """Data larger than memory is read one user bucket at a time; together the buckets are all."""
    from summarizer.data.histories import iter_history_buckets

    whole = load_histories(small_data)
    buckets = list(iter_history_buckets(small_data, 4))
    assert all(np.all(b.user_ids % 4 == i) for i, b in enumerate(buckets))
    users = np.sort(np.concatenate([b.user_ids for b in buckets]))
    assert np.array_equal(users, whole.user_ids)
    assert sum(b.n_events for b in buckets) == whole.n_events
    one = next(b for b in buckets if len(b.user_ids))
    u = int(one.user_ids[0])
    w = int(np.flatnonzero(whole.user_ids == u)[0])
    a, b = whole.offsets[w], whole.offsets[w + 1]
    assert np.array_equal(one.ts[one.offsets[0] : one.offsets[1]], whole.ts[a:b])


def test_bank_partition_clusters_the_past_and_assigns_the_rest(small_data: Path) -> None:
    """Events before the cut-off are TWIN-V2-clustered on the model's encodings; later ones
    join the nearest cluster of their level, so nothing after the cut-off shapes the bank."""

    from summarizer.config import ClusterParams
    from summarizer.memory.clustering import (
        cluster_history_with_labels,
        engagement_levels,
    )
    from summarizer.training.banks import bank_partition

    hist = load_histories(small_data)
    t1, _ = temporal_split(small_data)
    torch.manual_seed(0)
    model = VistaModel(TINY.replace(gsu_k=4, memory="clusters")).eval()
    params = ClusterParams(max_cluster_size=8, max_clusters=64)
    labels = bank_partition(model, hist, t1, params)
    u = int(np.argmax(hist.lengths()))
    a, b = int(hist.offsets[u]), int(hist.offsets[u + 1])
    cut = int(np.searchsorted(hist.ts[a:b], t1))
    assert 0 < cut < b - a
    from summarizer.training.banks import encode_events

    emb = encode_events(model, hist.item_id[a:b], hist.ts[a:b], hist.action[a:b], hist.weight[a:b])
    level = engagement_levels(hist.action[a:b], hist.weight[a:b])
    bank, past = cluster_history_with_labels(
        emb[:cut], hist.item_id[a:b][:cut], hist.action[a:b][:cut], level[:cut], params
    )
    np.testing.assert_array_equal(labels[a : a + cut], past)
    for i in range(cut, b - a):
        same = np.flatnonzero(bank.levels == level[i])
        if len(same):
            d2 = ((bank.centroids[same] - emb[i]) ** 2).sum(1)
            assert labels[a + i] == same[int(np.argmin(d2))]
        else:
            assert labels[a + i] >= len(bank)
    # Changing events after the cut-off leaves the clusters of the past alone.
    hist.item_id = hist.item_id.copy()
    hist.item_id[a + cut :] += 1
    again = bank_partition(model, hist, t1, params)
    np.testing.assert_array_equal(again[a : a + cut], past)
