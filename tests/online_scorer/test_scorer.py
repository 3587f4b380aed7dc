"""OnlineScorer: equals the model, m together equals each alone, cold start and stale users,
refusal of another model's tokens, bad requests, concurrency while the pin moves, the CLI."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from online_scorer import InvalidRequestError, ModelVersionError, OnlineScorer
from summarizer.model import artifacts
from summarizer.model.vista_model import VistaModel
from summarizer.store import SummaryStatus, SummaryStore
from tests.online_scorer.helpers import (
    RIDGE_SPEC,
    SPEC,
    STATE_SPEC,
    USERS,
    Clock,
    expected_scores,
    randomize_ridge,
    stored_summaries,
)


@pytest.fixture(params=[SPEC, STATE_SPEC, RIDGE_SPEC], ids=["vista", "vista-state", "vista-ridge"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    torch.manual_seed(0)
    model = VistaModel(request.param).eval()
    randomize_ridge(model)
    version = artifacts.save(model, tmp_path / "model")
    model, _ = artifacts.load(tmp_path / "model")
    clock = Clock()
    store = SummaryStore(str(tmp_path / "db"), max_age_s=86400, refresh_interval_s=0, clock=clock)
    recs = stored_summaries(model, version, USERS, seed=0)
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


def test_score_equals_the_model_and_each_candidate_alone(world: dict[str, Any]) -> None:
    scorer, items = world["scorer"], [3, 17, 17, 250, 9999, 0]
    result = scorer.score(5, items)
    assert result.status is SummaryStatus.PRESENT and not result.cold_start
    assert result.model_version == world["version"]
    assert result.table_version == world["store"].serving_version()
    np.testing.assert_allclose(
        result.scores, expected_scores(world, world["records"][5], items), atol=1e-6
    )
    alone = scorer.score_per_candidate(5, items)
    np.testing.assert_allclose(result.scores, alone.scores, atol=1e-6)
    assert np.asarray(result).shape == (len(items),)
    assert result.scores[1] == result.scores[2]  # same item, same score


# What "m candidates together score as each alone" means: each candidate's score depends on
# its own request's memory only, equal to float32 rounding -- not bit for bit, since the
# batched matmuls may sum in another order (measured: up to ~1e-7 on these probabilities).
ALONE_ATOL = 1e-6


def test_many_candidates_in_any_order_score_as_each_alone(world: dict[str, Any]) -> None:
    scorer = world["scorer"]
    scorer.max_candidates = 512
    items = np.random.default_rng(0).integers(0, 10**6, 512)
    together = scorer.score(8, items).scores
    perm = np.random.default_rng(1).permutation(512)
    shuffled = scorer.score(8, items[perm]).scores
    alone = scorer.score_per_candidate(8, items).scores
    np.testing.assert_allclose(together, alone, rtol=0, atol=ALONE_ATOL)
    np.testing.assert_allclose(shuffled, together[perm], rtol=0, atol=ALONE_ATOL)


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
    np.testing.assert_allclose(cold.scores, expected_scores(world, None, [1, 2, 3]), atol=1e-6)
    summary = scorer.get_summary(424242)
    assert summary.status is SummaryStatus.NOT_FOUND and summary.tokens is None
    world["clock"].t += 2 * 86400  # past max_age
    stale = scorer.score(2, [1, 2, 3])
    assert stale.stale and not stale.cold_start
    np.testing.assert_allclose(
        stale.scores, expected_scores(world, world["records"][2], [1, 2, 3]), atol=1e-6
    )
    got = scorer.get_summary(2)
    assert got.status is SummaryStatus.STALE and got.n_events == world["records"][2].n_events
    assert got.tokens.shape == (SPEC.num_seeds, SPEC.d_model)


def test_tokens_of_another_model_are_refused(world: dict[str, Any]) -> None:
    store, model = world["store"], world["model"]
    other = stored_summaries(model, "f" * 16, [77], seed=1)
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
        (1, [[1], [1, 2]], None, "flat"),  # ragged
        (1, [2**63], None, "at most 2\\^63-1"),  # uint64 would wrap to a negative int64
        (1, [1, 2**64], None, "integers"),
        (1, [1, 2], "ab", "features"),
        (1, [1, 2], [["a"], ["b"]], "features"),
        (1, [1, 2], [[0.5], [1.0, 2.0]], "features"),  # ragged
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
    store.publish(stored_summaries(model, version, [1], seed=0), promote=True)
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
    new = {r.user_id: r for r in stored_summaries(model, version, USERS, seed=9)}
    items = [1, 2, 3, 4]
    want = {u: expected_scores(world, old[u], items) for u in USERS}
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
    want_new = {u: expected_scores(world, new[u], items) for u in USERS}
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
    assert bad.returncode == 2 and "negative" in bad.stderr
    wraps = subprocess.run([*cmd, "5", str(2**63)], capture_output=True, text=True)
    assert wraps.returncode == 2 and "2^63-1" in wraps.stderr, wraps
