"""The training/evaluation forward pass in the causal form.

One pass over each user's events of a :class:`~summarizer.training.targets.TargetBatch`
yields the memory for every request of that user (VISTA: prefix states by segment
sums, then a batched read-out), not one pass per request. VISTA's requests then go
through the model's one ranker call (:meth:`VistaModel.rank`), the same call serving
makes; the baselines' history modules are in :mod:`summarizer.training.baselines`.
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from kernels import linear_attention
from summarizer.model.encoder import previous_times_jagged
from summarizer.model.ranker import context_features
from summarizer.model.vista_model import VistaModel
from summarizer.training.baselines import baseline_forward, transact2_forward
from summarizer.training.causal_gsu import causal_gsu
from summarizer.training.targets import TargetBatch, request_windows

RECON_PAST = 3  # past events rebuilt per request, besides the next one


@dataclasses.dataclass
class BatchOutput:
    logits: torch.Tensor  # (C,)
    ratings: torch.Tensor | None  # (C,)
    recon_loss: torch.Tensor | None
    ridge: torch.Tensor | None = None  # (C,) the ridge read-out's scores (deviations)
    aux_loss: torch.Tensor | None = None  # TransAct V2's next-action loss (training)


def request_context(batch: TargetBatch) -> torch.Tensor:
    """Each request's context features (R, 2): its history length and the hours since its
    last event, as serving computes them from a summary."""
    R = batch.req_pos.numel()
    start_u = batch.offsets[:-1][batch.req_user]
    last_idx = (start_u + batch.req_pos - 1).clamp(min=0)
    hours = torch.where(
        batch.req_pos > 0,
        (batch.req_ts - batch.events.ts[last_idx]).float() / 3600.0,
        torch.zeros(R),
    )
    return context_features(batch.req_pos, hours)


def forward_targets(model: VistaModel, batch: TargetBatch, recon: bool = False) -> BatchOutput:
    """Logits (and ratings, and the reconstruction loss when ``recon``) of every candidate."""
    e = model.encoder(batch.events, previous_times_jagged(batch.events.ts, batch.offsets))
    cand = model.ranker.embed_candidates(batch.cand_item)
    ctx = request_context(batch)
    if model.spec.kind == "transact2":  # with its next-action loss while training
        logits, ratings, aux = transact2_forward(
            model, e, cand, ctx[batch.cand_request()], batch, next_action=torch.is_grad_enabled()
        )
        return BatchOutput(logits, ratings, None, aux_loss=aux)
    if model.spec.kind == "dv365":  # cached tokens + the events since, as VISTA's are read
        tokens, inverse = _dv365_embeddings(model, e, batch)
        mem, mem_offs = _vista_memory(model, tokens[inverse], e, batch)
        q = model.ranker.queries(cand)
        logits, ratings = model.rank(cand, q, mem, batch.cand_offsets, mem_offs, ctx)
        return BatchOutput(logits, ratings, None)
    if model.spec.kind != "vista":
        return BatchOutput(*baseline_forward(model, e, cand, ctx, batch), None)
    tokens, sum_pos, inverse = _vista_readouts(model, e, batch)
    mem, mem_offs = _vista_memory(model, tokens[inverse], e, batch)
    q = model.ranker.queries(cand)
    gathered = None
    if model.spec.uses_memory_bank:  # the bank holds what the summary holds: events before it
        sp = batch.req_pos if batch.req_summary_pos is None else batch.req_summary_pos
        gathered = causal_gsu(model, e, q, batch, sp)
    cand_req = batch.cand_request()
    summaries = None
    if model.ranker.state_q is not None:  # readout "state": each candidate reads its rows
        summaries = (tokens, inverse[cand_req])
    ridge = None
    if model.ridge is not None:  # the summary's moments and every event since, solved
        w = model.ridge.solve(request_moments(model, batch))
        ridge = model.ridge.scores(w[cand_req], batch.cand_item)
    logits, ratings = model.rank(
        cand,
        q,
        mem,
        batch.cand_offsets,
        mem_offs,
        ctx,
        gathered=gathered,
        summaries=summaries,
        ridge=ridge,
    )
    recon_loss = None
    if recon and model.recon is not None:
        recon_loss = _reconstruction_loss(model, tokens, sum_pos, e, batch)
    return BatchOutput(logits, ratings, recon_loss, ridge)


def _vista_readouts(
    model: VistaModel, e: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One read-out per distinct (user, summary position): tokens (S, K, d), their (user, pos), and
    each request's index into them."""
    summ = model.require_summarizer()
    sp = batch.req_pos if batch.req_summary_pos is None else batch.req_summary_pos
    width = int(sp.max()) + 1 if sp.numel() else 1
    uniq, inverse = torch.unique(batch.req_user * width + sp, return_inverse=True)
    u_of, p_of = uniq // width, uniq % width
    phi_k, v = summ.keys_values(e)
    n, L, H, Fd = phi_k.shape
    Dv = v.shape[-1]
    # Each user's states before its summary positions: the causal (prefix-state) form of
    # kernels.linear_attention over that user's events, layers x heads as its heads (the
    # torch path while gradients flow -- the Triton kernel is forward-only -- and on the
    # CPU; the kernel for CUDA tensors without gradients, e.g. evaluation). Per user, so no
    # running sum spans two users and nothing cancels in fp32.
    offsets = batch.offsets.tolist()
    users = u_of.tolist()
    positions = p_of.tolist()
    # One split into users (a slice per user would make autograd allocate a full-size
    # gradient for each: seconds a batch).
    lengths = [b - a for a, b in itertools.pairwise(offsets)]
    phi_u = phi_k.reshape(n, L * H, Fd).split(lengths)
    v_u = v.reshape(n, L * H, Dv).split(lengths)
    kv_parts = []
    first = 0
    while first < len(users):
        u = users[first]
        last = first
        while last + 1 < len(users) and users[last + 1] == u:
            last += 1
        pos = torch.tensor(positions[first : last + 1])
        result = linear_attention(phi_u[u], v_u[u], None, pos)
        assert result.prefix_states is not None
        kv_parts.append(result.prefix_states.view(-1, L, H, Fd, Dv))
        first = last + 1
    kv = torch.cat(kv_parts) if kv_parts else phi_k.new_zeros(0, L, H, Fd, Dv)
    return summ.readout_attention(kv, p_of), torch.stack([u_of, p_of], 1), inverse


def _dv365_embeddings(
    model: VistaModel, e: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """DV365's tokens (S, K, d), one per distinct (user, summary position) -- the nightly
    embedding of the last N events before the request's day -- and each request's index."""
    dv = model.dv365
    assert dv is not None
    sp = batch.req_pos if batch.req_summary_pos is None else batch.req_summary_pos
    width = int(sp.max()) + 1 if sp.numel() else 1
    uniq, inverse = torch.unique(batch.req_user * width + sp, return_inverse=True)
    u_of, p_of = uniq // width, uniq % width
    local = p_of.unsqueeze(1) - dv.events + torch.arange(dv.events).unsqueeze(0)  # (S, N)
    present = local >= 0
    idx = (batch.offsets[:-1][u_of].unsqueeze(1) + local).clamp(min=0, max=max(len(e) - 1, 0))
    x = e[idx] if len(e) else e.new_zeros(*idx.shape, e.shape[1])
    return dv(x, present), inverse


def request_moments(model: VistaModel, batch: TargetBatch) -> torch.Tensor:
    """Each request's second moments (R, k+1, k+2) over its user's events before it (the
    summary's and the recent ones: what serving folds), from chunk sums and one cumulative
    sum, as the read-outs' states are (differentiable: the item vectors and biases learn)."""
    assert model.ridge is not None
    x, y = model.ridge.features(batch.events)
    xy = torch.cat([x, y.unsqueeze(1)], 1)
    offsets = batch.offsets
    starts = offsets[:-1][batch.req_user] + batch.req_pos  # (R,) global, non-decreasing
    cuts = torch.unique(torch.cat([offsets, starts]))
    lengths = (cuts[1:] - cuts[:-1]).tolist()
    sums = torch.stack(
        [a.T @ b for a, b in zip(x.split(lengths), xy.split(lengths), strict=True)]
        or [x.new_zeros(*model.ridge.moments_shape)]
    ).double()
    csum = torch.cat([sums.new_zeros(1, *sums.shape[1:]), torch.cumsum(sums, 0)])
    end = torch.searchsorted(cuts, starts)
    begin = torch.searchsorted(cuts, offsets[:-1][batch.req_user])
    return csum[end] - csum[begin]


def _vista_memory(
    model: VistaModel, tokens: torch.Tensor, e: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request: its K summary tokens, then its recent window (events since the summary)."""
    R, K, d = tokens.shape
    w = model.spec.recent_window
    if w == 0 or batch.req_summary_pos is None:
        return tokens.reshape(R * K, d), torch.arange(R + 1) * K
    idx, offs = request_windows(batch, w, lower=batch.req_summary_pos)
    win = model.mark_recent(e[idx])
    wlen = offs[1:] - offs[:-1]
    mem_offs = torch.zeros(R + 1, dtype=torch.long)
    mem_offs[1:] = torch.cumsum(wlen + K, 0)
    dest_tok = (mem_offs[:-1].unsqueeze(1) + torch.arange(K)).reshape(-1)
    req_w = torch.repeat_interleave(torch.arange(R), wlen)
    dest_win = mem_offs[:-1][req_w] + K + torch.arange(idx.numel()) - offs[:-1][req_w]
    mem = tokens.new_empty(int(mem_offs[-1]), d)
    mem = mem.index_put((dest_tok,), tokens.reshape(R * K, d)).index_put((dest_win,), win)
    return mem, mem_offs


def _reconstruction_loss(
    model: VistaModel,
    tokens: torch.Tensor,
    sum_pos: torch.Tensor,
    e: torch.Tensor,
    batch: TargetBatch,
) -> torch.Tensor:
    """Rebuild, from each summary's tokens alone, the next event and RECON_PAST random past ones."""
    assert model.recon is not None
    user, p = sum_pos[:, 0], sum_pos[:, 1]
    S = p.numel()
    start_u = batch.offsets[:-1][user]
    end_u = batch.offsets[1:][user]
    gen = torch.Generator().manual_seed(int(p.sum()))
    past = (torch.rand(S, RECON_PAST, generator=gen) * p.unsqueeze(1).float()).long()
    t = torch.cat([p.unsqueeze(1), past], dim=1)  # (S, 1 + RECON_PAST)
    valid = torch.cat(
        [(start_u + p < end_u).unsqueeze(1), (p > 0).unsqueeze(1).expand(S, RECON_PAST)], dim=1
    )
    gidx = (start_u.unsqueeze(1) + t).clamp(max=e.shape[0] - 1)
    target = e[gidx].detach()
    pred = model.recon(tokens, t, p)
    err = ((pred - target) ** 2).mean(-1)
    return (err * valid).sum() / valid.sum().clamp(min=1)
