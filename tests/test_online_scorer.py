"""OnlineScorer on a real LanceDB folder and a real (small, untrained) model."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from online_scorer import InvalidRequestError, ModelVersionError, OnlineScorer
from summarizer.config import ModelSpec
from summarizer.model import artifacts
from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import ScoringRequest, VistaModel
from summarizer.store import SummaryRecord, SummaryStatus, SummaryStore

SPEC = ModelSpec(
    num_seeds=8, d_model=16, num_heads=2, feature_dim=8, num_layers=1, item_buckets=1024
)
T0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
USERS = [1, 2, 3, 5, 8]


class Clock:
    def __init__(self) -> None:
        self.t = (T0 + dt.timedelta(hours=1)).timestamp()

    def __call__(self) -> float:
        return self.t


def _summaries(model: VistaModel, version: str, users: list[int], seed: int) -> list[SummaryRecord]:
    summ = model.require_summarizer()
    out = []
    for u in users:
        rng = np.random.default_rng([seed, u])
        n = 20 + 7 * u
        events = EventBatch.from_numpy(
            rng.integers(0, 500, n),
            np.sort(rng.integers(1_700_000_000, int(T0.timestamp()), n)),
            rng.integers(0, 4, n),
            None,
        )
        state, tokens = summ.summarize(events)
        out.append(
            SummaryRecord(
                u,
                version,
                tokens.numpy().astype(np.float16),
                state.n_events,
                state.first_ts,
                state.last_ts,
                T0,
            )
        )
    return out


# The state read-out (tokens = the state's rows, read by each candidate): 1 layer x 8 features.
STATE_SPEC = SPEC.replace(values="events", readout="state")


@pytest.fixture(params=[SPEC, STATE_SPEC], ids=["vista", "vista-state"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    torch.manual_seed(0)
    model = VistaModel(request.param).eval()
    version = artifacts.save(model, tmp_path / "model")
    model, _ = artifacts.load(tmp_path / "model")
    clock = Clock()
    store = SummaryStore(str(tmp_path / "db"), max_age_s=86400, refresh_interval_s=0, clock=clock)
    recs = _summaries(model, version, USERS, seed=0)
    store.publish(recs, promote=True)
    scorer = OnlineScorer(store, [str(tmp_path / "model")], max_candidates=64, clock=clock)
    return {
        "tmp": tmp_path,
        "model": model,
        "version": version,
        "store": store,
        "clock": clock,
        "scorer": scorer,
        "records": {r.user_id: r for r in recs},
    }


def _expected(w: dict[str, Any], rec: SummaryRecord | None, items: list[int]) -> np.ndarray:
    """The model's own scoring of these tokens (float16 as stored)."""
    tokens = None if rec is None else torch.from_numpy(rec.tokens.astype(np.float32))
    n = 0 if rec is None else rec.n_events
    hours = 0.0 if rec is None else (w["clock"]() - rec.last_ts) / 3600.0
    logits = w["model"].score_tokens(tokens, torch.tensor(items), None, n, hours)
    return torch.sigmoid(logits).numpy()


def test_score_equals_the_model_and_each_candidate_alone(world: dict[str, Any]) -> None:
    scorer, items = world["scorer"], [3, 17, 17, 250, 9999, 0]
    result = scorer.score(5, items)
    assert result.status is SummaryStatus.PRESENT and not result.cold_start
    assert result.model_version == world["version"]
    assert result.table_version == world["store"].serving_version()
    np.testing.assert_allclose(
        result.scores, _expected(world, world["records"][5], items), atol=1e-6
    )
    alone = scorer.score_per_candidate(5, items)
    np.testing.assert_allclose(result.scores, alone.scores, atol=1e-6)
    assert np.asarray(result).shape == (len(items),)
    assert result.scores[1] == result.scores[2]  # same item, same score


def test_score_batch_equals_one_request_at_a_time(world: dict[str, Any]) -> None:
    scorer = world["scorer"]
    requests = [(1, [4, 5, 6]), (999, [4]), (8, [7, 7, 1, 2]), (1, [9])]
    batch = scorer.score_batch(requests)
    for req, got in zip(requests, batch, strict=True):
        one = scorer.score(*req)
        assert got.user_id == req[0] and got.status == one.status
        np.testing.assert_allclose(got.scores, one.scores, atol=1e-6)


def test_cold_start_and_stale_users_are_scored_and_flagged(world: dict[str, Any]) -> None:
    scorer = world["scorer"]
    cold = scorer.score(424242, [1, 2, 3])
    assert cold.cold_start and cold.status is SummaryStatus.NOT_FOUND
    np.testing.assert_allclose(cold.scores, _expected(world, None, [1, 2, 3]), atol=1e-6)
    summary = scorer.get_summary(424242)
    assert summary.status is SummaryStatus.NOT_FOUND and summary.tokens is None
    world["clock"].t += 2 * 86400  # past max_age
    stale = scorer.score(2, [1, 2, 3])
    assert stale.stale and not stale.cold_start
    np.testing.assert_allclose(
        stale.scores, _expected(world, world["records"][2], [1, 2, 3]), atol=1e-6
    )
    got = scorer.get_summary(2)
    assert got.status is SummaryStatus.STALE and got.n_events == world["records"][2].n_events
    assert got.tokens.shape == (SPEC.num_seeds, SPEC.d_model)


def test_tokens_of_another_model_are_refused(world: dict[str, Any]) -> None:
    store, model = world["store"], world["model"]
    other = _summaries(model, "f" * 16, [77], seed=1)
    store.publish(other, promote=True)
    with pytest.raises(ModelVersionError, match="add_model"):
        world["scorer"].score(77, [1, 2])
    with pytest.raises(ModelVersionError):
        world["scorer"].score_batch([(1, [1]), (77, [2])])
    assert world["scorer"].score(1, [1, 2]).status is SummaryStatus.PRESENT


@pytest.mark.parametrize(
    ("user", "items", "features", "message"),
    [
        ("1 OR 1=1", [1], None, "user id"),
        (-1, [1], None, "negative"),
        (1.5, [1], None, "user id"),
        (True, [1], None, "user id"),
        (1, [], None, "empty"),
        (1, list(range(65)), None, "at most 64"),
        (1, ["a", "b"], None, "integers"),
        (1, [1.5], None, "integers"),
        (1, [3, -4], None, "non-negative"),
        (1, [[1, 2]], None, "flat"),
        (1, [1, 2], np.zeros((3, 0)), "shape"),
        (1, [1, 2], np.full((2, 0), np.nan), None),
    ],
)
def test_bad_requests_are_rejected_with_their_reason(
    world: dict[str, Any], user: Any, items: Any, features: Any, message: str | None
) -> None:
    if message is None:  # a (2, 0) array is the right shape for a model without features
        assert len(world["scorer"].score(user, items, features)) == 2
        return
    with pytest.raises(InvalidRequestError, match=message):
        world["scorer"].score(user, items, features)


def test_features_are_checked_for_models_that_take_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = SPEC.replace(candidate_features=3)
    model = VistaModel(spec).eval()
    version = artifacts.save(model, tmp_path / "m")
    store = SummaryStore(str(tmp_path / "db"))
    store.publish(_summaries(model, version, [1], seed=0), promote=True)
    scorer = OnlineScorer(store, [str(tmp_path / "m")])
    ok = scorer.score(1, [1, 2], np.ones((2, 3)))
    assert len(ok) == 2 and not np.allclose(ok.scores, scorer.score(1, [1, 2]).scores)
    with pytest.raises(InvalidRequestError, match="NaN"):
        scorer.score(1, [1, 2], np.array([[1, 2, np.nan], [1, 2, 3]]))
    with pytest.raises(InvalidRequestError, match=r"\(2, 3\)"):
        scorer.score(1, [1, 2], np.ones((2, 2)))


@pytest.mark.parametrize("cache_size", [0, 16])
def test_concurrent_scoring_while_the_pin_moves(world: dict[str, Any], cache_size: int) -> None:
    """Threads score while a new version is published and promoted: no errors, and every
    result matches the tokens of the one table version it reports."""
    store, model, version = world["store"], world["model"], world["version"]
    scorer = OnlineScorer(
        store, [str(world["tmp"] / "model")], cache_size=cache_size, clock=world["clock"]
    )
    old_version = store.serving_version()
    old = world["records"]
    new = {r.user_id: r for r in _summaries(model, version, USERS, seed=9)}
    items = [1, 2, 3, 4]
    want = {u: _expected(world, old[u], items) for u in USERS}
    errors: list[BaseException] = []
    seen: list[tuple[int, int, np.ndarray]] = []
    stop = threading.Event()

    def worker() -> None:
        i = 0
        while not stop.is_set() or i < 10:
            u = USERS[i % len(USERS)]
            try:
                r = scorer.score(u, items)
                seen.append((u, r.table_version, r.scores))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return
            i += 1

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    result = store.publish(list(new.values()), promote=True)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    versions = {v for _, v, _ in seen}
    assert versions <= {old_version, result.version}
    want_new = {u: _expected(world, new[u], items) for u in USERS}
    for u, v, scores in seen:
        np.testing.assert_allclose(scores, (want if v == old_version else want_new)[u], atol=1e-6)
    # After the move, every read is from the new version (the cache followed the pin).
    after = scorer.score(3, items)
    assert after.table_version == result.version
    np.testing.assert_allclose(after.scores, want_new[3], atol=1e-6)


def test_score_cli(world: dict[str, Any]) -> None:
    import json
    import subprocess
    import sys

    env_cfg = world["tmp"] / "vista.toml"
    env_cfg.write_text(
        f'[store]\nuri = "{world["tmp"] / "db"}"\nmax_age_s = 0\n'
        f'[model]\nmodel_dir = "{world["tmp"] / "model"}"\n'
    )
    cmd = [sys.executable, "-m", "summarizer.cli", "--config", str(env_cfg), "score"]
    # Scores depend on the hours since the user's last event and the CLI runs on the wall
    # clock: its scores (printed to 6 decimals) must lie between those of an in-process scorer
    # on the wall clock just before and just after it.
    from online_scorer import OnlineScorer

    real = OnlineScorer.open(str(world["tmp"] / "db"), str(world["tmp"] / "model"), max_age_s=0)
    before = real.score(5, [3, 17]).scores
    run = subprocess.run([*cmd, "5", "3", "17", "--json"], capture_output=True, text=True)
    after = real.score(5, [3, 17]).scores
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["status"] == "present" and set(out["scores"]) == {"3", "17"}
    got = np.array([out["scores"]["3"], out["scores"]["17"]])
    lo, hi = np.minimum(before, after), np.maximum(before, after)
    assert ((got >= lo - 1e-6) & (got <= hi + 1e-6)).all(), (got, before, after)
    bad = subprocess.run([*cmd, "-3", "1"], capture_output=True, text=True)
    assert bad.returncode == 1 and "negative" in bad.stderr


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
    recs = _summaries(model, version, USERS, seed=0)
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
    np.testing.assert_allclose(got.scores, _expected(w, w["records"][5], [1, 2]), atol=1e-6)
    ok = w["scorer"].score(1, [1, 2])  # other users keep their banks
    assert ok.memory_tokens > 0 and not ok.memory_skipped
