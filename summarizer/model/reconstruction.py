"""VISTA's auxiliary reconstruction loss: rebuild past events from the summary tokens alone."""

from __future__ import annotations

import torch
from torch import nn


class ReconstructionDecoder(nn.Module):
    """VISTA's auxiliary loss: from the summary tokens alone, reconstruct past events.

    A query made from an event's relative position in the history attends to
    the tokens and predicts that event's encoding; the next event (relative
    position 1) is always among the targets. Forces the seeds to keep the
    whole history, not only what the ranking label needs today.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(4, dim), nn.GELU(), nn.Linear(dim, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    @staticmethod
    def position_features(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        r = t.float() / p.clamp(min=1).float()
        return torch.stack(
            [
                r,
                torch.sin(torch.pi * r),
                torch.cos(torch.pi * r),
                torch.log1p((p - t).float()) / 14,
            ],
            -1,
        )

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """tokens (B, K, d); positions t (B, R) of events to rebuild in histories of length p (B,)."""
        q = self.query(self.position_features(t, p.unsqueeze(1)))
        return self.out(self.attn(q, tokens, tokens, need_weights=False)[0])
