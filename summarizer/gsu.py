"""General search unit: each candidate's top-k memory tokens by inner product (SIM soft search).

All m candidates of a request are searched at once against the user's memory
bank (cluster tokens, or raw event embeddings for short histories). Two exact
backends, same answer:

* ``faiss``: ``IndexFlatIP`` (on the GPU when faiss-gpu and a GPU are there).
  What ``auto`` picks: on this 2-core CPU (faiss-cpu 1.13.2, m=512, k=32) it
  was faster than torch with one thread (4.2 vs 5.7 ms at C=10^3, 15.6 vs
  20.1 ms at C=10^4) and level with two (see BENCHMARKS.md);
* ``torch``: one (m, C) matmul and ``topk``, the reference.

Both are exact: they return the same tokens wherever scores are not tied
(tied tokens may come in either order).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

Backend = Literal["auto", "torch", "faiss"]


@functools.cache
def _faiss_gpu_available() -> bool:
    """Once per process: every search asks, and the answer cannot change."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def choose_backend(backend: Backend = "auto") -> str:
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"unknown GSU backend {backend!r}; expected auto, torch or faiss")
    return "faiss" if backend == "auto" else backend


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
    if choose_backend(backend) == "faiss":
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
