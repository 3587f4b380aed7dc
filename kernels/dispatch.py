"""One entry point per op; each picks the first backend that can take the input.

    from kernels import attention, linear_attention, explain_attention

    out = attention(q, k, v, q_offsets, kv_offsets)            # triton on CUDA, else torch
    out = attention(q, k, v, q_offsets, kv_offsets, backend="torch")   # force one
    explain_attention(q, k, v, q_offsets, kv_offsets)
    # {'triton': ['tensors are not on a CUDA device (device cpu)'], 'torch': []}
    scores, idx = topk(queries, bank, k=32)                    # the GSU's search

Backends, in order of preference (see :mod:`kernels.backends`): ``"triton"``
(fused forward kernels, CUDA tensors, no autograd) and ``"torch"`` (the
reference; any device, differentiable). Forcing a backend that cannot take the
input raises a ValueError that lists its reasons. With ``TRITON_INTERPRET=1``
set before the first kernel use, ``backend="triton"`` also runs CPU tensors
through the Triton interpreter (slow; for tests), but automatic selection never
picks it for them.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from kernels import reference, topk_int8
from kernels.backends import (
    ATTENTION_BACKENDS,
    LINEAR_ATTENTION_BACKENDS,
    AttentionBackend,
    AttentionInputs,
    GatheredMemory,
    LinearAttentionBackend,
    LinearAttentionInputs,
    LinearAttentionResult,
)
from kernels.topk_backends import TOPK_BACKENDS, TopkBackend, TopkInputs

_Backend = TypeVar("_Backend", AttentionBackend, LinearAttentionBackend, TopkBackend)


def _select(
    backends: tuple[_Backend, ...],
    inp: AttentionInputs | LinearAttentionInputs | TopkInputs,
    backend: str | None,
) -> _Backend:
    if backend is not None:
        by_name = {b.name: b for b in backends}
        if backend not in by_name:
            raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(by_name)}")
        chosen = by_name[backend]
        reasons = chosen.not_supported_reasons(inp, explicit=True)  # type: ignore[arg-type]
        if reasons:
            raise ValueError(f"backend {backend!r} cannot take these inputs: " + "; ".join(reasons))
        return chosen
    why = {}
    for b in backends:
        reasons = b.not_supported_reasons(inp)  # type: ignore[arg-type]
        if not reasons:
            return b
        why[b.name] = reasons
    raise ValueError(f"no backend can take these inputs: {why}")


def _attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor | None,
    kv_offsets: torch.Tensor | None,
    kv_bias: torch.Tensor | None,
    scale: float | None,
    memory: GatheredMemory | None,
) -> AttentionInputs:
    """Checked inputs with offsets filled in (one host sync for the checks)."""
    reference.check_qkv(q, k, v)
    q_offsets, kv_offsets = reference.normalize_offsets(q, k, q_offsets, kv_offsets)
    if kv_bias is not None and kv_bias.shape != (k.shape[0],):
        raise ValueError(f"kv_bias must be ({k.shape[0]},), got {tuple(kv_bias.shape)}")
    if memory is not None:
        mem_offsets = memory.offsets
        if mem_offsets is None:
            if q_offsets.numel() != 2:
                raise ValueError("GatheredMemory.offsets is required for several requests")
            mem_offsets = torch.tensor([0, memory.k.shape[0]], device=q.device)
        reference.check_gathered(
            memory.idx, memory.k, memory.v, mem_offsets, memory.bias, q, q_offsets
        )
        memory = GatheredMemory(memory.idx, memory.k, memory.v, mem_offsets, memory.bias)
    return AttentionInputs(q, k, v, q_offsets, kv_offsets, kv_bias, scale, memory)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor | None = None,
    kv_offsets: torch.Tensor | None = None,
    kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    memory: GatheredMemory | None = None,
    backend: str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Amortized cross-attention of a jagged batch: candidates x their request's tokens.

    Same arguments and result as :func:`kernels.reference.cross_attention`, plus
    ``memory``: per-candidate gathered tokens attended in the same softmax (see
    :class:`GatheredMemory`). ``backend``: ``"triton"`` or ``"torch"`` to force one
    (ValueError with the reasons if it cannot take the input); None picks the first
    that can. ``out``: optional preallocated ``(M, H, D)`` output in ``q``'s dtype.
    """
    inp = _attention_inputs(q, k, v, q_offsets, kv_offsets, kv_bias, scale, memory)
    return _select(ATTENTION_BACKENDS, inp, backend).apply(inp, out)


def explain_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offsets: torch.Tensor | None = None,
    kv_offsets: torch.Tensor | None = None,
    kv_bias: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    memory: GatheredMemory | None = None,
) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not take this :func:`attention` call.

    Keys are backend names in order of preference; :func:`attention` picks the first
    with an empty list.
    """
    inp = _attention_inputs(q, k, v, q_offsets, kv_offsets, kv_bias, scale, memory)
    return {b.name: b.not_supported_reasons(inp) for b in ATTENTION_BACKENDS}


def _linear_inputs(
    phi_k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None,
    positions: torch.Tensor | None,
) -> LinearAttentionInputs:
    if phi_k.dim() != 3 or v.dim() != 3 or phi_k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"phi_k{tuple(phi_k.shape)} and v{tuple(v.shape)} must be (n, H, F) and (n, H, D)"
        )
    H, Fd, D = phi_k.shape[1], phi_k.shape[2], v.shape[2]
    if state is not None and state.shape != (H, Fd, D):
        raise ValueError(f"state must be ({H}, {Fd}, {D}), got {tuple(state.shape)}")
    if positions is not None:
        if positions.dim() != 1 or positions.dtype.is_floating_point:
            raise ValueError("positions must be a 1-D integer tensor")
        if bool((positions[1:] < positions[:-1]).any()):
            raise ValueError("positions must be sorted")
    return LinearAttentionInputs(phi_k, v, state, positions)


def linear_attention(
    phi_k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> LinearAttentionResult:
    """Fold a history into a causal linear-attention state, optionally with prefix states.

    ``result.state`` = ``state + sum_t phi_k[t] (x) v[t]`` ``(H, F, D)`` fp32 (as
    :func:`kernels.reference.linear_attention_state`); with sorted ``positions``,
    ``result.prefix_states`` ``(P, H, F, D)`` is the state before each position (as
    :func:`kernels.reference.linear_attention_prefix_states`), from the same pass.
    ``backend`` as in :func:`attention`.
    """
    inp = _linear_inputs(phi_k, v, state, positions)
    return _select(LINEAR_ATTENTION_BACKENDS, inp, backend).apply(inp)


def explain_linear_attention(
    phi_k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not take this :func:`linear_attention` call."""
    inp = _linear_inputs(phi_k, v, state, positions)
    return {b.name: b.not_supported_reasons(inp) for b in LINEAR_ATTENTION_BACKENDS}


def _topk_inputs(queries: np.ndarray, bank: np.ndarray, k: int) -> TopkInputs:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(bank, dtype=np.float32)
    if q.ndim != 2 or b.ndim != 2 or q.shape[1] != b.shape[1]:
        raise ValueError(f"queries (m, d) and bank (C, d) expected, got {q.shape} and {b.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return TopkInputs(q, b, min(k, b.shape[0]))


def topk(
    queries: np.ndarray, bank: np.ndarray, k: int, *, backend: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's top-k bank tokens by inner product (the GSU): (m, d) queries against a
    (C, d) bank -> scores (m, k') float32 and indices (m, k') int64, best first,
    k' = min(k, C). ``backend``: ``"faiss"``, ``"int8"``, ``"heap"`` or ``"torch"`` to
    force one (ValueError with the reasons if it cannot take the input); None picks the
    first that can (see :mod:`kernels.topk_backends`)."""
    inp = _topk_inputs(queries, bank, k)
    m, C = inp.queries.shape[0], inp.bank.shape[0]
    if C == 0 or m == 0:
        return np.zeros((m, inp.k), np.float32), np.zeros((m, inp.k), np.int64)
    return _select(TOPK_BACKENDS, inp, backend).apply(inp)


def explain_topk(queries: np.ndarray, bank: np.ndarray, k: int) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not take this :func:`topk` call."""
    inp = _topk_inputs(queries, bank, k)
    return {b.name: b.not_supported_reasons(inp) for b in TOPK_BACKENDS}


def warm_up_topk(backend: str | None = None) -> None:
    """Get the search ready before the first request: compile the int8 kernels (numba; ~10 s
    in a fresh install, then loaded from numba's cache) wherever they could be chosen."""
    if backend in (None, "int8") and topk_int8.available():
        topk_int8.warm_up()
