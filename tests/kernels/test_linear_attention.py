"""Triton linear-attention state kernel vs the reference, and the backend dispatcher.

Kernels run on the CPU through the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports them).
"""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import backends
from kernels.reference import (
    cross_attention,
    linear_attention_prefix_states,
    linear_attention_state,
)
from kernels.triton_linear_attention import triton_linear_attention


def _inputs(
    n: int, heads: int, feat: int, dim: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # SiLU-like features: mostly positive, as the summarizer's feature map gives.
    phi = torch.nn.functional.silu(torch.randn(n, heads, feat, generator=g)).to(dtype)
    v = torch.randn(n, heads, dim, generator=g).to(dtype)
    state = torch.randn(heads, feat, dim, generator=g)
    return phi, v, state


def _run(
    phi: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor | None,
    positions: torch.Tensor | None,
    **kw: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    H, Fd, D = phi.shape[1], phi.shape[2], v.shape[2]
    out = torch.full((H, Fd, D), float("nan"))
    prefix = None if positions is None else torch.full((positions.numel(), H, Fd, D), float("nan"))
    got, got_prefix = triton_linear_attention(
        phi, v, state, positions, out=out, prefix_out=prefix, **kw
    )
    assert got is out and got_prefix is prefix
    assert not torch.isnan(out).any(), "kernel left state elements unwritten"
    assert prefix is None or not torch.isnan(prefix).any(), "kernel left prefix states unwritten"
    return got, got_prefix


def _assert_accuracy(got: torch.Tensor, fp32: torch.Tensor, fp64: torch.Tensor) -> None:
    """Kernel error vs fp64 at most ~2x the fp32 reference's, plus a relative slack."""
    err = (got.double() - fp64).abs().max().item()
    yardstick = (fp32.double() - fp64).abs().max().item()
    assert err <= 2 * yardstick + 1e-6 * (1 + fp64.abs().max().item()), (err, yardstick)


@pytest.mark.parametrize(
    ("n", "heads", "feat", "dim", "block_t"),
    [
        (1, 1, 16, 16, None),
        (17, 2, 32, 16, 16),
        (1000, 3, 16, 64, 64),  # 1000 = 15 * 64 + 40: a ragged last chunk
        (4099, 1, 64, 64, 256),
        (333, 2, 48, 24, None),  # feature and head dims that are not powers of two
        (200, 1, 128, 128, 32),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_state", [False, True])
def test_state_and_prefixes_match_reference(
    n: int,
    heads: int,
    feat: int,
    dim: int,
    block_t: int | None,
    dtype: torch.dtype,
    with_state: bool,
) -> None:
    phi, v, state = _inputs(n, heads, feat, dim, dtype, seed=n)
    state = state if with_state else None
    # Duplicates, 0, n, and out-of-range positions (clamped like the reference).
    g = torch.Generator().manual_seed(n + 1)
    positions = torch.sort(torch.randint(-2, n + 3, (7,), generator=g)).values
    positions = torch.cat([positions, torch.tensor([0, n, n // 2, n // 2])]).sort().values
    got, got_prefix = _run(phi, v, state, positions, block_t=block_t or 0)
    s64 = None if state is None else state.double()
    _assert_accuracy(
        got,
        linear_attention_state(phi, v, state),
        linear_attention_state(phi.double(), v.double(), s64),
    )
    assert got_prefix is not None
    _assert_accuracy(
        got_prefix,
        linear_attention_prefix_states(phi, v, positions, state),
        linear_attention_prefix_states(phi.double(), v.double(), positions, s64),
    )


@pytest.mark.parametrize("num_splits", [2, 3, 7])
def test_time_splits_sum_to_the_same_state(num_splits: int) -> None:
    # The GPU path splits long histories along time; the interpreter never picks it
    # itself, so force it.
    phi, v, state = _inputs(1111, 2, 32, 32, torch.float32)
    got, _ = _run(phi, v, state, None, num_splits=num_splits, block_t=64)
    want = linear_attention_state(phi.double(), v.double(), state.double())
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_empty_history_and_no_positions() -> None:
    phi, v, state = _inputs(0, 2, 16, 16, torch.float32)
    got, prefix = _run(phi, v, state, torch.tensor([0, 3]))
    torch.testing.assert_close(got, state)
    assert prefix is not None
    torch.testing.assert_close(prefix, state.expand(2, -1, -1, -1))
    got, prefix = _run(phi, v, None, torch.zeros(0, dtype=torch.long))
    assert prefix is not None and prefix.shape == (0, 2, 16, 16)
    torch.testing.assert_close(got, torch.zeros_like(got))


def test_prefix_states_fold_law() -> None:
    """State before p, folded with events [p, n), equals the state of the whole history."""
    phi, v, _ = _inputs(500, 2, 16, 32, torch.float32)
    whole, prefix = _run(phi, v, None, torch.tensor([123]))
    assert prefix is not None
    rest, _ = _run(phi[123:], v[123:], prefix[0], None)
    torch.testing.assert_close(rest, whole, atol=1e-4, rtol=1e-5)


# --- dispatch ------------------------------------------------------------------------------


def _attn_inputs(
    dtype: torch.dtype = torch.float32, head_dim: int = 16
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 2, head_dim, generator=g).to(dtype)
    k = torch.randn(9, 2, head_dim, generator=g).to(dtype)
    v = torch.randn(9, 2, head_dim, generator=g).to(dtype)
    return q, k, v, torch.tensor([0, 3, 3, 7]), torch.tensor([0, 4, 9, 9])


def test_cpu_picks_torch_and_explains_why_not_triton() -> None:
    q, k, v, qo, ko = _attn_inputs()
    why = kernels.explain_attention(q, k, v, qo, ko)
    assert list(why) == ["triton", "torch"]
    assert why["torch"] == []
    assert any("backend='triton'" in r for r in why["triton"])
    got = kernels.attention(q, k, v, qo, ko)
    torch.testing.assert_close(got, cross_attention(q, k, v, qo, ko))
    why_lin = kernels.explain_linear_attention(*_inputs(10, 1, 16, 16, torch.float32)[:2])
    assert why_lin["torch"] == [] and why_lin["triton"]


def test_forcing_triton_runs_the_interpreter() -> None:
    q, k, v, qo, ko = _attn_inputs()
    bias = torch.randn(9)
    got = kernels.attention(q, k, v, qo, ko, bias, backend="triton")
    torch.testing.assert_close(got, cross_attention(q, k, v, qo, ko, bias), atol=1e-5, rtol=1e-5)
    phi, vv, state = _inputs(50, 2, 16, 16, torch.float32)
    pos = torch.tensor([3, 10, 10, 49])
    for name in ("triton", "torch"):
        res = kernels.linear_attention(phi, vv, state, pos, backend=name)
        torch.testing.assert_close(res.state, linear_attention_state(phi, vv, state))
        assert res.prefix_states is not None
        want = linear_attention_prefix_states(phi, vv, pos, state)
        torch.testing.assert_close(res.prefix_states, want)


def test_forcing_a_backend_that_cannot_take_the_input_lists_reasons() -> None:
    q, k, v, qo, ko = _attn_inputs(torch.float64, head_dim=200)
    with pytest.raises(ValueError) as err:
        kernels.attention(q, k, v, qo, ko, backend="triton")
    assert "dtype float64 not supported" in str(err.value)
    assert "head dim 200 > 128" in str(err.value)
    # The torch backend takes it (and computes in fp64).
    got = kernels.attention(q, k, v, qo, ko, backend="torch")
    assert got.dtype == torch.float64
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        kernels.attention(q, k, v, qo, ko, backend="cuda")


def test_mixed_dtypes_and_grad_are_reasons() -> None:
    q, k, v, qo, ko = _attn_inputs()
    why = kernels.explain_attention(q, k.half(), v.half(), qo, ko)["triton"]
    assert any("share one dtype" in r for r in why)
    q.requires_grad_(True)
    why = kernels.explain_attention(q, k, v, qo, ko)["triton"]
    assert any("forward-only" in r for r in why)
    # Training goes to the differentiable torch backend automatically.
    kernels.attention(q, k, v, qo, ko).sum().backward()
    assert q.grad is not None
    with torch.no_grad():
        assert not any(
            "forward-only" in r for r in kernels.explain_attention(q, k, v, qo, ko)["triton"]
        )


def test_reasons_without_interpreter_or_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v, qo, ko = _attn_inputs()
    monkeypatch.setattr(backends, "triton_interpreted", lambda: False)
    why = kernels.explain_attention(q, k, v, qo, ko)["triton"]
    assert why == ["tensors are not on a CUDA device (device cpu)"]
    monkeypatch.setattr(backends, "_triton_modules", lambda: "triton is not importable (boom)")
    assert kernels.explain_attention(q, k, v, qo, ko)["triton"] == [
        "triton is not importable (boom)"
    ]
    # Automatic selection still works: torch takes it.
    torch.testing.assert_close(kernels.attention(q, k, v, qo, ko), cross_attention(q, k, v, qo, ko))


def test_gathered_memory_through_the_dispatcher() -> None:
    q, k, v, qo, ko = _attn_inputs()
    g = torch.Generator().manual_seed(1)
    mem = kernels.GatheredMemory(
        idx=torch.tensor([[0, -1], [2, 1], [-1, -1], [0, 0], [1, -1], [-1, 0], [1, 1]]),
        k=torch.randn(5, 2, 16, generator=g),
        v=torch.randn(5, 2, 16, generator=g),
        offsets=torch.tensor([0, 3, 3, 5]),
        bias=torch.rand(5, generator=g).log(),
    )
    want = kernels.attention(q, k, v, qo, ko, memory=mem)
    got = kernels.attention(q, k, v, qo, ko, memory=mem, backend="triton")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    bad = kernels.GatheredMemory(mem.idx.clone(), mem.k, mem.v, mem.offsets, mem.bias)
    bad.idx[0, 0] = 3  # request 0's bank has 3 tokens: index 3 is outside it
    with pytest.raises(ValueError, match="memory bank"):
        kernels.attention(q, k, v, qo, ko, memory=bad, backend="triton")


def test_inputs_are_validated_before_any_backend() -> None:
    q, k, v, qo, ko = _attn_inputs()
    with pytest.raises(ValueError, match="do not match"):
        kernels.attention(q, k[:, :1], v, qo, ko)
    with pytest.raises(ValueError, match="end at 9"):
        kernels.attention(q, k, v, qo, torch.tensor([0, 4, 8, 8]))
    with pytest.raises(ValueError, match="non-decreasing"):
        kernels.attention(q, k, v, qo, torch.tensor([0, 5, 4, 9]))
    with pytest.raises(ValueError, match="kv_bias"):
        kernels.attention(q, k, v, qo, ko, torch.zeros(3))
    phi, vv, _ = _inputs(20, 2, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="sorted"):
        kernels.linear_attention(phi, vv, positions=torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="state must be"):
        kernels.linear_attention(phi, vv, torch.zeros(2, 16, 8))
