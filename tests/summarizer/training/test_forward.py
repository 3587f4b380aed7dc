"""The causal training forward: training == serving (recent window, GSU over raw events and
over TWIN-V2 clusters), and m candidates together equal each alone for every model kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from summarizer.config import KINDS, ModelSpec
from summarizer.model.encoder import previous_times
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.training.forward import forward_targets
from tests.helpers import SMALL, one_user_batch, random_events


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
            model, one_user_batch(events, positions, cands, now, summary_pos)
        ).logits
    served = []
    for p, sp, c in zip(positions, summary_pos, cands, strict=True):
        state = summ.fold(summ.empty_state(), events.slice(0, sp))
        # Serving is given every event since the summary: it attends to the last
        # recent_window of them and folds them all into a ridge read-out's moments.
        request = ScoringRequest(
            torch.tensor(c),
            summ.readout(state),
            n_events=p,
            hours_since_last=(now - int(events.ts[p - 1])) / 3600 if p > 0 else 0.0,
            recent=events.slice(sp, p),
            recent_prev_ts=int(events.ts[sp - 1]) if sp > 0 else None,
            moments=None if summ.ridge is None else summ.moments_part(state.kv),
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
        together = forward_targets(m, one_user_batch(events, [30], [items], 1_800_000_000)).logits
        alone = torch.cat(
            [
                forward_targets(m, one_user_batch(events, [30], [[i]], 1_800_000_000)).logits
                for i in items
            ]
        )
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["vista", "sim", "vista-gated", "vista-state"])
def test_gsu_training_path_equals_serving_with_a_raw_event_bank(kind: str) -> None:
    """Training's causal SIM search (each candidate's top-k of the events before the summary)
    scores exactly like serving with those events as the memory bank (clusters of one); also
    next to the state read-out's own read."""

    torch.manual_seed(3)
    gate = 0.0 if kind.endswith("-gated") else None
    state = (
        {"readout": "state", "values": "events", "feature_map": "softmax", "num_seeds": 16}
        if kind.endswith("-state")
        else {}
    )
    kind = kind.removesuffix("-gated").removesuffix("-state")
    model = VistaModel(SMALL.replace(kind=kind, gsu_k=5, gsu_gate=gate, **state)).eval()
    if model.ranker.gsu_gate is not None:  # open the gate (it starts closed here)
        torch.nn.init.normal_(model.ranker.gsu_gate)
    events = random_events(60, seed=4)
    now = int(events.ts[-1]) + 3600
    positions = [0, 3, 25, 59]
    summary_pos = [0, 2, 20, 40] if kind == "vista" else None
    cands = [[5, 6], [7, 8, 9], [10], [11, 12, 13, 14]]
    with torch.no_grad():
        train_logits = forward_targets(
            model, one_user_batch(events, positions, cands, now, summary_pos)
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
    batch = one_user_batch(events, positions, cands, now)
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
