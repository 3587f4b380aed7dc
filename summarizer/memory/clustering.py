"""TWIN-V2-style hierarchical clustering of a lifelong history into a memory bank.

A user's history (up to 10^6 events) is compressed into at most C cluster
tokens for the general search unit (``kernels.topk``):

1. Events are grouped by **engagement level** (``engagement_levels``: ignored,
   clicked, liked, and for explicit ratings low / mid / high), so a cluster
   never mixes what the user skipped with what they loved.
2. Within each group, **recursive k-means** (FAISS): a node of s > γ events is
   split into ``k = min(ceil(s / γ), branching)`` clusters, and every child
   still above γ is split again, until every cluster holds at most γ events.
   Small branching keeps each k-means cheap (cost ~ n · branching · d per tree
   level, log_branching(n/γ) levels) instead of one k-means with n/γ centroids.
3. A cluster token is the **mean** of its events' embeddings, with the
   categorical features (item, action) of the event **nearest the centroid**,
   the group's level and the cluster **size** (the stage-2 attention adds
   log(size) as a bias).

When n/γ clusters would exceed C, γ is raised to ``ceil(2n / C)`` (recursive
k-means leaves clusters at about half the bound on average), and doubled again
in the rare case the count still exceeds C. Deterministic for a given seed.

**Incremental** (the nightly job): ``assign_new`` adds a day's events to the
nearest cluster of the same level (running sums, so means stay exact) and says
whether any cluster passed γ (or a new level appeared with no room left); only
then is that user's history re-clustered from the event log, so the nightly job
never re-clusters the whole population.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from summarizer.config import ClusterParams
from summarizer.data.events import Action

# Explicit ratings (weight) fall in three levels after the implicit actions.
_RATING_LEVELS = (2.5, 4.0)  # < 2.5 low, [2.5, 4) mid, >= 4 high


def engagement_levels(action: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Per event, its engagement group: the action code, or for rated events (a weight is
    present) one of three rating levels placed after the action codes."""
    action = np.asarray(action, dtype=np.int64)
    level = action.copy()
    if weight is not None:
        w = np.asarray(weight, dtype=np.float64)
        rated = ~np.isnan(w)
        level[rated] = int(max(Action)) + 1 + np.searchsorted(_RATING_LEVELS, w[rated], "right")
    return level


@dataclasses.dataclass
class MemoryBank:
    """One user's cluster tokens. ``sums`` (float64) keep the means exact under additions."""

    sums: np.ndarray  # (c, d) float64: sum of member embeddings
    sizes: np.ndarray  # (c,) int64
    levels: np.ndarray  # (c,) int64 engagement level
    rep_item: np.ndarray  # (c,) int64 item of the member nearest the centroid
    rep_action: np.ndarray  # (c,) int64 its action

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def centroids(self) -> np.ndarray:
        """(c, d) float32 cluster tokens: the mean embedding of each cluster."""
        return (self.sums / np.maximum(self.sizes, 1)[:, None]).astype(np.float32)

    @property
    def n_events(self) -> int:
        return int(self.sizes.sum())


def effective_cluster_size(n: int, params: ClusterParams) -> int:
    """γ, raised when n events at γ per cluster would need more than C clusters."""
    need = math.ceil(2 * n / params.max_clusters)
    return max(params.max_cluster_size, need)


def _kmeans_labels(x: np.ndarray, k: int, params: ClusterParams, salt: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=params.iterations,
        seed=(params.seed * 1_000_003 + salt) % (2**31 - 1),
        min_points_per_centroid=1,
        max_points_per_centroid=256,
        verbose=False,
    )
    km.train(x)
    _, labels = km.index.search(x, 1)
    return labels[:, 0]


def _split_tree(x: np.ndarray, gamma: int, params: ClusterParams) -> list[np.ndarray]:
    """Indices (into x) of clusters of at most gamma points, by recursive k-means."""
    out: list[np.ndarray] = []
    stack = [np.arange(x.shape[0])]
    salt = 0
    while stack:
        idx = stack.pop()
        if idx.shape[0] <= gamma:
            out.append(idx)
            continue
        k = min(math.ceil(idx.shape[0] / gamma), params.branching)
        salt += 1
        labels = _kmeans_labels(np.ascontiguousarray(x[idx]), k, params, salt)
        parts = [idx[labels == j] for j in range(k)]
        parts = [p for p in parts if p.shape[0]]
        if len(parts) == 1:
            # k-means could not separate them (identical points): cut in order.
            parts = [idx[i : i + gamma] for i in range(0, idx.shape[0], gamma)]
        stack.extend(reversed(parts))
    return out


def _bank_from_groups(
    emb: np.ndarray,
    item: np.ndarray,
    action: np.ndarray,
    groups: list[tuple[int, np.ndarray]],
) -> MemoryBank:
    d = emb.shape[1]
    c = len(groups)
    sums = np.zeros((c, d), dtype=np.float64)
    sizes = np.zeros(c, dtype=np.int64)
    levels = np.zeros(c, dtype=np.int64)
    rep_item = np.zeros(c, dtype=np.int64)
    rep_action = np.zeros(c, dtype=np.int64)
    for j, (level, idx) in enumerate(groups):
        members = emb[idx].astype(np.float64)
        sums[j] = members.sum(0)
        sizes[j] = idx.shape[0]
        levels[j] = level
        mean = sums[j] / sizes[j]
        nearest = idx[int(np.argmin(((members - mean) ** 2).sum(1)))]
        rep_item[j], rep_action[j] = item[nearest], action[nearest]
    return MemoryBank(sums, sizes, levels, rep_item, rep_action)


def cluster_history(
    emb: np.ndarray,
    item: np.ndarray,
    action: np.ndarray,
    level: np.ndarray,
    params: ClusterParams | None = None,
) -> MemoryBank:
    """A history's events (embeddings (n, d), item ids, actions, engagement levels) -> bank."""
    return cluster_history_with_labels(emb, item, action, level, params)[0]


def cluster_history_with_labels(
    emb: np.ndarray,
    item: np.ndarray,
    action: np.ndarray,
    level: np.ndarray,
    params: ClusterParams | None = None,
) -> tuple[MemoryBank, np.ndarray]:
    """:func:`cluster_history`, plus each event's cluster index (n,)."""
    params = params or ClusterParams()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n = emb.shape[0]
    if emb.ndim != 2 or not (len(item) == len(action) == len(level) == n):
        raise ValueError(
            f"emb must be (n, d) with n item ids, actions and levels; got emb {emb.shape}, "
            f"{len(item)} items, {len(action)} actions, {len(level)} levels"
        )
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or infinity")
    import faiss

    gamma = effective_cluster_size(n, params)
    level = np.asarray(level, dtype=np.int64)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(params.threads)
    try:
        while True:
            groups: list[tuple[int, np.ndarray]] = []
            for g in np.unique(level):
                members = np.flatnonzero(level == g)
                groups.extend(
                    (int(g), members[c]) for c in _split_tree(emb[members], gamma, params)
                )
            if len(groups) <= params.max_clusters or gamma >= n:
                break
            gamma *= 2
    finally:
        faiss.omp_set_num_threads(threads)
    labels = np.empty(n, dtype=np.int64)
    for j, (_, idx) in enumerate(groups):
        labels[idx] = j
    return _bank_from_groups(emb, np.asarray(item), np.asarray(action), groups), labels


def assign_new(
    bank: MemoryBank,
    emb: np.ndarray,
    level: np.ndarray,
    params: ClusterParams | None = None,
) -> tuple[MemoryBank, bool]:
    """Add new events to the nearest cluster (squared L2, same level) of a copy of the bank.

    Returns the new bank and whether the user needs re-clustering: a cluster passed
    the size bound, or an event's level has no cluster yet. (Events of a level with
    no cluster are left out of the returned bank; re-clustering picks them up.)
    """
    params = params or ClusterParams()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    level = np.asarray(level, dtype=np.int64)
    if emb.ndim != 2 or emb.shape[0] != level.shape[0]:
        raise ValueError(f"emb (n, d) and n levels expected, got {emb.shape} and {level.shape}")
    if len(bank) and emb.shape[1] != bank.sums.shape[1]:
        raise ValueError(f"embedding width {emb.shape[1]} != the bank's {bank.sums.shape[1]}")
    out = MemoryBank(
        bank.sums.copy(),
        bank.sizes.copy(),
        bank.levels.copy(),
        bank.rep_item.copy(),
        bank.rep_action.copy(),
    )
    orphan = False
    cent = out.centroids
    for g in np.unique(level):
        rows = np.flatnonzero(level == g)
        cands = np.flatnonzero(out.levels == g)
        if cands.shape[0] == 0:
            orphan = True
            continue
        c = cent[cands]
        d2 = (emb[rows] ** 2).sum(1, keepdims=True) - 2 * emb[rows] @ c.T + (c**2).sum(1)
        target = cands[np.argmin(d2, axis=1)]
        np.add.at(out.sums, target, emb[rows].astype(np.float64))
        np.add.at(out.sizes, target, 1)
    gamma = effective_cluster_size(bank.n_events + emb.shape[0], params)
    return out, orphan or bool((out.sizes > gamma).any())
