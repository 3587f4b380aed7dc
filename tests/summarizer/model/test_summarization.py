"""VISTA stage 1 (summarizer/model/summarization.py): the summarizer's laws -- fold in pieces
equals whole, batched folds equal one user at a time, scale independent of n -- for every
feature map and read-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from summarizer.config import ModelSpec
from summarizer.model.encoder import EventBatch, previous_times
from summarizer.model.summarization import VistaSummarizer
from summarizer.model.vista_model import VistaModel
from tests.helpers import (
    SMALL,
    assert_folds_like_one_at_a_time,
    back_to_back,
    random_events,
    rel_err,
)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 80), cuts=st.lists(st.integers(0, 80), max_size=6), weighted=st.booleans())
def test_fold_in_pieces_equals_whole(
    model: VistaModel, n: int, cuts: list[int], weighted: bool
) -> None:
    """Any split of the history (empty and single-event pieces included) gives the same tokens."""
    summ = model.summarizer
    assert summ is not None
    events = random_events(n, seed=n, with_weight=weighted)
    whole_state, whole = summ.summarize(events)
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    state = summ.empty_state()
    for a, b in zip(bounds, bounds[1:], strict=False):
        state = summ.fold(state, events.slice(a, b))
    state = summ.fold(state, EventBatch.empty())  # an empty day changes nothing
    assert state.n_events == n == whole_state.n_events
    assert state.last_ts == whole_state.last_ts and state.first_ts == whole_state.first_ts
    assert rel_err(summ.readout(state), whole) <= 1e-4
    # Chunk sums are fp32 before the fp64 state: error is relative to the largest entries.
    scale = max(1.0, float(whole_state.kv.abs().max()))
    assert torch.allclose(state.kv, whole_state.kv, rtol=1e-5, atol=1e-6 * scale)


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=6), started=st.booleans())
def test_fold_segments_equals_fold_per_user(
    model: VistaModel, lengths: list[int], started: bool
) -> None:
    """Many users' events in one batch (crossing chunk boundaries) fold like one user at a time."""
    summ = model.summarizer
    assert summ is not None
    events = [random_events(n, seed=10 + i) for i, n in enumerate(lengths)]
    states = [
        summ.fold(summ.empty_state(), random_events(3, seed=99)) if started else summ.empty_state()
        for _ in lengths
    ]
    joined, offsets = back_to_back(events)
    got = summ.fold_segments(states, joined, offsets)
    assert_folds_like_one_at_a_time(summ, states, events, got)
    with pytest.raises(ValueError, match="offsets"):
        summ.fold_segments(states, joined, offsets[:-1])


def test_fold_segments_long_short_late_and_across_chunks(model: VistaModel) -> None:
    """The batched fold against one user at a time where its paths differ: segments
    longer than the short-segment buckets, every bucket width, segments split by chunk
    boundaries, late events (older than ones folded before them) and started states."""
    summ = model.summarizer
    assert summ is not None
    lengths = [0, 3, 130, 1, 64, 65, 7, 2, 33, 0, 16, 300]
    events = []
    for i, n in enumerate(lengths):
        e = random_events(n, seed=40 + i)
        if n > 4:  # a few late events: out of time order
            e.ts[n // 2 : n // 2 + 3] -= 10**8
        events.append(e)
    states = [
        summ.fold(summ.empty_state(), random_events(5, seed=7 + i)) if i % 2 else summ.empty_state()
        for i in range(len(lengths))
    ]
    joined, offsets = back_to_back(events)
    chunk = summ.chunk_size
    mine = [st.clone() for st in states]
    try:
        summ.chunk_size = 100  # segments cross chunk boundaries
        got = summ.fold_segments(states, joined, offsets)
        # in_place: the caller's states themselves are updated and returned (the batch
        # job's states are views into one buffer)
        into = summ.fold_segments(mine, joined, offsets, in_place=True)
    finally:
        summ.chunk_size = chunk
    assert_folds_like_one_at_a_time(summ, states, events, got)
    assert all(a is b for a, b in zip(into, mine, strict=True))
    for a, b in zip(got, into, strict=True):  # the same sums, bit for bit
        assert torch.equal(a.kv, b.kv)
        assert (a.n_events, a.first_ts, a.last_ts) == (b.n_events, b.first_ts, b.last_ts)


def test_readout_without_gradients_in_pieces_equals_one_pass(
    model: VistaModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inference reads out a few users at a time (cache-sized passes): the same tokens as
    one differentiable pass over all of them."""
    from summarizer.model import summarization

    summ = model.summarizer
    assert summ is not None
    states = [summ.fold(summ.empty_state(), random_events(4 + 3 * i, seed=i)) for i in range(10)]
    kv = torch.stack([st.kv for st in states]).float()
    n = torch.tensor([st.n_events for st in states])
    whole = summ.readout_batch(kv, n).detach()  # gradients on: one pass
    monkeypatch.setattr(summarization, "READOUT_PASS_BYTES", 3 * 4 * summ.num_seeds * summ.dim)
    calls = []
    inner = type(summ).readout_attention

    def counted(self: VistaSummarizer, kv: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        calls.append(len(kv))
        return inner(self, kv, n)

    monkeypatch.setattr(type(summ), "readout_attention", counted)
    with torch.no_grad():
        pieces = summ.readout_batch(kv, n)
    assert calls == [10, 3, 3, 3, 1]
    # Float32 through several layers: a matmul over 3 users may block its sums differently
    # from one over 10 (1.7e-6 apart on one element on an AMD EPYC host).
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-5)


def test_late_events_get_a_zero_gap_and_keep_the_latest_time(model: VistaModel) -> None:
    summ = model.summarizer
    assert summ is not None
    early = random_events(5, seed=1)
    state = summ.fold(summ.empty_state(), early)
    late = EventBatch.from_numpy(
        np.array([7]), np.array([int(early.ts[0]) - 100]), np.array([1]), None
    )
    after = summ.fold(state, late)
    assert after.last_ts == state.last_ts and after.first_ts == int(early.ts[0]) - 100
    # Its gap is measured against the latest time folded before it: 0, not negative.

    assert int(previous_times(late.ts, state.last_ts)[0]) == state.last_ts


def test_fold_does_not_mutate_its_input(model: VistaModel) -> None:
    summ = model.summarizer
    assert summ is not None
    s0 = summ.fold(summ.empty_state(), random_events(10))
    before = s0.kv.clone()
    summ.fold(s0, random_events(5, seed=1))
    assert torch.equal(s0.kv, before) and s0.n_events == 10


def test_chunk_size_does_not_change_the_summary(model: VistaModel) -> None:
    summ = model.summarizer
    assert summ is not None
    events = random_events(500, seed=3)
    _, a = summ.summarize(events)
    old = summ.chunk_size
    try:
        summ.chunk_size = 10_000
        _, b = summ.summarize(events)
    finally:
        summ.chunk_size = old
    assert rel_err(a, b) <= 1e-5


def test_token_scale_does_not_grow_with_history_length(model: VistaModel) -> None:
    summ = model.summarizer
    assert summ is not None
    short = summ.fold(summ.empty_state(), random_events(100, seed=1))
    old, summ.chunk_size = summ.chunk_size, 4096
    try:
        long = summ.fold(summ.empty_state(), random_events(20_000, seed=1))
    finally:
        summ.chunk_size = old
    n_short = summ.readout(short).norm(dim=1).mean()
    n_long = summ.readout(long).norm(dim=1).mean()
    assert 0.8 < float(n_long / n_short) < 1.25
    assert (
        long.kv.abs().max() > 50 * short.kv.abs().max()
    )  # the raw sums do grow; read-out normalizes


def test_softmax_slots_fold_law_and_scale() -> None:
    """The softmax-slot feature map keeps the fold law and normalizes by each slot's mass."""

    torch.manual_seed(3)
    m = VistaModel(SMALL.replace(feature_map="softmax", chunk_size=16)).eval()
    summ = m.summarizer
    assert summ is not None
    events = random_events(200, seed=4)
    _, whole = summ.summarize(events)
    state = summ.fold(summ.fold(summ.empty_state(), events.slice(0, 77)), events.slice(77, 200))
    assert rel_err(summ.readout(state), whole) <= 1e-4
    mass = state.kv[..., -1]  # softmax features sum to 1 per event: total mass == n per head
    assert torch.allclose(mass.sum(-1), torch.full_like(mass.sum(-1), 200.0), rtol=1e-6)


def test_event_values_sum_the_encoded_events() -> None:
    """With ``values="events"`` the state sums phi(k_t) (x) e_t, head h holding its slice of e_t:
    checked against the encoder's output directly; a bad mode is refused by name."""

    torch.manual_seed(7)
    m = VistaModel(SMALL.replace(values="events")).eval()
    summ = m.summarizer
    assert summ is not None
    events = random_events(40, seed=8)
    state = summ.fold(summ.empty_state(), events)
    with torch.no_grad():
        e = summ.encoder(events, previous_times(events.ts, None))
        phi = torch.nn.functional.silu(summ.kv(e).view(40, 2, 4, 8))
        want = torch.einsum("nlhf,nhd->lhfd", phi, e.view(40, 4, 8))
    assert torch.allclose(state.kv[..., :-1].float(), want, rtol=1e-4, atol=1e-5)
    assert torch.allclose(state.kv[..., -1].float(), phi.sum(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="values\n  Input should be 'projected' or 'events'"):
        VistaModel(SMALL.replace(values="raw"))


def test_seed_self_attention_equals_multihead_attention_with_its_weights() -> None:
    """The read-out's fused seed self-attention is nn.MultiheadAttention(h, h, h) with the same
    weights, values and gradients (the checkpoint layout is the module's)."""
    torch.manual_seed(11)
    block = VistaModel(SMALL).summarizer.readout_layers[0]  # type: ignore[union-attr]
    h = torch.randn(5, SMALL.num_seeds, SMALL.d_model, requires_grad=True)
    fused = block._seed_attention(h)
    (g_fused,) = torch.autograd.grad(fused.square().sum(), h)
    ref = block.self_attn(h, h, h, need_weights=False)[0]
    (g_ref,) = torch.autograd.grad(ref.square().sum(), h)
    assert torch.allclose(fused, ref, atol=1e-6)
    assert torch.allclose(g_fused, g_ref, atol=1e-5)


def test_paper_size_runs() -> None:
    """VISTA's best configuration (128 seeds x 256) builds, folds and reads out."""
    m = VistaModel(ModelSpec(num_seeds=128, d_model=256, num_heads=8, item_buckets=4096)).eval()
    assert m.summarizer is not None
    state, tokens = m.summarizer.summarize(random_events(3000))
    assert tokens.shape == (128, 256) and state.kv.shape == m.summarizer.state_shape


def test_the_fold_sums_states_through_the_linear_attention_kernels(model: VistaModel) -> None:
    """fold() and fold_segments() add phi(k) (x) v through kernels.linear_attention (the
    Triton kernel on CUDA, the torch path here): equal to the direct sum, and the
    dispatcher says which backend ran and why the other did not."""
    from kernels import explain_linear_attention

    summ = model.require_summarizer()
    events = random_events(300, seed=11)
    e = summ.encoder(events, previous_times(events.ts, None))
    phi_k, v = summ.keys_values(e)
    with torch.no_grad():
        got = summ.state_sum(phi_k, v)
    expected = torch.einsum("nlhf,nlhd->lhfd", phi_k.double(), v.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    n, L, H, Fd = phi_k.shape
    why = explain_linear_attention(phi_k.reshape(n, L * H, Fd), v.reshape(n, L * H, -1))
    assert why["torch"] == [] and why["triton"]  # no CUDA here: the reason is given
    state = summ.fold(summ.empty_state(), events)
    torch.testing.assert_close(
        summ.attention_part(state.kv).double(), expected, rtol=1e-5, atol=1e-4
    )
