"""TransAct V2 (Xia et al., Pinterest 2025) as a history module.

Three sequences per request, each reduced per candidate:

* **lifelong**: the events before the realtime window, reduced to the ``LIFELONG_K`` whose
  items are nearest the candidate's (dot product of the shared item embeddings: a
  nearest-neighbour search per candidate, as TransAct V2 searches its 16k-event history);
* **realtime**: the last ``last_k`` events, whole;
* **impressions**: the events the user saw and did not engage with (label 0: an exposure
  without a click, a rating below 4), reduced to the ``IMPRESSION_K`` nearest the
  candidate.

Early fusion: every selected event's encoding is concatenated with the candidate's
embedding and mixed down to d, tagged with its sequence's type; the candidate itself is
appended as one more token; transformer encoder layers (pre-norm attention + MLP, :class:`summarizer.model.longer.Block`) run over them (per candidate:
nothing is shared between candidates, which is why its online cost is per candidate and
grows with the lifelong search); the candidate token's output and the max over the
events' outputs go to the ranker.

The **next-action loss** (training only, :func:`next_action_loss`): a candidate-free user
vector from the realtime window predicts the user's next engaged item against the user's
impressions and random items (a sampled softmax over the shared item table), so the
item embeddings the search uses learn from what users do next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from summarizer.model.longer import Block

LIFELONG_K = 32
IMPRESSION_K = 16
NEXT_ACTION_NEGATIVES = 16  # per request: impressions of the user first, then random items


class TransActV2(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, realtime: int) -> None:
        super().__init__()
        self.dim, self.realtime = dim, realtime
        self.mix_in = nn.Linear(2 * dim, dim)
        self.types = nn.Parameter(torch.zeros(4, dim))  # lifelong, realtime, impression, cand
        self.layers = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.mix_out = nn.Linear(2 * dim, dim)
        self.user = nn.Linear(dim, dim)  # the next-action loss's user vector

    @staticmethod
    def nearest(
        cand_items: torch.Tensor, event_items: torch.Tensor, allowed: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per candidate, the ``k`` allowed events whose item embeddings have the largest dot
        product with the candidate's: indices (c, k) and validity (c, k). No gradient flows
        through the choice."""
        with torch.no_grad():
            s = (cand_items @ event_items.T).masked_fill(~allowed, float("-inf"))
            k_eff = min(k, s.shape[1])
            if k_eff == 0:
                empty = torch.zeros(s.shape[0], k, dtype=torch.long)
                return empty, empty.bool()
            top, idx = s.topk(k_eff, dim=1)
            valid = torch.isfinite(top)
            if k_eff < k:
                pad = k - k_eff
                idx = F.pad(idx, (0, pad))
                valid = F.pad(valid, (0, pad))
        return idx, valid

    def forward_user(
        self,
        events: torch.Tensor,
        event_items: torch.Tensor,
        engaged: torch.Tensor,
        cand: torch.Tensor,
        cand_items: torch.Tensor,
        cand_pos: torch.Tensor,
    ) -> torch.Tensor:
        """One user's encoded events (n, d), their items' embeddings (n, d) and labels (n,)
        (True: engaged), candidates (c, d) with their item embeddings (c, d) and request
        positions (c,): the fused representation (c, d) the ranker reads."""
        n, R = events.shape[0], self.realtime
        j = torch.arange(n).unsqueeze(0)
        p = cand_pos.unsqueeze(1)
        long_idx, long_ok = self.nearest(cand_items, event_items, j < p - R, LIFELONG_K)
        imp_idx, imp_ok = self.nearest(
            cand_items, event_items, (j < p) & ~engaged.unsqueeze(0), IMPRESSION_K
        )
        rt_idx = p - R + torch.arange(R).unsqueeze(0)
        rt_ok = rt_idx >= 0
        idx = torch.cat([long_idx, rt_idx.clamp(min=0), imp_idx], 1)  # (c, T)
        ok = torch.cat([long_ok, rt_ok, imp_ok], 1)
        kinds = torch.cat(
            [
                torch.zeros(LIFELONG_K, dtype=torch.long),
                torch.ones(R, dtype=torch.long),
                torch.full((IMPRESSION_K,), 2, dtype=torch.long),
            ]
        )
        ev = events[idx.clamp(max=max(n - 1, 0))] if n else cand.new_zeros(*idx.shape, self.dim)
        z = self.mix_in(torch.cat([ev, cand.unsqueeze(1).expand_as(ev)], -1)) + self.types[kinds]
        z = torch.cat([z, (cand + self.types[3]).unsqueeze(1)], 1) * torch.cat(
            [ok, torch.ones_like(ok[:, :1])], 1
        ).unsqueeze(-1)
        pad = torch.cat([~ok, torch.zeros_like(ok[:, :1])], 1)  # the candidate is never padded
        seen = (~pad).unsqueeze(1).expand(-1, pad.shape[1], -1)  # every real token
        out = z
        for layer in self.layers:
            out = layer(out, out, seen)
        events_out = out[:, :-1].masked_fill(pad[:, :-1].unsqueeze(-1), float("-inf"))
        pooled = events_out.max(1).values
        pooled = torch.where(ok.any(1, keepdim=True), pooled, torch.zeros_like(pooled))
        return self.mix_out(torch.cat([out[:, -1], pooled], -1))

    def user_vectors(self, events: torch.Tensor, req_pos: torch.Tensor) -> torch.Tensor:
        """The candidate-free user vector (r, d) of requests at ``req_pos``: the mean of
        their realtime windows' encodings, projected."""
        n, R = events.shape[0], self.realtime
        idx = req_pos.unsqueeze(1) - R + torch.arange(R).unsqueeze(0)
        ok = (idx >= 0).unsqueeze(-1)
        ev = (
            events[idx.clamp(min=0, max=max(n - 1, 0))] * ok
            if n
            else events.new_zeros(*idx.shape, self.dim)
        )
        return self.user(ev.sum(1) / ok.sum(1).clamp(min=1))
