"""LONGER (Chai et al., "LONGER: Scaling Up Long Sequence Modeling in Industrial
Recommenders", ByteDance 2025) as a history module.

* **Token merge with InnerTrans**: adjacent events, ``MERGE_GROUP`` at a time counted from
  the user's first event, go through a small transformer layer inside their group and are
  merged (their outputs concatenated, projected to d) into one token. A request at
  position p has ``p // MERGE_GROUP`` whole groups (shared by every later request of the
  user) and, when p is not a multiple, one partial group of its own.
* **Hybrid attention**: the queries are the global token (the candidate: this data has no
  user features, the request context enters the ranker's MLP) and the most recent ``k``
  merged tokens (``ModelSpec.last_k``). The first layer is a causal cross-attention over
  the whole merged sequence: a merged token sees those up to itself, the candidate sees
  all of them and itself. The next ``num_layers - 1`` layers are causal self-attention
  over the queries: a recent token sees the recent tokens up to itself, the candidate all
  of them and itself. The candidate's last state is what the ranker reads.
* **Shared across candidates** (LONGER's KV-cache serving): nothing of the history side
  attends to a candidate, so the merged tokens and the recent tokens' layers are computed
  once per request (the whole groups once per user) and each candidate adds only its own
  query. The online cost still grows with the history: every request must merge and
  attend over all its raw events (nothing is cached in the summary store).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

MERGE_GROUP = 4  # events merged into one token


class Block(nn.Module):
    """Pre-norm attention + MLP: queries attend to given keys/values (softmax)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(self.norm_q(x)).unflatten(-1, (self.heads, self.head_dim))

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(self.norm_kv(x)).chunk(2, dim=-1)
        shape = (self.heads, self.head_dim)
        return k.unflatten(-1, shape), v.unflatten(-1, shape)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + self.o(attended.flatten(-2))
        return x + self.mlp(self.norm_mlp(x))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, Lq, d) attends to kv (B, Lk, d) where ``mask`` (B, Lq, Lk) is True; a query
        with no visible key attends to nothing."""
        q, (k, v) = self.queries(x), self.keys_values(kv)
        some = mask.any(-1, keepdim=True)
        safe = mask | ~some  # a query with no key attends to all, then is zeroed: no NaN
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=safe.unsqueeze(1)
        ).transpose(1, 2)
        return self.finish(x, o * some.unsqueeze(-1))


def _softmax_attend(
    q: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]],
    scale: float,
) -> torch.Tensor:
    """Candidates' queries q (c, H, D) against several key sets in one softmax; each part is
    (k, v, mask, form): form "shared" k, v (n, H, D) with mask (c, n); "own" k, v
    (c, J, H, D) with mask (c, J)."""
    scores, values = [], []
    for k, v, mask, form in parts:
        eq = "chd,nhd->chn" if form == "shared" else "chd,cjhd->chj"
        s = torch.einsum(eq, q, k) * scale
        scores.append(s.masked_fill(~mask.unsqueeze(1), float("-inf")))
        values.append((v, form))
    s_all = torch.cat(scores, -1)
    some = torch.isfinite(s_all).any(-1, keepdim=True)  # a query with no key: all zero
    w = torch.softmax(s_all.masked_fill(~some, 0.0), -1) * some
    out, start = torch.zeros_like(q), 0
    for (v, form), s in zip(values, scores, strict=True):
        part = w[..., start : start + s.shape[-1]]
        start += s.shape[-1]
        eq = "chn,nhd->chd" if form == "shared" else "chj,cjhd->chd"
        out = out + torch.einsum(eq, part, v)
    return out


class Longer(nn.Module):
    """The LONGER stack; :meth:`forward_user` runs one user's events and candidates."""

    def __init__(self, dim: int, heads: int, layers: int, recent: int) -> None:
        super().__init__()
        self.dim, self.recent = dim, recent
        self.inner = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.merge = nn.Linear(MERGE_GROUP * dim, dim)
        self.cross = Block(dim, heads)
        self.layers = nn.ModuleList(Block(dim, heads) for _ in range(layers - 1))
        self.cand_type = nn.Parameter(torch.zeros(dim))
        self.final_norm = nn.LayerNorm(dim)

    def blocks(self) -> list[Block]:
        """The layers, typed."""
        return [cast(Block, layer) for layer in self.layers]

    def merged(self, groups: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Groups (G, MERGE_GROUP, d) of which the first ``lengths`` (G,) events are real ->
        merged tokens (G, d): InnerTrans, then the outputs concatenated and projected."""
        if groups.shape[0] == 0:
            return groups.new_zeros(0, self.dim)
        pad = torch.arange(MERGE_GROUP).unsqueeze(0) >= lengths.unsqueeze(1)
        z = self.inner(groups, src_key_padding_mask=pad) * (~pad).unsqueeze(-1)
        return self.merge(z.flatten(1))

    def forward_user(
        self, events: torch.Tensor, cand: torch.Tensor, cand_pos: torch.Tensor
    ) -> torch.Tensor:
        """One user's encoded events (n, d) in time order and candidates (c, d) whose requests
        see the events before ``cand_pos`` (c,): the candidates' states (c, d)."""
        g, k, d = MERGE_GROUP, self.recent, self.dim
        n = events.shape[0]
        G = n // g
        whole = self.merged(
            events[: G * g].view(G, g, d), torch.full((G,), g, dtype=torch.long)
        )  # (G, d)
        req_pos, cand_req = torch.unique(cand_pos, return_inverse=True)
        R = req_pos.numel()
        q_groups = req_pos // g  # whole groups each request sees
        rem = req_pos % g
        # Each request's partial group (zero-padded; rem 0: none).
        idx = (q_groups * g).unsqueeze(1) + torch.arange(g).unsqueeze(0)
        real = torch.arange(g).unsqueeze(0) < rem.unsqueeze(1)
        if n:
            part_ev = events[idx.clamp(max=n - 1)] * real.unsqueeze(-1)
        else:
            part_ev = events.new_zeros(R, g, d)
        has_part = rem > 0
        partial = torch.zeros(R, d, dtype=events.dtype)
        if bool(has_part.any()):
            partial = partial.index_copy(
                0,
                torch.nonzero(has_part).squeeze(1),
                self.merged(part_ev[has_part], rem[has_part]),
            )
        # Layer 1 for the merged tokens: each whole group sees those up to itself (once per
        # user), a request's partial group sees its whole groups and itself.
        j = torch.arange(G)
        causal = (j.unsqueeze(0) <= j.unsqueeze(1)).unsqueeze(0)
        crossed_whole = whole  # (G, d)
        if G:
            crossed_whole = self.cross(whole.unsqueeze(0), whole.unsqueeze(0), causal)[0]
        seen = j.unsqueeze(0) < q_groups.unsqueeze(1)  # (R, G)
        k_whole, v_whole = self.cross.keys_values(whole)  # once per user
        scale = self.cross.head_dim**-0.5
        k_part, v_part = self.cross.keys_values(partial)
        crossed_part = self.cross.finish(
            partial,
            _softmax_attend(
                self.cross.queries(partial),
                [
                    (k_whole, v_whole, seen, "shared"),
                    (k_part.unsqueeze(1), v_part.unsqueeze(1), has_part.unsqueeze(1), "own"),
                ],
                scale,
            )
            * has_part[:, None, None],  # no partial group: nothing attended (unused)
        )  # (R, d)
        # The recent k merged tokens of each request, oldest first, left-padded.
        n_tok = q_groups + has_part.long()
        slot = torch.arange(k).unsqueeze(0)
        pos = n_tok.unsqueeze(1) - k + slot  # merged-token index of each slot
        present = pos >= 0
        from_whole = pos.clamp(min=0, max=max(G - 1, 0))
        recent = crossed_whole[from_whole] if G else crossed_whole.new_zeros(R, k, d)
        is_part = has_part.unsqueeze(1) & (pos == n_tok.unsqueeze(1) - 1)
        recent = torch.where(is_part.unsqueeze(-1), crossed_part.unsqueeze(1), recent)
        recent = recent * present.unsqueeze(-1)  # (R, k, d)
        # Candidates, layer 1: every merged token of the request and itself.
        h = cand + self.cand_type
        q = self.cross.queries(h)
        k_self, v_self = self.cross.keys_values(h)
        att = _softmax_attend(
            q,
            [
                (k_whole, v_whole, seen[cand_req], "shared"),
                (
                    torch.stack([k_part[cand_req], k_self], 1),
                    torch.stack([v_part[cand_req], v_self], 1),
                    torch.stack([has_part[cand_req], torch.ones_like(has_part[cand_req])], 1),
                    "own",
                ),
            ],
            scale,
        )
        h = self.cross.finish(h, att)
        # Self-attention layers: recent tokens causal among themselves (once per request),
        # each candidate over its request's recent tokens and itself.
        r_mask = (slot <= slot.T) & present.unsqueeze(1)  # (R, k, k): query i sees j <= i
        own_mask = torch.cat([present[cand_req], torch.ones(h.shape[0], 1, dtype=torch.bool)], 1)
        blocks = self.blocks()
        for i, layer in enumerate(blocks):
            kr, vr = layer.keys_values(recent)  # (R, k, H, D)
            ks, vs = layer.keys_values(h)
            att = _softmax_attend(
                layer.queries(h),
                [
                    (
                        torch.cat([kr[cand_req], ks.unsqueeze(1)], 1),
                        torch.cat([vr[cand_req], vs.unsqueeze(1)], 1),
                        own_mask,
                        "own",
                    )
                ],
                layer.head_dim**-0.5,
            )
            h = layer.finish(h, att)
            if i + 1 < len(blocks):  # the recent tokens' last-layer outputs are never read
                recent = layer(recent, recent, r_mask) * present.unsqueeze(-1)
        return self.final_norm(h)
