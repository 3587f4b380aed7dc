"""Stage 2: candidates cross-attend to a user's memory tokens, then an MLP scores them.

All m candidates of a request go through one pass; each attends only to its
own request's memory (summary tokens, plus optionally a recent-event window),
never to other candidates, so scoring m candidates together equals scoring
each alone. The memory's keys and values (``project_memory``) depend only on
the user, so they are computed once per request, not per candidate.

With a memory bank (GSU), each candidate also attends to its own top-k bank
tokens (:class:`kernels.GatheredMemory`), in a softmax of their own whose output
is added to the summary attention's (one shared softmax was tried and removed: on
the synthetic data the summary tokens took the attention and the GSU never
learned, BENCHMARKS.md). The
search score is the attention logit summed over heads (``gsu_scores``), so the
tokens the search picks are the ones the attention would weigh most (TWIN's
consistency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kernels import GatheredMemory, attention
from summarizer.model.encoder import ItemEmbedding

N_CONTEXT = 2  # log history length, log hours since the last event


def context_features(n_events: torch.Tensor, hours_since_last: torch.Tensor) -> torch.Tensor:
    """Request-level features known at request time: (R, 2)."""
    return torch.stack(
        [
            torch.log1p(n_events.float()) / 14.0,
            torch.log1p(hours_since_last.float().clamp(min=0)) / 10.0,
        ],
        dim=1,
    )


def context_rows(n_events: Sequence[int], hours_since_last: Sequence[float]) -> torch.Tensor:
    """:func:`context_features` of a serving batch, from its Python numbers: one tensor
    built instead of ten small ops (~35 us of a one-request pass). Computed in float64 and
    rounded once, so it equals :func:`context_features` to float32 rounding (tested)."""
    return torch.tensor(
        [
            (math.log1p(float(n)) / 14.0, math.log1p(max(float(h), 0.0)) / 10.0)
            for n, h in zip(n_events, hours_since_last, strict=True)
        ],
        dtype=torch.float32,
    ).reshape(-1, N_CONTEXT)


class CandidateRanker(nn.Module):
    def __init__(
        self,
        items: ItemEmbedding,
        dim: int,
        heads: int,
        candidate_features: int = 0,
        rating_head: bool = False,
        gsu_gate: float | None = None,
        state_tokens: int = 0,
        ridge: bool = False,
    ) -> None:
        super().__init__()
        # Learnable per-head gate on the GSU's attention (separate softmax next to a summary),
        # starting at ``gsu_gate`` (ModelSpec.gsu_gate; 0 = the summary alone at first; None:
        # no gate).
        self.gsu_gate = (
            nn.Parameter(torch.full((heads,), float(gsu_gate))) if gsu_gate is not None else None
        )
        self.items, self.dim, self.heads, self.head_dim = items, dim, heads, dim // heads
        self.candidate_features = candidate_features
        self.features = nn.Linear(candidate_features, dim) if candidate_features else None
        self.cand_norm = nn.LayerNorm(dim)
        self.mem_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)
        # VISTA with a ridge read-out: each candidate's ridge score is one more MLP input
        # and a learned multiple of it is added to the logit (and the rating).
        self.ridge = ridge
        self.mlp = nn.Sequential(
            nn.Linear(3 * dim + N_CONTEXT + int(ridge), 2 * dim),
            nn.GELU(),
            nn.Linear(2 * dim, dim),
            nn.GELU(),
        )
        self.logit = nn.Linear(dim, 1)
        self.rating = nn.Linear(dim, 1) if rating_head else None
        self.ridge_scale = nn.Parameter(torch.ones(2)) if ridge else None
        if ridge:
            # The MLP starts as a residual on the ridge score: zero output layers, so the
            # untrained model scores by its (pretrained) read-out alone.
            for layer in (self.logit, self.rating):
                if layer is not None:
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)
        # VISTA with readout="state": each candidate's weights over the K state-row tokens,
        # per head (read_state); None for every other model.
        self.state_tokens = state_tokens
        self.state_q = nn.Linear(dim, heads * state_tokens) if state_tokens else None

    def embed_candidates(
        self, item_ids: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        c = self.items(item_ids)
        if self.features is not None:
            if features is None:
                features = torch.zeros(item_ids.shape[0], self.candidate_features)
            c = c + self.features(features)
        return self.cand_norm(c)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory tokens (N, d) -> keys, values (N, H, D); once per user and model version."""
        k, v = self.kv(self.mem_norm(memory)).chunk(2, dim=-1)
        return k.reshape(-1, self.heads, self.head_dim), v.reshape(-1, self.heads, self.head_dim)

    def queries(self, cand: torch.Tensor) -> torch.Tensor:
        """Embedded candidates (M, d) -> attention queries (M, H, D)."""
        return self.q(cand).view(-1, self.heads, self.head_dim)

    def read_state(
        self, cand: torch.Tensor, tokens: torch.Tensor, cand_request: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The candidates' linear read of state-row summary tokens: (M, H, D).

        ``out[c, h] = sum_k silu(W c)[h, k] * tokens[r(c), k, h-th slice]``, i.e. linear
        attention of each candidate over the user's whole history (the tokens are the
        normalized state rows). ``tokens``: (K, d) for one request, or (R, K, d) with
        ``cand_request`` (M,) giving each candidate's request (all-zero tokens: no history).
        """
        if self.state_q is None:
            raise ValueError("this ranker has no state read (the model's readout is not 'state')")
        M, K = cand.shape[0], self.state_tokens
        w = torch.nn.functional.silu(self.state_q(cand)).view(M, self.heads, K)
        if tokens.dim() == 2:
            return torch.einsum("mhk,khd->mhd", w, tokens.view(K, self.heads, self.head_dim))
        if cand_request is None:
            raise ValueError("tokens of several requests need cand_request")
        per_cand = tokens[cand_request].view(M, K, self.heads, self.head_dim)
        return torch.einsum("mhk,mkhd->mhd", w, per_cand)

    @staticmethod
    def gsu_scores(q: torch.Tensor, bank_k: torch.Tensor) -> torch.Tensor:
        """Search scores (M, N): each query's attention logit on each bank key, summed over
        heads -- one inner product of the flattened (M, H*D) and (N, H*D) matrices."""
        return q.reshape(q.shape[0], -1) @ bank_k.reshape(bank_k.shape[0], -1).T

    def forward(
        self,
        cand: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_offsets: torch.Tensor,
        kv_offsets: torch.Tensor,
        context: torch.Tensor,
        kv_bias: torch.Tensor | None = None,
        memory: GatheredMemory | None = None,
        q: torch.Tensor | None = None,
        state: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        ridge: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Jagged batch of requests -> (logits (M,), ratings (M,) or None).

        cand: (M, d) embedded candidates; k, v: (N, H, D) projected memory;
        offsets (R+1,) for candidates and memory; context (R, 2); ``memory``: each
        candidate's gathered bank tokens; ``q``: ``queries(cand)`` if already computed
        (the GSU needs them first); ``state``: (tokens, cand_request) for ``read_state``
        (readout "state"), added to the attention; ``ridge``: each candidate's ridge score
        (M,) (a ridge read-out).
        """
        if q is None:
            q = self.queries(cand)
        scale = 1.0 / math.sqrt(self.head_dim)
        if memory is not None:
            attn = attention(q, k, v, q_offsets, kv_offsets, kv_bias, scale=scale)
            none = k.new_zeros(0, *k.shape[1:])
            picked = attention(
                q, none, none, q_offsets, torch.zeros_like(kv_offsets), scale=scale, memory=memory
            )
            if self.gsu_gate is not None:
                picked = picked * self.gsu_gate.view(1, -1, 1)
            attn = attn + picked
        else:
            attn = attention(q, k, v, q_offsets, kv_offsets, kv_bias, scale=scale)
        if state is not None:
            attn = attn + self.read_state(cand, *state)
        if context.shape[0] == 1 and q_offsets.numel() == 2:  # one request: a view, no copy
            per_cand = context.expand(cand.shape[0], -1)
        else:
            counts = (q_offsets[1:] - q_offsets[:-1]).long()
            per_cand = torch.repeat_interleave(context, counts, dim=0)
        return self.head(cand, attn.reshape(-1, self.dim), per_cand, ridge)

    def head(
        self,
        cand: torch.Tensor,
        attn: torch.Tensor,
        context: torch.Tensor,
        ridge: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-candidate MLP on (candidate, attended memory (M, d) before W_o, context (M, 2)
        and, with a ridge read-out, the ridge score (M,))."""
        o = self.o(attn)
        parts = [cand, o, cand * o, context]
        if self.ridge_scale is not None:
            if ridge is None:
                raise ValueError("this ranker reads ridge scores: pass ridge=")
            parts.append(ridge.unsqueeze(1))
        h = self.mlp(torch.cat(parts, dim=1))
        logit = self.logit(h).squeeze(1)
        rating = self.rating(h).squeeze(1) if self.rating is not None else None
        if self.ridge_scale is not None and ridge is not None:
            logit = logit + self.ridge_scale[0] * ridge
            if rating is not None:  # ratings are predicted / 5 (encoder.WEIGHT_SCALE)
                rating = rating + self.ridge_scale[1] * ridge / 5.0
        return logit, rating
