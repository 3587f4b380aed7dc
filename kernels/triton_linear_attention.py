"""Triton kernel: chunked causal linear-attention state for long histories (GPU path).

Computes ``state + sum_t phi_k[t] (x) v[t]`` per head, streaming over the events
``BLOCK_T`` at a time with the running ``(F, D)`` state held in registers, so
memory does not grow with the history length. Optionally it also writes the
state *before* each requested position (the causal form used in training), in
the same single pass: the positions cut the stream into segments, and the
running state is stored at each cut.

Each program owns one ``(BLOCK_F, BLOCK_D)`` tile of one head's state. For the
final state alone, long histories are also split along time into independent
partial sums (added on the host), so that a single user still fills the GPU.
Matches :func:`kernels.reference.linear_attention_state` and
:func:`kernels.reference.linear_attention_prefix_states`. Forward-only.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from kernels.triton_cross_attention import INTERPRETED

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _accumulate(
    acc,
    PHI,
    V,
    start,
    end,
    head,
    offs_f,
    offs_d,
    mask_f,
    mask_d,
    stride_pn,
    stride_ph,
    stride_vn,
    stride_vh,
    BLOCK_T: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """acc += sum over t in [start, end) of phi[t, head, f] * v[t, head, d]."""
    for t0 in range(start, end, BLOCK_T):
        offs_t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)
        mask_t = offs_t < end
        phi_t = tl.load(
            PHI + offs_t[None, :] * stride_pn + head * stride_ph + offs_f[:, None],
            mask=mask_f[:, None] & mask_t[None, :],
            other=0.0,
        )
        v = tl.load(
            V + offs_t[:, None] * stride_vn + head * stride_vh + offs_d[None, :],
            mask=mask_t[:, None] & mask_d[None, :],
            other=0.0,
        )
        if UPCAST_DOT:
            # The interpreter multiplies bf16 bit patterns as integers; fp32 is exact here.
            phi_t = phi_t.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(phi_t, v, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _linear_attention_state_fwd(
    PHI,
    V,
    STATE_IN,
    OUT,
    PREFIX,
    POSITIONS,
    n,
    num_pos,
    split_len,
    stride_pn,
    stride_ph,
    stride_vn,
    stride_vh,
    stride_os,
    stride_pp,
    feat,
    head_dim,
    has_state,
    BLOCK_F: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    num_d_tiles = tl.cdiv(head_dim, BLOCK_D)
    pid_f = tl.program_id(0) // num_d_tiles
    pid_d = tl.program_id(0) % num_d_tiles
    head = tl.program_id(1)
    split = tl.program_id(2)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_f = offs_f < feat
    mask_d = offs_d < head_dim
    mask_fd = mask_f[:, None] & mask_d[None, :]
    # States are contiguous (H, F, D) fp32: one tile offset serves input, output, prefixes.
    tile = head * feat * head_dim + offs_f[:, None] * head_dim + offs_d[None, :]
    acc = tl.zeros([BLOCK_F, BLOCK_D], tl.float32)
    if has_state:  # a uniform branch: one compiled variant fewer than a constexpr
        # The initial state is counted once, by the first time split.
        acc += tl.load(STATE_IN + tile, mask=mask_fd & (split == 0), other=0.0)

    # int64 from the start: loop-carried values must keep one type when compiled.
    start = split.to(tl.int64) * split_len
    stop = tl.minimum(start + split_len, n)
    prefix = PREFIX + tile
    # Prefix states (only with a single split): positions are sorted, so each one
    # closes a segment of the stream; the running state at the cut is its prefix.
    for j in range(0, num_pos):
        end = tl.minimum(tl.maximum(tl.load(POSITIONS + j), start), stop)
        acc = _accumulate(
            acc,
            PHI,
            V,
            start,
            end,
            head,
            offs_f,
            offs_d,
            mask_f,
            mask_d,
            stride_pn,
            stride_ph,
            stride_vn,
            stride_vh,
            BLOCK_T,
            UPCAST_DOT,
            DOT_PRECISION,
        )
        tl.store(prefix, acc, mask=mask_fd)
        prefix += stride_pp  # pointer arithmetic is 64-bit; j * stride could overflow i32
        start = end
    acc = _accumulate(
        acc,
        PHI,
        V,
        start,
        stop,
        head,
        offs_f,
        offs_d,
        mask_f,
        mask_d,
        stride_pn,
        stride_ph,
        stride_vn,
        stride_vh,
        BLOCK_T,
        UPCAST_DOT,
        DOT_PRECISION,
    )
    tl.store(OUT + split * stride_os + tile, acc, mask=mask_fd)


def _pow2(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(x), 1))))


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """The compile-time part of one GPU launch (what makes a distinct binary)."""

    dtype: torch.dtype
    BLOCK_F: int
    BLOCK_D: int
    BLOCK_T: int
    DOT_PRECISION: str
    num_warps: int
    num_stages: int = 2

    def constexprs(self) -> dict[str, object]:
        return {
            "BLOCK_F": self.BLOCK_F,
            "BLOCK_D": self.BLOCK_D,
            "BLOCK_T": self.BLOCK_T,
            "UPCAST_DOT": False,
            "DOT_PRECISION": self.DOT_PRECISION,
        }


def launch_config(dtype: torch.dtype, feat: int, head_dim: int, allow_tf32: bool) -> LaunchConfig:
    """Tiles and warps of a GPU launch: state tiles of up to 64 x 64, time steps and warps
    found so that no configuration spills registers on sm_80 or sm_90 (fp32 inputs: shorter
    steps; ptxas's allocation is not monotone in them: tests/kernels/test_compile.py)."""
    block_f, block_d = _pow2(feat, 16, 64), _pow2(head_dim, 16, 64)
    area = block_f * block_d
    if dtype == torch.float32:
        block_t, warps = {4096: (32, 8), 2048: (16, 8), 1024: (32, 4)}.get(area, (16, 8))
    else:
        block_t, warps = 64, (8 if area >= 2048 else 4)
    precision = "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"
    return LaunchConfig(dtype, block_f, block_d, block_t, precision, warps)


def launch_configs() -> list[LaunchConfig]:
    """Every configuration :func:`triton_linear_attention` can launch on a GPU."""
    out = {
        launch_config(dtype, f, d, tf32)
        for dtype in SUPPORTED_DTYPES
        for f in (16, 32, 64)
        for d in (16, 32, 64)
        for tf32 in (False, True)
    }
    return sorted(out, key=lambda c: (str(c.dtype), c.BLOCK_F, c.BLOCK_D, c.DOT_PRECISION))


def _num_splits(n: int, tiles: int, device: torch.device, block_t: int) -> int:
    """Time splits for the final state: enough programs for ~2 waves, >= 4 steps each."""
    if INTERPRETED or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    by_occupancy = max(1, (2 * sms) // max(tiles, 1))
    by_length = max(1, n // (4 * block_t))
    return min(by_occupancy, by_length, 256)


def triton_linear_attention(
    phi_k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    prefix_out: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_t: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Final state ``(H, F, D)`` fp32 and, if ``positions`` is given, prefix states.

    ``positions`` (sorted, checked by the caller) gives ``(P, H, F, D)`` prefix
    states: the state before each position (clamped to ``[0, n]``), initial state
    included. ``out`` / ``prefix_out`` (optional, fp32, contiguous) receive the
    results; tests pass NaN-filled ones so that an unwritten element shows up.
    """
    n, H, Fd = phi_k.shape
    D = v.shape[-1]
    device = phi_k.device
    phi_k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (phi_k, v))
    if out is None:
        out = torch.empty(H, Fd, D, dtype=torch.float32, device=device)
    P = 0 if positions is None else positions.numel()
    if positions is not None and prefix_out is None:
        prefix_out = torch.empty(P, H, Fd, D, dtype=torch.float32, device=device)
    for name, t in (("out", out), ("prefix_out", prefix_out)):
        if t is not None and (t.dtype != torch.float32 or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous float32 tensor")
    cfg = launch_config(phi_k.dtype, Fd, D, torch.backends.cuda.matmul.allow_tf32)
    if INTERPRETED:
        # The interpreter pays per loop step: big tiles, long time steps.
        block_f, block_d, bt = _pow2(Fd, 16, 128), _pow2(D, 16, 128), _pow2(n, 16, 512)
    else:
        block_f, block_d, bt = cfg.BLOCK_F, cfg.BLOCK_D, cfg.BLOCK_T
        num_warps = num_warps or cfg.num_warps
    block_t = block_t or bt
    tiles = triton.cdiv(Fd, block_f) * triton.cdiv(D, block_d)
    splits = 1 if P else (num_splits or _num_splits(n, tiles * H, device, block_t))
    # Each split covers whole BLOCK_T steps so that loads stay aligned.
    split_len = triton.cdiv(triton.cdiv(max(n, 1), splits), block_t) * block_t
    splits = max(1, triton.cdiv(max(n, 1), split_len))
    target = (
        out if splits == 1 else torch.empty(splits, H, Fd, D, dtype=torch.float32, device=device)
    )
    state_in = None if state is None else state.to(device=device, dtype=torch.float32).contiguous()
    pos = (
        positions.to(device=device, dtype=torch.int64).contiguous()
        if positions is not None
        else torch.zeros(1, dtype=torch.int64, device=device)
    )
    _linear_attention_state_fwd[(tiles, H, splits)](
        phi_k,
        v,
        state_in if state_in is not None else target,
        target,
        prefix_out if prefix_out is not None else target,
        pos,
        n,
        P,
        split_len,
        phi_k.stride(0),
        phi_k.stride(1),
        v.stride(0),
        v.stride(1),
        H * Fd * D,
        H * Fd * D,
        Fd,
        D,
        int(state_in is not None),
        BLOCK_F=block_f,
        BLOCK_D=block_d,
        BLOCK_T=block_t,
        UPCAST_DOT=INTERPRETED and phi_k.dtype == torch.bfloat16,
        DOT_PRECISION=cfg.DOT_PRECISION,
        num_warps=num_warps or 4,
        num_stages=num_stages,
    )
    if splits > 1:
        torch.sum(target, dim=0, out=out)
    return out, prefix_out
