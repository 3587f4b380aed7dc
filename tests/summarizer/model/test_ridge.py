"""The ridge read-out (summarizer/model/ridge.py): its moments, its solve, pretrained vectors,
and that a served request folds its recent events exactly as training does."""

from __future__ import annotations

import numpy as np
import torch

from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import ScoringRequest, VistaModel
from tests.helpers import SMALL, random_events


def ridge_model(dim: int = 5, l2: float = 0.7) -> VistaModel:
    torch.manual_seed(2)
    m = VistaModel(SMALL.replace(ridge_dim=dim, ridge_l2=l2)).eval()
    assert m.ridge is not None
    for table in (m.ridge.vec_a, m.ridge.vec_b, m.ridge.bias):
        torch.nn.init.normal_(table.weight, std=0.4)
    m.ridge.set_mean_response(0.25)
    return m


def test_moments_are_the_second_moments_of_item_vectors_and_responses() -> None:
    m = ridge_model()
    ridge = m.ridge
    assert ridge is not None
    ev = random_events(30, seed=3, with_weight=True)
    ev.weight[::3] = float("nan")  # some events unrated: their response is engaged or not
    with torch.no_grad():
        got = ridge.moments(ev).double()
        q = ridge.vectors(ev.item_id).double()
        b = ridge.item_bias(ev.item_id).double()
    r = torch.where(torch.isnan(ev.weight), (ev.action >= 1).double(), ev.weight.double())
    x = torch.cat([q, torch.ones(30, 1, dtype=torch.float64)], 1)
    y = r - 0.25 - b
    want = x.T @ torch.cat([x, y.unsqueeze(1)], 1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    # The solve is the ridge regression of y on x.
    w = ridge.solve(got.unsqueeze(0))[0].double()
    ref = torch.linalg.solve(x.T @ x + 0.7 * torch.eye(6, dtype=torch.float64), x.T @ y)
    assert torch.allclose(w, ref, rtol=1e-4, atol=1e-5)


def test_the_state_carries_the_moments_and_folds_them() -> None:
    m = ridge_model()
    summ = m.require_summarizer()
    ev = random_events(80, seed=4, with_weight=True)
    state = summ.fold(summ.fold(summ.empty_state(), ev.slice(0, 33)), ev.slice(33, 80))
    assert state.kv.shape == summ.state_shape and len(summ.state_shape) == 1
    with torch.no_grad():
        want = m.ridge.moments(ev).double()  # type: ignore[union-attr]
    assert torch.allclose(summ.moments_part(state.kv), want, rtol=1e-5, atol=1e-4)
    # The attention part is what a model without the read-out would hold.
    plain = VistaModel(SMALL).eval()
    own = plain.state_dict()
    shared = {k: v for k, v in m.state_dict().items() if k in own and v.shape == own[k].shape}
    assert all(k in shared for k in own if k.startswith("summarizer."))
    plain.load_state_dict(shared, strict=False)
    other = plain.require_summarizer()
    alone = other.fold(other.empty_state(), ev)
    assert torch.allclose(summ.attention_part(state.kv), alone.kv, rtol=1e-5, atol=1e-5)


def test_a_request_folds_its_recent_events_into_the_summarys_moments() -> None:
    """Moments of the summary + every recent event = the moments of the whole history: the
    served score is the same whether the events are in the summary or recent."""
    m = ridge_model()
    summ = m.require_summarizer()
    ev = random_events(50, seed=5, with_weight=True)
    items = torch.tensor([3, 17, 256, 99])
    whole = summ.fold(summ.empty_state(), ev)
    older = summ.fold(summ.empty_state(), ev.slice(0, 20))
    tokens = summ.readout(whole)  # the same tokens: only the ridge path differs below
    a = m.score_request(ScoringRequest(items, tokens, 50, 1.0, moments=summ.moments_part(whole.kv)))
    b = m.score_request(
        ScoringRequest(
            items,
            tokens,
            50,
            1.0,
            moments=summ.moments_part(older.kv),
            recent=ev.slice(20, 50),
            recent_prev_ts=int(ev.ts[19]),
        )
    )
    c = m.score_request(  # the recent window alone is attended too: remove it from b's tokens
        ScoringRequest(items, tokens, 50, 1.0, moments=summ.moments_part(older.kv))
    )
    assert not torch.allclose(a, c, atol=1e-4)  # the recent events move the ridge score
    # a and b differ only by b's attention over the recent window; the ridge parts agree:
    with torch.no_grad():
        ridge = m.ridge
        assert ridge is not None
        wa = ridge.solve(summ.moments_part(whole.kv).unsqueeze(0).float())
        wb = ridge.solve(
            (summ.moments_part(older.kv).float() + ridge.moments(ev.slice(20, 50))).unsqueeze(0)
        )
    assert torch.allclose(wa, wb, rtol=1e-4, atol=1e-5)
    assert b.shape == a.shape == (4,)


def test_pretrained_vectors_start_the_table() -> None:
    m = ridge_model(dim=3)
    ridge = m.ridge
    assert ridge is not None
    ids = torch.tensor([5, 11, 123456])
    vec = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.1, 0.2, 0.3]])
    assert ridge.load_vectors(ids, vec) == 3
    with torch.no_grad():
        assert torch.allclose(ridge.vectors(ids), vec)


def test_no_history_reads_a_zero_preference() -> None:
    m = ridge_model()
    ridge = m.ridge
    assert ridge is not None
    w = ridge.solve(torch.zeros(1, *ridge.moments_shape))
    assert torch.equal(w, torch.zeros_like(w))
    logits = m.score_request(ScoringRequest(torch.tensor([1, 2]), None, recent=EventBatch.empty()))
    assert logits.shape == (2,) and bool(torch.isfinite(logits).all())
    assert np.isfinite(logits.numpy()).all()
