"""Atomic publishes: failures leave the table as it was; readers never see a mix of versions."""

from __future__ import annotations

import datetime as dt
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from summarizer.store import (
    SUMMARIES,
    DuplicateUserError,
    StagedFragments,
    SummaryRecord,
    SummaryStore,
    summaries_to_batch,
    write,
)
from tests.helpers import REPO

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
MV = "0123456789abcdef"
K, D = 4, 8
N_USERS = 200


def batch(ids, marker: int) -> pa.RecordBatch:
    """Every row of a publish carries its marker (in n_events and in the tokens)."""
    recs = [
        SummaryRecord(int(u), MV, np.full((K, D), marker % 2048, np.float16), marker, 1, 2, T0)
        for u in ids
    ]
    return summaries_to_batch(recs)


def snapshot(store: SummaryStore) -> tuple[int, pa.Table]:
    ds = store.location.open(SUMMARIES)
    return ds.version, ds.to_table().sort_by("user_id")


@pytest.fixture
def store(tmp_path: Path) -> SummaryStore:
    s = SummaryStore(str(tmp_path / "db"), refresh_interval_s=0)
    s.publish(batch(range(N_USERS), 1), promote=True)
    return s


class Boom(RuntimeError):
    pass


def test_failure_inside_staging_leaves_table_unchanged(store: SummaryStore) -> None:
    before = snapshot(store)

    def half_then_fail():
        yield batch(range(0, 100), 2)
        raise Boom("worker died half way")

    with pytest.raises(Boom, match="half way"):
        store.publish(half_then_fail())
    assert snapshot(store) == before
    assert store.publish(batch(range(N_USERS), 2)).rows == N_USERS  # a rerun works


def test_failure_between_staging_and_commit_leaves_table_unchanged(
    store: SummaryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(store)
    staged = store.stage_fragments(SUMMARIES, batch(range(50, 250), 3))
    assert staged.num_rows == 200  # files are written ...
    assert snapshot(store) == before  # ... and invisible

    def crash(*args, **kwargs):
        raise Boom("driver lost before the commit")

    monkeypatch.setattr(lance.LanceDataset, "commit", crash)
    with pytest.raises(Boom):
        store.commit_upsert(SUMMARIES, [staged])
    monkeypatch.undo()
    assert snapshot(store) == before
    # Rerunning the whole publish is idempotent: one row per user, the new values.
    store.publish(batch(range(50, 250), 3))
    store.publish(batch(range(50, 250), 3))
    _, rows = snapshot(store)
    assert rows.num_rows == 250
    assert len(set(rows["user_id"].to_pylist())) == 250
    assert rows.filter(pa.compute.field("user_id") >= 50)["n_events"].unique().to_pylist() == [3]


def test_distributed_stage_then_one_commit(store: SummaryStore) -> None:
    version0, _ = snapshot(store)
    # Two "workers" with their own (unpickled) store, results shipped as JSON.
    worker = pickle.loads(pickle.dumps(store))
    parts = [
        worker.stage_fragments(SUMMARIES, batch(range(0, 120), 4)).to_json(),
        worker.stage_fragments(SUMMARIES, batch(range(120, 260), 4)).to_json(),
    ]
    staged = [StagedFragments.from_json(p) for p in parts]
    result = store.commit_upsert(SUMMARIES, staged)
    assert (result.rows, result.inserted, result.replaced) == (260, 60, 200)
    # One data commit (+1 for folding the new rows into the index).
    assert result.version == version0 + 2
    _, rows = snapshot(store)
    assert rows.num_rows == 260 and rows["n_events"].unique().to_pylist() == [4]


def test_workers_with_overlapping_users_are_refused(store: SummaryStore) -> None:
    before = snapshot(store)
    staged = [
        store.stage_fragments(SUMMARIES, batch(range(0, 10), 5)),
        store.stage_fragments(SUMMARIES, batch(range(5, 15), 5)),
    ]
    with pytest.raises(DuplicateUserError, match="5 user"):
        store.commit_upsert(SUMMARIES, staged)
    assert snapshot(store) == before


def _assert_one_version(batch_, versions: dict[int, int]) -> None:
    markers = {r.n_events for r in batch_}
    token_markers = {int(r.tokens[0, 0]) for r in batch_}
    assert len(markers) == 1, f"mixed versions in one read: {markers}"
    assert token_markers == {m % 2048 for m in markers}
    if batch_.version in versions:
        assert versions[batch_.version] == markers.pop()


@pytest.mark.parametrize("tag", ["serving", None])
def test_readers_never_mix_versions_during_publishes(store: SummaryStore, tag: str | None) -> None:
    versions: dict[int, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()

    def publisher() -> None:
        try:
            for marker in range(2, 9):
                result = store.publish(batch(range(N_USERS), marker), promote=tag is not None)
                versions[result.version] = marker
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        r = store.open_reader(tag=tag, refresh_interval_s=0)
        try:
            while not stop.is_set():
                b = r.get(rng.choice(N_USERS, 40, replace=False))
                assert all(x.found for x in b)
                _assert_one_version(b, versions)
                seen.add(b[0].n_events)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    threads.append(threading.Thread(target=publisher))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(seen) >= 2  # the readers really did see the table change under them


def test_reader_during_publishes_from_another_process(store: SummaryStore) -> None:
    script = textwrap.dedent(
        f"""
        import datetime as dt, numpy as np
        from summarizer.store import SummaryRecord, SummaryStore, summaries_to_batch
        T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
        store = SummaryStore({store.uri!r})
        for marker in range(10, 16):
            recs = [SummaryRecord(u, {MV!r}, np.full(({K}, {D}), marker, np.float16), marker,
                                  1, 2, T0) for u in range({N_USERS})]
            store.publish(summaries_to_batch(recs), promote=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = store.open_reader(refresh_interval_s=0)
    rng = np.random.default_rng(0)
    seen = set()
    while proc.poll() is None:
        b = reader.get(rng.choice(N_USERS, 40, replace=False))
        _assert_one_version(b, {})
        seen.add(b[0].n_events)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    b = reader.get(list(range(N_USERS)))
    _assert_one_version(b, {})
    assert b[0].n_events == 15
    assert len(seen) >= 2


def test_commit_lock_is_per_table() -> None:
    assert write._commit_lock("a") is write._commit_lock("a")
    assert write._commit_lock("a") is not write._commit_lock("b")
