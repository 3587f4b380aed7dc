"""Triton forward kernel: amortized cross-attention over a jagged batch of requests.

Candidates (queries) of request ``b`` attend to request ``b``'s summary tokens and,
optionally, to a few tokens gathered per candidate from the request's memory bank
(GSU top-k or TWIN-V2 cluster tokens, with a ``log(cluster size)`` bias). Both
sets go through one online softmax (flash-attention style: running max and sum,
one pass, fp32 accumulation), so the result equals one softmax over their union.

One launch covers the whole batch: the grid is (query blocks, heads, requests);
programs whose query block lies past their request's length exit at once. No
size needs to divide a block: every load and store is masked.

Layouts are those of :mod:`kernels.reference`. The kernel is forward-only.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _cross_attention_fwd(
    Q,
    K,
    V,
    KV_BIAS,
    MEM_K,
    MEM_V,
    MEM_BIAS,
    GATHER_IDX,
    OUT,
    q_offsets,
    kv_offsets,
    mem_offsets,
    stride_qm,
    stride_qh,
    stride_km,
    stride_kh,
    stride_vm,
    stride_vh,
    stride_mkm,
    stride_mkh,
    stride_mvm,
    stride_mvh,
    stride_gm,
    stride_om,
    stride_oh,
    qk_scale,
    bias_scale,
    num_gather,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HAS_KV_BIAS: tl.constexpr,
    HAS_GATHER: tl.constexpr,
    HAS_MEM_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    req = tl.program_id(2)
    q_start = tl.load(q_offsets + req)
    m_len = tl.load(q_offsets + req + 1) - q_start
    start_m = pid_m * BLOCK_M
    # The grid is sized for the longest request; shorter ones leave programs idle.
    if start_m < m_len:
        kv_start = tl.load(kv_offsets + req)
        kv_len = tl.load(kv_offsets + req + 1) - kv_start
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_m = offs_m < m_len
        mask_d = offs_d < HEAD_DIM
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(
            Q + rows[:, None] * stride_qm + head * stride_qh + offs_d[None, :],
            mask=mask_m[:, None] & mask_d[None, :],
            other=0.0,
        )
        if UPCAST_DOT:
            # The interpreter multiplies bf16 bit patterns as integers; fp32 is exact here.
            q = q.to(tl.float32)
        # exp2 of log2-scaled scores: the caller folds log2(e) into both scales.
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        # Shared tokens: one (BLOCK_M x BLOCK_N) tile of scores per step, on tensor cores.
        for start_n in range(0, kv_len, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < kv_len
            keys = (kv_start + offs_n).to(tl.int64)
            kt = tl.load(
                K + keys[None, :] * stride_km + head * stride_kh + offs_d[:, None],
                mask=mask_d[:, None] & mask_n[None, :],
                other=0.0,
            )
            v = tl.load(
                V + keys[:, None] * stride_vm + head * stride_vh + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            )
            if UPCAST_DOT:
                kt = kt.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
            if HAS_KV_BIAS:
                b = tl.load(KV_BIAS + keys, mask=mask_n, other=0.0).to(tl.float32)
                s += b[None, :] * bias_scale
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row whose scores are all -inf so far (a -inf bias) must not produce NaN.
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        if HAS_GATHER:
            # Gathered tokens differ per candidate, so there is no shared tile to feed
            # tl.dot: scores are row-wise dot products on CUDA cores. G is small (top-k).
            mem_start = tl.load(mem_offsets + req)
            mem_len = tl.load(mem_offsets + req + 1) - mem_start
            qf = q.to(tl.float32)
            for start_g in range(0, num_gather, BLOCK_G):
                offs_g = start_g + tl.arange(0, BLOCK_G)
                idx = tl.load(
                    GATHER_IDX + rows[:, None] * stride_gm + offs_g[None, :],
                    mask=mask_m[:, None] & (offs_g < num_gather)[None, :],
                    other=-1,
                )
                # -1 pads; an index past the bank is treated as absent, never read.
                valid = (idx >= 0) & (idx < mem_len)
                slot = (mem_start + tl.where(valid, idx, 0)).to(tl.int64)
                mask3 = valid[:, :, None] & mask_d[None, None, :]
                kg = tl.load(
                    MEM_K
                    + slot[:, :, None] * stride_mkm
                    + head * stride_mkh
                    + offs_d[None, None, :],
                    mask=mask3,
                    other=0.0,
                ).to(tl.float32)
                s = tl.sum(qf[:, None, :] * kg, 2) * qk_scale
                if HAS_MEM_BIAS:
                    b = tl.load(MEM_BIAS + slot, mask=valid, other=0.0).to(tl.float32)
                    s += b * bias_scale
                s = tl.where(valid, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                vg = tl.load(
                    MEM_V
                    + slot[:, :, None] * stride_mvm
                    + head * stride_mvh
                    + offs_d[None, None, :],
                    mask=mask3,
                    other=0.0,
                ).to(tl.float32)
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vg, 1)
                m_i = m_new

        # A candidate with no token at all (l_i == 0) gets zeros, like the reference.
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        o = acc / l_safe[:, None]
        tl.store(
            OUT + rows[:, None] * stride_om + head * stride_oh + offs_d[None, :],
            o.to(OUT.dtype.element_ty),
            mask=mask_m[:, None] & mask_d[None, :],
        )


INTERPRETED: bool = not isinstance(_cross_attention_fwd, JITFunction)
"""True when ``TRITON_INTERPRET=1`` was set before this module was imported."""

_LOG2E = 1.0 / math.log(2.0)


def _pow2(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(x), 1))))


def default_blocks(head_dim: int, max_m: int, max_k: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a launch: >= 16 in every dot dimension (tensor cores).

    On a GPU, 64 x 64 tiles keep q, one K/V tile and the accumulator in registers
    for head dims up to 128. The interpreter pays per program and per loop step, not
    per element, so it gets the largest tiles the shapes can use.
    """
    if INTERPRETED:
        return _pow2(max_m, 16, 256), _pow2(max_k, 16, 256)
    block_m = 128 if head_dim <= 64 and max_m >= 128 else 64
    return min(block_m, _pow2(max_m, 16, 128)), min(64, _pow2(max_k, 16, 64))


def _lengths_max(offsets: torch.Tensor) -> int:
    return int((offsets[1:] - offsets[:-1]).max()) if offsets.numel() > 1 else 0


def triton_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor | None = None,
    kv_offsets: torch.Tensor | None = None,
    kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    gather_idx: torch.Tensor | None = None,
    mem_k: torch.Tensor | None = None,
    mem_v: torch.Tensor | None = None,
    mem_offsets: torch.Tensor | None = None,
    mem_bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    max_m: int | None = None,
    max_k: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_g: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> torch.Tensor:
    """Launch the cross-attention kernel; same contract as the reference functions.

    ``out`` (optional, ``q``'s shape and dtype) receives the result; tests pass a
    NaN-filled one so that any element the kernel fails to write shows up.
    ``max_m`` / ``max_k`` (the longest request's candidate / token count) size the
    grid and the tiles; pass both to avoid device-to-host syncs. Shapes are checked
    by the caller (the dispatcher); this function only makes the innermost
    dimensions contiguous where the kernel needs it.
    """
    M, H, D = q.shape
    device = q.device
    if q_offsets is None or kv_offsets is None:
        q_offsets = torch.tensor([0, M], device=device)
        kv_offsets = torch.tensor([0, k.shape[0]], device=device)
    q_offsets = q_offsets.to(device=device, dtype=torch.int64).contiguous()
    kv_offsets = kv_offsets.to(device=device, dtype=torch.int64).contiguous()
    B = q_offsets.numel() - 1
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if M == 0 or B == 0:
        return out
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    kv_bias = None if kv_bias is None else kv_bias.contiguous()
    if out.stride(-1) != 1:
        raise ValueError("out must be contiguous in its last dimension")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    max_m = _lengths_max(q_offsets) if max_m is None else max_m
    max_k = _lengths_max(kv_offsets) if max_k is None else max_k
    bm, bn = default_blocks(D, max_m, max_k)
    block_d = _pow2(D, 16, MAX_HEAD_DIM)
    block_m, block_n = block_m or bm, block_n or bn

    has_gather = gather_idx is not None and gather_idx.shape[1] > 0
    if gather_idx is not None and has_gather:
        assert mem_k is not None and mem_v is not None and mem_offsets is not None
        gather_idx = gather_idx.to(torch.int64).contiguous()
        mem_offsets = mem_offsets.to(device=device, dtype=torch.int64).contiguous()
        mem_k, mem_v = (t if t.stride(-1) == 1 else t.contiguous() for t in (mem_k, mem_v))
        mem_bias = None if mem_bias is None else mem_bias.contiguous()
        num_gather = gather_idx.shape[1]
        # (BLOCK_M, BLOCK_G, BLOCK_D) fp32 lives in registers: keep it bounded.
        cap = 64 if INTERPRETED else max(1, 16384 // (block_m * block_d))
        block_g = block_g or _pow2(num_gather, 1, cap)
    else:
        # Unused pointer arguments still need a tensor; the constexpr flags skip them.
        gather_idx, mem_k, mem_v, mem_offsets = q_offsets, k, v, kv_offsets
        num_gather, block_g = 0, 1
    has_mem_bias = has_gather and mem_bias is not None
    # fp32 inputs get fp32 products unless the user opted into TF32, as torch.matmul does.
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    # Wide tiles need more threads to keep the accumulator in registers.
    num_warps = num_warps or (8 if block_m * D >= 128 * 64 else 4)
    grid = (triton.cdiv(max_m, block_m), H, B)
    _cross_attention_fwd[grid](
        q,
        k,
        v,
        kv_bias if kv_bias is not None else q,
        mem_k,
        mem_v,
        mem_bias if has_mem_bias else q,
        gather_idx,
        out,
        q_offsets,
        kv_offsets,
        mem_offsets,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        mem_k.stride(0),
        mem_k.stride(1),
        mem_v.stride(0),
        mem_v.stride(1),
        gather_idx.stride(0),
        out.stride(0),
        out.stride(1),
        scale * _LOG2E,
        _LOG2E,
        num_gather,
        HEAD_DIM=D,
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_G=block_g,
        HAS_KV_BIAS=kv_bias is not None,
        HAS_GATHER=has_gather,
        HAS_MEM_BIAS=has_mem_bias,
        UPCAST_DOT=INTERPRETED and q.dtype == torch.bfloat16,
        DOT_PRECISION="tf32" if allow_tf32 else "ieee",
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
