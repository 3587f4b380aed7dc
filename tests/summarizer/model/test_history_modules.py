"""The history modules of the long-sequence field (issue 25), beside the shared tests of every
kind (tests/summarizer/training/test_forward.py: m candidates together == each alone): no
request sees its own or a later event, shapes, and each module against a plain reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from summarizer.config import ModelSpec
from summarizer.model import hstu as hstu_mod
from summarizer.model.encoder import EventBatch, previous_times
from summarizer.model.hstu import HSTU
from summarizer.model.longer import MERGE_GROUP, Block, Longer
from summarizer.model.transact2 import TransActV2
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.training.forward import forward_targets
from tests.helpers import one_user_batch, random_events

NEW_KINDS = ["hstu", "longer", "transact2", "dv365"]


def small(kind: str) -> VistaModel:
    torch.manual_seed(3)
    spec = ModelSpec(kind=kind, d_model=32, num_heads=4, num_layers=2, item_buckets=1024, last_k=12)
    model = VistaModel(spec).eval()
    for name, p in model.named_parameters():  # the zero-started biases carry weight too
        if name.endswith("rab_weight"):
            torch.nn.init.normal_(p, std=0.5)
    return model


def changed_after(events: EventBatch, p: int) -> EventBatch:
    """The same events with every event at position >= p replaced (items, actions, times)."""
    item, act, ts = events.item_id.clone(), events.action.clone(), events.ts.clone()
    item[p:] = item[p:] + 1000
    act[p:] = (act[p:] + 1) % 2
    ts[p:] = ts[p:] + 7
    return EventBatch(item, ts, act, events.weight.clone())


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_no_request_sees_its_own_or_a_later_event(kind: str) -> None:
    model = small(kind)
    events = random_events(80, seed=4)
    positions = [0, 5, 40, 79]
    cands = [[3, 4], [5], [6, 7, 8], [9]]
    now = int(events.ts[-1]) + 60
    with torch.no_grad():
        base = forward_targets(model, one_user_batch(events, positions, cands, now)).logits
        for i, p in enumerate(positions):
            other = changed_after(events, p)
            got = forward_targets(model, one_user_batch(other, positions, cands, now)).logits
            a, b = int(sum(map(len, cands[:i]))), int(sum(map(len, cands[: i + 1])))
            assert torch.allclose(base[a:b], got[a:b], atol=1e-6), (kind, p)
            if p < 79:  # a later request does see the change
                assert not torch.allclose(base[b:], got[b:], atol=1e-6), (kind, p)


def dense_hstu(
    model: HSTU,
    x: torch.Tensor,
    ts: torch.Tensor,
    cand: torch.Tensor,
    cand_pos: torch.Tensor,
    cand_ts: torch.Tensor,
) -> torch.Tensor:
    """HSTU written out plainly: one token sequence per candidate, [its window of events
    ... itself], a full mask of who sees whom."""
    n, W = x.shape[0], model.window
    h = cand + model.cand_type
    for layer in model.layers:
        u, v, q, k = layer.project(x)
        D = layer.head_dim
        i = torch.arange(n)
        dist = i.unsqueeze(1) - i.unsqueeze(0)
        vis = (dist >= 0) & (dist < W)
        s = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(D)
        s = s + layer.rab(dist, ts.unsqueeze(1) - ts.unsqueeze(0)).permute(2, 0, 1)
        a = F.silu(s) * vis / vis.sum(1, keepdim=True)
        x_next = layer.output(x, torch.einsum("hij,jhd->ihd", a, v), u)
        uc, vc, qc, kc = layer.project(h)
        outs = []
        for c in range(h.shape[0]):
            p = int(cand_pos[c])
            js = list(range(max(0, p - W), p))
            keys = torch.cat([k[js], kc[c : c + 1]])
            vals = torch.cat([v[js], vc[c : c + 1]])
            d_pos = torch.tensor([p - j for j in js] + [0])
            d_t = torch.cat([cand_ts[c] - ts[js], torch.zeros(1, dtype=torch.long)])
            sc = torch.einsum("hd,jhd->hj", qc[c], keys) / math.sqrt(D) + layer.rab(d_pos, d_t).T
            w = F.silu(sc) / len(d_pos)
            outs.append(torch.einsum("hj,jhd->hd", w, vals))
        h = layer.output(h, torch.stack(outs), uc)
        x = x_next
    return model.final_norm(h)


def test_hstu_in_blocks_equals_hstu_written_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hstu_mod, "EVENT_BLOCK", 16)  # several blocks, windows across them
    torch.manual_seed(0)
    model = HSTU(32, 4, 2, window=20)
    for layer in model.layers:
        torch.nn.init.normal_(layer.rab_weight)
    n = 70
    x = torch.randn(n, 32)
    ts = torch.sort(torch.randint(0, 10**6, (n,))).values
    cand = torch.randn(6, 32)
    pos = torch.tensor([0, 1, 19, 20, 45, 70])
    cts = torch.tensor([int(ts[min(int(p), n - 1)]) + 5 for p in pos])
    with torch.no_grad():
        got = model.forward_user(x, ts, cand, pos, cts)
        want = dense_hstu(model, x, ts, cand, pos, cts)
    assert got.shape == (6, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Training recomputes the blocks (checkpoint) and gives the same gradients.
    xg = x.clone().requires_grad_(True)
    model.forward_user(xg, ts, cand, pos, cts).sum().backward()
    xd = x.clone().requires_grad_(True)
    dense_hstu(model, xd, ts, cand, pos, cts).sum().backward()
    torch.testing.assert_close(xg.grad, xd.grad, rtol=1e-4, atol=1e-5)


def test_hstu_with_no_history_reads_the_candidate_alone() -> None:
    model = HSTU(16, 2, 1, window=8)
    with torch.no_grad():
        out = model.forward_user(
            torch.zeros(0, 16),
            torch.zeros(0, dtype=torch.long),
            torch.randn(3, 16),
            torch.zeros(3, dtype=torch.long),
            torch.zeros(3, dtype=torch.long),
        )
    assert out.shape == (3, 16) and torch.isfinite(out).all()


def plain_longer(model: Longer, events: torch.Tensor, cand: torch.Tensor, p: int) -> torch.Tensor:
    """LONGER for one candidate written out from scratch: its request's merged tokens one
    group at a time, every attention over explicit key lists."""
    g = MERGE_GROUP
    merged = []
    for j in range(0, p, g):
        grp = events[j : min(j + g, p)]
        padded = torch.cat([grp, grp.new_zeros(g - len(grp), grp.shape[1])])
        merged.append(model.merged(padded.unsqueeze(0), torch.tensor([len(grp)]))[0])

    def attend(block: Block, x: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
        kv = torch.stack(keys).unsqueeze(0)
        mask = torch.ones(1, 1, len(keys), dtype=torch.bool)
        return block(x.view(1, 1, -1), kv, mask)[0, 0]

    crossed = [attend(model.cross, merged[j], merged[: j + 1]) for j in range(len(merged))]
    recent = crossed[-model.recent :]
    h = cand + model.cand_type
    h = attend(model.cross, h, [*merged, h])
    for layer in model.layers:
        h_next = attend(layer, h, [*recent, h])
        recent = [attend(layer, recent[i], recent[: i + 1]) for i in range(len(recent))]
        h = h_next
    return model.final_norm(h)


def test_longer_shared_across_requests_equals_longer_written_out() -> None:
    torch.manual_seed(5)
    model = Longer(32, 4, 3, recent=3).eval()
    n = 23
    events = torch.randn(n, 32)
    cand = torch.randn(7, 32)
    pos = torch.tensor([0, 1, 4, 9, 9, 16, 23])  # partial groups, whole ones, more than k
    with torch.no_grad():
        got = model.forward_user(events, cand, pos)
        want = torch.stack(
            [plain_longer(model, events, cand[i], int(p)) for i, p in enumerate(pos)]
        )
    assert got.shape == (7, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_gradients_are_finite_with_empty_histories_and_partial_groups(kind: str) -> None:
    """Requests with no history, and with fewer events than a merged group or the recent
    window, train without NaN (a query with no key attends to nothing)."""
    model = small(kind).train()
    events = random_events(30, seed=6)
    batch = one_user_batch(events, [0, 1, 2, 5, 29], [[1], [2], [3], [4], [5]], 1_800_000_000)
    out = forward_targets(model, batch).logits
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(g).all(), name


def test_transact2_search_picks_the_nearest_allowed_events() -> None:
    torch.manual_seed(7)
    cand, ev = torch.randn(5, 8), torch.randn(40, 8)
    allowed = torch.rand(5, 40) > 0.3
    allowed[4] = False  # a candidate with nothing to search
    allowed[3] = False
    allowed[3, :2] = True  # fewer than k
    idx, ok = TransActV2.nearest(cand, ev, allowed, 6)
    for c in range(5):
        s = (ev @ cand[c]).masked_fill(~allowed[c], float("-inf"))
        want = [int(i) for i in s.argsort(descending=True) if allowed[c, i]][:6]
        assert idx[c][ok[c]].tolist() == want


def test_transact2_trains_with_its_next_action_loss() -> None:
    """The next-action loss is there while training (finite, gradients reach the item
    table), absent in evaluation; its positive is the next engaged item."""
    model = small("transact2").train()
    events = random_events(60, seed=8)
    batch = one_user_batch(events, [10, 30, 59], [[1], [2], [3]], 1_800_000_000)
    out = forward_targets(model, batch)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    out.aux_loss.backward()
    assert model.items.table_a.weight.grad is not None
    with torch.no_grad():
        assert forward_targets(model.eval(), batch).aux_loss is None


def test_dv365_training_reads_what_serving_would_cache() -> None:
    """A DV365 request in training reads the embedding of the last N events before its
    summary point and the events since: equal to serving the cached tokens through the
    scorer's one ranker path (ScoringRequest with tokens and recent events)."""
    model = small("dv365")
    dv = model.dv365
    assert dv is not None
    events = random_events(50, seed=9)
    now = int(events.ts[-1]) + 3600
    positions, summary_pos, cands = [0, 7, 30, 49], [0, 7, 20, 3], [[1, 2], [3], [4], [5, 6]]
    with torch.no_grad():
        train = forward_targets(
            model, one_user_batch(events, positions, cands, now, summary_pos)
        ).logits
        served = []
        for p, sp, c in zip(positions, summary_pos, cands, strict=True):
            lo = max(0, sp - dv.events)
            e = model.encoder(events, previous_times(events.ts, None))[lo:sp]
            x = torch.cat([e.new_zeros(dv.events - len(e), e.shape[1]), e]).unsqueeze(0)
            present = (torch.arange(dv.events) >= dv.events - len(e)).unsqueeze(0)
            tokens = dv(x, present)[0]
            request = ScoringRequest(
                torch.tensor(c),
                tokens,  # no events: K zero tokens (what a cold-start user is served)
                n_events=p,
                hours_since_last=(now - int(events.ts[p - 1])) / 3600 if p > 0 else 0.0,
                recent=events.slice(sp, p),
                recent_prev_ts=int(events.ts[sp - 1]) if sp > 0 else None,
            )
            served.append(model.score_request(request))
    torch.testing.assert_close(train, torch.cat(served), rtol=1e-5, atol=1e-5)
