"""General search unit: each candidate's top-k memory tokens by inner product (SIM soft search).

All m candidates of a request are searched at once against the user's memory
bank (cluster tokens, or raw event embeddings for short histories). Four exact
backends, same answer:

* ``int8`` (what ``auto`` picks on a CPU for banks of at least 64 k tokens): an
  int8 product screens out every token that provably cannot reach a candidate's
  top k, the rest are scored exactly (:mod:`kernels.topk_int8`). Needs numba;
  smaller banks go to ``heap``. On this 2-core CPU (m=512, k=32, two threads):
  4.6 ms at C=10^4 against 8.0 (heap), 11.0 (torch), 12.1 (FAISS IndexFlatIP);
* ``heap`` (``auto``'s pick for smaller banks, or without numba): the scores by
  torch matmul, a block of bank tokens at a time, each block pushed into FAISS's
  per-candidate k-heaps (``float_minheap_array_t``): 2.0 ms at C=10^3 against
  2.8 (torch) and 2.7 (FAISS) (see BENCHMARKS.md). ``torch.topk`` costs about
  5 us a row here;
* ``faiss``: ``IndexFlatIP``; what ``auto`` picks when faiss-gpu and a GPU are
  there (the index then runs on the GPU);
* ``torch``: one (m, C) matmul and ``topk``, the reference.

They return the same tokens wherever scores are not tied (tied tokens may
come in either order).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

from kernels import topk_int8

Backend = Literal["auto", "int8", "heap", "torch", "faiss"]
BACKENDS = ("auto", "int8", "heap", "torch", "faiss")
HEAP_BLOCK = 4096  # bank tokens scored at once by the heap backend: bounds its buffer


@functools.cache
def _faiss_gpu_available() -> bool:
    """Once per process: every search asks, and the answer cannot change."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def choose_backend(backend: Backend = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown GSU backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if _faiss_gpu_available():
            return "faiss"
        return "int8" if topk_int8.available() else "heap"
    return backend


def warm_up(backend: Backend = "auto") -> None:
    """Get the chosen backend ready (compile the int8 kernel) before the first request."""
    if choose_backend(backend) == "int8":
        topk_int8.warm_up()


def _check(queries: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(bank, dtype=np.float32)
    if q.ndim != 2 or b.ndim != 2 or q.shape[1] != b.shape[1]:
        raise ValueError(f"queries (m, d) and bank (C, d) expected, got {q.shape} and {b.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return q, b, min(k, b.shape[0])


def topk(
    queries: np.ndarray, bank: np.ndarray, k: int, backend: Backend = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) queries against a (C, d) bank -> scores (m, k') and indices (m, k'), k' = min(k, C),
    best first."""
    q, b, k = _check(queries, bank, k)
    if b.shape[0] == 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    chosen = choose_backend(backend)
    if chosen == "int8":
        if topk_int8.suitable(b.shape[0], k) and topk_int8.available():
            return topk_int8.topk(q, b, k)
        chosen = "heap"  # a small bank: the heap search is as fast, and the answer the same
    if chosen == "heap":
        return _heap_topk(q, b, k)
    if chosen == "faiss":
        import faiss

        index = faiss.IndexFlatIP(b.shape[1])
        if _faiss_gpu_available():  # pragma: no cover - needs a GPU
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(b)
        scores, idx = index.search(q, k)
        return scores, idx.astype(np.int64)
    s = torch.from_numpy(q) @ torch.from_numpy(b).T
    scores, idx = torch.topk(s, k, dim=1, largest=True, sorted=True)
    return scores.numpy(), idx.numpy().astype(np.int64)


def _heap_topk(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

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
