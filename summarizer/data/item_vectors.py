"""Pretrained item vectors in memory: one version of the store's ``item_vectors`` table
(summarizer/store/item_vectors.py), as the training code takes them."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class ItemVectors:
    """One version of the item-vectors table, in memory."""

    item_ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, k) float32
    bias: np.ndarray  # (n,) float32
    meta: dict[str, Any]  # factors, l2, mean_response, through_day, ...
    version: int

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def mean_response(self) -> float:
        return float(self.meta["mean_response"])
