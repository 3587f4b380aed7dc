"""Attention kernels: PyTorch reference / CPU path (and Triton on CUDA, see dispatch)."""

from kernels.reference import (
    cross_attention,
    linear_attention_prefix_states,
    linear_attention_state,
)

__all__ = ["cross_attention", "linear_attention_prefix_states", "linear_attention_state"]
