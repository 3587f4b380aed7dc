"""TWIN-V2 memory banks inside training and evaluation (``ModelSpec.memory = "clusters"``).

Serving searches cluster tokens that the nightly job keeps: clustered once,
then each day's events join the nearest cluster of their level. The harness
reproduces that per user with a **cut-off time** T:

* events before T are clustered (:func:`summarizer.memory.clustering.cluster_history`,
  on the model's own event encodings, detached);
* events from T on join the nearest cluster of their engagement level, as the
  incremental job adds them (a level with no cluster yet gets one cluster per
  such event, as the job's re-clustering would start it);

which gives every event a cluster id (:func:`bank_partition`). A request that
sees events ``[0, p)`` then attends over the cluster tokens of those events:
the mean encoding of each cluster's members before p, with their count as the
size (:func:`prefix_cluster_tokens`), so the tokens are differentiable and
carry no event at or after the request.

Evaluation windows use their own start as T (nothing of the window shapes the
clusters); training re-partitions every epoch with T = the end of the training
window (the clusters' shape then sees later training events, never their
labels' effect on the model's prediction of earlier targets beyond that).
"""

from __future__ import annotations

import numpy as np
import torch

from summarizer.config import ClusterParams
from summarizer.data.histories import Histories
from summarizer.memory.clustering import (
    cluster_history_with_labels,
    engagement_levels,
)
from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import VistaModel

ENCODE_CHUNK = 65_536


def encode_events(
    model: VistaModel,
    item: np.ndarray,
    ts: np.ndarray,
    action: np.ndarray,
    weight: np.ndarray,
    prev_ts: int | None = None,
) -> np.ndarray:
    """One user's events as memory-bank tokens (n, d) float32 (``VistaModel.bank_embeddings``),
    encoded in chunks with the time gaps of one pass (``prev_ts``: the user's latest event
    time before these). Used by the harness and by the Spark cluster job alike."""
    out = np.empty((len(item), model.spec.d_model), np.float32)
    for a in range(0, len(item), ENCODE_CHUNK):
        b = min(a + ENCODE_CHUNK, len(item))
        events = EventBatch.from_numpy(item[a:b], ts[a:b], action[a:b], weight[a:b])
        out[a:b] = model.bank_embeddings(events, prev_ts).numpy()
        # Gaps use the running maximum of earlier times (summarizer.model.encoder.previous_times).
        top = int(ts[a:b].max())
        prev_ts = top if prev_ts is None else max(prev_ts, top)
    return out


def bank_partition(
    model: VistaModel, hist: Histories, cutoff: int, params: ClusterParams
) -> np.ndarray:
    """Every event's cluster id within its user (int64, aligned with ``hist``'s arrays)."""
    was_training = model.training
    model.eval()
    labels = np.empty(hist.n_events, np.int64)
    try:
        for u in range(hist.n_users):
            a, b = int(hist.offsets[u]), int(hist.offsets[u + 1])
            if a == b:
                continue
            emb = encode_events(
                model, hist.item_id[a:b], hist.ts[a:b], hist.action[a:b], hist.weight[a:b]
            )
            level = engagement_levels(hist.action[a:b], hist.weight[a:b])
            cut = int(np.searchsorted(hist.ts[a:b], cutoff, "left"))
            out = labels[a:b]
            if cut:
                bank, out[:cut] = cluster_history_with_labels(
                    emb[:cut], hist.item_id[a:b][:cut], hist.action[a:b][:cut], level[:cut], params
                )
                cent, levels = bank.centroids, bank.levels
            else:
                cent, levels = np.zeros((0, emb.shape[1]), np.float32), np.zeros(0, np.int64)
            # Later events: the nearest cluster of their level (one matrix, no Python loop);
            # an event whose level has no cluster gets a cluster of its own.
            later = emb[cut:]
            d2 = (later**2).sum(1, keepdims=True) - 2 * later @ cent.T + (cent**2).sum(1)
            d2[levels[None, :] != level[cut:, None]] = np.inf
            nearest = np.argmin(d2, axis=1) if len(cent) else np.zeros(len(later), np.int64)
            orphan = ~np.isfinite(d2.min(1)) if len(cent) else np.ones(len(later), bool)
            nearest[orphan] = len(cent) + np.arange(int(orphan.sum()))
            out[cut:] = nearest
    finally:
        model.train(was_training)
    return labels


def prefix_cluster_tokens(
    e: torch.Tensor, labels: torch.Tensor, limits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One user's cluster tokens as of each request.

    e (n, d) the user's event encodings, labels (n,) their cluster ids, limits (R,)
    each request's history length. Returns tokens (R, c, d) = mean of each
    cluster's members before the limit (0 where none) and counts (R, c).
    """
    n, d = e.shape
    c = int(labels.max()) + 1 if n else 1
    order, inverse = torch.unique(limits, sorted=True, return_inverse=True)  # (J,)
    # Event i first counts for the requests whose limit is > i: interval j = #limits <= i.
    interval = torch.searchsorted(order, torch.arange(n), right=True)  # (n,) in 0..J
    keep = interval < order.numel()
    key = interval[keep] * c + labels[keep]
    J = order.numel()
    sums = e.new_zeros(J * c, d).index_add(0, key, e[keep]).view(J, c, d).cumsum(0)
    counts = torch.zeros(J * c).index_add(0, key, torch.ones(int(keep.sum()))).view(J, c)
    counts = counts.cumsum(0)
    tokens = sums / counts.clamp(min=1).unsqueeze(-1)
    return tokens[inverse], counts[inverse]
