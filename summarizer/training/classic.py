"""The baselines every recommender evaluation reports, on the harness's split and targets:
item / user / user+item bias, the history heuristic, and biased matrix factorization.

They are scored on exactly the targets the neural rows are (``select_targets`` of the
window, the event's own item as the candidate) and fitted on the training window only
(every event before t1, no sampling). What they fit is the *response*: the rating where
the data has ratings (explicit feedback; the label is rating >= 4), else the label.
Scores are turned into probabilities by Platt scaling fitted on the validation
targets (AUC does not change; logloss and NE become comparable), and every
hyper-parameter (shrinkage, factors, L2) is chosen by validation AUC from a small
grid, never on the test window.

* **item bias**: the item's shrunk mean response, ``sum(r - mu) / (n_i + lambda)``;
* **user bias**: the same over the user's training events;
* **user + item bias**: ``mu + b_u + b_i`` by alternating ridge updates (exact for this
  convex quadratic at convergence; tested against the normal equations);
* **history heuristic**: the user's shrunk mean response over *every* event before the
  target (validation and test events included: it reads the history as the sequence
  models do), plus the item bias;
* **biased MF**: ``mu + b_u + b_i + p_u . q_i`` by alternating least squares on the
  training window, iterated until validation AUC stops improving. A user first seen
  after t1 has no vector (item bias alone);
* **MF, user folded in**: the same item vectors and biases, and for every target the
  user's ``(p_u, b_u)`` solved from the events before it (ridge; two mergeable sums of
  the history, ``sum x x^T`` and ``sum x r``) -- what a deployed MF does for a user it
  has not been retrained on;
* **co-occurrence SVD, user folded in**: the same fold-in over item vectors that come from
  who-saw-what rather than from the labels -- the truncated SVD of the degree-normalized
  user x item matrix of the training window (exposures or engaged events, chosen on
  validation). Where items are seen ~10 times each, this places them better than MF of
  the labels does (BENCHMARKS.md, issue 21).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from summarizer.data.histories import Histories
from summarizer.training.metrics import Metrics, auc_score, compute_metrics
from summarizer.training.targets import Window, select_targets

# Hyper-parameter grids, searched on validation AUC (the edges were widened where a first run
# chose them: BENCHMARKS.md).
SHRINKAGE_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
MF_FACTORS_GRID = (32, 64, 128)
MF_L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
FOLD_IN_L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)
MF_MAX_ITERATIONS = 30
COOC_FACTORS_GRID = (16, 32, 64)
COOC_L2_GRID = (1.0, 3.0, 10.0, 30.0)
COOC_BIAS_L2 = 10.0  # the item biases' shrinkage, as the item-vectors job's bias_l2
CLASSIC_ROWS = (
    "item bias",
    "user bias",
    "user + item bias",
    "history heuristic",
    "biased MF",
    "MF, user folded in",
    "co-occurrence SVD, user folded in",
)


@dataclasses.dataclass(frozen=True)
class Targets:
    """Evaluation targets of one window: each target's user index, position within its
    user and global event index (the candidate is that event's item)."""

    user: np.ndarray
    pos: np.ndarray
    idx: np.ndarray

    @staticmethod
    def of(hist: Histories, window: Window, per_user: int) -> Targets:
        chosen = select_targets(hist, window, per_user, rng=None)
        empty = np.zeros(0, np.int64)
        user = np.concatenate([empty, *(np.full(len(p), u) for u, p in enumerate(chosen))])
        pos = np.concatenate([empty, *chosen]).astype(np.int64)
        user = user.astype(np.int64)
        return Targets(user, pos, hist.offsets[user] + pos)


def response(hist: Histories) -> np.ndarray:
    """What the baselines fit: the rating where an event has one, else its label."""
    r = hist.weight.astype(np.float64)
    return np.where(np.isnan(r), hist.labels, r)


def train_mask(hist: Histories, t1: int) -> np.ndarray:
    return hist.ts < t1


def event_users(hist: Histories) -> np.ndarray:
    return np.repeat(np.arange(hist.n_users), hist.lengths())


@dataclasses.dataclass
class BiasFit:
    mu: float
    b_user: np.ndarray  # (U,) by user index
    b_item: dict[int, float]  # item id -> bias

    def item(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self.b_item.get(int(i), 0.0) for i in ids])


def _group_mean_shrunk(keys: np.ndarray, r: np.ndarray, lam: float) -> dict[int, float]:
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.bincount(inv, weights=r)
    counts = np.bincount(inv)
    return dict(zip(uniq.tolist(), (sums / (counts + lam)).tolist(), strict=True))


def fit_biases(
    hist: Histories,
    t1: int,
    lam_user: float | None,
    lam_item: float | None,
    iterations: int = 50,
) -> BiasFit:
    """Ridge biases on the training window: ``r ~ mu + b_u + b_i`` with penalties
    ``lam_user * b_u^2`` and ``lam_item * b_i^2``; None leaves that bias out. Alternating
    exact updates (Gauss-Seidel on the normal equations) until they stop moving."""
    m = train_mask(hist, t1)
    r = response(hist)[m]
    users, items = event_users(hist)[m], hist.item_id[m]
    mu = float(r.mean()) if len(r) else 0.0
    uniq, item_inv = np.unique(items, return_inverse=True)
    bu: np.ndarray = np.zeros(hist.n_users)
    bi: np.ndarray = np.zeros(len(uniq))
    n_u = np.bincount(users, minlength=hist.n_users)
    n_i = np.bincount(item_inv, minlength=len(uniq))
    for _ in range(iterations):
        old_u, old_i = bu.copy(), bi.copy()
        if lam_item is not None:
            sums = np.bincount(item_inv, weights=r - mu - bu[users], minlength=len(uniq))
            bi = sums / (n_i + lam_item)
        if lam_user is not None:
            sums = np.bincount(users, weights=r - mu - bi[item_inv], minlength=hist.n_users)
            bu = sums / (n_u + lam_user)
        if max(np.abs(bu - old_u).max(initial=0), np.abs(bi - old_i).max(initial=0)) < 1e-10:
            break
        if lam_user is None or lam_item is None:
            break  # one bias alone: the first update is exact
    return BiasFit(mu, bu, dict(zip(uniq.tolist(), bi.tolist(), strict=True)))


def history_means(hist: Histories, targets: Targets, mu: float, lam: float) -> np.ndarray:
    """Each target's user's shrunk mean response over every event before it."""
    r = response(hist)
    cs = np.concatenate([[0.0], np.cumsum(r)])
    start = hist.offsets[targets.user]
    total = cs[start + targets.pos] - cs[start]
    return (total + lam * mu) / (targets.pos + lam)


# -- matrix factorization ---------------------------------------------------------------------
@dataclasses.dataclass
class MFFit:
    mu: float
    user_vec: np.ndarray  # (U, k+1): factors, then the user bias
    item_index: dict[int, int]
    item_vec: np.ndarray  # (I, k+1): factors, then the item bias
    lam: float

    def item_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows into item_vec, known mask) of item ids."""
        rows = np.array([self.item_index.get(int(i), -1) for i in ids])
        return np.maximum(rows, 0), rows >= 0

    def score(self, users: np.ndarray, ids: np.ndarray) -> np.ndarray:
        rows, known = self.item_rows(ids)
        q, k = self.item_vec[rows], self.item_vec.shape[1] - 1
        p = self.user_vec[users]
        dot = (p[:, :k] * q[:, :k]).sum(1) + p[:, k]
        return self.mu + np.where(known, dot + q[:, k], 0.0)


def _ridge_rows(
    keys: np.ndarray, x: np.ndarray, y: np.ndarray, n_keys: int, lam: np.ndarray
) -> np.ndarray:
    """Per key, the ridge solution of ``y ~ x w`` (penalty ``lam`` per coordinate)."""
    order = np.argsort(keys, kind="stable")
    keys, x, y = keys[order], x[order], y[order]
    bounds = np.searchsorted(keys, np.arange(n_keys + 1))
    out = np.zeros((n_keys, x.shape[1]))
    reg = np.diag(lam)
    for k in range(n_keys):
        a, b = bounds[k], bounds[k + 1]
        if b > a:
            xa = x[a:b]
            out[k] = np.linalg.solve(xa.T @ xa + reg, xa.T @ y[a:b])
    return out


def fit_mf(
    hist: Histories,
    t1: int,
    factors: int,
    lam: float,
    validate: Callable[[MFFit], float],
    seed: int = 0,
) -> tuple[MFFit, int]:
    """Biased MF by alternating least squares on the training window, iterated while the
    validation AUC (``validate``) improves (at most MF_MAX_ITERATIONS). Returns the best
    fit and its iteration count."""
    m = train_mask(hist, t1)
    r = response(hist)[m]
    users, items = event_users(hist)[m], hist.item_id[m]
    mu = float(r.mean()) if len(r) else 0.0
    uniq, item_inv = np.unique(items, return_inverse=True)
    rng = np.random.default_rng(seed)
    k = factors
    P = np.concatenate([rng.normal(0, 0.1, (hist.n_users, k)), np.zeros((hist.n_users, 1))], 1)
    Q = np.concatenate([rng.normal(0, 0.1, (len(uniq), k)), np.zeros((len(uniq), 1))], 1)
    penalty = np.full(k + 1, lam)
    best, best_auc, best_it, bad = None, -np.inf, 0, 0
    index = dict(zip(uniq.tolist(), range(len(uniq)), strict=True))
    for it in range(1, MF_MAX_ITERATIONS + 1):
        # Users: features [q_i, 1] -> (p_u, b_u), target r - mu - b_i.
        xq = np.concatenate([Q[item_inv, :k], np.ones((len(r), 1))], 1)
        P = _ridge_rows(users, xq, r - mu - Q[item_inv, k], hist.n_users, penalty)
        # Items: features [p_u, 1] -> (q_i, b_i), target r - mu - b_u.
        xp = np.concatenate([P[users, :k], np.ones((len(r), 1))], 1)
        Q = _ridge_rows(item_inv, xp, r - mu - P[users, k], len(uniq), penalty)
        fit = MFFit(mu, P.copy(), index, Q.copy(), lam)
        auc = validate(fit)
        if auc > best_auc + 1e-5:
            best, best_auc, best_it, bad = fit, auc, it, 0
        else:
            bad += 1
            if bad >= 2:
                break
    assert best is not None
    return best, best_it


def fold_in_scores(fit: MFFit, hist: Histories, targets: Targets) -> np.ndarray:
    """MF scores with each target's user vector solved from the events before it: ridge of
    ``r - mu - b_i`` on ``[q_i, 1]`` over the history (an item unseen in training has
    ``q = 0, b = 0``: its event still tells the user's mean), from running sums of
    ``x x^T`` and ``x r`` -- sums that fold like a summary, and what the model's ridge
    read-out computes from its started tables."""
    k = fit.item_vec.shape[1] - 1
    rows, known = fit.item_rows(hist.item_id)
    x = np.concatenate([fit.item_vec[rows, :k] * known[:, None], np.ones((len(rows), 1))], 1)
    y = response(hist) - fit.mu - np.where(known, fit.item_vec[rows, k], 0.0)
    w = ridge_preferences(x, y, hist, targets, fit.lam)
    cand_rows, cand_known = fit.item_rows(hist.item_id[targets.idx])
    q = fit.item_vec[cand_rows]
    dot = (q[:, :k] * w[:, :k]).sum(1) + q[:, k]
    return fit.mu + w[:, k] + np.where(cand_known, dot, 0.0)


def ridge_preferences(
    x: np.ndarray,
    y: np.ndarray,
    hist: Histories,
    targets: Targets,
    lam: float,
    block: int = 512,
) -> np.ndarray:
    """Per target, the ridge solution ``(sum x x^T + lam I)^-1 sum x y`` over its user's
    events before it (x: (n_events, d) features, y: (n_events,) responses), as (T, d).

    A user's targets are taken in time order, the events between consecutive ones added to
    running sums (the fold law of a summary); the solves are batched ``block`` at a time."""
    d = x.shape[1]
    out = np.empty((len(targets.idx), d))
    order = np.lexsort((targets.pos, targets.user))
    reg = lam * np.eye(d)
    A_blk, b_blk = np.empty((block, d, d)), np.empty((block, d))
    at: list[int] = []
    xx, xy, user, done = np.zeros((d, d)), np.zeros(d), -1, 0

    def flush() -> None:
        n = len(at)
        out[at] = np.linalg.solve(A_blk[:n] + reg, b_blk[:n, :, None])[..., 0]
        at.clear()

    for j in order:
        u, p = int(targets.user[j]), int(targets.pos[j])
        if u != user:
            user, done = u, 0
            xx, xy = np.zeros((d, d)), np.zeros(d)
        if p > done:
            a = int(hist.offsets[u])
            xa, ya = x[a + done : a + p], y[a + done : a + p]
            xx += xa.T @ xa
            xy += xa.T @ ya
            done = p
        A_blk[len(at)], b_blk[len(at)] = xx, xy
        at.append(int(j))
        if len(at) == block:
            flush()
    if at:
        flush()
    return out


MFGrid = list[tuple[float, int, float, int, MFFit]]  # (val AUC, factors, l2, iterations, fit)


def mf_grid(
    hist: Histories,
    t1: int,
    val_t: Targets,
    factors: tuple[int, ...],
    l2s: tuple[float, ...],
    seed: int = 0,
) -> MFGrid:
    """Biased MF on [.., t1) for every (factors, L2), each iterated to its best validation
    AUC (``fit_mf``)."""
    y_val = hist.labels[val_t.idx]

    def validate(f: MFFit) -> float:
        return auc_score(y_val, f.score(val_t.user, hist.item_id[val_t.idx]))

    out: MFGrid = []
    for k in factors:
        for lam in l2s:
            fit, its = fit_mf(hist, t1, k, lam, validate, seed=seed)
            out.append((validate(fit), k, lam, its, fit))
    return out


def choose_fold_in(
    hist: Histories, val_t: Targets, grid: MFGrid, fold_in_l2: tuple[float, ...]
) -> tuple[MFFit, dict[str, float], float]:
    """The (factorization, fold-in L2) of the best validation AUC of the folded-in scores:
    the fit (its ``lam`` the fold-in's), what was chosen, and that AUC."""
    candidates = [({"factors": k, "l2": lam, "iterations": its}, f) for _, k, lam, its, f in grid]
    return _best_fold_in(hist, val_t, candidates, fold_in_l2)


def _best_fold_in(
    hist: Histories,
    val_t: Targets,
    candidates: list[tuple[dict[str, float], MFFit]],
    fold_in_l2: tuple[float, ...],
) -> tuple[MFFit, dict[str, float], float]:
    """Of every (candidate, fold-in L2), the best validation AUC of the folded-in scores:
    the fit with that L2, its description plus ``fold_in_l2``, and the AUC."""
    y_val = hist.labels[val_t.idx]
    best: tuple[float, MFFit, dict[str, float]] | None = None
    for described, fit in candidates:
        for lam_f in fold_in_l2:
            f = dataclasses.replace(fit, lam=lam_f)
            auc = auc_score(y_val, fold_in_scores(f, hist, val_t))
            if best is None or auc > best[0]:
                best = (auc, f, {**described, "fold_in_l2": lam_f})
    assert best is not None, "an empty grid"
    return best[1], best[2], best[0]


# -- item co-occurrence SVD -----------------------------------------------------------------------
def fit_cooccurrence(
    hist: Histories, t1: int, factors: int, engaged: bool, bias_l2: float, seed: int = 0
) -> MFFit:
    """Item vectors from who-saw-what alone: the top ``factors`` right singular vectors of
    the training window's user x item matrix (event counts -- every exposure, or only the
    engaged ones) normalized by degree -- each user's row by ``1/sqrt(1 + row sum)``, then
    each item's column by ``1/sqrt(1 + its column sum)`` (a popular item or a long history
    does not dominate; the order measured better on validation than the symmetric
    ``D_u^-1/2 X D_i^-1/2``, BENCHMARKS.md) -- scaled to unit mean square; biases are
    shrunk item means of the response (``bias_l2``). A truncated randomized SVD over the
    sparse matrix (``torch.svd_lowrank``, 10 power iterations: close to the exact one,
    BENCHMARKS.md). The labels enter only the biases: what places items near each other is
    that the same users were shown (or took) them. Scored as a fold-in (``fold_in_scores``):
    its ``user_vec`` is zero."""
    import torch

    m = train_mask(hist, t1)
    users, items, r = event_users(hist)[m], hist.item_id[m], response(hist)[m]
    uniq, inv = np.unique(items, return_inverse=True)
    n_items = len(uniq)
    mu = float(r.mean()) if len(r) else 0.0
    b_item = np.bincount(inv, weights=r - mu, minlength=n_items) / (
        np.bincount(inv, minlength=n_items) + bias_l2
    )
    keep = hist.labels[m] > 0 if engaged else np.ones(len(inv), dtype=bool)
    key, counts = np.unique(users[keep] * n_items + inv[keep], return_counts=True)
    row, col, val = key // n_items, key % n_items, counts.astype(np.float64)
    val /= np.sqrt(np.bincount(row, weights=val, minlength=hist.n_users)[row] + 1.0)
    val /= np.sqrt(np.bincount(col, weights=val, minlength=n_items)[col] + 1.0)
    vec = np.zeros((n_items, factors))
    k = min(factors, hist.n_users, n_items)
    if len(val) and k > 0:
        X = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([row, col])),
            torch.from_numpy(val),
            (hist.n_users, n_items),
            check_invariants=True,
        ).coalesce()
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            _, _, V = torch.svd_lowrank(X, q=min(k + 16, hist.n_users, n_items), niter=10)
        finally:
            torch.random.set_rng_state(state)
        vec[:, :k] = V[:, :k].numpy() * np.sqrt(n_items / k)
    index = dict(zip(uniq.tolist(), range(n_items), strict=True))
    item_vec = np.concatenate([vec, b_item[:, None]], 1)
    return MFFit(mu, np.zeros((hist.n_users, factors + 1)), index, item_vec, 1.0)


CoocGrid = list[tuple[int, bool, MFFit]]  # (factors, engaged only, fit)


def cooccurrence_grid(
    hist: Histories,
    t1: int,
    factors: tuple[int, ...],
    bias_l2: float = COOC_BIAS_L2,
    seed: int = 0,
) -> CoocGrid:
    """``fit_cooccurrence`` for every width and both matrices (exposures, engaged events)."""
    return [
        (k, e, fit_cooccurrence(hist, t1, k, e, bias_l2, seed))
        for k in factors
        for e in (False, True)
    ]


def choose_cooccurrence(
    hist: Histories, val_t: Targets, grid: CoocGrid, fold_in_l2: tuple[float, ...]
) -> tuple[MFFit, dict[str, float], float]:
    """The (matrix, width, fold-in L2) of the best validation AUC of the folded-in scores."""
    candidates = [({"factors": k, "engaged_only": float(e)}, f) for k, e, f in grid]
    return _best_fold_in(hist, val_t, candidates, fold_in_l2)


# -- the rows ------------------------------------------------------------------------------------
@dataclasses.dataclass
class ClassicResult:
    name: str
    test: Metrics
    val_auc: float
    params: int
    online_mflops_per_candidate: float
    seconds: float
    chosen: dict[str, float]


def _platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Logistic calibration a * s + b fitted on validation (Newton steps)."""
    s = (scores - scores.mean()) / (scores.std() + 1e-12)
    a, b = 1.0, 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-(a * s + b)))
        g = np.array([((p - labels) * s).sum(), (p - labels).sum()])
        w = p * (1 - p)
        h = np.array([[(w * s * s).sum(), (w * s).sum()], [(w * s).sum(), w.sum()]]) + 1e-9
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    m, sd = scores.mean(), scores.std() + 1e-12
    return a / sd, b - a * m / sd


def _metrics(
    hist: Histories, targets: Targets, scores: np.ndarray, calib: tuple[float, float]
) -> Metrics:
    a, b = calib
    prob = 1 / (1 + np.exp(-(a * scores + b)))
    return compute_metrics({"label": hist.labels[targets.idx], "prob": prob})


def evaluate_classic(
    hist: Histories,
    t1: int,
    t2: int,
    per_user: int,
    names: list[str] | None = None,
    *,
    mf_factors: tuple[int, ...] = MF_FACTORS_GRID,
    mf_l2: tuple[float, ...] = MF_L2_GRID,
    fold_in_l2: tuple[float, ...] = FOLD_IN_L2_GRID,
) -> list[ClassicResult]:
    """Every classic row (or those named), fitted on [.., t1), chosen on [t1, t2), tested
    on [t2, ..), on ``per_user`` targets a user per window (as ``select_targets``)."""
    val_t = Targets.of(hist, Window(t1, t2), per_user)
    test_t = Targets.of(hist, Window(t2, 2**62), per_user)
    y_val = hist.labels[val_t.idx]
    out: list[ClassicResult] = []
    wanted = set(names) if names is not None else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    def add(
        name: str,
        score: Callable[[Targets], np.ndarray],
        params: int,
        mflops: float,
        t0: float,
        chosen: dict[str, float],
    ) -> None:
        sv, st = score(val_t), score(test_t)
        calib = _platt(sv, y_val)
        out.append(
            ClassicResult(
                name,
                _metrics(hist, test_t, st, calib),
                auc_score(y_val, sv),
                params,
                mflops,
                time.perf_counter() - t0,
                chosen,
            )
        )

    def best_lam(make: Callable[[float], Callable[[Targets], np.ndarray]]) -> float:
        return max(SHRINKAGE_GRID, key=lambda lam: auc_score(y_val, make(lam)(val_t)))

    if want("item bias"):
        t0 = time.perf_counter()

        def item_only(lam: float) -> Callable[[Targets], np.ndarray]:
            f = fit_biases(hist, t1, None, lam)
            return lambda t: f.mu + f.item(hist.item_id[t.idx])

        lam = best_lam(item_only)
        n_items = len(np.unique(hist.item_id[train_mask(hist, t1)]))
        add("item bias", item_only(lam), n_items, 0.0, t0, {"lambda": lam})
    if want("user bias"):
        t0 = time.perf_counter()

        def user_only(lam: float) -> Callable[[Targets], np.ndarray]:
            f = fit_biases(hist, t1, lam, None)
            return lambda t: f.mu + f.b_user[t.user]

        lam = best_lam(user_only)
        add("user bias", user_only(lam), hist.n_users, 0.0, t0, {"lambda": lam})
    if want("user + item bias"):
        t0 = time.perf_counter()

        def both(lam: float) -> Callable[[Targets], np.ndarray]:
            f = fit_biases(hist, t1, lam, lam)
            return lambda t: f.mu + f.b_user[t.user] + f.item(hist.item_id[t.idx])

        lam = best_lam(both)
        n = hist.n_users + len(np.unique(hist.item_id[train_mask(hist, t1)]))
        add("user + item bias", both(lam), n, 0.0, t0, {"lambda": lam})
    if want("history heuristic"):
        t0 = time.perf_counter()
        item_fits = {lam: fit_biases(hist, t1, None, lam) for lam in SHRINKAGE_GRID}

        def heuristic(lam_u: float, lam_i: float) -> Callable[[Targets], np.ndarray]:
            f = item_fits[lam_i]
            return lambda t: history_means(hist, t, f.mu, lam_u) + f.item(hist.item_id[t.idx])

        grid = [(a, b) for a in SHRINKAGE_GRID for b in SHRINKAGE_GRID]
        lam_u, lam_i = max(grid, key=lambda g: auc_score(y_val, heuristic(*g)(val_t)))
        add(
            "history heuristic",
            heuristic(lam_u, lam_i),
            len(item_fits[lam_i].b_item),
            0.0,
            t0,
            {"lambda_user": lam_u, "lambda_item": lam_i},
        )
    if want("biased MF") or want("MF, user folded in"):
        t0 = time.perf_counter()
        mf = mf_grid(hist, t1, val_t, mf_factors, mf_l2)
        if want("biased MF"):
            # The plain MF's own choice: the fit with the best validation AUC of p_u . q_i.
            auc, k, lam, its, fit = max(mf, key=lambda f: f[0])
            add(
                "biased MF",
                lambda t: fit.score(t.user, hist.item_id[t.idx]),
                fit.user_vec.size + fit.item_vec.size,
                2 * (k + 1) / 1e6,
                t0,
                {"factors": k, "l2": lam, "iterations": its},
            )
        if want("MF, user folded in"):
            # The fold-in's own choice, jointly over the factorization and its L2.
            best_fold, chosen, _ = choose_fold_in(hist, val_t, mf, fold_in_l2)
            k = int(chosen["factors"])
            # Per request: the (k+1)^2 solve, amortized over m = 512 candidates.
            cost = (2 * (k + 1) + (k + 1) ** 3 / 512) / 1e6
            add(
                "MF, user folded in",
                lambda t: fold_in_scores(best_fold, hist, t),
                best_fold.item_vec.size,
                cost,
                t0,
                chosen,
            )
    if want("co-occurrence SVD, user folded in"):
        t0 = time.perf_counter()
        cooc = cooccurrence_grid(hist, t1, COOC_FACTORS_GRID)
        best_cooc, chosen_c, _ = choose_cooccurrence(hist, val_t, cooc, COOC_L2_GRID)
        k = int(chosen_c["factors"])
        add(
            "co-occurrence SVD, user folded in",
            lambda t: fold_in_scores(best_cooc, hist, t),
            best_cooc.item_vec.size,
            (2 * (k + 1) + (k + 1) ** 3 / 512) / 1e6,
            t0,
            chosen_c,
        )
    return out
