"""HSTU (Zhai et al., "Actions Speak Louder than Words", Meta 2024) as a history module: the
full-attention generative baseline, with its candidates scored M-FALCON style.

One HSTU layer over tokens ``x``::

    u, v, q, k = split(silu(f1(norm(x))))
    a[i, j]    = silu(q_i . k_j / sqrt(D) + rab(i - j, t_i - t_j)) / n_i     (j visible to i)
    y          = x + f2(norm(a v) * u)

pointwise aggregated attention (no softmax: each weight is its own SiLU, normalized by
the count of visible keys ``n_i``), a relative attention bias over log-bucketed position
and time distances, and an elementwise gate ``u``. The bias here is a learned per-head weight of log(1 +
distance) in positions and in minutes (the paper buckets both distances and learns a
table: on this CPU the table's gradient, a scatter over every score, cost more than
the attention). Events attend causally to the events
before them and themselves, within the last ``window`` events (sliding-window causal
attention: what an incremental server with a per-user key/value cache keeps; through
the layers an event still reads further back). Candidates (M-FALCON) are appended: each
candidate token attends to the ``window`` events before its request and to itself, never
to another candidate, and events never attend to candidates, so the history's layers are
computed once per request and shared by all its candidates; a candidate's last-layer
state is what the ranker reads. Online cost grows with the history (the cost column says
how): nothing of it is cached in the summary store.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

EVENT_BLOCK = 256  # event queries per attention block (bounds the score tile in memory)
RAB_FEATURES = 2  # log position distance, log time distance


def relative_features(dist: torch.Tensor, seconds: torch.Tensor) -> torch.Tensor:
    """(..., 2): log(1 + position distance) and log(1 + time distance in minutes)."""
    return torch.stack(
        [torch.log1p(dist.clamp(min=0).float()), torch.log1p(seconds.clamp(min=0).float() / 60)],
        dim=-1,
    )


class HSTULayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm_in = nn.LayerNorm(dim)
        self.f1 = nn.Linear(dim, 4 * dim)
        self.norm_out = nn.LayerNorm(dim)
        self.f2 = nn.Linear(dim, dim)
        # The relative attention bias: per head, a learned weight of each log distance.
        self.rab_weight = nn.Parameter(torch.zeros(RAB_FEATURES, heads))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Tokens (N, d) -> u (N, d) and v, q, k (N, H, D)."""
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).chunk(4, dim=-1)
        shape = (-1, self.heads, self.head_dim)
        return u, v.reshape(shape), q.reshape(shape), k.reshape(shape)

    def rab(self, dist: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """Relative attention bias (..., H) of position distances and time distances (s)."""
        return relative_features(dist, dt) @ self.rab_weight

    def output(self, x: torch.Tensor, attended: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return x + self.f2(self.norm_out(attended.reshape(x.shape)) * u)


def _event_block(
    layer: HSTULayer,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_ts: torch.Tensor,
    k_ts: torch.Tensor,
    offset: int,
    window: int,
) -> torch.Tensor:
    """Queries q (b, H, D) at positions offset..offset+b-1 of keys k, v (n, H, D) starting at
    position 0 of ``k``: each attends to the keys at distance 0..window-1 before it."""
    b, n = q.shape[0], k.shape[0]
    qi = torch.arange(offset, offset + b).unsqueeze(1)
    dist = qi - torch.arange(n).unsqueeze(0)  # (b, n)
    visible = (dist >= 0) & (dist < window)
    s = torch.einsum("bhd,nhd->hbn", q, k) / math.sqrt(layer.head_dim)
    s = s + layer.rab(dist, q_ts.unsqueeze(1) - k_ts.unsqueeze(0)).permute(2, 0, 1)
    a = F.silu(s) * visible / visible.sum(1, keepdim=True).clamp(min=1)
    return torch.einsum("hbn,nhd->bhd", a, v)


class HSTU(nn.Module):
    """The HSTU stack; :meth:`forward_user` runs one user's events and candidates."""

    def __init__(self, dim: int, heads: int, layers: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.layers = nn.ModuleList(HSTULayer(dim, heads) for _ in range(layers))
        self.cand_type = nn.Parameter(torch.zeros(dim))
        self.final_norm = nn.LayerNorm(dim)

    def blocks(self) -> list[HSTULayer]:
        """The layers, typed."""
        return [cast(HSTULayer, layer) for layer in self.layers]

    def _events(
        self, layer: HSTULayer, x: torch.Tensor, ts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer over a user's events: (next x, this layer's keys, values)."""
        u, v, q, k = layer.project(x)
        out = []
        for s in range(0, x.shape[0], EVENT_BLOCK):
            e = min(s + EVENT_BLOCK, x.shape[0])
            lo = max(0, s - self.window + 1)
            args = (layer, q[s:e], k[lo:e], v[lo:e], ts[s:e], ts[lo:e], s - lo, self.window)
            if torch.is_grad_enabled():  # the (H, b, n) scores are recomputed, not stored
                out.append(checkpoint(_event_block, *args, use_reentrant=False))
            else:
                out.append(_event_block(*args))
        attended = torch.cat(out) if out else v.new_zeros(0, *v.shape[1:])
        return layer.output(x, attended, u), k, v

    def forward_user(
        self,
        events: torch.Tensor,
        ts: torch.Tensor,
        cand: torch.Tensor,
        cand_pos: torch.Tensor,
        cand_ts: torch.Tensor,
    ) -> torch.Tensor:
        """One user's encoded events (n, d) in time order with times ``ts`` (n,), and
        candidates (c, d) of requests at positions ``cand_pos`` (c,) (a candidate sees the
        events before its position) and times ``cand_ts``: the candidates' states (c, d)."""
        n, W = events.shape[0], self.window
        # Each candidate against every event (masked to the W before its position): dense
        # matmuls; gathering each candidate's window cost more (its backward is a scatter).
        dist = cand_pos.unsqueeze(1) - torch.arange(n).unsqueeze(0)  # (c, n)
        valid = (dist >= 1) & (dist <= W)
        dt = cand_ts.unsqueeze(1) - ts.unsqueeze(0)
        count = valid.sum(1, keepdim=True) + 1  # the window and the candidate itself
        zero = torch.zeros(1, dtype=torch.long)
        x, h = events, cand + self.cand_type
        blocks = self.blocks()
        for i, layer in enumerate(blocks):
            u_c, v_c, q_c, k_c = layer.project(h)
            scale = math.sqrt(layer.head_dim)
            if i + 1 < len(blocks):
                x_next, k, v = self._events(layer, x, ts)
            else:  # the events' last-layer outputs are never read: keys and values only
                _, v, _, k = layer.project(x)
            s = torch.einsum("chd,nhd->hcn", q_c, k) / scale
            s = s + layer.rab(dist, dt).permute(2, 0, 1)
            a = F.silu(s) * valid / count
            attended = torch.einsum("hcn,nhd->chd", a, v)
            s_self = (q_c * k_c).sum(-1) / scale + layer.rab(zero, zero)  # (c, H)
            attended = attended + (F.silu(s_self) / count).unsqueeze(-1) * v_c
            h = layer.output(h, attended, u_c)
            if i + 1 < len(blocks):
                x = x_next
        return self.final_norm(h)
