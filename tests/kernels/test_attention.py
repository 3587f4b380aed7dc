"""Triton cross-attention kernel vs the PyTorch reference, on the CPU via the interpreter.

Accuracy rule (flash-attention's): against an fp64 reference, the kernel's error is
at most twice the error of a same-dtype PyTorch implementation, plus a small
absolute slack. Every output is poisoned with NaN before the kernel runs, so an
element it fails to write fails the test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import cross_attention, cross_attention_gathered
from kernels.triton_cross_attention import INTERPRETED, triton_cross_attention

SLACK = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}


@dataclass
class Batch:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_offsets: torch.Tensor
    kv_offsets: torch.Tensor
    kv_bias: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    mem_k: torch.Tensor | None = None
    mem_v: torch.Tensor | None = None
    mem_offsets: torch.Tensor | None = None
    mem_bias: torch.Tensor | None = None


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths]).cumsum(0)


def make_batch(
    m_lens: list[int],
    k_lens: list[int],
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    bias: bool = False,
    gather: int = 0,
    mem_lens: list[int] | None = None,
    seed: int = 0,
) -> Batch:
    g = torch.Generator().manual_seed(seed)
    M, N = sum(m_lens), sum(k_lens)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    q, k, v = rnd(M, heads, head_dim), rnd(N, heads, head_dim), rnd(N, heads, head_dim)
    b = Batch(q, k, v, _offsets(m_lens), _offsets(k_lens))
    if bias:
        b.kv_bias = torch.randn(N, generator=g)
    if gather:
        mem_lens = mem_lens if mem_lens is not None else [7] * len(m_lens)
        bank = torch.tensor(mem_lens)
        per_row = torch.repeat_interleave(bank, torch.tensor(m_lens))[:, None]
        idx = (torch.rand(M, gather, generator=g) * per_row).long()
        # Pad about a third of the slots, and every slot of a candidate with no bank.
        idx[(torch.rand(M, gather, generator=g) < 0.35) | (per_row == 0)] = -1
        b.idx = idx
        b.mem_k, b.mem_v = rnd(sum(mem_lens), heads, head_dim), rnd(sum(mem_lens), heads, head_dim)
        b.mem_offsets = _offsets(mem_lens)
        # log(cluster size), TWIN-V2 style.
        b.mem_bias = torch.randint(1, 50, (sum(mem_lens),), generator=g).float().log()
    return b


def _reference(b: Batch, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The PyTorch reference, on the inputs cast to ``dtype`` (fp64: the ground truth)."""

    def c(t: torch.Tensor | None) -> torch.Tensor | None:
        return t if t is None or dtype is None else t.to(dtype)

    if b.idx is None:
        return cross_attention(c(b.q), c(b.k), c(b.v), b.q_offsets, b.kv_offsets, c(b.kv_bias))
    return cross_attention_gathered(
        c(b.q),
        c(b.k),
        c(b.v),
        b.idx,
        c(b.mem_k),
        c(b.mem_v),
        b.q_offsets,
        b.kv_offsets,
        b.mem_offsets,
        c(b.kv_bias),
        c(b.mem_bias),
    )


def _same_dtype_torch(b: Batch) -> torch.Tensor:
    """A plain PyTorch implementation computing in the input dtype (the error yardstick)."""
    dt, scale = b.q.dtype, 1.0 / math.sqrt(b.q.shape[-1])
    out = torch.zeros_like(b.q)
    qo, ko = b.q_offsets.tolist(), b.kv_offsets.tolist()
    for r in range(len(qo) - 1):
        q = b.q[qo[r] : qo[r + 1]].transpose(0, 1)  # (H, m, D)
        k, v = (t[ko[r] : ko[r + 1]].transpose(0, 1) for t in (b.k, b.v))
        s = q @ k.transpose(1, 2) * scale
        if b.kv_bias is not None:
            s = s + b.kv_bias[ko[r] : ko[r + 1]].to(dt)
        vals = v.unsqueeze(1).expand(-1, q.shape[1], -1, -1)  # (H, m, K, D)
        if b.idx is not None:
            rows = b.idx[qo[r] : qo[r + 1]]
            valid = rows >= 0
            rows = torch.where(valid, int(b.mem_offsets[r]) + rows, 0)
            # One zero row keeps padded slots indexable when every bank is empty.
            bank_k, bank_v, bank_b = (
                torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in (b.mem_k, b.mem_v, b.mem_bias)
            )
            mk, mv = bank_k[rows].permute(2, 0, 1, 3), bank_v[rows].permute(2, 0, 1, 3)
            sg = (q.unsqueeze(2) * mk).sum(-1) * scale + bank_b[rows].to(dt)
            s = torch.cat([s, sg.masked_fill(~valid, float("-inf"))], dim=-1)
            vals = torch.cat([vals, mv], dim=2)
        if s.shape[-1] == 0:
            continue
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        out[qo[r] : qo[r + 1]] = (p.unsqueeze(-1) * vals).sum(2).transpose(0, 1)
    return out


def _run_kernel(b: Batch, **kw: int) -> torch.Tensor:
    out = torch.full_like(b.q, float("nan"))
    got = triton_cross_attention(
        b.q,
        b.k,
        b.v,
        b.q_offsets,
        b.kv_offsets,
        b.kv_bias,
        gather_idx=b.idx,
        mem_k=b.mem_k,
        mem_v=b.mem_v,
        mem_offsets=b.mem_offsets,
        mem_bias=b.mem_bias,
        out=out,
        **kw,
    )
    assert got is out
    assert not torch.isnan(out).any(), "kernel left output elements unwritten"
    return out


def assert_flash_accuracy(b: Batch, **kw: int) -> None:
    got = _run_kernel(b, **kw)
    want = _reference(b, torch.float64)
    err = (got.double() - want).abs().max().item() if got.numel() else 0.0
    yardstick = (_same_dtype_torch(b).double() - want).abs().max().item() if got.numel() else 0.0
    assert err <= 2 * yardstick + SLACK[b.q.dtype], (err, yardstick)


def test_runs_under_the_interpreter() -> None:
    # The whole file is meaningless if the kernel were silently compiled for a GPU.
    assert INTERPRETED


SHAPES = [
    (1, 1, 1),
    (1, 300, 2),
    (17, 5, 3),
    (64, 64, 4),
    (100, 129, 1),
    (257, 33, 8),
    (300, 300, 2),
]


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize(("m", "kv", "heads"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_single_request_matches_reference(
    m: int, kv: int, heads: int, head_dim: int, dtype: torch.dtype
) -> None:
    b = make_batch([m], [kv], heads, head_dim, dtype, bias=kv % 2 == 1, seed=m * kv)
    assert_flash_accuracy(b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_jagged_batch_with_empty_requests(dtype: torch.dtype) -> None:
    # Zero candidates, zero tokens, both, and a single-token request, in one launch.
    b = make_batch([3, 0, 70, 1, 0, 45], [0, 5, 200, 1, 0, 17], 4, 64, dtype, bias=True)
    assert_flash_accuracy(b)
    # Candidates of a request without tokens get zeros, as in the reference.
    assert torch.equal(_run_kernel(b)[:3], torch.zeros_like(b.q[:3]))


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 16), (32, 64), (64, 16)])
def test_small_blocks_mask_tails(block_m: int, block_n: int) -> None:
    # The GPU tile sizes, where every length below leaves a ragged last block.
    b = make_batch([37, 1, 50], [45, 70, 3], 2, 32, torch.float32, bias=True)
    assert_flash_accuracy(b, block_m=block_m, block_n=block_n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gather", [1, 5, 40])
def test_gathered_tokens(gather: int, dtype: torch.dtype) -> None:
    # Request 1 has no shared tokens, request 2 an empty bank, request 3 neither.
    b = make_batch(
        [30, 20, 9, 4],
        [50, 0, 13, 0],
        2,
        32,
        dtype,
        bias=True,
        gather=gather,
        mem_lens=[11, 6, 0, 0],
    )
    assert_flash_accuracy(b, block_g=16 if gather == 40 else 0)
    assert torch.equal(_run_kernel(b)[-4:], torch.zeros_like(b.q[-4:]))


def test_gathered_all_padding_equals_plain_attention() -> None:
    b = make_batch([25, 8], [40, 9], 3, 16, torch.float32, bias=True, gather=6, mem_lens=[5, 2])
    b.idx.fill_(-1)
    plain = cross_attention(b.q, b.k, b.v, b.q_offsets, b.kv_offsets, b.kv_bias)
    torch.testing.assert_close(_run_kernel(b), plain, atol=1e-5, rtol=1e-5)


def test_minus_inf_bias_gives_zeros_not_nan() -> None:
    b = make_batch([5, 6], [4, 3], 1, 16, torch.float32, bias=True)
    b.kv_bias[:4] = float("-inf")  # request 0 sees only masked keys
    got = _run_kernel(b)
    assert torch.equal(got[:5], torch.zeros_like(got[:5]))
    torch.testing.assert_close(got, _reference(b), atol=1e-5, rtol=1e-5)


def test_strided_inputs_and_custom_scale() -> None:
    # q, k, v as views into wider tensors (head stride != head_dim), as after a fused
    # QKV projection; the kernel must honour the strides.
    b = make_batch([40, 3], [20, 33], 2, 32, torch.float32)
    wide = torch.randn(b.q.shape[0], 2, 96)
    q = wide[:, :, 16:48]
    kv = torch.randn(b.k.shape[0], 2, 64)
    k, v = kv[:, :, :32], kv[:, :, 32:]
    out = torch.full((q.shape[0], 2, 32), float("nan"))
    triton_cross_attention(q, k, v, b.q_offsets, b.kv_offsets, scale=0.3, out=out)
    want = cross_attention(q, k, v, b.q_offsets, b.kv_offsets, scale=0.3)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(0, 150), st.integers(0, 150)), min_size=1, max_size=4),
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([16, 32, 48, 64, 128]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    gather=st.integers(0, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(
    lens: list[tuple[int, int]],
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    gather: int,
    bias: bool,
    seed: int,
) -> None:
    m_lens, k_lens = [m for m, _ in lens], [k for _, k in lens]
    mem_lens = [(seed >> i) % 9 for i in range(len(lens))]
    b = make_batch(
        m_lens,
        k_lens,
        heads,
        head_dim,
        dtype,
        bias=bias,
        gather=gather,
        mem_lens=mem_lens,
        seed=seed,
    )
    assert_flash_accuracy(b)


# --- the PyTorch reference itself -----------------------------------------------------------


def test_gathered_reference_matches_per_candidate_softmax() -> None:
    """Each candidate alone: one softmax over its request's tokens plus its own gathered ones."""
    b = make_batch(
        [6, 0, 5], [4, 3, 0], 2, 16, torch.float64, bias=True, gather=3, mem_lens=[4, 2, 3]
    )
    got = _reference(b)
    scale = 1.0 / 4.0
    qo, ko, mo = b.q_offsets.tolist(), b.kv_offsets.tolist(), b.mem_offsets.tolist()
    for r in range(3):
        for i in range(qo[r], qo[r + 1]):
            rows = [mo[r] + j for j in b.idx[i].tolist() if j >= 0]
            keys = torch.cat([b.k[ko[r] : ko[r + 1]], b.mem_k[rows]])
            vals = torch.cat([b.v[ko[r] : ko[r + 1]], b.mem_v[rows]])
            bias = torch.cat([b.kv_bias[ko[r] : ko[r + 1]], b.mem_bias[rows]]).double()
            if keys.shape[0] == 0:
                torch.testing.assert_close(got[i], torch.zeros_like(got[i]))
                continue
            s = torch.einsum("hd,khd->hk", b.q[i], keys) * scale + bias
            want = torch.einsum("hk,khd->hd", torch.softmax(s, -1), vals)
            torch.testing.assert_close(got[i], want)


def test_reference_single_and_batched_paths_agree() -> None:
    # cross_attention takes SDPA for one request and a padded path for several.
    b = make_batch([9, 12], [7, 5], 2, 16, torch.float64, bias=True)
    both = cross_attention(b.q, b.k, b.v, b.q_offsets, b.kv_offsets, b.kv_bias)
    first = cross_attention(b.q[:9], b.k[:7], b.v[:7], kv_bias=b.kv_bias[:7])
    torch.testing.assert_close(both[:9], first)


def test_gathered_reference_rejects_bad_indices() -> None:
    b = make_batch([3], [2], 1, 16, torch.float32, gather=2, mem_lens=[4])
    b.idx[0, 0] = 4  # one past the bank
    with pytest.raises(ValueError, match="memory bank"):
        _reference(b)


def test_reference_batched_gradients_match_per_request() -> None:
    # The padded batch path is what models train through: its gradients must equal
    # those of each request alone, and stay finite for requests without tokens.
    b = make_batch([4, 3, 0, 2], [5, 0, 2, 3], 2, 16, torch.float64, bias=True)
    q, k, v = (t.clone().requires_grad_(True) for t in (b.q, b.k, b.v))
    cross_attention(q, k, v, b.q_offsets, b.kv_offsets, b.kv_bias).pow(2).sum().backward()
    q2, k2, v2 = (t.clone().requires_grad_(True) for t in (b.q, b.k, b.v))
    qo, ko = b.q_offsets.tolist(), b.kv_offsets.tolist()
    total = torch.zeros((), dtype=torch.float64)
    for r in range(4):
        if qo[r + 1] > qo[r] and ko[r + 1] > ko[r]:
            sq, sk = slice(qo[r], qo[r + 1]), slice(ko[r], ko[r + 1])
            total = (
                total + cross_attention(q2[sq], k2[sk], v2[sk], kv_bias=b.kv_bias[sk]).pow(2).sum()
            )
    total.backward()
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert got is not None and want is not None and torch.isfinite(got).all()
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("k_len", "mem_len", "gather"), [(50, 11, 5), (0, 11, 5), (13, 0, 3), (20, 40, 40)]
)
def test_gathered_one_request_path_equals_the_padded_batch_path(
    k_len: int, mem_len: int, gather: int
) -> None:
    """The single-request layout (serving) gives what the jagged padded form gives for the
    same request followed by an empty one (shared tokens or bank possibly empty, bias, -1)."""
    b = make_batch(
        [30], [k_len], 2, 16, torch.float64, bias=True, gather=gather, mem_lens=[mem_len]
    )
    one = cross_attention_gathered(
        b.q, b.k, b.v, b.idx, b.mem_k, b.mem_v, kv_bias=b.kv_bias, mem_bias=b.mem_bias
    )

    def pad(t: torch.Tensor) -> torch.Tensor:  # a second, empty request
        return torch.cat([t, t[-1:]])

    padded = cross_attention_gathered(
        b.q,
        b.k,
        b.v,
        b.idx,
        b.mem_k,
        b.mem_v,
        pad(b.q_offsets),
        pad(b.kv_offsets),
        pad(b.mem_offsets),
        kv_bias=b.kv_bias,
        mem_bias=b.mem_bias,
    )
    torch.testing.assert_close(one, padded, atol=1e-12, rtol=1e-12)
    assert torch.isfinite(one).all()
