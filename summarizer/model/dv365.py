"""A DV365-style offline user embedding (Instagram 2025) as a history module.

The user's last ``N`` events before the summary point (``ModelSpec.last_k``) become ``K``
tokens (``ModelSpec.num_seeds``) of width d -- the summary store's contract, so they are
cached per user and read by the ranker like VISTA's tokens (with the raw events since
the summary, as VISTA's are):

* a **funnel transformer**: the event tokens (with a learned embedding of each event's
  distance from the end) mean-pooled 4 to 1 before each block of self-attention + MLP,
  while at least ``K`` tokens remain (256 events, K = 16: 64 tokens, then 16); the
  paper's funnel starts at full resolution, here the first pool comes first because on
  this CPU a block over every raw event cost four times the rest;
* plus a **linear compression** of the raw sequence: K learned mixtures of the N event
  encodings (one weight per token and position).

The embedding is **batch-recomputed**, not folded: a transformer over the last N events has
no mergeable state, so a nightly job recomputes each touched user's embedding from the
user's last N events (O(N) per touched user, the last N raw events kept per user). The
harness trains and evaluates it in that form -- each request reads the embedding of the
events before its day -- but the batch jobs do not build it (they fold VISTA's state).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from summarizer.model.longer import Block

POOL = 4  # tokens mean-pooled into one between funnel blocks


class DV365(nn.Module):
    def __init__(self, dim: int, heads: int, events: int, tokens: int) -> None:
        super().__init__()
        self.dim, self.events, self.tokens = dim, events, tokens
        self.position = nn.Parameter(torch.zeros(events, dim))  # distance from the end
        # Pool 4 -> 1 before every block while at least K tokens remain (the first pool is
        # at the input: on this CPU a block over every raw event cost 4x the rest).
        n, stages = events, 0
        while n // POOL >= tokens and n % POOL == 0:
            n //= POOL
            stages += 1
        self.pools = stages
        self.stages = nn.ModuleList(Block(dim, heads) for _ in range(max(stages, 1)))
        self.to_tokens = nn.Linear(n, tokens)  # what the last stage leaves -> K
        self.compress = nn.Linear(events, tokens, bias=False)
        nn.init.normal_(self.compress.weight, std=events**-0.5)
        self.norm = nn.LayerNorm(dim)

    def blocks(self) -> list[Block]:
        return [cast(Block, b) for b in self.stages]

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Users' last N event encodings (S, N, d), oldest first, right-aligned, and which
        are real (S, N) -> their K tokens (S, K, d). A user with no events gets zeros."""
        S, N, d = x.shape
        compressed = self.compress((x * present.unsqueeze(-1)).transpose(1, 2)).transpose(1, 2)
        h = (x + self.position.flip(0)) * present.unsqueeze(-1)
        mask = present
        for i, block in enumerate(self.blocks()):
            if i < self.pools:  # pool 4 -> 1 (a mean over the real ones)
                n = h.shape[1]
                m = mask.float().reshape(S, n // POOL, POOL, 1)
                h = (h.reshape(S, n // POOL, POOL, d) * m).sum(2) / m.sum(2).clamp(min=1)
                mask = m.squeeze(-1).sum(2) > 0
            n = h.shape[1]
            h = block(h, h, mask.unsqueeze(1).expand(-1, n, -1)) * mask.unsqueeze(-1)
        funnel = self.to_tokens(h.transpose(1, 2)).transpose(1, 2)
        has = present.any(1).view(S, 1, 1)
        return self.norm(funnel + compressed) * has
