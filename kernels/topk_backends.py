"""Backends of the top-k search op (the GSU): each candidate's top-k memory tokens by inner
product (SIM soft search); :func:`kernels.topk` picks one, :func:`kernels.explain_topk`
says why each would or would not take an input.

All m candidates of a request are searched at once against the user's memory
bank (cluster tokens, or raw event embeddings for short histories). Four exact
backends, same answer, in order of preference:

* ``faiss``: ``IndexFlatIP``; preferred when faiss-gpu and a GPU are there (the index
  then runs on the GPU); on a CPU only when forced;
* ``int8`` (the CPU's pick for banks of at least 64 k tokens): an int8 product screens
  out every token that provably cannot reach a candidate's top k, the rest are scored
  exactly (:mod:`kernels.topk_int8`). Needs numba. On this 2-core CPU (m=512, k=32, two
  threads): 4.6 ms at C=10^4 against 8.0 (heap), 11.0 (torch), 12.1 (FAISS IndexFlatIP);
* ``heap`` (the CPU's pick for smaller banks, or without numba): the scores by torch
  matmul, a block of bank tokens at a time, each block pushed into FAISS's per-candidate
  k-heaps (``float_minheap_array_t``): 2.0 ms at C=10^3 against 2.8 (torch) and 2.7
  (FAISS) (see BENCHMARKS.md). ``torch.topk`` costs about 5 us a row here;
* ``torch``: one (m, C) matmul and ``topk``, the reference.

They return the same tokens wherever scores are not tied (tied tokens may
come in either order).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

import numpy as np
import torch

from kernels import topk_int8

HEAP_BLOCK = 4096  # bank tokens scored at once by the heap backend: bounds its buffer


@dataclass(frozen=True)
class TopkInputs:
    """One search: queries (m, d) and bank (C, d) float32 C-contiguous, 1 <= k <= C."""

    queries: np.ndarray
    bank: np.ndarray
    k: int


@functools.cache
def _faiss() -> ModuleType | str:
    """The faiss module, or why it cannot be imported (once per process)."""
    try:
        import faiss
    except Exception as e:  # ImportError, or a broken install failing at import
        return f"faiss is not importable ({type(e).__name__}: {e})"
    return faiss


@functools.cache
def faiss_gpu_available() -> bool:
    """faiss-gpu installed and a GPU visible; asked once per process."""
    faiss = _faiss()
    return not isinstance(faiss, str) and (
        hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    )


class TopkBackend:
    name: ClassVar[str]

    def not_supported_reasons(self, inp: TopkInputs, *, explicit: bool = False) -> list[str]:
        """Why this backend cannot take ``inp`` (empty: it can). ``explicit``: the caller
        forced this backend, so preferences that only steer automatic selection drop."""
        raise NotImplementedError

    def apply(self, inp: TopkInputs) -> tuple[np.ndarray, np.ndarray]:
        """Scores (m, k) float32 and indices (m, k) int64, best first."""
        raise NotImplementedError


class FaissTopk(TopkBackend):
    name = "faiss"

    def not_supported_reasons(self, inp: TopkInputs, *, explicit: bool = False) -> list[str]:
        faiss = _faiss()
        if isinstance(faiss, str):
            return [faiss]
        if not explicit and not faiss_gpu_available():
            return [
                "no GPU for faiss-gpu: on a CPU, FAISS's flat index is slower than the int8 "
                "and heap searches (it runs only when forced with backend='faiss')"
            ]
        return []

    def apply(self, inp: TopkInputs) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        index = faiss.IndexFlatIP(inp.bank.shape[1])
        if faiss_gpu_available():  # pragma: no cover - needs a GPU
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(inp.bank)
        scores, idx = index.search(inp.queries, inp.k)
        return scores, idx.astype(np.int64)


class Int8Topk(TopkBackend):
    name = "int8"

    def not_supported_reasons(self, inp: TopkInputs, *, explicit: bool = False) -> list[str]:
        reasons = []
        if not topk_int8.available():
            reasons.append("numba or torch's int8 product (torch._int_mm) is not usable here")
        if not topk_int8.suitable(inp.bank.shape[0], inp.k):
            reasons.append(
                f"a bank of {inp.bank.shape[0]} tokens is under 2 x {topk_int8.CHUNK} x k = "
                f"{2 * topk_int8.CHUNK * inp.k}: the int8 screen needs k chunks and does not "
                "pay for itself below that (the heap search is as fast)"
            )
        return reasons

    def apply(self, inp: TopkInputs) -> tuple[np.ndarray, np.ndarray]:
        return topk_int8.topk(inp.queries, inp.bank, inp.k)


class HeapTopk(TopkBackend):
    name = "heap"

    def not_supported_reasons(self, inp: TopkInputs, *, explicit: bool = False) -> list[str]:
        faiss = _faiss()
        return [f"the heap search uses FAISS's k-heaps: {faiss}"] if isinstance(faiss, str) else []

    def apply(self, inp: TopkInputs) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        q, bank, k = inp.queries, inp.bank, inp.k
        m, C = q.shape[0], bank.shape[0]
        scores = np.empty((m, k), np.float32)
        idx = np.empty((m, k), np.int64)
        heaps = faiss.float_minheap_array_t()  # one k-heap per candidate, over our arrays
        heaps.nh, heaps.k = m, k
        heaps.val, heaps.ids = faiss.swig_ptr(scores), faiss.swig_ptr(idx)
        heaps.heapify()
        queries, tokens = torch.from_numpy(q), torch.from_numpy(bank)
        block = np.empty((m, min(C, HEAP_BLOCK)), np.float32)
        for j0 in range(0, C, HEAP_BLOCK):
            j1 = min(C, j0 + HEAP_BLOCK)
            out = block if j1 - j0 == block.shape[1] else np.empty((m, j1 - j0), np.float32)
            torch.mm(queries, tokens[j0:j1].T, out=torch.from_numpy(out))
            heaps.addn(j1 - j0, faiss.swig_ptr(out), j0)  # ids j0.. for this block's columns
        heaps.reorder()  # best first
        return scores, idx


class TorchTopk(TopkBackend):
    name = "torch"

    def not_supported_reasons(self, inp: TopkInputs, *, explicit: bool = False) -> list[str]:
        return []

    def apply(self, inp: TopkInputs) -> tuple[np.ndarray, np.ndarray]:
        s = torch.from_numpy(inp.queries) @ torch.from_numpy(inp.bank).T
        scores, idx = torch.topk(s, inp.k, dim=1, largest=True, sorted=True)
        return scores.numpy(), idx.numpy().astype(np.int64)


TOPK_BACKENDS: tuple[TopkBackend, ...] = (FaissTopk(), Int8Topk(), HeapTopk(), TorchTopk())
