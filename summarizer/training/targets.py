"""Training targets and their batches: which events are targets, and how a few users'
histories and requests are laid out back to back for one causal pass.

Targets are events: the label of the event at position p (engaged, or a rating
>= 4) is predicted from the events before p, with the event's own item as the
candidate. A :class:`TargetBatch` holds a few users' histories back to back and,
per user, requests at positions p: "score these candidates given the events before
p". Implicit-feedback data (no negatives in the log) gets ``negatives`` random
items per target, labelled 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch

from summarizer.config import TrainConfig
from summarizer.data.histories import Histories
from summarizer.model.encoder import SECONDS_PER_DAY, EventBatch


@dataclasses.dataclass
class Window:
    """A time window of targets: [start, end)."""

    start: int
    end: int


@dataclasses.dataclass
class TargetBatch:
    events: EventBatch  # users back to back, each in time order
    offsets: torch.Tensor  # (U+1,) event offsets per user
    req_user: torch.Tensor  # (R,) user index of each request, non-decreasing
    req_pos: torch.Tensor  # (R,) history length: the request sees events [0, p) of its user
    req_ts: torch.Tensor  # (R,) request time (for recency)
    cand_offsets: torch.Tensor  # (R+1,)
    cand_item: torch.Tensor  # (C,)
    cand_label: torch.Tensor  # (C,) float 0/1
    cand_rating: torch.Tensor  # (C,) float, NaN where none
    # VISTA: position of the summary a request reads (its day's start: the nightly summary),
    # the events from there up to req_pos form its recent window. None: req_pos (real time).
    req_summary_pos: torch.Tensor | None = None
    # GSU over TWIN-V2 clusters (ModelSpec.memory == "clusters"): each event's cluster id
    # within its user (summarizer.training.banks.bank_partition). None: the bank is the raw events.
    event_cluster: torch.Tensor | None = None

    def cand_request(self) -> torch.Tensor:
        """Each candidate's request index (C,)."""
        n_per_req = self.cand_offsets[1:] - self.cand_offsets[:-1]
        return torch.repeat_interleave(torch.arange(n_per_req.numel()), n_per_req)


def target_positions(hist: Histories, u: int, window: Window) -> np.ndarray:
    a, b = hist.offsets[u], hist.offsets[u + 1]
    ts = hist.ts[a:b]
    lo, hi = np.searchsorted(ts, window.start, "left"), np.searchsorted(ts, window.end, "left")
    return np.arange(lo, hi)


def select_targets(
    hist: Histories, window: Window, per_user: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Per user, up to ``per_user`` target positions inside the window (random, or evenly spaced)."""
    out = []
    for u in range(hist.n_users):
        pos = target_positions(hist, u, window)
        if len(pos) > per_user:
            if rng is not None:
                pos = np.sort(rng.choice(pos, per_user, replace=False))
            else:
                pos = pos[np.linspace(0, len(pos) - 1, per_user).round().astype(int)]
        out.append(pos)
    return out


def iter_batches(
    hist: Histories,
    targets: list[np.ndarray],
    cfg: TrainConfig,
    rng: np.random.Generator | None,
    item_pool: np.ndarray | None = None,
    bank_labels: np.ndarray | None = None,
) -> Iterator[TargetBatch]:
    """Group users into batches bounded by events and requests (a huge user gets a batch alone).

    ``bank_labels``: every event's cluster id (models with a TWIN-V2 bank)."""
    users = [u for u in range(hist.n_users) if len(targets[u])]
    if rng is not None:
        rng.shuffle(users)
    group: list[int] = []
    n_ev = n_req = 0
    for u in users:
        need = int(targets[u][-1]) + 1
        if group and (
            n_ev + need > cfg.batch_events or n_req + len(targets[u]) > cfg.batch_requests
        ):
            yield make_batch(hist, group, targets, cfg.negatives, rng, item_pool, bank_labels)
            group, n_ev, n_req = [], 0, 0
        group.append(u)
        n_ev += need
        n_req += len(targets[u])
    if group:
        yield make_batch(hist, group, targets, cfg.negatives, rng, item_pool, bank_labels)


def make_batch(
    hist: Histories,
    users: list[int],
    targets: list[np.ndarray],
    negatives: int,
    rng: np.random.Generator | None,
    item_pool: np.ndarray | None,
    bank_labels: np.ndarray | None = None,
) -> TargetBatch:
    labels_all = hist.labels
    ev_parts: list[slice] = []
    offsets = [0]
    req_user, req_pos, req_ts, req_sum = [], [], [], []
    cand_item, cand_label, cand_rating, cand_counts = [], [], [], []
    neg_rng = rng if rng is not None else np.random.default_rng(0)
    for i, u in enumerate(users):
        a = int(hist.offsets[u])
        pos = targets[u]
        ev_parts.append(slice(a, a + int(pos[-1]) + 1))
        offsets.append(offsets[-1] + int(pos[-1]) + 1)
        g = a + pos
        req_user.append(np.full(len(pos), i))
        req_pos.append(pos)
        req_ts.append(hist.ts[g])
        # The nightly summary a request would read: everything before the request's UTC day.
        user_ts = hist.ts[a : a + int(pos[-1]) + 1]
        day_start = (hist.ts[g] // SECONDS_PER_DAY) * SECONDS_PER_DAY
        req_sum.append(np.searchsorted(user_ts, day_start, "left"))
        items = hist.item_id[g][:, None]
        labels = labels_all[g][:, None]
        ratings = hist.weight[g][:, None]
        if negatives and item_pool is not None:
            neg = item_pool[neg_rng.integers(0, len(item_pool), (len(pos), negatives))]
            items = np.concatenate([items, neg], 1)
            labels = np.concatenate([labels, np.zeros((len(pos), negatives), np.float32)], 1)
            ratings = np.concatenate(
                [ratings, np.full((len(pos), negatives), np.nan, np.float32)], 1
            )
        cand_item.append(items.ravel())
        cand_label.append(labels.ravel())
        cand_rating.append(ratings.ravel())
        cand_counts.append(np.full(len(pos), items.shape[1]))
    idx = np.concatenate([np.arange(s.start, s.stop) for s in ev_parts])
    events = EventBatch.from_numpy(
        hist.item_id[idx], hist.ts[idx], hist.action[idx], hist.weight[idx]
    )
    counts = np.concatenate(cand_counts)
    return TargetBatch(
        events=events,
        offsets=torch.tensor(offsets),
        req_user=torch.from_numpy(np.concatenate(req_user)),
        req_pos=torch.from_numpy(np.concatenate(req_pos).astype(np.int64)),
        req_ts=torch.from_numpy(np.concatenate(req_ts).astype(np.int64)),
        cand_offsets=torch.from_numpy(np.r_[0, np.cumsum(counts)].astype(np.int64)),
        cand_item=torch.from_numpy(np.concatenate(cand_item).astype(np.int64)),
        cand_label=torch.from_numpy(np.concatenate(cand_label).astype(np.float32)),
        cand_rating=torch.from_numpy(np.concatenate(cand_rating).astype(np.float32)),
        req_summary_pos=torch.from_numpy(np.concatenate(req_sum).astype(np.int64)),
        event_cluster=None if bank_labels is None else torch.from_numpy(bank_labels[idx]),
    )


def request_windows(
    batch: TargetBatch, k: int | None, lower: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global event indices of each request's last-k window (k None: whole prefix), and offsets.

    ``lower`` (R,) bounds the window from below (positions within the user).
    """
    start_u = batch.offsets[:-1][batch.req_user]
    p = batch.req_pos
    lengths = p if k is None else p.clamp(max=k)
    if lower is not None:
        lengths = torch.minimum(lengths, (p - lower).clamp(min=0))
    first = start_u + p - lengths
    offs = torch.zeros(len(p) + 1, dtype=torch.long)
    offs[1:] = torch.cumsum(lengths, 0)
    req = torch.repeat_interleave(torch.arange(len(p)), lengths)
    idx = first[req] + torch.arange(int(offs[-1])) - offs[:-1][req]
    return idx, offs


def pad_jagged(
    flat: torch.Tensor, offs: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (N, d) -> (R, width, d) and a padding mask (True = pad)."""
    R = offs.numel() - 1
    lengths = offs[1:] - offs[:-1]
    req = torch.repeat_interleave(torch.arange(R), lengths)
    pos = torch.arange(flat.shape[0]) - offs[:-1][req]
    out = flat.new_zeros(R, max(width, 1), flat.shape[1])
    out[req, pos] = flat
    pad = torch.arange(max(width, 1)).unsqueeze(0) >= lengths.unsqueeze(1)
    return out, pad
