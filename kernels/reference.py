"""PyTorch reference implementations of the attention ops (also the CPU path).

Layouts (jagged, like torchrec / generative-recommenders):
* queries ``q``: ``(M, H, D)``, the candidates of all requests back to back;
  ``q_offsets`` ``(B+1,)`` int64 says where each request's candidates start.
* keys/values ``k, v``: ``(N, H, D)``, the summary tokens of all requests;
  ``kv_offsets`` ``(B+1,)``. Request ``b``'s candidates attend only to request
  ``b``'s tokens, never to each other.
* ``kv_bias``: optional ``(N,)`` additive bias per key (log cluster size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_offsets(offsets: torch.Tensor, total: int, name: str) -> None:
    if offsets.dim() != 1 or offsets.numel() < 2:
        raise ValueError(
            f"{name} must be 1-D with at least 2 entries, got shape {tuple(offsets.shape)}"
        )
    if int(offsets[0]) != 0 or int(offsets[-1]) != total:
        raise ValueError(
            f"{name} must start at 0 and end at {total}, got {offsets[0]}..{offsets[-1]}"
        )


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor | None = None,
    kv_offsets: torch.Tensor | None = None,
    kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Amortized cross-attention: every candidate attends to its request's tokens.

    Softmax in fp32 whatever the input dtype; the output has q's dtype. A
    request with no tokens gives zeros for its candidates.
    """
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3 or q.shape[1:] != k.shape[1:]:
        raise ValueError(
            f"shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} do not match (M,H,D)/(N,H,D)"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if q_offsets is None or kv_offsets is None:
        q_offsets = torch.tensor([0, q.shape[0]])
        kv_offsets = torch.tensor([0, k.shape[0]])
    _check_offsets(q_offsets, q.shape[0], "q_offsets")
    _check_offsets(kv_offsets, k.shape[0], "kv_offsets")
    if q_offsets.numel() != kv_offsets.numel():
        raise ValueError("q_offsets and kv_offsets must describe the same number of requests")
    B = q_offsets.numel() - 1
    qo, ko = q_offsets.tolist(), kv_offsets.tolist()
    m_len = [qo[i + 1] - qo[i] for i in range(B)]
    k_len = [ko[i + 1] - ko[i] for i in range(B)]
    out_dtype = q.dtype
    qf, kf, vf = q.float(), k.float(), v.float()
    if B == 1 and k_len[0] > 0:
        bias = None if kv_bias is None else kv_bias.float().view(1, 1, 1, -1)
        o = F.scaled_dot_product_attention(
            qf.transpose(0, 1).unsqueeze(0),
            kf.transpose(0, 1).unsqueeze(0),
            vf.transpose(0, 1).unsqueeze(0),
            attn_mask=bias,
            scale=scale,
        )
        return o.squeeze(0).transpose(0, 1).to(out_dtype)
    # Pad to a dense batch with a key mask (vectorized scatter, no Python loop over
    # requests); a request with no keys gives zeros, not NaN.
    Mx, Kx = max(m_len), max(max(k_len), 1)
    H, D = q.shape[1], q.shape[2]
    m_t, k_t = torch.tensor(m_len), torch.tensor(k_len)
    bq = torch.repeat_interleave(torch.arange(B), m_t)
    pq = torch.arange(q.shape[0]) - q_offsets[:-1].to(torch.long)[bq]
    bk = torch.repeat_interleave(torch.arange(B), k_t)
    pk = torch.arange(k.shape[0]) - kv_offsets[:-1].to(torch.long)[bk]
    qp = qf.new_zeros(B, Mx, H, D)
    kp = kf.new_zeros(B, Kx, H, D)
    vp = vf.new_zeros(B, Kx, H, D)
    qp[bq, pq] = qf
    kp[bk, pk] = kf
    vp[bk, pk] = vf
    bias = torch.full((B, Kx), float("-inf"))
    bias[bk, pk] = 0.0 if kv_bias is None else kv_bias.float()
    has_keys = (k_t > 0).view(B, 1, 1, 1)
    bias = torch.where(has_keys.view(B, 1), bias, torch.zeros_like(bias))
    scores = torch.einsum("bmhd,bkhd->bhmk", qp, kp) * scale + bias[:, None, None, :]
    probs = torch.softmax(scores, dim=-1) * has_keys
    o = torch.einsum("bhmk,bkhd->bmhd", probs, vp)
    return o[bq, pq].to(out_dtype)


def linear_attention_state(
    phi_k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Fold events into a linear-attention state: ``state + sum_t phi_k[t] (x) v[t]``.

    ``phi_k``: ``(n, H, F)`` feature-mapped keys, ``v``: ``(n, H, D)``; the state
    is ``(H, F, D)`` in fp32. Streams ``chunk_size`` events at a time, so memory
    does not grow with n.
    """
    n, H, Fd = phi_k.shape
    D = v.shape[-1]
    out = torch.zeros(H, Fd, D, dtype=torch.float32) if state is None else state.clone().float()
    for s in range(0, n, chunk_size):
        pk = phi_k[s : s + chunk_size].float()
        vv = v[s : s + chunk_size].float()
        out += torch.einsum("nhf,nhd->hfd", pk, vv)
    return out


def linear_attention_prefix_states(
    phi_k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, state: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal form: the state before each of ``positions`` (sum over events ``t < p``).

    Returns ``(len(positions), H, F, D)``. One pass over the events (segment sums,
    then a cumulative sum over segments), not one pass per position.
    """
    n, H, Fd = phi_k.shape
    D = v.shape[-1]
    P = positions.numel()
    base = torch.zeros(H, Fd, D) if state is None else state.float()
    if P == 0:
        return base.new_zeros(0, H, Fd, D)
    pos = positions.tolist()
    if any(b < a for a, b in zip(pos, pos[1:], strict=False)):
        raise ValueError("positions must be sorted")
    # Segment j holds events [positions[j-1], positions[j]): one matmul per segment,
    # then a cumulative sum over segments gives every prefix.
    sums = base.new_zeros(P, H, Fd, D)
    start = 0
    for j, end in enumerate(pos):
        end = min(max(end, 0), n)
        if end > start:
            sums[j] = torch.einsum("nhf,nhd->hfd", phi_k[start:end].float(), v[start:end].float())
            start = end
    return base.unsqueeze(0) + torch.cumsum(sums, dim=0)
