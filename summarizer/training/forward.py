"""Training/evaluation forward pass in the causal form.

A ``TargetBatch`` holds a few users' histories back to back and, per user,
requests at positions p: "score these candidates given the events before p".
One pass over each user's events yields the memory for every request of that
user (VISTA: prefix states by segment sums, then a batched read-out), not one
pass per request.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from kernels import GatheredMemory
from summarizer.model.encoder import EventBatch, previous_times_jagged
from summarizer.model.ranker import context_features
from summarizer.model.vista_model import VistaModel

RECON_PAST = 3  # past events rebuilt per request, besides the next one


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


@dataclasses.dataclass
class BatchOutput:
    logits: torch.Tensor  # (C,)
    ratings: torch.Tensor | None  # (C,)
    recon_loss: torch.Tensor | None


def _windows(
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


def _pad(flat: torch.Tensor, offs: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (N, d) -> (R, width, d) and a padding mask (True = pad)."""
    R = offs.numel() - 1
    lengths = offs[1:] - offs[:-1]
    req = torch.repeat_interleave(torch.arange(R), lengths)
    pos = torch.arange(flat.shape[0]) - offs[:-1][req]
    out = flat.new_zeros(R, max(width, 1), flat.shape[1])
    out[req, pos] = flat
    pad = torch.arange(max(width, 1)).unsqueeze(0) >= lengths.unsqueeze(1)
    return out, pad


def forward_targets(model: VistaModel, batch: TargetBatch, recon: bool = False) -> BatchOutput:
    spec = model.spec
    ranker = model.ranker
    e = model.encoder(batch.events, previous_times_jagged(batch.events.ts, batch.offsets))
    R = batch.req_pos.numel()
    cand = ranker.embed_candidates(batch.cand_item)
    n_per_req = batch.cand_offsets[1:] - batch.cand_offsets[:-1]
    start_u = batch.offsets[:-1][batch.req_user]
    last_idx = (start_u + batch.req_pos - 1).clamp(min=0)
    hours = torch.where(
        batch.req_pos > 0,
        (batch.req_ts - batch.events.ts[last_idx]).float() / 3600.0,
        torch.zeros(R),
    )
    ctx = context_features(batch.req_pos, hours)
    ctx_c = torch.repeat_interleave(ctx, n_per_req, dim=0)
    recon_loss = None
    H, D = spec.num_heads, spec.d_model // spec.num_heads

    if spec.kind == "vista":
        tokens, sum_pos, inverse = _vista_readouts(model, e, batch)
        mem, mem_offs = _vista_memory(model, tokens[inverse], e, batch)
        k, vv = ranker.project_memory(mem)
        q = ranker.queries(cand)
        gathered = None
        if spec.uses_memory_bank:  # the bank holds what the summary holds: events before it
            sp = batch.req_pos if batch.req_summary_pos is None else batch.req_summary_pos
            gathered = _gsu_memory(model, e, q, batch, sp)
        state = None
        if ranker.state_q is not None:  # readout "state": each candidate reads its request's rows
            state = (tokens, inverse[torch.repeat_interleave(torch.arange(R), n_per_req)])
        logits, ratings = ranker(
            cand, k, vv, batch.cand_offsets, mem_offs, ctx, memory=gathered, q=q, state=state
        )
        if recon and model.recon is not None:
            recon_loss = _reconstruction_loss(model, tokens, sum_pos, e, batch)
        return BatchOutput(logits, ratings, recon_loss)

    if spec.kind == "none":
        empty = e.new_zeros(0, H, D)
        logits, ratings = ranker(
            cand, empty, empty, batch.cand_offsets, torch.zeros(R + 1, dtype=torch.long), ctx
        )
        return BatchOutput(logits, ratings, None)

    if spec.kind == "mean":
        cs = torch.cat([e.new_zeros(1, e.shape[1]), torch.cumsum(e, 0)])
        has = batch.req_pos > 0
        mean = (cs[start_u + batch.req_pos] - cs[start_u]) / batch.req_pos.clamp(min=1).unsqueeze(1)
        k, vv = ranker.project_memory(mean[has])
        offs = torch.zeros(R + 1, dtype=torch.long)
        offs[1:] = torch.cumsum(has.long(), 0)
        logits, ratings = ranker(cand, k, vv, batch.cand_offsets, offs, ctx)
        return BatchOutput(logits, ratings, None)

    if spec.kind == "full":
        return BatchOutput(*_full_attention(model, e, cand, ctx_c, batch), None)

    if spec.kind == "sim":  # no shared tokens: each candidate's top-k of the whole prefix
        q = ranker.queries(cand)
        empty = e.new_zeros(0, H, D)
        gathered = _gsu_memory(model, e, q, batch, batch.req_pos)
        logits, ratings = ranker(
            cand,
            empty,
            empty,
            batch.cand_offsets,
            torch.zeros(R + 1, dtype=torch.long),
            ctx,
            memory=gathered,
            q=q,
        )
        return BatchOutput(logits, ratings, None)

    idx, offs = _windows(batch, spec.last_k)
    window = e[idx]
    if spec.kind == "din":
        k, vv = ranker.project_memory(window)
        logits, ratings = ranker(cand, k, vv, batch.cand_offsets, offs, ctx)
        return BatchOutput(logits, ratings, None)
    if spec.kind == "linkedin":
        assert model.history_layer is not None
        padded, pad = _pad(window, offs, spec.last_k)
        mixed = model.history_layer(padded, src_key_padding_mask=pad)
        k, vv = ranker.project_memory(mixed[~pad])
        logits, ratings = ranker(cand, k, vv, batch.cand_offsets, offs, ctx)
        return BatchOutput(logits, ratings, None)
    if spec.kind == "transact":
        return BatchOutput(*_early_fusion(model, window, offs, cand, ctx_c, batch), None)
    raise ValueError(f"unknown model kind {spec.kind!r}")


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
    # Cut the batch's events at every user boundary and summary position, split once into
    # chunks (slicing each chunk separately made autograd allocate a full-size gradient per
    # slice: seconds per batch), sum phi(k) (x) v per chunk, and take differences of one
    # cumulative sum: the state before summary i is the sum of its user's chunks up to it.
    offsets = batch.offsets
    starts = offsets[:-1][u_of] + p_of  # (S,) global positions, sorted
    cuts = torch.unique(torch.cat([offsets, starts]))
    lengths = (cuts[1:] - cuts[:-1]).tolist()
    chunk_user = torch.searchsorted(offsets, cuts[:-1], right=True) - 1
    last_start = torch.full((offsets.numel() - 1,), -1, dtype=torch.long).scatter_reduce(
        0, u_of, starts, reduce="amax"
    )
    needed = (cuts[1:] <= last_start[chunk_user]).tolist()
    shape = summ.state_shape
    sums = [
        torch.einsum("nlhf,nlhd->lhfd", ck, cv) if need else phi_k.new_zeros(shape)
        for ck, cv, need in zip(phi_k.split(lengths), v.split(lengths), needed, strict=True)
    ]
    # fp64 like the serving state: a difference of running sums over several users must not
    # cancel (the "seed" map's weights span e^+-20).
    csum = torch.cumsum(torch.stack(sums, 0).double(), 0)
    csum = torch.cat([csum.new_zeros(1, *shape), csum], 0)  # csum[j] = sum of chunks < j
    end = torch.searchsorted(cuts, starts)  # chunks before cut index end lie before the summary
    begin = torch.searchsorted(cuts, offsets[:-1][u_of])
    kv = csum[end] - csum[begin]  # (S, L, H, F, D+1), ordered like uniq
    return summ.readout_batch(kv, p_of), torch.stack([u_of, p_of], 1), inverse


def _vista_memory(
    model: VistaModel, tokens: torch.Tensor, e: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request: its K summary tokens, then its recent window (events since the summary)."""
    R, K, d = tokens.shape
    w = model.spec.recent_window
    if w == 0 or batch.req_summary_pos is None:
        return tokens.reshape(R * K, d), torch.arange(R + 1) * K
    idx, offs = _windows(batch, w, lower=batch.req_summary_pos)
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


def _gsu_memory(
    model: VistaModel, e: torch.Tensor, q: torch.Tensor, batch: TargetBatch, upto: torch.Tensor
) -> GatheredMemory:
    """SIM soft search in the causal form: each candidate's top-``gsu_k`` events among the
    first ``upto[r]`` events of its request's user (raw events: clusters of one, bias 0).

    The search (``CandidateRanker.gsu_scores`` on detached tensors, then top-k) picks;
    gradients flow through the attention over what it picked. Each request's bank is
    its candidates' picks back to back, so the kernel's per-request offsets apply.
    """
    if model.spec.memory == "clusters":
        return _gsu_cluster_memory(model, e, q, batch, upto)
    ranker = model.ranker
    G = model.spec.gsu_k
    bank_k, bank_v = ranker.project_memory(model.mark_memory(e))
    M = q.shape[0]
    n_per_req = batch.cand_offsets[1:] - batch.cand_offsets[:-1]
    cand_req = torch.repeat_interleave(torch.arange(n_per_req.numel()), n_per_req)
    cand_user, limit = batch.req_user[cand_req], upto[cand_req]
    rows = torch.full((M, G), -1, dtype=torch.long)
    with torch.no_grad():
        for u in torch.unique(cand_user).tolist():
            sel = torch.nonzero(cand_user == u).squeeze(1)
            a, b = int(batch.offsets[u]), int(batch.offsets[u + 1])
            g = min(G, int(limit[sel].max()))
            if g == 0:
                continue
            scores = ranker.gsu_scores(q[sel], bank_k[a:b])
            scores = scores.masked_fill(
                torch.arange(b - a).unsqueeze(0) >= limit[sel].unsqueeze(1), float("-inf")
            )
            top = scores.topk(g, dim=1)
            rows[sel, :g] = torch.where(torch.isfinite(top.values), a + top.indices, -1)
    picked = rows.clamp(min=0).reshape(-1)
    local = (torch.arange(M) - batch.cand_offsets[:-1][cand_req]).unsqueeze(1) * G + torch.arange(G)
    idx = torch.where(rows >= 0, local, -1)
    return GatheredMemory(idx, bank_k[picked], bank_v[picked], batch.cand_offsets * G, None)


def _gsu_cluster_memory(
    model: VistaModel, e: torch.Tensor, q: torch.Tensor, batch: TargetBatch, upto: torch.Tensor
) -> GatheredMemory:
    """:func:`_gsu_memory` over TWIN-V2 cluster tokens: request r's bank is its user's
    clusters as of its first ``upto[r]`` events (mean encodings, bias log(size))."""
    from summarizer.training.banks import prefix_cluster_tokens

    if batch.event_cluster is None:
        raise ValueError("a 'clusters' memory needs the batch's event_cluster ids")
    ranker = model.ranker
    G, M, d = model.spec.gsu_k, q.shape[0], e.shape[1]
    H, D = q.shape[1], q.shape[2]
    n_per_req = batch.cand_offsets[1:] - batch.cand_offsets[:-1]
    cand_req = torch.repeat_interleave(torch.arange(n_per_req.numel()), n_per_req)
    cand_user = batch.req_user[cand_req]
    pk = q.new_zeros(M, G, H, D)
    pv = q.new_zeros(M, G, H, D)
    pb = q.new_zeros(M, G)
    valid = torch.zeros(M, G, dtype=torch.bool)
    for u in torch.unique(cand_user).tolist():
        sel = torch.nonzero(cand_user == u).squeeze(1)
        a, b = int(batch.offsets[u]), int(batch.offsets[u + 1])
        reqs, local = torch.unique(cand_req[sel], return_inverse=True)
        tokens, counts = prefix_cluster_tokens(e[a:b], batch.event_cluster[a:b], upto[reqs])
        R, c = counts.shape
        tk, tv = ranker.project_memory(model.mark_memory(tokens.reshape(R * c, d)))
        tk, tv = tk.view(R, c, H, D), tv.view(R, c, H, D)
        g = min(G, c)
        with torch.no_grad():
            scores = torch.einsum("mhd,mchd->mc", q[sel].detach(), tk[local].detach())
            scores = scores.masked_fill(counts[local] == 0, float("-inf"))
            top = scores.topk(g, dim=1)
        rows = local.unsqueeze(1).expand(-1, g)
        pk[sel, :g] = tk[rows, top.indices]
        pv[sel, :g] = tv[rows, top.indices]
        pb[sel, :g] = torch.log(counts[rows, top.indices].clamp(min=1))
        valid[sel, :g] = torch.isfinite(top.values)
    local_idx = (torch.arange(M) - batch.cand_offsets[:-1][cand_req]).unsqueeze(1) * G
    idx = torch.where(valid, local_idx + torch.arange(G), -1)
    return GatheredMemory(
        idx,
        pk.reshape(M * G, H, D),
        pv.reshape(M * G, H, D),
        batch.cand_offsets * G,
        pb.reshape(-1),
    )


def _full_attention(
    model: VistaModel, e: torch.Tensor, cand: torch.Tensor, ctx_c: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target attention over every earlier event: per user, a causal mask over its events."""
    ranker = model.ranker
    H, D = model.spec.num_heads, model.spec.d_model // model.spec.num_heads
    cand_req = torch.repeat_interleave(
        torch.arange(batch.req_pos.numel()), batch.cand_offsets[1:] - batch.cand_offsets[:-1]
    )
    cand_user = batch.req_user[cand_req]
    cand_p = batch.req_pos[cand_req]
    out = cand.new_zeros(cand.shape[0], model.spec.d_model)
    q_all = ranker.q(cand).view(-1, H, D)
    for u in range(batch.offsets.numel() - 1):
        sel = torch.nonzero(cand_user == u).squeeze(1)
        if sel.numel() == 0:
            continue
        a, b = int(batch.offsets[u]), int(batch.offsets[u + 1])
        k, v = ranker.project_memory(e[a:b])
        visible = torch.arange(b - a).unsqueeze(0) < cand_p[sel].unsqueeze(1)  # (m, n)
        q = q_all[sel].transpose(0, 1).unsqueeze(0)
        o = F.scaled_dot_product_attention(
            q,
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            attn_mask=visible.unsqueeze(0),
        )[0].transpose(0, 1)
        o = torch.nan_to_num(o) * visible.any(1).view(-1, 1, 1)  # no history: nothing attended
        out = out.index_copy(0, sel, o.reshape(-1, model.spec.d_model))
    return ranker.head(cand, out, ctx_c)


def _early_fusion(
    model: VistaModel,
    window: torch.Tensor,
    offs: torch.Tensor,
    cand: torch.Tensor,
    ctx_c: torch.Tensor,
    batch: TargetBatch,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TransAct: [event ; candidate] tokens for the last k events, a transformer layer, mean+max pool."""
    assert model.fusion is not None
    k = model.spec.last_k
    padded, pad = _pad(window, offs, k)  # (R, k, d)
    cand_req = torch.repeat_interleave(
        torch.arange(batch.req_pos.numel()), batch.cand_offsets[1:] - batch.cand_offsets[:-1]
    )
    ev = padded[cand_req]
    pm = pad[cand_req]
    z = model.fusion["mix_in"](torch.cat([ev, cand.unsqueeze(1).expand_as(ev)], dim=-1))
    all_pad = pm.all(1)
    pm_safe = pm.clone()
    pm_safe[all_pad, 0] = False  # keep the layer defined; the result is zeroed below
    z = model.fusion["layer"](z, src_key_padding_mask=pm_safe)
    keep = (~pm).unsqueeze(-1).float()
    mean = (z * keep).sum(1) / keep.sum(1).clamp(min=1)
    mx = z.masked_fill(pm.unsqueeze(-1), float("-inf")).max(1).values
    mx = torch.where(all_pad.unsqueeze(1), torch.zeros_like(mx), mx)
    fused = model.fusion["mix_out"](torch.cat([mean, mx], dim=1)) * (~all_pad).unsqueeze(1)
    return model.ranker.head(cand, fused, ctx_c)


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
