"""The compiled Triton kernels on a CUDA GPU against the torch reference (the interpreter
tests check the same kernels' logic on the CPU). Skipped without a GPU, and under the
interpreter: run ``VISTA_GPU_TESTS=1 pytest -m gpu`` (benchmarks/gpu_check.sh does)."""

from __future__ import annotations

import os

import pytest
import torch

import kernels
from kernels import GatheredMemory, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1",
        reason="the Triton interpreter is on: run with VISTA_GPU_TESTS=1",
    ),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _requests(lengths: list[int], dev: str) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=dev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 24, 64, 128])
@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize("m_lengths", [[1, 7, 16], [300, 5, 1000]])
def test_cross_attention_matches_the_reference(
    dtype: torch.dtype, head_dim: int, gather: bool, m_lengths: list[int]
) -> None:
    """The accuracy rule (flash-attention's): the kernel's error against an fp64
    reference is at most twice that of the same-dtype torch path (plus one unit of the
    dtype, see below)."""
    torch.manual_seed(0)
    dev, H = "cuda", 4
    k_lengths = [128, 3, 77]
    q_off, kv_off = _requests(m_lengths, dev), _requests(k_lengths, dev)
    q = torch.randn(sum(m_lengths), H, head_dim, device=dev, dtype=dtype)
    k = torch.randn(sum(k_lengths), H, head_dim, device=dev, dtype=dtype)
    v = torch.randn_like(k)
    bias = torch.randn(sum(k_lengths), device=dev, dtype=dtype)
    memory = None
    if gather:
        bank = [50, 0, 9]
        mem_off = _requests(bank, dev)
        mk = torch.randn(sum(bank), H, head_dim, device=dev, dtype=dtype)
        # Indices inside each candidate's own bank, -1 for absent.
        req = torch.repeat_interleave(torch.arange(3), torch.tensor(m_lengths))
        size = torch.tensor(bank)[req].unsqueeze(1)
        raw = torch.randint(0, 1 << 20, (sum(m_lengths), 8))
        idx = torch.where(size > 0, raw % size.clamp(min=1), -1)
        idx[:, -1] = -1
        idx = idx.to(dev)
        memory = GatheredMemory(
            idx, mk, torch.randn_like(mk), mem_off, torch.rand(sum(bank), device=dev, dtype=dtype)
        )
    got = kernels.attention(q, k, v, q_off, kv_off, bias, memory=memory, backend="triton")
    args = (q.double(), k.double(), v.double(), q_off, kv_off, bias.double())
    if memory is None:
        exact = reference.cross_attention(*args)
        same = reference.cross_attention(q, k, v, q_off, kv_off, bias)
    else:
        mem = (memory.idx, memory.k.double(), memory.v.double())
        exact = reference.cross_attention_gathered(
            *args[:3], *mem, q_off, kv_off, memory.offsets, args[5], memory.bias.double()
        )
        same = reference.cross_attention_gathered(
            q,
            k,
            v,
            memory.idx,
            memory.k,
            memory.v,
            q_off,
            kv_off,
            memory.offsets,
            bias,
            memory.bias,
        )
    # + one unit of the dtype: the kernel rounds the softmax weights to it before the
    # second matmul (as flash attention does); the torch path keeps them in fp32.
    assert _err(got, exact) <= 2 * _err(same, exact) + torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("feat", "head_dim"), [(8, 17), (32, 33), (64, 64), (128, 65)])
@pytest.mark.parametrize("n", [1, 1000, 100_003])
def test_linear_attention_matches_the_reference(
    dtype: torch.dtype, feat: int, head_dim: int, n: int
) -> None:
    torch.manual_seed(1)
    dev, H = "cuda", 4
    phi = torch.rand(n, H, feat, device=dev, dtype=dtype)
    v = torch.randn(n, H, head_dim, device=dev, dtype=dtype)
    state = torch.randn(H, feat, head_dim, device=dev)
    pos = torch.tensor(sorted({0, n // 3, n // 2, n}), device=dev)
    got = kernels.linear_attention(phi, v, state, pos, backend="triton")
    exact = reference.linear_attention_prefix_states(
        phi.double(), v.double(), torch.cat([pos.cpu(), torch.tensor([n])]), state.double()
    )
    scale = float(exact.abs().max()) + 1.0
    tol = (2e-2 if dtype != torch.float32 else 1e-4) * scale
    assert _err(got.state, exact[-1]) <= tol
    assert got.prefix_states is not None and _err(got.prefix_states, exact[:-1]) <= tol


def test_the_summarizer_folds_on_the_gpu_as_on_the_cpu() -> None:
    """The batch jobs' fold on CUDA tensors runs the Triton kernel (kernels.linear_attention)
    and gives the CPU's state to fp32 rounding."""
    from summarizer.config import ModelSpec
    from summarizer.model.vista_model import VistaModel
    from tests.helpers import random_events

    torch.manual_seed(2)
    model = VistaModel(ModelSpec(num_seeds=8, d_model=32, num_heads=4, item_buckets=1024)).eval()
    summ = model.require_summarizer()
    events = random_events(20_000, seed=3)
    with torch.no_grad():
        e = summ.encoder(events, torch.zeros(len(events), dtype=torch.long))  # any encoding
        phi_k, v = summ.keys_values(e)
        on_gpu = summ.state_sum(phi_k.cuda(), v.cuda()).cpu()
        on_cpu = summ.state_sum(phi_k, v)
        why = kernels.explain_linear_attention(phi_k.cuda().flatten(1, 2), v.cuda().flatten(1, 2))
    assert why["triton"] == []  # the kernel is what ran
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-2)


def test_a_summarize_task_given_a_gpu_folds_there_as_on_the_cpu() -> None:
    """What a summarize task does with the GPU Spark hands it: the model on that device,
    events encoded and summed there (short users batched, long ones through the kernel),
    the sums added into the CPU's float64 states, tokens read out there; equal to the CPU."""
    import copy

    import numpy as np

    from batch_jobs.worker import task_device
    from summarizer.config import ModelSpec
    from summarizer.model.vista_model import VistaModel
    from tests.helpers import random_events

    placed = task_device("task", ["0"])
    assert placed.device == "cuda:0" and placed.unusable is None
    torch.manual_seed(4)
    model = VistaModel(ModelSpec(num_seeds=8, d_model=32, num_heads=4, item_buckets=1024)).eval()
    cpu = model.require_summarizer()
    gpu = copy.deepcopy(model).to(placed.device).require_summarizer()
    assert gpu.device.type == "cuda"
    lengths = [3, 1, 40, 9000, 17, 2]  # short ones batched, a long one through the kernel
    events = random_events(sum(lengths), seed=5)
    offsets = np.r_[0, np.cumsum(lengths)].tolist()
    states = {}
    for name, summ in (("cpu", cpu), ("gpu", gpu)):
        start = [summ.empty_state() for _ in lengths]
        states[name] = summ.fold_segments(start, events, offsets)
        assert all(s.kv.device.type == "cpu" for s in states[name])
    for a, b in zip(states["cpu"], states["gpu"], strict=True):
        assert (a.n_events, a.first_ts, a.last_ts) == (b.n_events, b.first_ts, b.last_ts)
        torch.testing.assert_close(b.kv, a.kv, rtol=1e-4, atol=1e-2)
    kv = torch.stack([s.kv for s in states["cpu"]])
    n = torch.tensor(lengths)
    with torch.no_grad():
        tokens_gpu = gpu.readout_batch(kv, n).cpu()
        tokens_cpu = cpu.readout_batch(kv, n)
    torch.testing.assert_close(tokens_gpu, tokens_cpu, rtol=1e-3, atol=1e-3)
