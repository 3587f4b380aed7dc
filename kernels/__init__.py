"""Attention kernels: PyTorch reference / CPU path and Triton on CUDA, behind one dispatcher.

* :func:`attention` / :func:`explain_attention`: amortized cross-attention of a
  jagged batch (optionally with per-candidate :class:`GatheredMemory`).
* :func:`linear_attention` / :func:`explain_linear_attention`: causal
  linear-attention state (and prefix states) of a long history.
* :func:`topk` / :func:`explain_topk`: each query's top-k bank tokens by inner product
  (the GSU's search: FAISS on a GPU, an exact int8-screened search or FAISS heaps on a
  CPU, torch as the reference); :func:`warm_up_topk` compiles the int8 kernels.
* The reference functions (:func:`cross_attention`, :func:`cross_attention_gathered`,
  :func:`linear_attention_state`, :func:`linear_attention_prefix_states`) are the
  differentiable PyTorch path the models train with.
"""

from kernels.backends import GatheredMemory, LinearAttentionResult
from kernels.dispatch import (
    attention,
    explain_attention,
    explain_linear_attention,
    explain_topk,
    linear_attention,
    topk,
    warm_up_topk,
)
from kernels.reference import (
    cross_attention,
    cross_attention_gathered,
    linear_attention_prefix_states,
    linear_attention_state,
)

__all__ = [
    "GatheredMemory",
    "LinearAttentionResult",
    "attention",
    "cross_attention",
    "cross_attention_gathered",
    "explain_attention",
    "explain_linear_attention",
    "explain_topk",
    "linear_attention",
    "linear_attention_prefix_states",
    "linear_attention_state",
    "topk",
    "warm_up_topk",
]
