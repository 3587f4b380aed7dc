"""Stage 2 and the serving entry (VistaModel.score_requests): m candidates together equal each
alone, a jagged batch equals each request alone, the GSU's gathered tokens and the state read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from summarizer.model import ranker, vista_model
from summarizer.model.vista_model import ScoringRequest, VistaModel
from tests.helpers import SMALL, random_events


def test_score_tokens_amortized_equals_per_candidate(model: VistaModel) -> None:
    assert model.summarizer is not None
    _, tokens = model.summarizer.summarize(random_events(300))
    items = torch.arange(1000, 1512)
    together = model.score_tokens(tokens, items, None, 300, 5.0)
    alone = torch.cat(
        [model.score_tokens(tokens, items[i : i + 1], None, 300, 5.0) for i in range(0, 512, 37)]
    )
    assert torch.allclose(together[::37], alone, atol=1e-5)


@pytest.mark.parametrize("piece", [2048, 3], ids=["one-pass", "pieces-of-3"])
@pytest.mark.parametrize("variant", ["seeds", "state", "gsu"])
def test_a_jagged_batch_of_requests_equals_each_request_alone(
    variant: str, piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """score_requests: requests of different users (summary or none, recent window or none,
    bank or none, features) in one pass score as each alone; none sees another's candidates.
    With pieces of 3 candidates the batch is cut between requests and inside the request of
    4: the scores do not change."""
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
    alone = [m.score_request(req, gsu_backend="torch") for req in requests]
    monkeypatch.setattr(vista_model, "SERVING_PIECE_CANDIDATES", piece)
    together = m.score_requests(requests, gsu_backend="torch")
    for got, expected in zip(together, alone, strict=True):
        assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(together[0], together[3], atol=1e-4)


def test_cold_start_scores_without_history(model: VistaModel) -> None:
    summ = model.summarizer
    assert summ is not None
    tokens = summ.readout(summ.empty_state())
    assert torch.isfinite(tokens).all()
    logits = model.score_tokens(tokens, torch.tensor([1, 2, 3]), None, 0, 0.0)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_gsu_attends_to_the_gathered_tokens_with_a_log_size_bias() -> None:
    """A bank changes the scores; the same bank with sizes s scores like the bank's tokens
    attended with bias log(s) (a cluster of s identical events weighs s times one event),
    in a softmax of their own added to the summary attention."""

    from kernels import reference

    torch.manual_seed(5)
    model = VistaModel(SMALL.replace(gsu_k=3, gsu_gate=0.0)).eval()
    summ = model.summarizer
    assert summ is not None
    tokens = summ.readout(summ.fold(summ.empty_state(), random_events(30, seed=6)))
    items = torch.tensor([1, 2, 3, 4])
    bank = model.bank_embeddings(random_events(10, seed=7))
    sizes = torch.tensor([1, 50, 2, 1, 7, 1, 1, 300, 1, 3])
    plain = model.score_tokens(tokens, items, None, 30, 1.0)
    banked = ScoringRequest(items, tokens, 30, 1.0, bank=(bank, sizes))
    gate = model.ranker.gsu_gate
    # gate 0: the untrained model is the summary alone
    assert gate is not None and torch.equal(gate, torch.zeros_like(gate))
    closed = model.score_request(banked, gsu_backend="torch")
    assert torch.equal(closed, plain)
    with torch.no_grad():
        gate.copy_(torch.tensor([0.5, 1.0, 1.5, -0.7]))
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
        none = k[:0]
        attn = reference.cross_attention(q, k, v, scale=scale)
        attn = attn + gate.view(1, -1, 1) * reference.cross_attention_gathered(
            q, none, none, top, bk, bv, mem_bias=bias, scale=scale
        )
        ctx = torch.tensor([[np.log1p(30) / 14.0, np.log1p(1.0) / 10.0]]).float().expand(4, 2)
        expect, _ = r.head(cand, attn.reshape(4, -1), ctx)
    assert torch.allclose(with_bank, expect, atol=1e-5)


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


def test_serving_context_equals_the_training_context() -> None:
    """Serving builds the request context from Python numbers (context_rows); training
    computes it with tensor ops (context_features). They agree to float32 rounding,
    including a negative gap (clock skew: clamped to 0) and a history past 2^24 events."""
    n = [0, 1, 7, 1000, 123_457, 2**24 + 1, 2**31]
    hours = [-3.0, 0.0, 0.25, 1.5, 48.0, 1e5, 7e6]
    served = ranker.context_rows(n, hours)
    trained = ranker.context_features(torch.tensor(n), torch.tensor(hours, dtype=torch.float32))
    assert served.dtype == trained.dtype == torch.float32
    assert served.shape == trained.shape == (len(n), ranker.N_CONTEXT)
    assert torch.allclose(served, trained, rtol=1e-6, atol=1e-7)
    assert served[0].tolist() == [0.0, 0.0]
    assert ranker.context_rows([], []).shape == (0, ranker.N_CONTEXT)
