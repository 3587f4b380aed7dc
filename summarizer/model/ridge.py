"""The ridge read-out: a second-moment summary of the history, read by each candidate.

Every event t gets an item vector ``q_t`` (a learned, hashed table of width k, optionally
initialized from pretrained item vectors) and a response ``y_t``: its rating where it has
one, else its label, minus the global mean and the item's learned bias. The summary keeps
two mergeable sums per user,

    A = sum_t x_t x_t^T,   b = sum_t x_t y_t,      x_t = [q_t, 1]      ((k+1) x (k+2))

so folding new events adds to them (the fold law holds exactly) and their size does not
depend on n. At read time the user's preference vector is the ridge solution
``w = (A + lambda I)^-1 b`` and a candidate c's ridge score is ``[q_c, 1] . w + bias_c``:
what the user's own history says of items like c, the user folded in (as a deployed
matrix factorization does for a user it was not retrained on) -- but trained end to end
for the ranking objective, through the solve.

Why: on ml-latest-small a user's preference in item-vector space is what the strongest
classic baseline (MF with the user folded in per target) reads, and what VISTA's
first-moment summary (means of encoded events) could not (BENCHMARKS.md, issue 21).
"""

from __future__ import annotations

import torch
from torch import nn

from summarizer.model.encoder import INIT_STD, EventBatch, hash_ids

ENGAGED = 1  # summarizer.data.events.Action.CLICK: an action at or above it is engaged


def responses(events: EventBatch) -> torch.Tensor:
    """Each event's response (n,) float64: its rating where present, else engaged (0/1)."""
    w = events.weight.double()
    return torch.where(torch.isnan(w), (events.action >= ENGAGED).double(), w)


class RidgeMemory(nn.Module):
    """Item vectors and biases (hashed tables, sparse gradients), the response mean, and
    the ridge algebra of the summary's second moments."""

    def __init__(self, buckets: int, dim: int, l2: float) -> None:
        super().__init__()
        self.buckets, self.dim, self.l2 = buckets, dim, float(l2)
        self.vec_a = nn.Embedding(buckets, dim, sparse=True)
        self.vec_b = nn.Embedding(buckets, dim, sparse=True)
        self.bias = nn.Embedding(buckets, 1, sparse=True)
        nn.init.normal_(self.vec_a.weight, std=INIT_STD)
        nn.init.zeros_(self.vec_b.weight)
        nn.init.zeros_(self.bias.weight)
        # The training data's mean response, set before training (set_mean_response).
        self.mean_response: torch.Tensor
        self.register_buffer("mean_response", torch.zeros(1, dtype=torch.float64))

    def tables(self) -> list[torch.Tensor]:
        """The read-out's learned tables (item vectors and biases)."""
        return [self.vec_a.weight, self.vec_b.weight, self.bias.weight]

    @property
    def moments_shape(self) -> tuple[int, int]:
        return (self.dim + 1, self.dim + 2)

    def set_mean_response(self, mean: float) -> None:
        self.mean_response.fill_(float(mean))

    @torch.no_grad()
    def load_vectors(self, item_ids: torch.Tensor, vectors: torch.Tensor) -> int:
        """Start from pretrained item vectors (n, dim): each item's first-hash row takes its
        vector; every other row of both tables starts at zero (an item the vectors do not
        know adds only to the user's constant term, as in the MF fold-in). Returns the
        rows written; items that share a first-hash bucket keep the last one's vector."""
        if vectors.shape != (item_ids.shape[0], self.dim):
            raise ValueError(
                f"item vectors must be ({item_ids.shape[0]}, {self.dim}), got "
                f"{tuple(vectors.shape)}"
            )
        h1, _ = hash_ids(item_ids, self.buckets)
        self.vec_a.weight.zero_()
        self.vec_b.weight.zero_()
        self.vec_a.weight[h1] = vectors.to(self.vec_a.weight.dtype)
        return int(torch.unique(h1).numel())

    def vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        h1, h2 = hash_ids(item_ids, self.buckets)
        return self.vec_a(h1) + self.vec_b(h2)

    def item_bias(self, item_ids: torch.Tensor) -> torch.Tensor:
        h1, _ = hash_ids(item_ids, self.buckets)
        return self.bias(h1).squeeze(-1)

    def features(self, events: EventBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, k+1) = [q, 1] and y (n,) = response - mean - item bias, float32."""
        q = self.vectors(events.item_id)
        x = torch.cat([q, q.new_ones(q.shape[0], 1)], 1)
        y = responses(events) - self.mean_response - self.item_bias(events.item_id).double()
        return x, y.float()

    def moments(self, events: EventBatch) -> torch.Tensor:
        """The events' contribution to the summary: sum_t x_t (x) [x_t, y_t], (k+1, k+2)."""
        x, y = self.features(events)
        return x.T @ torch.cat([x, y.unsqueeze(1)], 1)

    def solve(self, moments: torch.Tensor) -> torch.Tensor:
        """Preference vectors w (B, k+1) of moments (B, k+1, k+2): (A + l2 I)^-1 b, in
        float64 (A's entries grow with the history), differentiable."""
        m = moments.double()
        A, b = m[..., :-1], m[..., -1]
        eye = torch.eye(self.dim + 1, dtype=torch.float64, device=m.device)
        return torch.linalg.solve(A + self.l2 * eye, b.unsqueeze(-1)).squeeze(-1).float()

    def scores(self, w: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Each candidate's ridge score (M,) from its request's preference vector w (M, k+1)."""
        q = self.vectors(item_ids)
        return (q * w[:, :-1]).sum(-1) + w[:, -1] + self.item_bias(item_ids)
