"""Event encoding: one d-dimensional vector per event.

An event's vector depends only on the event itself and the time of the event
before it (the gap), never on "now", so summaries can be folded incrementally.
Item ids are hashed twice into a fixed table (unseen ids still get a vector;
two hashes make a full collision between two items unlikely).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

SECONDS_PER_DAY = 86_400
_HASH_A = 0x9E3779B1  # odd 32-bit multipliers (Knuth / golden ratio)
_HASH_B = 0x85EBCA77
N_TIME_FEATURES = 5
WEIGHT_SCALE = 5.0
INIT_STD = 0.05  # ratings are 0.5..5; keeps the weight feature near unit scale


@dataclasses.dataclass
class EventBatch:
    """A user's events (or a slice of them) as tensors, in time order."""

    item_id: torch.Tensor  # int64 (n,)
    ts: torch.Tensor  # int64 (n,)
    action: torch.Tensor  # int64 (n,)
    weight: torch.Tensor  # float32 (n,), NaN where absent

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def slice(self, start: int, stop: int) -> EventBatch:
        return EventBatch(
            self.item_id[start:stop],
            self.ts[start:stop],
            self.action[start:stop],
            self.weight[start:stop],
        )

    def to(self, device: torch.device | str) -> EventBatch:
        """The same events on ``device`` (itself when they are there already)."""
        return EventBatch(
            self.item_id.to(device),
            self.ts.to(device),
            self.action.to(device),
            self.weight.to(device),
        )

    @staticmethod
    def empty() -> EventBatch:
        z = torch.zeros(0, dtype=torch.int64)
        return EventBatch(z, z.clone(), z.clone(), torch.zeros(0))

    @staticmethod
    def from_numpy(
        item_id: np.ndarray, ts: np.ndarray, action: np.ndarray, weight: np.ndarray | None
    ) -> EventBatch:
        n = len(item_id)
        w = np.full(n, np.nan, dtype=np.float32) if weight is None else weight

        def tensor(a: np.ndarray, dtype: type) -> torch.Tensor:
            a = np.ascontiguousarray(a, dtype=dtype)
            # Arrow's zero-copy arrays are read-only; torch tensors must own writable memory.
            return torch.from_numpy(a if a.flags.writeable else a.copy())

        return EventBatch(
            tensor(item_id, np.int64),
            tensor(ts, np.int64),
            tensor(action, np.int64),
            tensor(w, np.float32),
        )


def hash_ids(ids: torch.Tensor, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent bucket indices per id (int64 arithmetic wraps, deterministically)."""
    h1 = torch.remainder(ids * _HASH_A + (ids >> 17), buckets)
    h2 = torch.remainder(ids * _HASH_B + (ids >> 13) + 0x2545F491, buckets)
    return h1, h2


def previous_times(ts: torch.Tensor, prev_ts: int | None) -> torch.Tensor:
    """Each event's reference time for its gap: the latest time folded before it.

    ``prev_ts`` is the latest time of the events folded earlier (None: the first
    event is its own). For time-ordered events this is simply the previous
    event's time; an event that arrives late (older than one already folded)
    gets gap 0, so folding day by day in arrival order equals one pass over the
    same sequence.
    """
    prev = torch.empty_like(ts)
    if ts.shape[0]:
        prev[0] = ts[0] if prev_ts is None else prev_ts
        prev[1:] = ts[:-1]
        prev = torch.cummax(prev, 0).values
    return prev


def previous_times_jagged(ts: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """previous_times for users laid back to back; each user's first event has gap 0."""
    prev = torch.empty_like(ts)
    if ts.shape[0]:
        prev[1:] = ts[:-1]
        starts = offsets[:-1][offsets[:-1] < offsets[1:]]
        prev[starts] = ts[starts]
    return prev


def time_features(ts: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """(n, 5): hour-of-day and day-of-week on the circle, and the log gap to the previous event.

    Nothing here depends on the wall clock.
    """
    two_pi = 2.0 * math.pi
    sec_of_day = torch.remainder(ts, SECONDS_PER_DAY).float() / SECONDS_PER_DAY
    dow = (
        torch.remainder(torch.div(ts, SECONDS_PER_DAY, rounding_mode="floor") + 3, 7).float() / 7.0
    )
    gap = torch.log1p((ts - prev).clamp(min=0).float()) / 16.0
    return torch.stack(
        [
            torch.sin(two_pi * sec_of_day),
            torch.cos(two_pi * sec_of_day),
            torch.sin(two_pi * dow),
            torch.cos(two_pi * dow),
            gap,
        ],
        dim=1,
    )


class ItemEmbedding(nn.Module):
    """Hashed item embedding (two tables summed), shared by events and candidates."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        # Sparse gradients: a step touches only the rows of the items in the batch, so
        # training cost does not grow with the table (see train.make_optimizers).
        self.table_a = nn.Embedding(buckets, dim, sparse=True)
        self.table_b = nn.Embedding(buckets, dim, sparse=True)
        nn.init.normal_(self.table_a.weight, std=INIT_STD)
        nn.init.normal_(self.table_b.weight, std=INIT_STD)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h1, h2 = hash_ids(ids, self.buckets)
        return self.table_a(h1) + self.table_b(h2)

    @torch.no_grad()
    def load_vectors(self, item_ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Start from pretrained item vectors (n, w <= dim), rescaled to the table's init
        scale (per-coordinate RMS ``INIT_STD``): each item's first-hash row takes its vector
        (zero-padded), its second-hash row zero; the other rows keep their random start."""
        n, w = vectors.shape
        dim = self.table_a.weight.shape[1]
        if n != item_ids.shape[0] or w > dim:
            raise ValueError(f"item vectors must be ({item_ids.shape[0]}, <= {dim}), got {(n, w)}")
        rms = vectors.square().mean().sqrt().clamp_min(1e-12)
        h1, h2 = hash_ids(item_ids, self.buckets)
        self.table_b.weight[h2] = 0.0
        self.table_a.weight[h1] = 0.0
        self.table_a.weight[h1, :w] = (vectors * (INIT_STD / rms)).to(self.table_a.weight.dtype)

    def squared_norm(self, ids: torch.Tensor) -> torch.Tensor:
        """Squared L2 norm of the rows ``ids`` look up, both tables (n,)."""
        h1, h2 = hash_ids(ids, self.buckets)
        return self.table_a(h1).square().sum(-1) + self.table_b(h2).square().sum(-1)


class EventEncoder(nn.Module):
    """item + action + time + weight -> d, then a residual MLP so item and action interact."""

    def __init__(self, items: ItemEmbedding, num_actions: int, dim: int) -> None:
        super().__init__()
        self.items = items
        self.num_actions = num_actions
        self.action = nn.Embedding(num_actions, dim)
        self.time = nn.Linear(N_TIME_FEATURES, dim)
        self.weight = nn.Linear(2, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        # All inputs start at the item embedding's scale: with PyTorch's defaults (N(0,1) action
        # rows, U(+-0.45) time weights) the item would be ~1% of the sum and learn very slowly.
        nn.init.normal_(self.action.weight, std=INIT_STD)
        for lin in (self.time, self.weight):
            nn.init.normal_(lin.weight, std=INIT_STD)
            nn.init.zeros_(lin.bias)

    def forward(self, events: EventBatch, prev: torch.Tensor) -> torch.Tensor:
        """Encode events; ``prev`` is each event's predecessor time (see previous_times)."""
        w = events.weight
        has_w = ~torch.isnan(w)
        wfeat = torch.stack(
            [torch.where(has_w, w / WEIGHT_SCALE, torch.zeros_like(w)), has_w.float()], dim=1
        )
        action = events.action.clamp(0, self.num_actions - 1)
        x = (
            self.items(events.item_id)
            + self.action(action)
            + self.time(time_features(events.ts, prev))
            + self.weight(wfeat)
        )
        return self.norm(x + self.mlp(x))
