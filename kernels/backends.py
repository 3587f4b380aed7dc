"""Backends of the attention ops: one small class per op and implementation.

Each backend says why it cannot take an input (``not_supported_reasons``) instead
of failing deep inside a kernel, and runs it (``apply``). :mod:`kernels.dispatch`
picks the first backend with no reasons. The Triton modules are imported lazily,
on first use, so ``import kernels`` stays light and works where Triton does not.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

import torch

from kernels import reference

TRITON_MAX_HEAD_DIM = 128
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class GatheredMemory:
    """Per-candidate memory tokens (GSU top-k or TWIN-V2 clusters) for :func:`attention`.

    ``idx`` ``(M, G)`` int: indices into the request's own bank, ``-1`` = absent.
    ``k, v`` ``(Nmem, H, D)``: all requests' banks back to back; ``offsets``
    ``(B+1,)`` says where each starts (optional for a single request). ``bias``
    ``(Nmem,)``: additive score bias per memory token, e.g. ``log(cluster size)``.
    """

    idx: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    offsets: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@dataclass(frozen=True)
class AttentionInputs:
    """Everything one cross-attention call needs (layouts of :mod:`kernels.reference`)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_offsets: torch.Tensor | None = None
    kv_offsets: torch.Tensor | None = None
    kv_bias: torch.Tensor | None = None
    scale: float | None = None
    memory: GatheredMemory | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The float tensors the kernel reads (offsets and indices excluded)."""
        ts = [self.q, self.k, self.v, self.kv_bias]
        if self.memory is not None:
            ts += [self.memory.k, self.memory.v, self.memory.bias]
        return [t for t in ts if t is not None]


@dataclass(frozen=True)
class LinearAttentionInputs:
    """``phi_k`` ``(n, H, F)``, ``v`` ``(n, H, D)``, optional initial ``state`` ``(H, F, D)``
    and sorted ``positions`` ``(P,)`` whose prefix states are wanted."""

    phi_k: torch.Tensor
    v: torch.Tensor
    state: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.phi_k, self.v, self.state) if t is not None]


@dataclass(frozen=True)
class LinearAttentionResult:
    """Final state ``(H, F, D)`` and, if positions were given, prefix states ``(P, H, F, D)``."""

    state: torch.Tensor
    prefix_states: torch.Tensor | None = None


@functools.cache
def _triton_modules() -> tuple[ModuleType, ModuleType] | str:
    """(cross-attention module, linear-attention module), or why they cannot be imported."""
    try:
        from kernels import triton_cross_attention, triton_linear_attention
    except Exception as e:  # ImportError, or a broken Triton install failing at import
        return f"triton is not importable ({type(e).__name__}: {e})"
    return triton_cross_attention, triton_linear_attention


def triton_interpreted() -> bool:
    """True if the Triton kernels run under the interpreter (``TRITON_INTERPRET=1`` at import)."""
    mods = _triton_modules()
    return not isinstance(mods, str) and bool(mods[0].INTERPRETED)


def _common_triton_reasons(tensors: list[torch.Tensor], explicit: bool) -> list[str]:
    mods = _triton_modules()
    if isinstance(mods, str):
        return [mods]
    reasons = []
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        reasons.append(f"tensors are on several devices: {sorted(str(d) for d in devices)}")
    device = tensors[0].device
    if device.type != "cuda":
        if not triton_interpreted():
            reasons.append(f"tensors are not on a CUDA device (device {device})")
        elif not explicit:
            # The interpreter can run CPU tensors, but it is orders of magnitude slower
            # than the torch backend: only a caller who forces it (tests) gets it.
            reasons.append(
                f"tensors are on {device}: the Triton interpreter (TRITON_INTERPRET=1) runs "
                "them only when forced with backend='triton'"
            )
    dtypes = {t.dtype for t in tensors}
    for dt in sorted(dtypes - set(TRITON_DTYPES), key=str):
        reasons.append(f"dtype {str(dt).removeprefix('torch.')} not supported")
    if len(dtypes) > 1:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        reasons.append(f"inputs must share one dtype, got {names}")
    if (
        torch.bfloat16 in dtypes
        and device.type == "cuda"
        and torch.cuda.get_device_capability(device) < (8, 0)
    ):
        reasons.append("bfloat16 needs a GPU of compute capability 8.0 or newer")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        reasons.append("an input requires grad and the triton kernel is forward-only")
    return reasons


def _torch_reasons(tensors: list[torch.Tensor]) -> list[str]:
    return [
        f"dtype {str(t.dtype).removeprefix('torch.')} not supported (floating point only)"
        for t in tensors
        if not t.dtype.is_floating_point
    ][:1]


class AttentionBackend:
    """Interface of a cross-attention backend."""

    name: ClassVar[str]

    def not_supported_reasons(self, inp: AttentionInputs, *, explicit: bool = False) -> list[str]:
        """Why this backend cannot take ``inp`` (empty: it can). ``explicit``: forced by name."""
        raise NotImplementedError

    def apply(self, inp: AttentionInputs, out: torch.Tensor | None = None) -> torch.Tensor:
        """The attention output ``(M, H, D)`` in ``q``'s dtype (written into ``out`` if given)."""
        raise NotImplementedError


class TorchAttention(AttentionBackend):
    """PyTorch reference: any device, any float dtype, differentiable."""

    name = "torch"

    def not_supported_reasons(self, inp: AttentionInputs, *, explicit: bool = False) -> list[str]:
        return _torch_reasons(inp.tensors())

    def apply(self, inp: AttentionInputs, out: torch.Tensor | None = None) -> torch.Tensor:
        mem = inp.memory
        if mem is None:
            assert inp.q_offsets is not None and inp.kv_offsets is not None
            o = reference.cross_attention_checked(
                inp.q, inp.k, inp.v, inp.q_offsets, inp.kv_offsets, inp.kv_bias, inp.scale
            )
        else:
            o = reference.cross_attention_gathered(
                inp.q,
                inp.k,
                inp.v,
                mem.idx,
                mem.k,
                mem.v,
                inp.q_offsets,
                inp.kv_offsets,
                mem.offsets,
                inp.kv_bias,
                mem.bias,
                inp.scale,
            )
        return o if out is None else out.copy_(o)


class TritonAttention(AttentionBackend):
    """Fused Triton forward (online softmax, one launch per jagged batch); CUDA, no grad."""

    name = "triton"

    def not_supported_reasons(self, inp: AttentionInputs, *, explicit: bool = False) -> list[str]:
        reasons = _common_triton_reasons(inp.tensors(), explicit)
        D = inp.q.shape[-1]
        if D > TRITON_MAX_HEAD_DIM:
            reasons.append(f"head dim {D} > {TRITON_MAX_HEAD_DIM}")
        return reasons

    def apply(self, inp: AttentionInputs, out: torch.Tensor | None = None) -> torch.Tensor:
        mods = _triton_modules()
        assert not isinstance(mods, str), mods
        mem = inp.memory
        mem_offsets = None
        if mem is not None:
            mem_offsets = mem.offsets
            if mem_offsets is None:
                mem_offsets = torch.tensor([0, mem.k.shape[0]], device=inp.q.device)
        return mods[0].triton_cross_attention(
            inp.q,
            inp.k,
            inp.v,
            inp.q_offsets,
            inp.kv_offsets,
            inp.kv_bias,
            inp.scale,
            gather_idx=None if mem is None else mem.idx,
            mem_k=None if mem is None else mem.k,
            mem_v=None if mem is None else mem.v,
            mem_offsets=mem_offsets,
            mem_bias=None if mem is None else mem.bias,
            out=out,
        )


class LinearAttentionBackend:
    """Interface of a linear-attention-state backend."""

    name: ClassVar[str]

    def not_supported_reasons(
        self, inp: LinearAttentionInputs, *, explicit: bool = False
    ) -> list[str]:
        """Why this backend cannot take ``inp`` (empty: it can). ``explicit``: forced by name."""
        raise NotImplementedError

    def apply(self, inp: LinearAttentionInputs) -> LinearAttentionResult:
        """Final state (and prefix states if ``inp.positions`` is set)."""
        raise NotImplementedError


class TorchLinearAttention(LinearAttentionBackend):
    """PyTorch reference: chunked einsum; any device, any float dtype, differentiable."""

    name = "torch"

    def not_supported_reasons(
        self, inp: LinearAttentionInputs, *, explicit: bool = False
    ) -> list[str]:
        return _torch_reasons(inp.tensors())

    def apply(self, inp: LinearAttentionInputs) -> LinearAttentionResult:
        if inp.positions is None:
            return LinearAttentionResult(
                reference.linear_attention_state(inp.phi_k, inp.v, inp.state)
            )
        # One pass: the final state is the prefix state at position n.
        n = inp.phi_k.shape[0]
        pos = torch.cat([inp.positions.to(torch.long).cpu(), torch.tensor([n])])
        states = reference.linear_attention_prefix_states(inp.phi_k, inp.v, pos, inp.state)
        return LinearAttentionResult(states[-1], states[:-1])


class TritonLinearAttention(LinearAttentionBackend):
    """Triton streaming kernel (state tile in registers, time splits); CUDA, no grad."""

    name = "triton"

    def not_supported_reasons(
        self, inp: LinearAttentionInputs, *, explicit: bool = False
    ) -> list[str]:
        tensors = [inp.phi_k, inp.v]  # the state is cast to fp32 whatever its dtype
        reasons = _common_triton_reasons(tensors, explicit)
        if inp.state is not None and inp.state.device != inp.phi_k.device:
            reasons.append(f"state is on {inp.state.device}, phi_k on {inp.phi_k.device}")
        if inp.state is not None and inp.state.requires_grad and torch.is_grad_enabled():
            reasons.append("an input requires grad and the triton kernel is forward-only")
        return reasons

    def apply(self, inp: LinearAttentionInputs) -> LinearAttentionResult:
        mods = _triton_modules()
        assert not isinstance(mods, str), mods
        state, prefix = mods[1].triton_linear_attention(inp.phi_k, inp.v, inp.state, inp.positions)
        return LinearAttentionResult(state, prefix)


ATTENTION_BACKENDS: tuple[AttentionBackend, ...] = (TritonAttention(), TorchAttention())
"""Cross-attention backends in order of preference."""

LINEAR_ATTENTION_BACKENDS: tuple[LinearAttentionBackend, ...] = (
    TritonLinearAttention(),
    TorchLinearAttention(),
)
"""Linear-attention backends in order of preference."""
