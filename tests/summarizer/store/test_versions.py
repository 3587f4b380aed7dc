"""Store versions: the serving pin and its refresh, promote, rollback, compaction."""

from __future__ import annotations

import datetime as dt

import pytest

from summarizer.store import (
    SUMMARIES,
    NoServingVersionError,
    StoreUnavailableError,
    SummaryStore,
    VersionNotFoundError,
)
from tests.helpers import FakeClock, records, rows_of

pytestmark = pytest.mark.integration


def test_reader_pins_serving_and_refreshes_on_interval(
    store: SummaryStore, clock: FakeClock
) -> None:
    v1 = store.publish(records(range(5), marker=1), promote=True).version
    reader = store.open_reader()
    store.publish(records(range(5), marker=2))  # published, not promoted
    assert reader.get(1)[0].n_events == 1
    v3 = store.promote()
    assert store.get(1, version=v1)[0].n_events == 1  # any kept version can be read
    assert store.get(1, version=v3).version == v3
    assert reader.get(1)[0].n_events == 1 and reader.version == v1  # interval not yet over
    clock.t += 61
    batch = reader.get(1)
    assert (batch.version, batch.tag, batch[0].n_events) == (v3, "serving", 2)


def test_reader_without_serving_tag(store: SummaryStore) -> None:
    store.publish(records(range(3)))
    with pytest.raises(NoServingVersionError, match="promote"):
        store.open_reader()
    batch = store.get(1)  # the store's own reads fall back to the latest version
    assert batch.tag is None and batch[0].found


def test_rollback_serves_and_restores_the_earlier_version(store: SummaryStore) -> None:
    good = store.publish(records(range(10), marker=1), promote=True).version
    bad = store.publish(records(range(10), marker=666, seed=5), promote=True).version
    reader = store.open_reader(refresh_interval_s=0)
    assert reader.get(3)[0].n_events == 666
    result = store.rollback()
    assert (result.serving_version, result.previous_serving) == (good, bad)
    assert reader.get(3)[0].n_events == 1
    # The latest version holds the good rows too, so the next publish builds on them.
    assert set(rows_of(store)["n_events"].to_pylist()) == {1}
    store.publish(records([3], marker=2))
    assert sorted(rows_of(store)["n_events"].to_pylist()) == [1] * 9 + [2]
    store.rollback(bad, restore_latest=False)
    assert reader.get(3)[0].n_events == 666
    with pytest.raises(VersionNotFoundError):
        store.rollback(999)


def test_compaction_keeps_tagged_version_readable(store: SummaryStore) -> None:
    served = store.publish(records(range(50), marker=1), promote=True).version
    for m in range(2, 6):
        store.publish(records(range(m * 5, m * 5 + 20), marker=m, seed=m))
    latest_rows = rows_of(store).sort_by("user_id")
    results = store.compact(cleanup_older_than=dt.timedelta(0))
    assert results[0].versions_removed > 0
    reader = store.open_reader()
    assert reader.version == served
    assert {r.n_events for r in reader.get(list(range(50)))} == {1}
    assert rows_of(store).sort_by("user_id").equals(latest_rows)
    with pytest.raises(VersionNotFoundError):
        store.location.open(SUMMARIES, version=served + 1)
    ds = store.location.open(SUMMARIES)
    assert len(ds.get_fragments()) == 1


def test_store_get_sees_a_promote_at_once(store: SummaryStore) -> None:
    store.publish(records(range(3), marker=1), promote=True)
    assert store.get(1)[0].n_events == 1
    store.publish(records(range(3), marker=2), promote=True)
    assert store.get(1)[0].n_events == 2
    assert store.get([]).results == ()


def test_reader_keeps_serving_through_a_failed_refresh(
    store: SummaryStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = store.publish(records(range(3), marker=1), promote=True).version
    reader = store.open_reader()

    def unreachable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailableError("bucket unreachable")

    monkeypatch.setattr(reader.location.__class__, "open", unreachable)
    clock.t += 3600
    batch = reader.get(1)
    assert batch.version == version and batch[0].n_events == 1
    assert isinstance(reader.last_refresh_error, StoreUnavailableError)
