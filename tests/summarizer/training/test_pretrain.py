"""The ridge read-out started from a fold-in baseline's item vectors (MF, co-occurrence SVD)
reads exactly that baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from summarizer.config import ModelSpec
from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import VistaModel
from summarizer.training import classic, pretrain
from summarizer.training.metrics import auc_score
from summarizer.training.targets import Window
from tests.summarizer.training.test_classic import tiny


@pytest.mark.parametrize("start", ["mf", "cooccurrence"])
def test_a_ridge_read_out_from_a_baselines_vectors_is_that_fold_in_baseline(start: str) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for u in range(40):
        g = u % 2
        picks = rng.choice(30, 18, replace=False)
        rows.append([(int(i), 5.0 if (i % 2) == g else 1.0) for i in picks])
    hist = tiny(rows, t0=0)
    hist.ts[:] = np.concatenate(
        [np.r_[np.arange(12), 1000 + np.arange(3), 2000 + np.arange(3)] for _ in range(40)]
    )
    spec = ModelSpec(num_seeds=4, d_model=16, num_heads=2, item_buckets=1 << 12, ridge_dim=3)
    model = VistaModel(spec.replace(num_actions=8, ridge_l2=2.0)).eval()
    ridge = model.ridge
    assert ridge is not None
    t1, t2 = 1000, 2000
    val_t = classic.Targets.of(hist, Window(t1, t2), 3)
    # The baseline's own search (deterministic) picks the same fit and fold-in L2.
    if start == "mf":
        chosen = pretrain.init_ridge_from_mf(
            model, hist, Window(-(2**62), t1), Window(t1, t2), per_user=3
        )
        grid = classic.mf_grid(hist, t1, val_t, (3,), pretrain.MF_L2_GRID)
        fit, want_chosen, _ = classic.choose_fold_in(hist, val_t, grid, pretrain.FOLD_IN_L2_GRID)
    else:
        chosen = pretrain.init_ridge_from_cooccurrence(
            model, hist, Window(-(2**62), t1), Window(t1, t2), per_user=3
        )
        # No grid width fits a 3-wide read-out: the start takes its width.
        cgrid = classic.cooccurrence_grid(hist, t1, (3,))
        fit, want_chosen, _ = classic.choose_cooccurrence(hist, val_t, cgrid, classic.COOC_L2_GRID)
    assert {k: chosen[k] for k in want_chosen} == want_chosen
    assert model.spec.ridge_l2 == ridge.l2 == want_chosen["fold_in_l2"]
    test_t = classic.Targets.of(hist, Window(t2, 2**62), 3)
    want = classic.fold_in_scores(fit, hist, test_t) - fit.mu
    summ = model.require_summarizer()
    got = []
    for u, p in zip(test_t.user, test_t.pos, strict=True):
        a = int(hist.offsets[u])
        ev = EventBatch.from_numpy(
            hist.item_id[a : a + p],
            hist.ts[a : a + p],
            hist.action[a : a + p],
            hist.weight[a : a + p],
        )
        state = summ.fold(summ.empty_state(), ev)
        with torch.no_grad():
            w = ridge.solve(summ.moments_part(state.kv).unsqueeze(0))
            got.append(float(ridge.scores(w, torch.tensor([int(hist.item_id[a + p])]))[0]))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert auc_score(hist.labels[test_t.idx], np.array(got)) > 0.95


def test_the_item_table_started_from_cooccurrence_vectors_holds_them_at_init_scale() -> None:
    rng = np.random.default_rng(4)
    rows = [
        [(int(i), float(rng.integers(1, 6))) for i in rng.integers(0, 20, 12)] for _ in range(30)
    ]
    hist = tiny(rows, t0=0)
    hist.ts[:] = np.concatenate(
        [np.r_[np.arange(8), 1000 + np.arange(2), 2000 + np.arange(2)]] * 30
    )
    spec = ModelSpec(num_seeds=4, d_model=16, num_heads=2, item_buckets=1 << 12)
    model = VistaModel(spec.replace(num_actions=8))
    chosen = pretrain.init_items_from_cooccurrence(
        model, hist, Window(-(2**62), 1000), Window(1000, 2000), per_user=2
    )
    k = int(chosen["factors"])
    fit = classic.fit_cooccurrence(
        hist, 1000, k, bool(chosen["engaged_only"]), classic.COOC_BIAS_L2
    )
    ids = np.array(sorted(fit.item_index))
    want = fit.item_vec[[fit.item_index[int(i)] for i in ids], :k]
    with torch.no_grad():
        got = model.items(torch.tensor(ids)).numpy()
    scale = 0.05 / np.sqrt(np.mean(want**2))  # INIT_STD per coordinate
    np.testing.assert_allclose(got[:, :k], want * scale, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got[:, k:], 0.0)
