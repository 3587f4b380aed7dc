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

import dataclasses
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
    head_dim,
    has_kv_bias,
    has_mem_bias,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HAS_GATHER: tl.constexpr,
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
        mask_d = offs_d < head_dim
        # Block pointers (base + shape + strides, bounds-checked loads) rather than 2-D
        # tensors of 64-bit addresses: the address tensors of a K and a V tile alone took
        # more registers a thread than the accumulator and spilled (BENCHMARKS.md).
        q_blk = tl.make_block_ptr(
            Q + q_start.to(tl.int64) * stride_qm + head * stride_qh,
            shape=(m_len, head_dim),
            strides=(stride_qm, 1),
            offsets=(start_m, 0),
            block_shape=(BLOCK_M, BLOCK_D),
            order=(1, 0),
        )
        q = tl.load(q_blk, boundary_check=(0, 1), padding_option="zero")
        if UPCAST_DOT:
            # The interpreter multiplies bf16 bit patterns as integers; fp32 is exact here.
            q = q.to(tl.float32)
        # exp2 of log2-scaled scores: the caller folds log2(e) into both scales.
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        # Shared tokens: one (BLOCK_M x BLOCK_N) tile of scores per step, on tensor cores.
        kt_blk = tl.make_block_ptr(
            K + kv_start.to(tl.int64) * stride_km + head * stride_kh,
            shape=(head_dim, kv_len),
            strides=(1, stride_km),
            offsets=(0, 0),
            block_shape=(BLOCK_D, BLOCK_N),
            order=(0, 1),
        )
        v_blk = tl.make_block_ptr(
            V + kv_start.to(tl.int64) * stride_vm + head * stride_vh,
            shape=(kv_len, head_dim),
            strides=(stride_vm, 1),
            offsets=(0, 0),
            block_shape=(BLOCK_N, BLOCK_D),
            order=(1, 0),
        )
        for start_n in range(0, kv_len, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < kv_len
            kt = tl.load(kt_blk, boundary_check=(0, 1), padding_option="zero")
            v = tl.load(v_blk, boundary_check=(0, 1), padding_option="zero")
            if UPCAST_DOT:
                kt = kt.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale
            if has_kv_bias:  # a uniform branch: one compiled variant fewer than a constexpr
                b = tl.load(KV_BIAS + kv_start + offs_n, mask=mask_n, other=0.0).to(tl.float32)
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
            kt_blk = tl.advance(kt_blk, (0, BLOCK_N))
            v_blk = tl.advance(v_blk, (BLOCK_N, 0))

        if HAS_GATHER:
            rows = (q_start + offs_m).to(tl.int64)
            # Gathered tokens differ per candidate, so there is no shared tile to feed
            # tl.dot: scores are row-wise dot products on CUDA cores. G is small (top-k);
            # BLOCK_G x BLOCK_M x BLOCK_D is kept small enough to stay in registers.
            mem_start = tl.load(mem_offsets + req)
            mem_len = tl.load(mem_offsets + req + 1) - mem_start
            # 64-bit bases of this request's bank, 32-bit offsets inside it (a bank holds
            # < 2^31 elements): half the registers of 64-bit address tensors.
            mem_k = MEM_K + mem_start.to(tl.int64) * stride_mkm + head * stride_mkh
            mem_v = MEM_V + mem_start.to(tl.int64) * stride_mvm + head * stride_mvh
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
                slot = tl.where(valid, idx, 0).to(tl.int32)
                mask3 = valid[:, :, None] & mask_d[None, None, :]
                kg = tl.load(
                    mem_k + slot[:, :, None] * stride_mkm.to(tl.int32) + offs_d[None, None, :],
                    mask=mask3,
                    other=0.0,
                ).to(tl.float32)
                s = tl.sum(qf[:, None, :] * kg, 2) * qk_scale
                if has_mem_bias:
                    b = tl.load(MEM_BIAS + mem_start + slot, mask=valid, other=0.0)
                    s += b.to(tl.float32) * bias_scale
                s = tl.where(valid, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                vg = tl.load(
                    mem_v + slot[:, :, None] * stride_mvm.to(tl.int32) + offs_d[None, None, :],
                    mask=mask3,
                    other=0.0,
                ).to(tl.float32)
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vg, 1)
                m_i = m_new

        # A candidate with no token at all (l_i == 0) gets zeros, like the reference.
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        o = acc / l_safe[:, None]
        out_blk = tl.make_block_ptr(
            OUT + q_start.to(tl.int64) * stride_om + head * stride_oh,
            shape=(m_len, head_dim),
            strides=(stride_om, 1),
            offsets=(start_m, 0),
            block_shape=(BLOCK_M, BLOCK_D),
            order=(1, 0),
        )
        tl.store(out_blk, o.to(OUT.dtype.element_ty), boundary_check=(0, 1))


INTERPRETED: bool = not isinstance(_cross_attention_fwd, JITFunction)
"""True when ``TRITON_INTERPRET=1`` was set before this module was imported."""

_LOG2E = 1.0 / math.log(2.0)


def _pow2(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(x), 1))))


# (BLOCK_M, BLOCK_N, num_warps, num_warps of the SMALL_M-row tile) by (bytes of the input
# dtype, BLOCK_D, with gathered memory): the largest tiles found to compile with no
# register spills on sm_80 and sm_90 (ptxas's allocation is not monotone in tile size or
# warps; benchmarks/kernels_ptx.py, and tests/kernels/test_compile.py holds them to it).
_TILES: dict[tuple[int, int, bool], tuple[int, int, int, int]] = {
    (2, 16, False): (128, 64, 4, 4),
    (2, 32, False): (128, 64, 8, 8),
    (2, 64, False): (128, 64, 8, 8),
    (2, 128, False): (64, 32, 8, 8),
    (2, 16, True): (64, 64, 4, 4),
    (2, 32, True): (64, 64, 4, 4),
    (2, 64, True): (32, 64, 8, 8),
    (2, 128, True): (16, 64, 8, 8),
    (4, 16, False): (64, 32, 4, 4),
    (4, 32, False): (32, 32, 4, 4),
    (4, 64, False): (64, 32, 8, 4),
    (4, 128, False): (32, 32, 4, 4),
    (4, 16, True): (32, 32, 8, 8),
    (4, 32, True): (32, 32, 4, 4),
    (4, 64, True): (16, 32, 8, 8),
    (4, 128, True): (16, 32, 8, 8),
}
SMALL_M = 16  # requests of at most this many candidates get 16-row tiles


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """The compile-time part of one launch: constexprs, warps and stages (what makes a
    distinct GPU binary), as :func:`launch_config` picks it."""

    dtype: torch.dtype
    BLOCK_D: int
    BLOCK_M: int
    BLOCK_N: int
    BLOCK_G: int
    HAS_GATHER: bool
    DOT_PRECISION: str
    num_warps: int
    num_stages: int = 2

    def constexprs(self) -> dict[str, object]:
        return {
            "BLOCK_D": self.BLOCK_D,
            "BLOCK_M": self.BLOCK_M,
            "BLOCK_N": self.BLOCK_N,
            "BLOCK_G": self.BLOCK_G,
            "HAS_GATHER": self.HAS_GATHER,
            "UPCAST_DOT": False,
            "DOT_PRECISION": self.DOT_PRECISION,
        }


def launch_config(
    dtype: torch.dtype, head_dim: int, max_m: int, has_gather: bool, allow_tf32: bool
) -> LaunchConfig:
    """The tiles and warps of a GPU launch (every argument that changes them, and nothing
    else: request sizes only through ``max_m <= SMALL_M``)."""
    block_d = _pow2(head_dim, 16, MAX_HEAD_DIM)
    block_m, block_n, warps, small_warps = _TILES[
        (torch.finfo(dtype).bits // 8, block_d, has_gather)
    ]
    if max_m <= SMALL_M:
        block_m, warps = SMALL_M, small_warps
    precision = "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"
    return LaunchConfig(dtype, block_d, block_m, block_n, 1, has_gather, precision, warps)


def launch_configs() -> list[LaunchConfig]:
    """Every configuration :func:`triton_cross_attention` can launch on a GPU (dtypes x
    head-dim classes x small/large requests x gathered memory or not x TF32 for fp32)."""
    out = {
        launch_config(dtype, d, m, gather, tf32)
        for dtype in SUPPORTED_DTYPES
        for d in (16, 32, 64, 128)
        for m in (1, 4096)
        for gather in (False, True)
        for tf32 in (False, True)
    }
    return sorted(
        out, key=lambda c: (str(c.dtype), c.BLOCK_D, c.HAS_GATHER, c.BLOCK_M, c.DOT_PRECISION)
    )


def interpreter_blocks(head_dim: int, max_m: int, max_k: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) under the interpreter, which pays per program and per loop step,
    not per element: the largest tiles the shapes can use."""
    return _pow2(max_m, 16, 256), _pow2(max_k, 16, 256)


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
    has_gather = gather_idx is not None and gather_idx.shape[1] > 0
    # fp32 inputs get fp32 products unless the user opted into TF32, as torch.matmul does.
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    cfg = launch_config(q.dtype, D, max_m, has_gather, allow_tf32)
    block_d = cfg.BLOCK_D
    if INTERPRETED:
        bm, bn = interpreter_blocks(D, max_m, max_k)
        block_m, block_n = block_m or bm, block_n or bn
    else:
        block_m, block_n = block_m or cfg.BLOCK_M, block_n or cfg.BLOCK_N
    num_warps = num_warps or cfg.num_warps

    if gather_idx is not None and has_gather:
        assert mem_k is not None and mem_v is not None and mem_offsets is not None
        gather_idx = gather_idx.to(torch.int64).contiguous()
        mem_offsets = mem_offsets.to(device=device, dtype=torch.int64).contiguous()
        mem_k, mem_v = (t if t.stride(-1) == 1 else t.contiguous() for t in (mem_k, mem_v))
        mem_bias = None if mem_bias is None else mem_bias.contiguous()
        num_gather = gather_idx.shape[1]
        # The interpreter pays per loop step: several gathered tokens a step there; on a
        # GPU one a step keeps (BLOCK_M, BLOCK_D) gathered values in registers.
        block_g = block_g or (_pow2(num_gather, 1, 64) if INTERPRETED else cfg.BLOCK_G)
    else:
        # Unused pointer arguments still need a tensor; the constexpr flag skips them.
        gather_idx, mem_k, mem_v, mem_offsets = q_offsets, k, v, kv_offsets
        num_gather, block_g = 0, 1
    has_mem_bias = has_gather and mem_bias is not None
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
        D,
        int(kv_bias is not None),
        int(has_mem_bias),
        BLOCK_D=block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_G=block_g,
        HAS_GATHER=has_gather,
        UPCAST_DOT=INTERPRETED and q.dtype == torch.bfloat16,
        DOT_PRECISION=cfg.DOT_PRECISION,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out
