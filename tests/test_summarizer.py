"""The summarizer's laws: fold in pieces == whole, training path == serving path, scale, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from summarizer.config import KINDS, ModelSpec
from summarizer.model import artifacts
from summarizer.model.encoder import EventBatch, previous_times
from summarizer.model.summarization import SummaryState, VistaSummarizer
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.training.forward import forward_targets
from summarizer.training.targets import TargetBatch

SMALL = ModelSpec(
    num_seeds=8,
    d_model=32,
    num_heads=4,
    feature_dim=8,
    num_layers=2,
    item_buckets=1024,
    chunk_size=7,
)


def random_events(n: int, seed: int = 0, with_weight: bool = False) -> EventBatch:
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 5, n) if with_weight else None
    return EventBatch.from_numpy(
        rng.integers(0, 5000, n),
        np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)),
        rng.integers(0, 4, n),
        w,
    )


@pytest.fixture(
    scope="module",
    params=[
        ("silu", "projected", "transformer"),
        ("seed", "projected", "transformer"),
        ("silu", "events", "pool"),
        ("silu", "events", "state"),
    ],
)
def model(request: pytest.FixtureRequest) -> VistaModel:
    """Every law below holds for VISTA's SiLU map and the seed-softmax map, with the state
    summing learned value projections or the encoded events themselves, and for every read-out
    (the state read-out has num_layers x feature_dim tokens)."""

    fmap, values, readout = request.param
    seeds = SMALL.num_layers * SMALL.feature_dim if readout == "state" else SMALL.num_seeds
    torch.manual_seed(0)
    return VistaModel(
        SMALL.replace(feature_map=fmap, values=values, readout=readout, num_seeds=seeds)
    ).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


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


def back_to_back(events: list[EventBatch]) -> tuple[EventBatch, list[int]]:
    """Users' events laid back to back, and the offsets of each user's segment."""
    joined = EventBatch(
        *(torch.cat([getattr(e, f) for e in events]) for f in EventBatch.__dataclass_fields__)
    )
    return joined, np.r_[0, np.cumsum([len(e) for e in events])].tolist()


def assert_folds_like_one_at_a_time(
    summ: VistaSummarizer,
    states: list[SummaryState],
    events: list[EventBatch],
    got: list[SummaryState],
) -> None:
    for state, ev, out in zip(states, events, got, strict=True):
        want = summ.fold(state, ev)
        assert (out.n_events, out.first_ts, out.last_ts) == (
            want.n_events,
            want.first_ts,
            want.last_ts,
        )
        assert torch.allclose(out.kv, want.kv, rtol=1e-5, atol=1e-5)


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
    inner = type(summ).readout_batch

    def counted(self: VistaSummarizer, kv: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        calls.append(len(kv))
        return inner(self, kv, n)

    monkeypatch.setattr(type(summ), "readout_batch", counted)
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
    from summarizer.model.encoder import previous_times

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


def _one_user_batch(
    events: EventBatch,
    positions: list[int],
    items: list[list[int]],
    now: int,
    summary_pos: list[int] | None = None,
) -> TargetBatch:
    counts = [len(x) for x in items]
    flat = [i for x in items for i in x]
    return TargetBatch(
        events=events,
        offsets=torch.tensor([0, len(events)]),
        req_user=torch.zeros(len(positions), dtype=torch.long),
        req_pos=torch.tensor(positions),
        req_ts=torch.full((len(positions),), now),
        cand_offsets=torch.tensor(np.r_[0, np.cumsum(counts)]),
        cand_item=torch.tensor(flat),
        cand_label=torch.zeros(len(flat)),
        cand_rating=torch.full((len(flat),), float("nan")),
        req_summary_pos=None if summary_pos is None else torch.tensor(summary_pos),
    )


def test_training_path_equals_serving_path(model: VistaModel) -> None:
    """The causal training pass (prefix states, batched read-out, recent window) scores exactly
    like serving: fold the events before the summary point, read out, add the recent events."""
    summ = model.summarizer
    assert summ is not None
    events = random_events(60, seed=9)
    now = int(events.ts[-1]) + 3600
    positions = [0, 1, 25, 59, 59]
    summary_pos = [0, 0, 20, 10, 59]  # windows: none, 1 event, 5, 49 (capped to 32), none
    cands = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15]]
    with torch.no_grad():
        train_logits = forward_targets(
            model, _one_user_batch(events, positions, cands, now, summary_pos)
        ).logits
    served = []
    w = model.spec.recent_window
    for p, sp, c in zip(positions, summary_pos, cands, strict=True):
        state = summ.fold(summ.empty_state(), events.slice(0, sp))
        first = max(sp, p - w)
        prev = int(events.ts[first - 1]) if first > 0 else None
        request = ScoringRequest(
            torch.tensor(c),
            summ.readout(state),
            n_events=p,
            hours_since_last=(now - int(events.ts[p - 1])) / 3600 if p > 0 else 0.0,
            recent=events.slice(first, p),
            recent_prev_ts=prev,
        )
        served.append(model.score_request(request))
    assert torch.allclose(train_logits, torch.cat(served), atol=1e-4)


@pytest.mark.parametrize("kind", [*KINDS, "vista+gsu", "vista+state"])
def test_amortized_equals_per_candidate(kind: str) -> None:
    """m candidates in one pass score exactly as each candidate alone, for every model kind
    (the GSU ones gather each candidate's own top-k events; "state": each reads the rows)."""
    torch.manual_seed(1)
    m = VistaModel(
        ModelSpec(
            kind=kind.removesuffix("+gsu").removesuffix("+state"),
            num_seeds=16 if kind == "vista+state" else 8,
            values="events" if kind == "vista+state" else "projected",
            readout="state" if kind == "vista+state" else "transformer",
            d_model=32,
            num_heads=4,
            feature_dim=8,
            item_buckets=1024,
            last_k=10,
            gsu_k=4 if kind in ("sim", "vista+gsu") else 0,
        )
    ).eval()
    if m.ranker.gsu_gate is not None:
        torch.nn.init.normal_(m.ranker.gsu_gate)
    events = random_events(40, seed=2)
    items = list(range(100, 117))
    with torch.no_grad():
        together = forward_targets(m, _one_user_batch(events, [30], [items], 1_800_000_000)).logits
        alone = torch.cat(
            [
                forward_targets(m, _one_user_batch(events, [30], [[i]], 1_800_000_000)).logits
                for i in items
            ]
        )
    assert torch.allclose(together, alone, atol=1e-5)


def test_score_tokens_amortized_equals_per_candidate(model: VistaModel) -> None:
    assert model.summarizer is not None
    _, tokens = model.summarizer.summarize(random_events(300))
    items = torch.arange(1000, 1512)
    together = model.score_tokens(tokens, items, None, 300, 5.0)
    alone = torch.cat(
        [model.score_tokens(tokens, items[i : i + 1], None, 300, 5.0) for i in range(0, 512, 37)]
    )
    assert torch.allclose(together[::37], alone, atol=1e-5)


@pytest.mark.parametrize("variant", ["seeds", "state", "gsu"])
def test_a_jagged_batch_of_requests_equals_each_request_alone(variant: str) -> None:
    """score_requests: requests of different users (summary or none, recent window or none,
    bank or none, features) in one pass score as each alone; none sees another's candidates."""
    torch.manual_seed(4)
    spec = SMALL.replace(candidate_features=2)
    if variant == "state":
        spec = spec.replace(num_seeds=16, values="events", readout="state")
    if variant == "gsu":
        spec = spec.replace(gsu_k=3, gsu_gate=0.5)
    m = VistaModel(spec).eval()
    summ = m.require_summarizer()
    tokens = [
        summ.readout(summ.fold(summ.empty_state(), random_events(n, seed=n))) for n in (9, 30)
    ]
    recent = random_events(5, seed=3)
    bank = m.bank_embeddings(random_events(12, seed=5)) if variant == "gsu" else None
    requests = [
        ScoringRequest(torch.tensor([1, 2, 3]), tokens[0], 9, 2.0, features=torch.randn(3, 2)),
        ScoringRequest(torch.tensor([4]), None),  # cold start
        ScoringRequest(
            torch.tensor([5, 6, 7, 8]),
            tokens[1],
            35,
            0.5,
            recent=recent,
            recent_prev_ts=int(recent.ts[0]) - 60,
            bank=None if bank is None else (bank, torch.arange(1, 13)),
        ),
        ScoringRequest(torch.tensor([1, 2, 3]), tokens[1], 30, 7.0),  # same items, other user
    ]
    together = m.score_requests(requests, gsu_backend="torch")
    for req, got in zip(requests, together, strict=True):
        assert torch.allclose(got, m.score_request(req, gsu_backend="torch"), atol=1e-5)
    assert not torch.allclose(together[0], together[3], atol=1e-4)


def test_cold_start_scores_without_history(model: VistaModel) -> None:
    summ = model.summarizer
    assert summ is not None
    tokens = summ.readout(summ.empty_state())
    assert torch.isfinite(tokens).all()
    logits = model.score_tokens(tokens, torch.tensor([1, 2, 3]), None, 0, 0.0)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_paper_size_runs() -> None:
    """VISTA's best configuration (128 seeds x 256) builds, folds and reads out."""
    m = VistaModel(ModelSpec(num_seeds=128, d_model=256, num_heads=8, item_buckets=4096)).eval()
    assert m.summarizer is not None
    state, tokens = m.summarizer.summarize(random_events(3000))
    assert tokens.shape == (128, 256) and state.kv.shape == m.summarizer.state_shape


def test_save_load_round_trip(tmp_path: Path, model: VistaModel) -> None:
    v1 = artifacts.save(model, tmp_path / "m")
    loaded, v2 = artifacts.load(tmp_path / "m")
    assert v1 == v2 and len(v1) == 16
    assert loaded.spec == model.spec
    assert loaded.summarizer is not None and model.summarizer is not None
    events = random_events(50)
    assert torch.equal(
        loaded.summarizer.summarize(events)[1], model.summarizer.summarize(events)[1]
    )
    # Same weights and config: same version. Different weights: a different version.
    assert artifacts.save(loaded, tmp_path / "again") == v1
    with torch.no_grad():
        loaded.ranker.logit.bias += 1.0
    assert artifacts.save(loaded, tmp_path / "changed") != v1


def test_load_refuses_tampered_or_incomplete_folders(tmp_path: Path, model: VistaModel) -> None:
    artifacts.save(model, tmp_path / "m")
    with open(tmp_path / "m" / artifacts.WEIGHTS, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(artifacts.ModelArtifactError, match="files changed after save"):
        artifacts.load(tmp_path / "m")
    with pytest.raises(artifacts.ModelArtifactError, match="no config.json"):
        artifacts.load(tmp_path / "empty")


def test_describe_reads_spec_and_version_without_the_weights(
    tmp_path: Path, model: VistaModel
) -> None:
    """A job's driver reads the recorded version; hashing happens where weights load."""
    import json

    v = artifacts.save(model, tmp_path / "m")
    spec, version = artifacts.describe(tmp_path / "m")
    assert spec == model.spec and version == v
    # A folder saved before versions were recorded: hashed from the files.
    meta = json.loads((tmp_path / "m" / artifacts.CONFIG).read_text())
    del meta["version"]
    (tmp_path / "m" / artifacts.CONFIG).write_text(json.dumps(meta))
    assert artifacts.describe(tmp_path / "m")[1] == v
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / artifacts.CONFIG).write_text(json.dumps(meta))
    with pytest.raises(artifacts.ModelArtifactError, match="no model.safetensors"):
        artifacts.describe(tmp_path / "w")
    with pytest.raises(ValueError, match="only 'vista' models summarize"):
        model.spec.replace(kind="din").require_summarizer()


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


def test_seed_map_reads_a_softmax_over_events() -> None:
    """With the "seed" map each state row is one seed's softmax numerator and denominator: the
    read equals softmax(q_k . k_t) over the events applied to their values, computed directly."""

    from summarizer.model.summarization import SEED_LOGIT_CAP

    torch.manual_seed(5)
    m = VistaModel(SMALL.replace(feature_map="seed", num_layers=1)).eval()
    summ = m.summarizer
    assert summ is not None
    assert summ.state_shape == (1, 4, SMALL.num_seeds, 32 // 4 + 1)
    events = random_events(50, seed=6)
    state = summ.fold(summ.empty_state(), events)
    from summarizer.model.encoder import previous_times

    with torch.no_grad():
        e = summ.encoder(events, previous_times(events.ts, None))
        kv = summ.kv(e).view(50, 1, 4, 16)
        k, v = kv[..., :8], kv[..., 8:]
        logits = torch.einsum("nhd,hkd->hkn", k[:, 0], summ.seed_queries[0]) / 8**0.5
        logits = logits.clamp(-SEED_LOGIT_CAP, SEED_LOGIT_CAP)
        want = torch.einsum("hkn,nhd->hkd", torch.softmax(logits, -1), v[:, 0])
    got = state.kv[0, :, :, :-1] / state.kv[0, :, :, -1:]
    assert torch.allclose(got.float(), want, atol=1e-5)
    # Weights are bounded by the cap whatever the logits: sums cannot overflow.
    with torch.no_grad():
        summ.seed_queries.mul_(1e6)
    big = summ.fold(summ.empty_state(), events)
    assert torch.isfinite(big.kv).all() and torch.isfinite(summ.readout(big)).all()
    assert float(big.kv[..., -1].max()) <= 50 * np.exp(SEED_LOGIT_CAP) * 1.0001


def test_event_values_sum_the_encoded_events() -> None:
    """With ``values="events"`` the state sums phi(k_t) (x) e_t, head h holding its slice of e_t:
    checked against the encoder's output directly; a bad mode is refused by name."""

    from summarizer.model.encoder import previous_times

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


def test_pool_readout_adds_the_normalized_read_to_each_seed() -> None:
    """``readout="pool"``: tokens = LN(seed + LN(phi(W_q LN(seed)) S / n)) for one layer, and
    the read-out holds no output projection, self-attention or MLP."""

    import torch.nn.functional as F

    torch.manual_seed(9)
    m = VistaModel(SMALL.replace(num_layers=1, readout="pool")).eval()
    summ = m.summarizer
    assert summ is not None
    block = summ.readout_layers[0]
    assert not any(hasattr(block, name) for name in ("out", "self_attn", "ff"))
    events = random_events(30, seed=10)
    state, tokens = summ.summarize(events)
    with torch.no_grad():
        kv_mean = (state.kv[0, :, :, :-1] / 30).float()  # (H, F, D)
        assert block.q is not None and block.norm_q is not None
        phi_q = F.silu(block.q(block.norm_q(summ.seeds))).view(8, 4, 8)
        read = torch.einsum("khf,hfd->khd", phi_q, kv_mean).reshape(8, 32)
        want = summ.final_norm(summ.seeds + block.norm_read(read))
    assert torch.allclose(tokens, want, atol=1e-5)
    with pytest.raises(
        ValueError, match="readout\n  Input should be 'transformer', 'pool' or 'state'"
    ):
        VistaModel(SMALL.replace(readout="mlp"))


@pytest.mark.parametrize("kind", ["vista", "sim", "vista-shared", "vista-gated", "vista-state"])
def test_gsu_training_path_equals_serving_with_a_raw_event_bank(kind: str) -> None:
    """Training's causal SIM search (each candidate's top-k of the events before the summary)
    scores exactly like serving with those events as the memory bank (clusters of one); also
    next to the state read-out's own read."""

    torch.manual_seed(3)
    softmax = "shared" if kind.endswith("-shared") else "separate"
    gate = 0.0 if kind.endswith("-gated") else None
    state = (
        {"readout": "state", "values": "events", "feature_map": "softmax", "num_seeds": 16}
        if kind.endswith("-state")
        else {}
    )
    kind = kind.removesuffix("-shared").removesuffix("-gated").removesuffix("-state")
    model = VistaModel(
        SMALL.replace(kind=kind, gsu_k=5, gsu_softmax=softmax, gsu_gate=gate, **state)
    ).eval()
    if model.ranker.gsu_gate is not None:  # open the gate (it starts closed here)
        torch.nn.init.normal_(model.ranker.gsu_gate)
    events = random_events(60, seed=4)
    now = int(events.ts[-1]) + 3600
    positions = [0, 3, 25, 59]
    summary_pos = [0, 2, 20, 40] if kind == "vista" else None
    cands = [[5, 6], [7, 8, 9], [10], [11, 12, 13, 14]]
    with torch.no_grad():
        train_logits = forward_targets(
            model, _one_user_batch(events, positions, cands, now, summary_pos)
        ).logits
    served = []
    w = model.spec.recent_window
    for i, (p, c) in enumerate(zip(positions, cands, strict=True)):
        sp = summary_pos[i] if summary_pos else p
        tokens, recent, prev = None, None, None
        if model.summarizer is not None:
            folded = model.summarizer.fold(model.summarizer.empty_state(), events.slice(0, sp))
            first = max(sp, p - w)
            prev = int(events.ts[first - 1]) if first > 0 else None
            tokens, recent = model.summarizer.readout(folded), events.slice(first, p)
        request = ScoringRequest(
            torch.tensor(c),
            tokens,
            n_events=p,
            hours_since_last=(now - int(events.ts[p - 1])) / 3600 if p > 0 else 0.0,
            recent=recent,
            recent_prev_ts=prev,
            bank=(model.bank_embeddings(events.slice(0, sp)), torch.ones(sp)),
        )
        served.append(model.score_request(request, gsu_backend="torch"))
    assert torch.allclose(train_logits, torch.cat(served), atol=1e-4)


@pytest.mark.parametrize("gsu_softmax", ["separate", "shared"])
def test_gsu_attends_to_the_gathered_tokens_with_a_log_size_bias(gsu_softmax: str) -> None:
    """A bank changes the scores; the same bank with sizes s scores like the bank's tokens
    attended with bias log(s) (a cluster of s identical events weighs s times one event),
    in a softmax of their own added to the summary attention, or in the summary's."""

    from kernels import reference

    torch.manual_seed(5)
    model = VistaModel(SMALL.replace(gsu_k=3, gsu_softmax=gsu_softmax, gsu_gate=0.0)).eval()
    summ = model.summarizer
    assert summ is not None
    tokens = summ.readout(summ.fold(summ.empty_state(), random_events(30, seed=6)))
    items = torch.tensor([1, 2, 3, 4])
    bank = model.bank_embeddings(random_events(10, seed=7))
    sizes = torch.tensor([1, 50, 2, 1, 7, 1, 1, 300, 1, 3])
    plain = model.score_tokens(tokens, items, None, 30, 1.0)
    banked = ScoringRequest(items, tokens, 30, 1.0, bank=(bank, sizes))
    gate = model.ranker.gsu_gate
    if gsu_softmax == "separate":  # gate 0: the untrained model is the summary alone
        assert gate is not None and torch.equal(gate, torch.zeros_like(gate))
        closed = model.score_request(banked, gsu_backend="torch")
        assert torch.equal(closed, plain)
        with torch.no_grad():
            gate.copy_(torch.tensor([0.5, 1.0, 1.5, -0.7]))
    else:
        assert gate is None
    with_bank = model.score_request(banked, gsu_backend="torch")
    assert not torch.allclose(plain, with_bank)
    # By hand: top-3 by the summed attention logit, then the softmax(es).
    r = model.ranker
    with torch.no_grad():
        cand = r.embed_candidates(items)
        q = r.queries(cand)
        k, v = r.project_memory(tokens)
        bk, bv = r.project_memory(model.mark_memory(bank))
        top = r.gsu_scores(q, bk).topk(3, dim=1).indices
        scale, bias = 1 / (r.head_dim**0.5), torch.log(sizes.float())
        if gsu_softmax == "shared":
            attn = reference.cross_attention_gathered(
                q, k, v, top, bk, bv, mem_bias=bias, scale=scale
            )
        else:
            none = k[:0]
            attn = reference.cross_attention(q, k, v, scale=scale)
            attn = attn + gate.view(1, -1, 1) * reference.cross_attention_gathered(
                q, none, none, top, bk, bv, mem_bias=bias, scale=scale
            )
        ctx = torch.tensor([[np.log1p(30) / 14.0, np.log1p(1.0) / 10.0]]).float().expand(4, 2)
        expect, _ = r.head(cand, attn.reshape(4, -1), ctx)
    assert torch.allclose(with_bank, expect, atol=1e-5)


def test_gsu_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="gsu_k must be >= 1"):
        ModelSpec(kind="sim")
    with pytest.raises(ValueError, match="gsu_k applies to kinds vista and sim"):
        ModelSpec(kind="din", gsu_k=4)
    with pytest.raises(ValueError, match="gsu_k\n  Input should be greater than or equal to 0"):
        ModelSpec(gsu_k=-1)
    with pytest.raises(ValueError, match="gsu_softmax\n  Input should be 'separate' or 'shared'"):
        ModelSpec(gsu_k=4, gsu_softmax="mixed")
    with pytest.raises(ValueError, match="memory\n  Input should be 'events' or 'clusters'"):
        ModelSpec(gsu_k=4, memory="raw")
    with pytest.raises(ValueError, match="no memory bank"):
        VistaModel(SMALL).mark_memory(torch.zeros(1, SMALL.d_model))


def test_prefix_cluster_tokens_are_the_means_of_earlier_members() -> None:
    from summarizer.training.banks import prefix_cluster_tokens

    g = torch.Generator().manual_seed(0)
    e = torch.randn(40, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (40,), generator=g)
    limits = torch.tensor([0, 40, 7, 7, 23, 1])
    tokens, counts = prefix_cluster_tokens(e, labels, limits)
    for r, p in enumerate(limits.tolist()):
        for c in range(5):
            members = e[:p][labels[:p] == c]
            assert counts[r, c] == len(members)
            want = members.mean(0) if len(members) else torch.zeros(6, dtype=torch.float64)
            torch.testing.assert_close(tokens[r, c], want)


def test_gsu_over_clusters_training_path_equals_serving_with_those_cluster_tokens() -> None:
    """With a TWIN-V2 bank (memory="clusters"), a request's candidates search and attend to
    the cluster tokens of the events before its summary (mean, log(size) bias), exactly as
    serving does with that bank."""

    from summarizer.training.banks import prefix_cluster_tokens

    torch.manual_seed(3)
    model = VistaModel(SMALL.replace(kind="sim", gsu_k=3, memory="clusters")).eval()
    events = random_events(50, seed=8)
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 6, 50))
    now = int(events.ts[-1]) + 3600
    positions, cands = [0, 5, 30, 49], [[5, 6], [7, 8, 9], [10], [11, 12, 13]]
    batch = _one_user_batch(events, positions, cands, now)
    batch.event_cluster = labels
    with torch.no_grad():
        train_logits = forward_targets(model, batch).logits
        e = model.encoder(events, previous_times(events.ts, None))
        served = []
        for p, c in zip(positions, cands, strict=True):
            tokens, counts = prefix_cluster_tokens(e, labels, torch.tensor([p]))
            keep = counts[0] > 0
            hours = (now - int(events.ts[p - 1])) / 3600 if p > 0 else 0.0
            request = ScoringRequest(
                torch.tensor(c), None, p, hours, bank=(tokens[0][keep], counts[0][keep])
            )
            served.append(model.score_request(request, gsu_backend="torch"))
    assert torch.allclose(train_logits, torch.cat(served), atol=1e-5)


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


def test_state_readout_tokens_are_the_state_rows_and_candidates_read_them() -> None:
    """``readout="state"``: token (l, f) = concat over heads of S[l, h, f, :D] / n, no seeds or
    read-out layers; a candidate's read is sum_k silu(W c)[h, k] * token_k[h] (by hand), and
    with no summary the read is zero (the no-history path)."""

    torch.manual_seed(12)
    spec = SMALL.replace(num_seeds=16, values="events", readout="state")
    m = VistaModel(spec).eval()
    summ = m.summarizer
    assert summ is not None and summ.seeds is None and len(summ.readout_layers) == 0
    events = random_events(50, seed=13)
    state, tokens = summ.summarize(events)
    H, D = spec.num_heads, spec.d_model // spec.num_heads
    for layer in range(spec.num_layers):
        for f in range(spec.feature_dim):
            want = torch.cat([state.kv[layer, h, f, :D] / 50 for h in range(H)]).float()
            assert torch.allclose(tokens[layer * spec.feature_dim + f], want, atol=1e-6)
    ranker = m.ranker
    assert ranker.state_q is not None
    items = torch.tensor([3, 4, 5])
    with torch.no_grad():
        cand = ranker.embed_candidates(items)
        w = torch.nn.functional.silu(ranker.state_q(cand)).view(3, H, 16)
        by_hand = torch.stack(
            [
                torch.stack(
                    [
                        sum(w[c, h, k] * tokens[k, h * D : (h + 1) * D] for k in range(16))
                        for h in range(H)
                    ]
                )
                for c in range(3)
            ]
        )
        assert torch.allclose(ranker.read_state(cand, tokens), by_hand, atol=1e-5)
        # Several requests at once: each candidate reads its own request's rows.
        two = torch.stack([tokens, torch.zeros_like(tokens)])
        jagged = ranker.read_state(cand, two, torch.tensor([0, 1, 0]))
        assert torch.allclose(jagged[[0, 2]], by_hand[[0, 2]], atol=1e-5)
        assert torch.equal(jagged[1], torch.zeros(H, D))
        # No summary: nothing to attend to and a zero read (all-zero state rows).
        cold = m.score_request(ScoringRequest(items, None))
        q = ranker.queries(ranker.embed_candidates(items))
        offsets = torch.tensor([0, len(items)])
        zeros, _ = m.rank(
            ranker.embed_candidates(items),
            q,
            torch.zeros(0, spec.d_model),
            offsets,
            torch.tensor([0, 0]),
            torch.zeros(1, 2),
            summaries=(torch.zeros(16, 32), None),
        )
    assert torch.allclose(cold, zeros)


def test_state_readout_spec_is_checked() -> None:

    with pytest.raises(ValueError, match="num_seeds must be 16"):
        SMALL.replace(readout="state")
    with pytest.raises(ValueError, match='not "seed"'):
        SMALL.replace(num_seeds=16, readout="state", feature_map="seed")
    # Other kinds ignore the read-out.
    assert SMALL.replace(kind="mean", readout="state").readout == "state"
