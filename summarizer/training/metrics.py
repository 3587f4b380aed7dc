"""Ranking-quality metrics: AUC, logloss, normalized entropy, rating MAE."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd


@dataclasses.dataclass
class Metrics:
    auc: float
    logloss: float
    ne: float  # logloss / entropy of the base rate (1.0 = no better than the prior)
    mae: float | None
    n: int
    positive_rate: float

    def to_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted as half."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def compute_metrics(pred: dict[str, np.ndarray]) -> Metrics:
    y, p = pred["label"], pred["prob"]
    if len(y) == 0:
        raise ValueError("no targets to evaluate in this window")
    ll = log_loss(y, p)
    base = float(np.mean(y))
    h = -(base * math.log(base) + (1 - base) * math.log(1 - base)) if 0 < base < 1 else float("nan")
    mae = None
    if "rating_pred" in pred:
        has = ~np.isnan(pred["rating_true"])
        if has.any():
            mae = float(np.mean(np.abs(pred["rating_pred"][has] - pred["rating_true"][has])))
    return Metrics(
        auc=auc_score(y, p), logloss=ll, ne=ll / h, mae=mae, n=len(y), positive_rate=base
    )
