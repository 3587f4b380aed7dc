"""Pretrained item vectors for the ridge read-out: matrix factorization of the training window.

The ridge read-out learns its item vectors end to end, but from a random start it needs
many epochs; started from the item factors (and biases) of a biased matrix factorization
fitted by alternating least squares on the training window alone, it begins where the
"MF, user folded in" baseline ends and improves on it (BENCHMARKS.md, issue 21). The L2
of the factorization is chosen on validation AUC, as the baseline's is.
"""

from __future__ import annotations

import numpy as np
import torch

from summarizer.data.histories import Histories
from summarizer.model.encoder import hash_ids
from summarizer.model.vista_model import VistaModel
from summarizer.training import classic
from summarizer.training.metrics import auc_score
from summarizer.training.targets import Window

MF_L2_GRID = (1.0, 10.0, 30.0)


def init_ridge_from_mf(
    model: VistaModel,
    hist: Histories,
    train_window: Window,
    val_window: Window,
    per_user: int,
    seed: int = 0,
) -> dict[str, float]:
    """Fit MF with the ridge read-out's width on events before ``train_window.end``, pick
    its L2 on the validation targets, and load its item factors and biases into the
    read-out's tables. Returns what was chosen."""
    ridge = model.ridge
    if ridge is None:
        raise ValueError("this model has no ridge read-out (ModelSpec.ridge_dim == 0)")
    t1 = train_window.end
    val_t = classic.Targets.of(hist, val_window, per_user)
    y_val = hist.labels[val_t.idx]

    def val_auc(fit: classic.MFFit) -> float:
        return auc_score(y_val, fit.score(val_t.user, hist.item_id[val_t.idx]))

    fits = [classic.fit_mf(hist, t1, ridge.dim, lam, val_auc, seed=seed) for lam in MF_L2_GRID]
    aucs = [val_auc(f) for f, _ in fits]
    best = int(np.argmax(aucs))
    fit, iterations = fits[best]
    ids = torch.tensor(sorted(fit.item_index), dtype=torch.int64)
    rows = [fit.item_index[int(i)] for i in ids]
    vec = torch.from_numpy(fit.item_vec[rows]).float()
    ridge.load_vectors(ids, vec[:, : ridge.dim])
    with torch.no_grad():
        h1, _ = hash_ids(ids, ridge.buckets)
        ridge.bias.weight[h1, 0] = vec[:, ridge.dim]
    return {"mf_l2": MF_L2_GRID[best], "mf_iterations": iterations, "mf_val_auc": aucs[best]}
