"""OnlineScorer with a memory bank (GSU): equals the model, batches, users without a bank, and
a bank of another model is not used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from online_scorer import OnlineScorer
from summarizer.model import artifacts
from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.store import SummaryStore
from tests.online_scorer.helpers import SPEC, T0, USERS, Clock, expected_scores, stored_summaries


# -- with a memory bank (GSU) -------------------------------------------------------------------
@pytest.fixture
def gsu_world(tmp_path: Path) -> dict[str, Any]:
    """A VISTA + GSU model; summaries for USERS, TWIN-V2 banks (clusters of the same events
    as the model encodes them) for all of them but user 3."""

    from summarizer.config import ClusterParams
    from summarizer.memory.clustering import cluster_history, engagement_levels
    from summarizer.store import MemoryBankRecord, memory_bank_schema

    torch.manual_seed(0)
    model = VistaModel(SPEC.replace(gsu_k=4, gsu_gate=0.0)).eval()
    torch.nn.init.normal_(model.ranker.gsu_gate)  # as if trained: a gate that is open
    version = artifacts.save(model, tmp_path / "model")
    model, _ = artifacts.load(tmp_path / "model")
    clock = Clock()
    store = SummaryStore(str(tmp_path / "db"), max_age_s=86400, refresh_interval_s=0, clock=clock)
    recs = stored_summaries(model, version, USERS, seed=0)
    store.publish(recs, promote=True)
    banks = []
    for u in USERS:
        if u == 3:
            continue
        rng = np.random.default_rng([9, u])
        n = 40 + 20 * u
        ev = EventBatch.from_numpy(
            rng.integers(0, 500, n),
            np.sort(rng.integers(1_700_000_000, int(T0.timestamp()), n)),
            rng.integers(0, 4, n),
            None,
        )
        emb = model.bank_embeddings(ev).numpy()
        bank = cluster_history(
            emb,
            ev.item_id.numpy(),
            ev.action.numpy(),
            engagement_levels(ev.action.numpy()),
            ClusterParams(max_cluster_size=8, max_clusters=64),
        )
        banks.append(MemoryBankRecord.from_bank(bank, u, version, T0))
    store.publish(banks, schema=memory_bank_schema(64, SPEC.d_model, version))
    scorer = OnlineScorer(
        store, [str(tmp_path / "model")], max_candidates=64, clock=clock, gsu_backend="torch"
    )
    return {
        "tmp": tmp_path,
        "model": model,
        "version": version,
        "store": store,
        "clock": clock,
        "scorer": scorer,
        "records": {r.user_id: r for r in recs},
        "banks": {b.user_id: b for b in banks},
    }


def test_scorer_with_memory_equals_the_model_and_each_candidate_alone(
    gsu_world: dict[str, Any],
) -> None:
    w, items = gsu_world, [3, 17, 17, 250, 9999, 0, 42, 43]
    rec, bank = w["records"][8], w["banks"][8]
    assert bank.sizes.max() > 1  # real clusters: the log(size) bias is exercised
    result = w["scorer"].score(8, items)
    assert result.memory_tokens == len(bank.sizes)
    tokens = torch.from_numpy(rec.tokens.astype(np.float32))
    hours = (w["clock"]() - rec.last_ts) / 3600.0
    request = ScoringRequest(
        torch.tensor(items),
        tokens,
        rec.n_events,
        hours,
        bank=(torch.from_numpy(bank.tokens.astype(np.float32)), torch.from_numpy(bank.sizes)),
    )
    expect = w["model"].score_request(request, gsu_backend="torch")
    np.testing.assert_allclose(result.scores, torch.sigmoid(expect).numpy(), atol=1e-6)
    alone = w["scorer"].score_per_candidate(8, items)
    np.testing.assert_allclose(result.scores, alone.scores, atol=1e-6)
    assert alone.memory_tokens == result.memory_tokens
    # Without the bank the scores are the summary's alone, and they differ.
    summary_only = w["model"].score_tokens(tokens, torch.tensor(items), None, rec.n_events, hours)
    assert not np.allclose(result.scores, torch.sigmoid(summary_only).numpy(), atol=1e-4)
    off = OnlineScorer(w["store"], [str(w["tmp"] / "model")], clock=w["clock"], memory=False).score(
        8, items
    )
    assert off.memory_tokens == 0
    np.testing.assert_allclose(off.scores, torch.sigmoid(summary_only).numpy(), atol=1e-6)


def test_scorer_with_memory_batches_and_handles_users_without_a_bank(
    gsu_world: dict[str, Any],
) -> None:
    scorer = gsu_world["scorer"]
    requests = [(1, [4, 5, 6]), (3, [4, 8]), (999, [4]), (8, [7, 7, 1, 2]), (1, [9])]
    batch = scorer.score_batch(requests)
    for req, got in zip(requests, batch, strict=True):
        one = scorer.score(*req)
        assert got.memory_tokens == one.memory_tokens
        np.testing.assert_allclose(got.scores, one.scores, atol=1e-6)
    by_user = {r.user_id: r for r in batch}
    assert by_user[3].memory_tokens == 0 and by_user[999].memory_tokens == 0  # no bank
    assert by_user[8].memory_tokens == len(gsu_world["banks"][8].sizes)


def test_a_memory_bank_of_another_model_is_not_used(gsu_world: dict[str, Any]) -> None:
    """Right after a retrain the banks are still the old model's: the user is scored from
    the summary alone (never with tokens of two models), and the result says so."""
    from summarizer.store import MemoryBankRecord, memory_bank_schema

    w = gsu_world
    other = MemoryBankRecord(
        5, "0" * 64, np.ones((3, SPEC.d_model), np.float16), np.array([1, 2, 3]), T0
    )
    w["store"].publish([other], schema=memory_bank_schema(64, SPEC.d_model, "0" * 64))
    got = w["scorer"].score(5, [1, 2])
    assert got.memory_skipped and got.memory_tokens == 0
    np.testing.assert_allclose(got.scores, expected_scores(w, w["records"][5], [1, 2]), atol=1e-6)
    ok = w["scorer"].score(1, [1, 2])  # other users keep their banks
    assert ok.memory_tokens > 0 and not ok.memory_skipped


def test_a_scorer_from_the_config_uses_the_given_clock_for_recency(
    gsu_world: dict[str, Any],
) -> None:
    """from_config used to hand the clock to the store only: the scorer's recency feature
    (hours since the last event) then came from the wall clock, not the one given."""
    from summarizer.config import VistaConfig

    w = gsu_world
    cfg = VistaConfig.model_validate(
        {"store": {"uri": str(w["store"].uri)}, "model": {"model_dir": str(w["tmp"] / "model")}}
    )
    scorer = OnlineScorer.from_config(cfg, clock=w["clock"], gsu_backend="torch")
    assert scorer.clock is w["clock"] and scorer.store.clock is w["clock"]
    items = [3, 17, 250, 9999, 0, 42]
    np.testing.assert_allclose(
        scorer.score(8, items).scores, w["scorer"].score(8, items).scores, atol=1e-6
    )


def test_add_model_after_serving_a_large_bank_through_the_int8_search(
    gsu_world: dict[str, Any],
) -> None:
    """``add_model`` (the next model, held before the serving tag moves) warms the GSU's search
    up; after a request over a bank large enough for the int8 search it raised "Inplace
    update to inference tensor outside InferenceMode" (the search's reused buffers had been
    made in the scorer's inference mode). Run in a fresh thread: its buffers are new."""
    import threading

    from kernels import topk_int8
    from summarizer.store import MemoryBankRecord, memory_bank_schema

    if not topk_int8.available():
        pytest.skip("numba not installed")
    w = gsu_world
    n = 2 * topk_int8.CHUNK * SPEC.replace(gsu_k=4).gsu_k + 5  # the int8 search's smallest bank
    rng = np.random.default_rng(4)
    big = MemoryBankRecord(
        1,
        w["version"],
        rng.standard_normal((n, SPEC.d_model)).astype(np.float16),
        np.ones(n, np.int64),
        T0,
    )
    w["store"].publish([big], schema=memory_bank_schema(n, SPEC.d_model, w["version"]))
    torch.manual_seed(1)
    nxt = VistaModel(SPEC.replace(gsu_k=4, gsu_gate=0.0)).eval()
    nxt_version = artifacts.save(nxt, w["tmp"] / "next")
    scorer = OnlineScorer(
        w["store"], [str(w["tmp"] / "model")], max_candidates=64, clock=w["clock"],
        gsu_backend="int8",
    )  # fmt: skip
    out: dict[str, Any] = {}

    def serve_then_add() -> None:
        try:
            out["first"] = scorer.score(1, [1, 2, 3])
            out["added"] = scorer.add_model(str(w["tmp"] / "next"))
            out["again"] = scorer.score(1, [1, 2, 3])
        except BaseException as exc:  # noqa: BLE001  reported by the assert below
            out["error"] = exc

    t = threading.Thread(target=serve_then_add)
    t.start()
    t.join()
    assert "error" not in out, out.get("error")
    assert out["first"].memory_tokens == n and out["added"] == nxt_version
    np.testing.assert_array_equal(out["first"].scores, out["again"].scores)
