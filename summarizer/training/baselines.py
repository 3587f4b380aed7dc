"""The baselines' history modules in the causal form (training and evaluation only;
they are not served): no history, mean pooling, DIN, LinkedIn-style append +
cross-attention, TransAct early fusion, full-history target attention and SIM.

Every kind but ``full`` and ``transact`` assembles its memory tokens and calls the
model's one ranker call (:meth:`VistaModel.rank`), as VISTA's forward and serving do.
To add a baseline: a kind in :data:`summarizer.config.model.Kind`, its modules in
``VistaModel.__init__`` if it has any, its branch here and its online cost in
:func:`summarizer.training.harness.online_flops_per_candidate`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from summarizer.data.histories import event_labels
from summarizer.model.transact2 import NEXT_ACTION_NEGATIVES
from summarizer.model.vista_model import VistaModel
from summarizer.training.causal_gsu import causal_gsu
from summarizer.training.targets import TargetBatch, pad_jagged, request_windows


def baseline_forward(
    model: VistaModel, e: torch.Tensor, cand: torch.Tensor, ctx: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and ratings) of a baseline kind: ``e`` the batch's encoded events, ``cand``
    its embedded candidates, ``ctx`` (R, 2) each request's context."""
    spec, ranker = model.spec, model.ranker
    R = batch.req_pos.numel()
    if spec.kind == "full":
        return full_attention(model, e, cand, ctx[batch.cand_request()], batch)
    if spec.kind in ("hstu", "longer"):
        return per_user_forward(model, e, cand, ctx[batch.cand_request()], batch)
    q = ranker.queries(cand)
    gathered = None
    none = torch.zeros(R + 1, dtype=torch.long)
    if spec.kind == "none":
        memory, offs = e.new_zeros(0, e.shape[1]), none
    elif spec.kind == "mean":
        start_u = batch.offsets[:-1][batch.req_user]
        cs = torch.cat([e.new_zeros(1, e.shape[1]), torch.cumsum(e, 0)])
        has = batch.req_pos > 0
        mean = (cs[start_u + batch.req_pos] - cs[start_u]) / batch.req_pos.clamp(min=1).unsqueeze(1)
        memory, offs = mean[has], none.clone()
        offs[1:] = torch.cumsum(has.long(), 0)
    elif spec.kind == "sim":  # no shared tokens: each candidate's top-k of the whole prefix
        memory, offs = e.new_zeros(0, e.shape[1]), none
        gathered = causal_gsu(model, e, q, batch, batch.req_pos)
    else:
        idx, offs = request_windows(batch, spec.last_k)
        window = e[idx]
        if spec.kind == "transact":
            return early_fusion(model, window, offs, cand, ctx[batch.cand_request()], batch)
        if spec.kind == "din":
            memory = window
        elif spec.kind == "linkedin":
            assert model.history_layer is not None
            padded, pad = pad_jagged(window, offs, spec.last_k)
            memory = model.history_layer(padded, src_key_padding_mask=pad)[~pad]
        else:
            raise ValueError(f"unknown model kind {spec.kind!r}")
    return model.rank(cand, q, memory, batch.cand_offsets, offs, ctx, gathered=gathered)


def full_attention(
    model: VistaModel, e: torch.Tensor, cand: torch.Tensor, ctx_c: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target attention over every earlier event: per user, a causal mask over its events."""
    ranker = model.ranker
    H, D = model.spec.num_heads, model.spec.d_model // model.spec.num_heads
    cand_req = batch.cand_request()
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


def per_user_forward(
    model: VistaModel, e: torch.Tensor, cand: torch.Tensor, ctx_c: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HSTU with M-FALCON candidates (:mod:`summarizer.model.hstu`) and LONGER
    (:mod:`summarizer.model.longer`), one user at a time: the user's events up to its last
    request, then every candidate of the user at once. HSTU leaves out the events no
    candidate can reach (earlier than layers x window before its first request)."""
    cand_req = batch.cand_request()
    cand_user, cand_p, cand_ts = (
        batch.req_user[cand_req],
        batch.req_pos[cand_req],
        batch.req_ts[cand_req],
    )
    out = cand.new_zeros(cand.shape[0], model.spec.d_model)
    for u in range(batch.offsets.numel() - 1):
        sel = torch.nonzero(cand_user == u).squeeze(1)
        if sel.numel() == 0:
            continue
        a = int(batch.offsets[u])
        p = cand_p[sel]
        if model.hstu is not None:
            reach = len(model.hstu.layers) * model.hstu.window
            lo, hi = max(0, int(p.min()) - reach), int(p.max())
            ts = batch.events.ts[a + lo : a + hi]
            h = model.hstu.forward_user(e[a + lo : a + hi], ts, cand[sel], p - lo, cand_ts[sel])
        else:
            assert model.longer is not None
            h = model.longer.forward_user(e[a : a + int(p.max())], cand[sel], p)
        out = out.index_copy(0, sel, h)
    return model.ranker.head(cand, out, ctx_c)


def transact2_forward(
    model: VistaModel,
    e: torch.Tensor,
    cand: torch.Tensor,
    ctx_c: torch.Tensor,
    batch: TargetBatch,
    next_action: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """TransAct V2 (:mod:`summarizer.model.transact2`), one user at a time: logits, ratings
    and, when ``next_action``, the next-action loss of the batch's requests."""
    tv2 = model.transact2
    assert tv2 is not None
    cand_req = batch.cand_request()
    cand_user, cand_p = batch.req_user[cand_req], batch.req_pos[cand_req]
    engaged = torch.from_numpy(
        event_labels(batch.events.action.numpy(), batch.events.weight.numpy()) > 0
    )
    item_emb = model.items(batch.events.item_id)
    cand_items = model.items(batch.cand_item)
    out = cand.new_zeros(cand.shape[0], model.spec.d_model)
    losses = []
    for u in range(batch.offsets.numel() - 1):
        sel = torch.nonzero(cand_user == u).squeeze(1)
        if sel.numel() == 0:
            continue
        a, b = int(batch.offsets[u]), int(batch.offsets[u + 1])
        h = tv2.forward_user(
            e[a:b], item_emb[a:b], engaged[a:b], cand[sel], cand_items[sel], cand_p[sel]
        )
        out = out.index_copy(0, sel, h)
        if next_action:
            reqs = torch.nonzero(batch.req_user == u).squeeze(1)
            loss = next_action_loss(
                model,
                e[a:b],
                batch.events.item_id[a:b],
                engaged[a:b],
                batch.req_pos[reqs],
                batch.events.item_id,
            )
            if loss is not None:
                losses.append(loss)
    logits, ratings = model.ranker.head(cand, out, ctx_c)
    aux = torch.stack(losses).mean() if losses else None
    return logits, ratings, aux


def next_action_loss(
    model: VistaModel,
    events: torch.Tensor,
    items: torch.Tensor,
    engaged: torch.Tensor,
    req_pos: torch.Tensor,
    pool: torch.Tensor,
) -> torch.Tensor | None:
    """TransAct V2's next-action loss for one user's requests: the user vector at each
    request (:meth:`TransActV2.user_vectors`) against the next engaged item at or after
    its position (positive), the user's impressions before it and random items of the
    batch (``pool``) as negatives, a sampled softmax. None when no request has a next
    engaged item in the batch."""
    tv2 = model.transact2
    assert tv2 is not None
    n = items.shape[0]
    eng_pos = torch.nonzero(engaged).squeeze(1)
    nxt = torch.searchsorted(eng_pos, req_pos)
    has = nxt < eng_pos.numel()
    if not bool(has.any()):
        return None
    req_pos, pos_item = req_pos[has], items[eng_pos[nxt[has]]]
    G = NEXT_ACTION_NEGATIVES
    # Negatives: up to G of the user's impressions before the request, the rest random.
    imp = torch.nonzero(~engaged).squeeze(1)
    rand_pool = pool[torch.randint(0, pool.numel(), (req_pos.numel(), G))]
    if imp.numel():
        pick = imp[torch.randint(0, imp.numel(), (req_pos.numel(), G))]
        before = pick < req_pos.unsqueeze(1)
        negs = torch.where(before, items[pick.clamp(max=n - 1)], rand_pool)
    else:
        negs = rand_pool
    cands = torch.cat([pos_item.unsqueeze(1), negs], 1)  # (r, 1 + G)
    user = tv2.user_vectors(events, req_pos)  # (r, d)
    logits = torch.einsum("rd,rgd->rg", user, model.items(cands))
    same = cands[:, 1:] == cands[:, :1]  # a negative that is the positive item: left out
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], 1)
    return F.cross_entropy(logits, torch.zeros(req_pos.numel(), dtype=torch.long))


def early_fusion(
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
    padded, pad = pad_jagged(window, offs, k)  # (R, k, d)
    cand_req = batch.cand_request()
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
