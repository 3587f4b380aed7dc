"""The top-k search op (kernels.topk): every backend equals a float64 brute force; edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import explain_topk, topk


@pytest.mark.parametrize("backend", ["int8", "heap", "torch", "faiss", None])
@pytest.mark.parametrize("C,k", [(1, 4), (37, 5), (500, 32), (9000, 32)])
def test_gsu_topk_equals_brute_force(backend: str | None, C: int, k: int) -> None:
    rng = np.random.default_rng(C)
    q = rng.standard_normal((64, 16)).astype(np.float32)
    bank = rng.standard_normal((C, 16)).astype(np.float32)
    if backend == "int8" and explain_topk(q, bank, k)["int8"]:  # forced where it cannot
        assert C < 2048  # refused, saying why
        with pytest.raises(ValueError, match="int8.*the heap search is as fast"):
            topk(q, bank, k, backend=backend)
        return
    scores, idx = topk(q, bank, k, backend=backend)
    full = q.astype(np.float64) @ bank.T.astype(np.float64)
    want = np.argsort(-full, axis=1, kind="stable")[:, : min(k, C)]
    assert np.array_equal(idx, want)
    assert np.allclose(scores, np.take_along_axis(full, want, 1), atol=1e-4)


def test_gsu_edge_cases() -> None:
    q = np.ones((3, 4), np.float32)
    s, i = topk(q, np.zeros((0, 4), np.float32), 5)
    assert s.shape == (3, 0) and i.shape == (3, 0)
    with pytest.raises(ValueError, match="bank"):
        topk(q, np.ones((5, 3), np.float32), 2)
    with pytest.raises(ValueError, match="backend"):
        topk(np.ones((2, 3), np.float32), np.ones((5, 3), np.float32), 2, backend="cuda")
    for backend in ("int8", "heap", "torch", "faiss"):  # a request with no candidates
        s, i = topk(np.zeros((0, 4), np.float32), np.ones((9, 4), np.float32), 3, backend=backend)
        assert s.shape == (0, 3) and i.shape == (0, 3)
