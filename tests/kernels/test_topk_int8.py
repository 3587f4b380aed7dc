"""The int8-screened GSU search is exact: equal to a float64 brute force on banks
built to stress its bound (skewed, outliers, ties, zero queries, odd sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import explain_topk, topk, topk_int8
from tests.helpers import REPO

pytestmark = pytest.mark.skipif(not topk_int8.available(), reason="numba not installed")


def brute(q: np.ndarray, bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float64) @ bank.T.astype(np.float64)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def check(q: np.ndarray, bank: np.ndarray, k: int) -> None:
    scores, idx = topk_int8.topk(q, bank, k)
    want_s, want_i = brute(q, bank, k)
    assert idx.dtype == np.int64 and scores.dtype == np.float32
    assert np.array_equal(idx, want_i)
    assert np.allclose(scores, want_s, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "m,C,d,k",
    [
        (64, 2048, 16, 32),  # the smallest bank it takes for k=32
        (300, 5003, 64, 32),  # C not a multiple of the chunk; three row blocks, the last short
        (17, 4096, 24, 1),
        (129, 3000, 64, 8),
    ],
)
def test_equals_brute_force(m: int, C: int, d: int, k: int) -> None:
    rng = np.random.default_rng(C + k)
    check(
        rng.standard_normal((m, d)).astype(np.float32),
        rng.standard_normal((C, d)).astype(np.float32),
        k,
    )


def test_skewed_banks_and_outliers() -> None:
    """Token norms over four orders of magnitude, a decaying spectrum, and a few huge
    tokens that set the bank's int8 scale: the small tokens quantize to almost nothing,
    yet the answer must stay exact."""
    rng = np.random.default_rng(7)
    C, d = 4000, 32
    spectrum = np.exp(-np.arange(d) / 6).astype(np.float32)
    bank = rng.standard_normal((C, d)).astype(np.float32) * spectrum
    bank *= np.exp(rng.uniform(-4.5, 4.5, (C, 1))).astype(np.float32)
    bank[rng.integers(0, C, 5)] *= 1000
    q = (rng.standard_normal((200, d)) * spectrum).astype(np.float32)
    check(q, bank, 16)


def test_ties_and_degenerate_queries() -> None:
    """Duplicated tokens tie exactly: best first, then by token index (the brute force's
    stable order). An all-zero query ties every token; a one-hot query many."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1024, 16)).astype(np.float32)
    bank = np.concatenate([base, base, base[:100]])  # every token twice or three times
    q = rng.standard_normal((40, 16)).astype(np.float32)
    q[0] = 0.0
    q[1] = 0.0
    q[1, 3] = 1.0
    check(q, bank, 20)


def test_clustered_bank_like_twin_v2() -> None:
    """Cluster tokens: many near-duplicates around few centres (scores crowd together at
    the top, the screening's hardest case)."""
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    bank = centres[rng.integers(0, 40, 6000)] + 0.01 * rng.standard_normal((6000, 64)).astype(
        np.float32
    )
    q = centres[rng.integers(0, 40, 256)] + 0.1 * rng.standard_normal((256, 64)).astype(np.float32)
    check(q, bank, 32)


def test_gsu_routes_small_banks_to_the_heap_search() -> None:
    rng = np.random.default_rng(5)
    q = rng.standard_normal((8, 16)).astype(np.float32)
    small = rng.standard_normal((100, 16)).astype(np.float32)
    assert not topk_int8.suitable(100, 32)
    with pytest.raises(ValueError, match="C >= 2048"):
        topk_int8.topk(q, small, 32)
    # Automatic selection skips int8 for the small bank (saying why) and takes the heap search.
    why = explain_topk(q, small, 32)
    assert "under 2 x 32 x k = 2048" in why["int8"][0] and why["heap"] == []
    s, i = topk(q, small, 32)
    want_s, want_i = brute(q, small, 32)
    assert np.array_equal(i, want_i)
    big = explain_topk(q, rng.standard_normal((4096, 16)).astype(np.float32), 32)
    assert big["int8"] == [] or big["faiss"] == []  # int8 is the CPU's pick for large banks
    empty_s, empty_i = topk(np.zeros((0, 16), np.float32), np.ones((4096, 16), np.float32), 3)
    assert empty_s.shape == (0, 3) and empty_i.shape == (0, 3)


def test_non_finite_input_falls_back_to_brute_force() -> None:
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((2048, 8)).astype(np.float32)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    q[2, 1] = np.inf
    scores, idx = topk_int8.topk(q, bank, 4)
    want_s, want_i = brute(q[[0, 1, 3]], bank, 4)
    assert np.array_equal(idx[[0, 1, 3]], want_i)
    zeros = np.zeros((2048, 8), np.float32)
    assert np.array_equal(topk_int8.topk(q[:2], zeros, 4)[1], [[0, 1, 2, 3]] * 2)


def test_concurrent_requests_get_their_own_answers() -> None:
    """A scorer serves requests from several threads: each gets its own exact answer."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    jobs = [
        (
            rng.standard_normal((96, 16)).astype(np.float32),
            rng.standard_normal((2048 + 37 * i, 16)).astype(np.float32),
        )
        for i in range(6)
    ]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda job: topk_int8.topk(job[0], job[1], 32), jobs))
    for (q, bank), (_, idx) in zip(jobs, got, strict=True):
        assert np.array_equal(idx, brute(q, bank, 32)[1])


def test_the_callers_torch_thread_count_is_kept() -> None:
    """numba's thread pool may share torch's OpenMP runtime and set its thread count when
    it starts (the first search of a process): the caller's setting must stay. A fresh
    process, since this test session's pool is long started."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch, faiss\n"
        "torch.set_num_threads(1)\n"
        "from kernels import topk\n"
        "rng = np.random.default_rng(4)\n"
        "q = rng.standard_normal((64, 16)).astype(np.float32)\n"
        "bank = rng.standard_normal((4096, 16)).astype(np.float32)\n"
        "for backend in ('torch', 'faiss', 'heap', 'int8'):\n"  # as in a benchmark
        "    topk(q, bank, 8, backend=backend)\n"
        "print(torch.get_num_threads(), faiss.omp_get_max_threads())\n"
    )
    root = REPO
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1"]


def test_the_models_gsu_picks_the_same_tokens_through_int8() -> None:
    """End to end through the model (the scorer's path): a bank large enough for the int8
    search gathers the same tokens, and gives the same logits, as the torch reference."""

    import torch

    from summarizer.config import ModelSpec
    from summarizer.model.vista_model import ScoringRequest, VistaModel

    torch.manual_seed(0)
    spec = ModelSpec(num_seeds=8, d_model=32, num_heads=2, item_buckets=1024, gsu_k=8)
    model = VistaModel(spec.replace(gsu_gate=0.0)).eval()
    torch.nn.init.normal_(model.ranker.gsu_gate)
    tokens = torch.randn(3000, spec.d_model)
    sizes = torch.randint(1, 50, (3000,))
    assert topk_int8.suitable(3000, spec.gsu_k)
    memory = torch.randn(12, spec.d_model)
    items = torch.arange(200) * 7
    logits = {
        b: model.score_request(
            ScoringRequest(items, memory, 500, 3.0, bank=(tokens, sizes)), gsu_backend=b
        )
        for b in ("torch", "int8")
    }
    assert torch.allclose(logits["int8"], logits["torch"], atol=1e-5)
    q = model.ranker.queries(model.ranker.embed_candidates(items, None))
    picks = {
        b: model.gather_banks(q, torch.tensor([0, 200]), [(tokens, sizes)], b).idx
        for b in ("torch", "int8")
    }
    assert torch.equal(picks["int8"], picks["torch"])


def test_a_search_outside_inference_mode_after_one_inside_it() -> None:
    """The scorer searches under ``torch.inference_mode`` and ``add_model`` warms the search
    up outside it: the thread's reused buffers must serve both (inference tensors cannot be
    written outside inference mode)."""
    import threading

    import torch

    rng = np.random.default_rng(3)
    q = rng.standard_normal((8, 16)).astype(np.float32)
    bank = rng.standard_normal((4 * topk_int8.CHUNK, 16)).astype(np.float32)
    errors: list[BaseException] = []

    def run() -> None:  # a fresh thread: its buffers are made by the first call below
        try:
            with torch.inference_mode():
                check(q, bank, 2)
            check(q, bank, 2)
            with torch.inference_mode():
                check(q, bank, 2)
        except BaseException as exc:  # noqa: BLE001  reported by the assert below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors
