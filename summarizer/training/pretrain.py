"""Pretrained item vectors for the ridge read-out: fitted on the training window alone.

Two starts, each the item side of a classic fold-in baseline (summarizer/training/classic.py):
the item co-occurrence SVD (the default: who-saw-what places items, which is what data with
few events an item can still tell) and biased matrix factorization of the labels.

The ridge read-out learns its item vectors end to end, but from a random start it needs
many epochs and ends below the classic fold-in; started from a baseline's item vectors and
biases, the untrained read-out *is* that baseline ("co-occurrence SVD, user folded in" or
"MF, user folded in"), and training goes on from there (BENCHMARKS.md, issue 21). The
start's hyper-parameters and the read-out's ridge L2 are chosen jointly on validation AUC,
by the baseline's own search.
"""

from __future__ import annotations

import numpy as np
import torch

from summarizer.data.histories import Histories
from summarizer.data.item_vectors import ItemVectors
from summarizer.model.encoder import WEIGHT_SCALE, hash_ids
from summarizer.model.vista_model import VistaModel
from summarizer.training import classic
from summarizer.training.targets import Window

# The start's search: the baseline's grids less their smallest L2 (0.3: far from chosen on
# ml-latest-small, BENCHMARKS.md) -- each candidate costs a (k+1)^2 solve a validation
# target, and this runs inside every training. On the evaluation's own validation targets:
# a search on 16 a user instead picked worse pairs (val AUC 0.7685 vs 0.7735, BENCHMARKS.md).
MF_L2_GRID = tuple(x for x in classic.MF_L2_GRID if x >= 1.0)
FOLD_IN_L2_GRID = tuple(x for x in classic.FOLD_IN_L2_GRID if x >= 1.0)


def load_item_vectors(
    model: VistaModel, item_ids: np.ndarray, vectors: np.ndarray, bias: np.ndarray
) -> int:
    """Write pretrained item vectors (n, k) and biases (n,) into the ridge read-out's tables
    (each item's first-hash row). Returns the rows written."""
    ridge = model.ridge
    if ridge is None:
        raise ValueError("this model has no ridge read-out (ModelSpec.ridge_dim == 0)")
    ids = torch.tensor(np.asarray(item_ids, dtype=np.int64))
    rows = ridge.load_vectors(ids, torch.tensor(np.asarray(vectors, dtype=np.float32)))
    with torch.no_grad():
        h1, _ = hash_ids(ids, ridge.buckets)
        ridge.bias.weight.zero_()
        ridge.bias.weight[h1, 0] = torch.tensor(np.asarray(bias, dtype=np.float32))
    return rows


def start_rating_at_mean(model: VistaModel, mean: float) -> None:
    """A rating head's bias at the mean response: with the MLP a zero residual, the
    started model's rating is then the mean plus the ridge score (what the fold-in
    predicts), not the ridge's deviation alone."""
    head = model.ranker.rating
    if head is not None:
        with torch.no_grad():
            head.bias.fill_(float(mean) / WEIGHT_SCALE)


def set_ridge_l2(model: VistaModel, l2: float) -> None:
    """The read-out's ridge penalty, recorded in the model's spec (saved with it)."""
    assert model.ridge is not None
    model.ridge.l2 = float(l2)
    model.spec = model.spec.model_copy(update={"ridge_l2": float(l2)})


def init_ridge_from_mf(
    model: VistaModel,
    hist: Histories,
    train_window: Window,
    val_window: Window,
    per_user: int,
    seed: int = 0,
) -> dict[str, float]:
    """Fit MF with the ridge read-out's width on events before ``train_window.end``, choose
    its L2 and the fold-in's on the validation targets, and load its item factors, biases,
    mean and fold-in L2 into the read-out. Returns what was chosen."""
    ridge = model.ridge
    if ridge is None:
        raise ValueError("this model has no ridge read-out (ModelSpec.ridge_dim == 0)")
    val_t = classic.Targets.of(hist, val_window, per_user)
    grid = classic.mf_grid(hist, train_window.end, val_t, (ridge.dim,), MF_L2_GRID, seed=seed)
    fit, chosen, val_auc = classic.choose_fold_in(hist, val_t, grid, FOLD_IN_L2_GRID)
    _load_fit(model, fit)
    return {**chosen, "fold_in_val_auc": val_auc}


def init_ridge_from_cooccurrence(
    model: VistaModel,
    hist: Histories,
    train_window: Window,
    val_window: Window,
    per_user: int,
    seed: int = 0,
) -> dict[str, float]:
    """Start the read-out from the item co-occurrence SVD of events before
    ``train_window.end`` (``classic.fit_cooccurrence``): its matrix (exposures or engaged
    events), width (at most the read-out's; the rest of each vector starts at zero) and the
    fold-in L2 chosen on the validation targets. Returns what was chosen."""
    ridge = model.ridge
    if ridge is None:
        raise ValueError("this model has no ridge read-out (ModelSpec.ridge_dim == 0)")
    fit, chosen = _cooccurrence_search(hist, train_window, val_window, per_user, ridge.dim, seed)
    _load_fit(model, fit)
    return chosen


def _cooccurrence_search(
    hist: Histories,
    train_window: Window,
    val_window: Window,
    per_user: int,
    max_width: int,
    seed: int,
) -> tuple[classic.MFFit, dict[str, float]]:
    """The co-occurrence fold-in baseline's own search, widths at most ``max_width``: the
    fit and what was chosen (with its validation AUC)."""
    val_t = classic.Targets.of(hist, val_window, per_user)
    widths = tuple(k for k in classic.COOC_FACTORS_GRID if k <= max_width) or (max_width,)
    grid = classic.cooccurrence_grid(hist, train_window.end, widths, seed=seed)
    fit, chosen, val_auc = classic.choose_cooccurrence(hist, val_t, grid, classic.COOC_L2_GRID)
    return fit, {**chosen, "fold_in_val_auc": val_auc}


def init_items_from_cooccurrence(
    model: VistaModel,
    hist: Histories,
    train_window: Window,
    val_window: Window,
    per_user: int,
    seed: int = 0,
) -> dict[str, float]:
    """Start the shared item table (events and candidates, every model kind) from the item
    co-occurrence SVD of events before ``train_window.end``: the matrix and width (at most
    the table's) whose fold-in reads validation best, as for the ridge read-out."""
    dim = model.items.table_a.weight.shape[1]
    fit, chosen = _cooccurrence_search(hist, train_window, val_window, per_user, dim, seed)
    ids = np.array(sorted(fit.item_index), dtype=np.int64)
    vec = fit.item_vec[[fit.item_index[int(i)] for i in ids], :-1]
    model.items.load_vectors(torch.tensor(ids), torch.tensor(vec, dtype=torch.float32))
    return chosen


def _load_fit(model: VistaModel, fit: classic.MFFit) -> None:
    """A fold-in's item vectors (zero-padded to the read-out's width), biases, mean response
    and L2 into the read-out: the untrained read-out then scores as that fold-in does."""
    ridge = model.ridge
    assert ridge is not None
    ids = np.array(sorted(fit.item_index), dtype=np.int64)
    vec = fit.item_vec[[fit.item_index[int(i)] for i in ids]]
    k = vec.shape[1] - 1
    if k > ridge.dim:
        raise ValueError(f"{k} item factors do not fit a {ridge.dim}-wide ridge read-out")
    padded = np.zeros((len(ids), ridge.dim))
    padded[:, :k] = vec[:, :k]
    load_item_vectors(model, ids, padded, vec[:, k])
    ridge.set_mean_response(fit.mu)
    start_rating_at_mean(model, fit.mu)
    set_ridge_l2(model, fit.lam)


def init_ridge_from_table(
    model: VistaModel, vectors: ItemVectors, val_window: Window
) -> dict[str, float]:
    """Load a version of the store's item-vectors table (``vista job item-vectors``) into the
    read-out: vectors, biases and the mean response they are centred on (the ridge L2 stays
    the spec's). Refused when the vectors saw events of the validation window or later --
    they would leak the labels the model is chosen and tested on."""
    ridge = model.ridge
    if ridge is None:
        raise ValueError("this model has no ridge read-out (ModelSpec.ridge_dim == 0)")
    if vectors.dim != ridge.dim:
        raise ValueError(
            f"item vectors (version {vectors.version}) are {vectors.dim} wide, the model's "
            f"ridge read-out {ridge.dim}: set [item_vectors] factors = model.ridge_dim"
        )
    max_ts = vectors.meta.get("max_ts")
    if max_ts is not None and int(max_ts) >= val_window.start:
        raise ValueError(
            f"item vectors (version {vectors.version}) include events up to ts {max_ts}, "
            f"inside the validation window (from ts {val_window.start}): rerun "
            "`vista job item-vectors --training-window`"
        )
    rows = load_item_vectors(model, vectors.item_ids, vectors.vectors, vectors.bias)
    ridge.set_mean_response(vectors.mean_response)
    start_rating_at_mean(model, vectors.mean_response)
    return {"version": vectors.version, "items": len(vectors.item_ids), "rows": rows}
