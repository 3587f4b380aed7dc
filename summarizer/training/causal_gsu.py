"""The GSU in the causal form (training and evaluation): each candidate's top-``gsu_k``
memory tokens among its user's events before the request -- raw events (SIM soft
search) or the TWIN-V2 cluster tokens of them (``ModelSpec.memory = "clusters"``,
what the cluster job serves; see :mod:`summarizer.training.banks`).

The search (``CandidateRanker.gsu_scores`` on detached tensors, then top-k) picks;
gradients flow through the attention over what it picked. Each request's bank is
its candidates' picks back to back, so the kernel's per-request offsets apply.
"""

from __future__ import annotations

import torch

from kernels import GatheredMemory
from summarizer.model.vista_model import VistaModel
from summarizer.training.banks import prefix_cluster_tokens
from summarizer.training.targets import TargetBatch


def causal_gsu(
    model: VistaModel, e: torch.Tensor, q: torch.Tensor, batch: TargetBatch, upto: torch.Tensor
) -> GatheredMemory:
    """SIM soft search in the causal form: each candidate's top-``gsu_k`` events among the
    first ``upto[r]`` events of its request's user (raw events: clusters of one, bias 0).

    The search (``CandidateRanker.gsu_scores`` on detached tensors, then top-k) picks;
    gradients flow through the attention over what it picked. Each request's bank is
    its candidates' picks back to back, so the kernel's per-request offsets apply.
    """
    if model.spec.memory == "clusters":
        return causal_cluster_gsu(model, e, q, batch, upto)
    ranker = model.ranker
    G = model.spec.gsu_k
    bank_k, bank_v = ranker.project_memory(model.mark_memory(e))
    M = q.shape[0]
    cand_req = batch.cand_request()
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


def causal_cluster_gsu(
    model: VistaModel, e: torch.Tensor, q: torch.Tensor, batch: TargetBatch, upto: torch.Tensor
) -> GatheredMemory:
    """:func:`causal_gsu` over TWIN-V2 cluster tokens: request r's bank is its user's
    clusters as of its first ``upto[r]`` events (mean encodings, bias log(size))."""
    if batch.event_cluster is None:
        raise ValueError("a 'clusters' memory needs the batch's event_cluster ids")
    ranker = model.ranker
    G, M, d = model.spec.gsu_k, q.shape[0], e.shape[1]
    H, D = q.shape[1], q.shape[2]
    cand_req = batch.cand_request()
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
