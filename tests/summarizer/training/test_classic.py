"""The classic baselines (summarizer/training/classic.py) against closed forms on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from summarizer.data.events import Action
from summarizer.data.histories import Histories
from summarizer.training import classic
from summarizer.training.targets import Window


def tiny(ratings: list[list[tuple[int, float]]], t0: int = 1000) -> Histories:
    """Histories of explicit ratings: user u's (item, rating) pairs, one second apart."""
    offsets, items, ts, w = [0], [], [], []
    for u, rows in enumerate(ratings):
        for j, (i, r) in enumerate(rows):
            items.append(i)
            ts.append(t0 + 100 * u + j)
            w.append(r)
        offsets.append(len(items))
    n = len(items)
    return Histories(
        user_ids=np.arange(len(ratings)),
        offsets=np.array(offsets),
        item_id=np.array(items),
        ts=np.array(ts),
        action=np.full(n, int(Action.RATE)),
        weight=np.array(w, dtype=np.float32),
    )


HIST = tiny(
    [
        [(1, 4.0), (2, 3.0), (3, 5.0), (1, 4.5)],
        [(2, 1.0), (3, 4.0), (4, 2.0)],
        [(1, 5.0), (4, 3.0), (2, 2.5), (3, 4.0), (4, 1.5)],
    ]
)


def test_user_plus_item_biases_solve_the_ridge_normal_equations() -> None:
    lam = 2.0
    fit = classic.fit_biases(HIST, t1=10**9, lam_user=lam, lam_item=lam, iterations=10_000)
    r = classic.response(HIST)
    users = classic.event_users(HIST)
    items = np.unique(HIST.item_id)
    col = {int(i): HIST.n_users + j for j, i in enumerate(items)}
    X = np.zeros((len(r), HIST.n_users + len(items)))
    X[np.arange(len(r)), users] = 1
    X[np.arange(len(r)), [col[int(i)] for i in HIST.item_id]] = 1
    want = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ (r - r.mean()))
    np.testing.assert_allclose(fit.b_user, want[: HIST.n_users], atol=1e-8)
    np.testing.assert_allclose(fit.item(items), want[HIST.n_users :], atol=1e-8)
    assert fit.mu == pytest.approx(r.mean())


def test_one_bias_alone_is_the_shrunk_mean() -> None:
    fit = classic.fit_biases(HIST, t1=10**9, lam_user=None, lam_item=3.0)
    r, mu = classic.response(HIST), classic.response(HIST).mean()
    for i in np.unique(HIST.item_id):
        sel = HIST.item_id == i
        assert fit.item(np.array([i]))[0] == pytest.approx((r[sel] - mu).sum() / (sel.sum() + 3))
    assert not fit.b_user.any()
    # Only the training window counts: the last user's events fall after t1 here.
    late = classic.fit_biases(HIST, t1=1200, lam_user=None, lam_item=3.0)
    assert late.item(np.array([4]))[0] == pytest.approx((2.0 - np.mean(r[:7])) / (1 + 3))


def test_history_means_read_every_event_before_the_target() -> None:
    targets = classic.Targets.of(HIST, Window(0, 2**62), per_user=100)
    got = classic.history_means(HIST, targets, mu=3.0, lam=2.0)
    r = classic.response(HIST)
    for j, (u, p) in enumerate(zip(targets.user, targets.pos, strict=True)):
        a = HIST.offsets[u]
        assert got[j] == pytest.approx((r[a : a + p].sum() + 2.0 * 3.0) / (p + 2.0))


@pytest.mark.parametrize("known", [(1, 2, 3, 4), (1, 2, 3)])
def test_fold_in_solves_each_targets_ridge_from_the_history_before_it(
    known: tuple[int, ...],
) -> None:
    """An item the fit does not know (4, in the second case) has q = 0 and b = 0: its
    events enter only the user's constant term, as in the model's read-out."""
    rng = np.random.default_rng(0)
    fit = classic.MFFit(
        mu=3.0,
        user_vec=np.zeros((HIST.n_users, 3)),
        item_index={i: j for j, i in enumerate(known)},
        item_vec=rng.normal(size=(len(known), 3)),
        lam=0.7,
    )

    def vec(i: int) -> np.ndarray:
        return fit.item_vec[fit.item_index[i]] if i in fit.item_index else np.zeros(3)

    targets = classic.Targets.of(HIST, Window(0, 2**62), per_user=100)
    got = classic.fold_in_scores(fit, HIST, targets)
    r = classic.response(HIST)
    for j, (u, p) in enumerate(zip(targets.user, targets.pos, strict=True)):
        a = HIST.offsets[u]
        q = np.array([vec(int(i)) for i in HIST.item_id[a : a + p]]).reshape(p, 3)
        X = np.concatenate([q[:, :2], np.ones((p, 1))], 1)
        y = r[a : a + p] - 3.0 - q[:, 2]
        w = np.linalg.solve(X.T @ X + 0.7 * np.eye(3), X.T @ y)
        qc = vec(int(HIST.item_id[a + p]))
        assert got[j] == pytest.approx(3.0 + qc[:2] @ w[:2] + w[2] + qc[2])


def test_mf_finds_planted_structure_that_biases_cannot() -> None:
    """Ratings from two user groups x two item groups (a rank-one interaction, no biases):
    every bias row is at chance on held-out pairs, MF and its fold-in are not."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(60):
        g = u % 2
        picks = rng.choice(40, 24, replace=False)
        rows.append([(int(i), 5.0 if (i % 2) == g else 1.0) for i in picks])
    hist = tiny(rows, t0=0)
    # Each user's last events are validation and test (by time: users are 100 s apart).
    hist.ts[:] = np.concatenate(
        [np.r_[np.arange(16), 1000 + np.arange(4), 2000 + np.arange(4)] for _ in range(60)]
    )
    results = {
        r.name: r
        for r in classic.evaluate_classic(
            hist,
            t1=1000,
            t2=2000,
            per_user=4,
            mf_factors=(2,),
            mf_l2=(1.0,),
            fold_in_l2=(1.0,),
        )
    }
    assert set(results) == {
        "item bias",
        "user bias",
        "user + item bias",
        "history heuristic",
        "biased MF",
        "MF, user folded in",
        "co-occurrence SVD, user folded in",
    }
    assert results["user + item bias"].test.auc < 0.65
    assert results["biased MF"].test.auc > 0.95
    assert results["MF, user folded in"].test.auc > 0.95
    # Who engaged with what is the structure here (every user is shown a random half).
    cooc = results["co-occurrence SVD, user folded in"]
    assert cooc.chosen["engaged_only"] == 1.0
    assert cooc.test.auc > 0.9  # the production grid (16+ factors) on 40 items


def test_cooccurrence_vectors_span_the_top_singular_subspace_of_the_normalized_matrix() -> None:
    rng = np.random.default_rng(5)
    rows = [
        [(int(i), float(rng.integers(1, 6))) for i in rng.integers(0, 12, 15)] for _ in range(9)
    ]
    hist = tiny(rows)
    t1 = int(hist.ts.max()) + 1
    for engaged in (False, True):
        fit = classic.fit_cooccurrence(hist, t1, factors=3, engaged=engaged, bias_l2=2.0)
        items = np.array(sorted(fit.item_index))
        X = np.zeros((hist.n_users, len(items)))
        keep = hist.labels.astype(bool) if engaged else np.ones(hist.n_events, dtype=bool)
        users = classic.event_users(hist)
        np.add.at(X, (users[keep], np.searchsorted(items, hist.item_id[keep])), 1.0)
        X /= np.sqrt(X.sum(1, keepdims=True) + 1.0)
        X /= np.sqrt(X.sum(0, keepdims=True) + 1.0)
        V = np.linalg.svd(X)[2][:3].T
        got = fit.item_vec[[fit.item_index[int(i)] for i in items], :3] / np.sqrt(len(items) / 3)
        np.testing.assert_allclose(got @ got.T, V @ V.T, atol=1e-6)
        # The biases: each item's shrunk mean residual of the response.
        r = classic.response(hist)
        i0 = int(items[0])
        sel = hist.item_id == i0
        want = (r[sel] - r.mean()).sum() / (sel.sum() + 2.0)
        assert fit.item_vec[fit.item_index[i0], 3] == pytest.approx(want)


def test_cooccurrence_vectors_of_exposures_do_not_read_the_labels() -> None:
    rng = np.random.default_rng(6)
    rows = [
        [(int(i), float(rng.integers(1, 6))) for i in rng.integers(0, 12, 15)] for _ in range(9)
    ]
    hist = tiny(rows)
    flipped = tiny([[(i, 6.0 - r) for i, r in row] for row in rows])
    t1 = int(hist.ts.max()) + 1
    a = classic.fit_cooccurrence(hist, t1, factors=3, engaged=False, bias_l2=2.0)
    b = classic.fit_cooccurrence(flipped, t1, factors=3, engaged=False, bias_l2=2.0)
    np.testing.assert_allclose(a.item_vec[:, :3], b.item_vec[:, :3])
