"""The batch fold worker (batch_jobs.fold.PartitionFolder) without Spark: sorted Arrow
batches in, staged fragments out, against the summarizer's own fold one user at a time."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from batch_jobs.fold import PartitionFolder, PartitionStats
from batch_jobs.worker import WorkerParams
from summarizer.config import ModelSpec
from summarizer.model import artifacts
from summarizer.model.encoder import EventBatch
from summarizer.model.vista_model import VistaModel
from summarizer.store import (
    STATE,
    SUMMARIES,
    StagedFragments,
    StateColumns,
    StateRecord,
    SummaryStore,
)
from summarizer.store.schema import kv_dtype_of, state_schema

pytestmark = pytest.mark.integration

SPEC = {"num_seeds": 8, "d_model": 16, "num_heads": 2, "feature_dim": 8, "num_layers": 2}
DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)


def _events(seed: int, lengths: dict[int, int], t0: int) -> pa.Table:
    """Sorted events (user, ts) of users with the given counts."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.array(list(lengths), dtype=np.int64), list(lengths.values()))
    n = len(users)
    ts = t0 + rng.integers(0, 80_000, n)
    order = np.lexsort((ts, users))
    return pa.table(
        {
            "user_id": users[order],
            "ts": ts[order],
            "item_id": rng.integers(0, 500, n)[order],
            "action": rng.integers(0, 3, n)[order],
            "weight": pa.array(rng.random(n).astype(np.float32)[order]),
        }
    )


def _user_events(table: pa.Table, uid: int) -> EventBatch:
    t = table.filter(pa.compute.equal(table["user_id"], uid))
    return EventBatch.from_numpy(
        *(t[c].to_numpy().copy() for c in ("item_id", "ts", "action", "weight"))
    )


@pytest.fixture(scope="module", params=["attention", "ridge"])
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> tuple[str, str, Any]:
    """The default state, and one that also carries a ridge read-out's second moments (its
    tables drawn at random so that they matter)."""
    torch.manual_seed(0)
    ridge = 4 if request.param == "ridge" else 0
    model = VistaModel(ModelSpec(**SPEC, chunk_size=16, ridge_dim=ridge))
    if model.ridge is not None:
        for table in (model.ridge.vec_a, model.ridge.vec_b, model.ridge.bias):
            torch.nn.init.normal_(table.weight, std=0.3)
        model.ridge.set_mean_response(0.4)
    path = tmp_path_factory.mktemp("fold-model") / "model"
    artifacts.save(model, path)
    loaded, version = artifacts.load(path)
    return str(path), version, loaded.require_summarizer()


def _fold_day(
    model: tuple[str, str, Any],
    store: SummaryStore,
    table: pa.Table,
    day: dt.date,
    *,
    batch_rows: int,
    flush: int,
) -> PartitionStats:
    """One partition through the worker (small batches: users span several), committed."""
    path, version, _ = model
    base = store.latest_version(STATE)
    params = WorkerParams(
        model_dir=path,
        model_version=version,
        store_uri=store.uri,
        storage_options={},
        run_time=dt.datetime.combine(day, dt.time(23, 59), dt.UTC),
        through_day=day,
        base_version=base,
        incremental=base is not None,
        users_per_flush=flush,
    )
    folder = PartitionFolder(params)
    batches = table.to_batches(max_chunksize=batch_rows)
    empty = table.slice(0, 0).to_batches() or [pa.RecordBatch.from_pylist([], table.schema)]
    batches = empty + batches[:1] + empty + batches[1:]  # empty batches change nothing
    out = pa.Table.from_batches(list(folder.run(batches)))
    staged: dict[str, list[StagedFragments]] = {STATE: [], SUMMARIES: []}
    for kind, payload in zip(out["kind"].to_pylist(), out["payload"].to_pylist(), strict=True):
        if kind != "stats":
            staged[kind].append(StagedFragments.from_json(payload))
    for table_name in (STATE, SUMMARIES):
        store.commit_upsert(table_name, staged[table_name])
    return folder.stats


def _check(
    model: tuple[str, str, Any], store: SummaryStore, days: list[pa.Table], users: list[int]
) -> None:
    """Each user's stored state and tokens equal folding its events one user at a time."""
    _, _, summ = model
    states = store.get_states(users)
    got = store.get(users)
    assert sorted(states) == sorted(users)
    for uid, res in zip(users, got, strict=True):
        want = summ.empty_state()
        for t in days:
            want = summ.fold(want, _user_events(t, uid))
        have = states[uid]
        assert (have.n_events, have.first_ts, have.last_ts) == (
            want.n_events,
            want.first_ts,
            want.last_ts,
        )
        np.testing.assert_allclose(
            have.kv, want.kv.numpy(), rtol=0, atol=1e-6 * float(want.kv.abs().max())
        )
        with torch.no_grad():
            tokens = summ.readout(want).numpy()
        np.testing.assert_allclose(res.tokens.astype(np.float32), tokens, rtol=2e-3, atol=2e-3)
        if summ.ridge is None:
            assert res.moments is None
        else:  # the serving row carries the moments (float32) for requests to fold into
            m = summ.moments_part(want.kv).reshape(-1).numpy()
            np.testing.assert_allclose(res.moments, m, rtol=1e-5, atol=1e-5 * np.abs(m).max())


@pytest.mark.parametrize("stored", ["float32", "float64"])
def test_partition_fold_equals_one_user_at_a_time(
    model_dir: tuple[str, str, Any], tmp_path: Path, stored: str
) -> None:
    """Day 1 from empty states, day 2 into them (old users, new users, one user with more
    events than a batch), in batches of 7 and 5 rows with a flush every 3 users, so users
    span batches and a flush gathers users from several batches' state blocks; a table written
    in float64 (older stores) stays float64. A rerun of day 2 folds nothing twice."""
    _, version, summ = model_dir
    store = SummaryStore(tmp_path / "store")
    day1 = _events(1, {1: 4, 2: 1, 3: 23, 5: 2, 8: 9, 9: 1}, 1_700_000_000)
    day2 = _events(2, {2: 3, 3: 1, 4: 30, 5: 1, 7: 2, 9: 12, 11: 1}, 1_700_100_000)
    if stored == "float64":  # day 1 through the record path, into a float64 table
        recs = []
        for uid in [1, 2, 3, 5, 8, 9]:
            st = summ.fold(summ.empty_state(), _user_events(day1, uid))
            at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
            recs.append(StateRecord.from_summary_state(uid, version, st, at, DAY1))
        store.publish(recs, schema=state_schema(tuple(summ.state_shape), version, "float64"))
    else:
        first = _fold_day(model_dir, store, day1, DAY1, batch_rows=7, flush=3)
        assert (first.users, first.new_users, first.events) == (6, 6, day1.num_rows)
        assert first.max_events_held == 7
    second = _fold_day(model_dir, store, day2, DAY2, batch_rows=5, flush=3)
    assert (second.users, second.new_users, second.users_skipped) == (7, 3, 0)
    assert kv_dtype_of(store.schema(STATE)) == stored
    every = [1, 2, 3, 4, 5, 7, 8, 9, 11]
    if stored == "float32":
        _check(model_dir, store, [day1, day2], every)
    else:
        _check(model_dir, store, [day1, day2], [2, 3, 4, 5, 7, 9, 11])
    before = {u: s.kv.copy() for u, s in store.get_states(every).items()}
    tokens = {r.user_id: r.tokens for r in store.get(every) if r.found}
    again = _fold_day(model_dir, store, day2, DAY2, batch_rows=4, flush=2)
    assert (again.users, again.users_skipped) == (7, 7)
    after = store.get_states(every)
    for uid in every:
        np.testing.assert_array_equal(after[uid].kv, before[uid])
    for r in store.get(every):  # the rerun's tokens come from the same stored states
        if r.found:
            np.testing.assert_array_equal(r.tokens, tokens[r.user_id])


def test_stored_rows_in_any_order_and_new_users_between(
    model_dir: tuple[str, str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored users with new users between them in one batch, their rows read back in
    reverse order: each state lands in its own user's slot; states are float64 while
    folded; a stored state of another model is refused before anything is staged."""
    store = SummaryStore(tmp_path / "store")
    day1 = _events(3, {1: 3, 3: 2, 5: 4}, 1_700_000_000)
    day2 = _events(4, {1: 1, 2: 2, 3: 1, 4: 1, 5: 2}, 1_700_100_000)
    _fold_day(model_dir, store, day1, DAY1, batch_rows=100, flush=100)
    read = SummaryStore.get_state_columns

    def reversed_rows(self: SummaryStore, ids: Any, **kw: Any) -> StateColumns | None:
        cols = read(self, ids, **kw)
        assert cols is not None
        flip = {f.name: getattr(cols, f.name)[::-1] for f in dataclasses.fields(StateColumns)}
        return StateColumns(**flip)

    monkeypatch.setattr(SummaryStore, "get_state_columns", reversed_rows)
    stats = _fold_day(model_dir, store, day2, DAY2, batch_rows=100, flush=100)
    assert (stats.users, stats.new_users) == (5, 2)
    _check(model_dir, store, [day1, day2], [1, 2, 3, 4, 5])

    path, version, summ = model_dir
    params = WorkerParams(
        model_dir=path,
        model_version=version,
        store_uri=store.uri,
        storage_options={},
        run_time=dt.datetime(2026, 11, 3, tzinfo=dt.UTC),
        through_day=dt.date(2026, 11, 3),
        base_version=store.latest_version(STATE),
        incremental=True,
        users_per_flush=2048,
    )
    folder = PartitionFolder(params)
    folder._load_base([1, 2, 3])
    started = folder._start([1, 2, 3])
    assert {u.state.kv.dtype for u in started} == {torch.float64}
    assert [u.state.n_events for u in started] == [4, 2, 3]

    other = SummaryStore(tmp_path / "other")
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    stale = StateRecord.from_summary_state(3, "f" * 64, summ.empty_state(), at, DAY1)
    other.publish([stale])
    with pytest.raises(RuntimeError, match="stored state was made by model ffffffffffff"):
        _fold_day(model_dir, other, day2, DAY2, batch_rows=100, flush=100)
    assert other.latest_version(SUMMARIES) is None
