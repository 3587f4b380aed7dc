"""Before a commit: staged files are verified (the cluster corruption of a relative store URI
cannot happen), and a second committer to a table is refused while one publishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from summarizer.store import (
    SUMMARIES,
    ConcurrentWriteError,
    SummaryStore,
    summaries_to_batch,
)
from summarizer.store.commit_guard import LOCK_DIR
from summarizer.store.errors import StagedFilesError
from tests.helpers import records, rows_of


def test_a_relative_store_uri_is_made_absolute_where_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = SummaryStore("data/store")
    assert store.uri == str(tmp_path / "data" / "store")


def test_files_staged_elsewhere_are_refused_and_the_store_is_unchanged(tmp_path: Path) -> None:
    """What a relative store.uri did on a Spark cluster: the executors staged fragments under
    their own working folder, the driver committed them into the real table, and the table
    then pointed at files that were not there. Now the commit checks every staged file first
    and commits nothing."""
    store = SummaryStore(str(tmp_path / "db"))
    store.publish(records(range(10), marker=1), promote=True)
    before = store.location.open(SUMMARIES)
    rows_before = rows_of(store).sort_by("user_id")
    elsewhere = SummaryStore(str(tmp_path / "worker-cwd" / "db"))  # an executor's folder
    staged = elsewhere.stage_fragments(SUMMARIES, summaries_to_batch(records(range(5, 15), 2)))
    with pytest.raises(StagedFilesError, match="cannot be read") as err:
        store.commit_upsert(SUMMARIES, [staged])
    assert "store.uri" in str(err.value)
    after = store.location.open(SUMMARIES)
    assert after.version == before.version
    assert rows_of(store).sort_by("user_id").equals(rows_before)
    assert store.get([0, 12]).statuses[1] == "not_found"


def test_a_staged_file_that_changed_after_staging_is_refused(tmp_path: Path) -> None:
    store = SummaryStore(str(tmp_path / "db"))
    store.publish(records(range(4), marker=1))
    staged = store.stage_fragments(SUMMARIES, summaries_to_batch(records(range(4, 8), 2)))
    path = json.loads(staged.fragments[0])["files"][0]["path"]
    data_file = tmp_path / "db" / f"{SUMMARIES}.lance" / "data" / path
    data_file.write_bytes(data_file.read_bytes()[:-100])  # truncated after the worker wrote it
    version = store.location.open(SUMMARIES).version
    with pytest.raises(StagedFilesError):
        store.commit_upsert(SUMMARIES, [staged])
    assert store.location.open(SUMMARIES).version == version


def test_a_second_committer_is_told_another_publish_is_in_progress(tmp_path: Path) -> None:
    store = SummaryStore(str(tmp_path / "db"))
    store.publish(records(range(4), marker=1))
    lock = tmp_path / "db" / LOCK_DIR / f"{SUMMARIES}.lock"
    # A live publisher elsewhere: a process that holds the lock while it runs.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "since": "now"})
        )
        staged = store.stage_fragments(SUMMARIES, summaries_to_batch(records(range(8), 2)))
        with pytest.raises(ConcurrentWriteError, match="another publish is in progress"):
            store.commit_upsert(SUMMARIES, [staged])
        assert rows_of(store).num_rows == 4
    finally:
        holder.kill()
        holder.wait(10)
    # Its process is gone: the lock is stale, broken, and the publish goes through.
    result = store.commit_upsert(SUMMARIES, [staged])
    assert result.rows == 8 and rows_of(store).num_rows == 8
    assert not lock.exists()


def test_the_facade_reads_through_a_pinned_reader(tmp_path: Path) -> None:
    """SummaryStore.get re-reads the serving tag on the refresh interval (a tag read is a
    listing: ~25 ms a call on S3), not on every call; its own writes show at once."""
    from tests.helpers import T0, FakeClock

    clock = FakeClock(T0)
    store = SummaryStore(str(tmp_path / "db"), refresh_interval_s=60, clock=clock)
    v1 = store.publish(records([1], marker=1), promote=True).version
    assert store.get(1).version == v1
    other = SummaryStore(str(tmp_path / "db"))  # another process's writer
    v2 = other.publish(records([1], marker=2), promote=True).version
    assert store.get(1).version == v1  # pinned until the interval passes
    clock.t += 61
    assert store.get(1).version == v2
    v3 = store.publish(records([1], marker=3), promote=True).version
    assert store.get(1).version == v3  # read-your-writes through the same facade


def test_table_uris_keep_a_commit_store_query_at_the_end() -> None:
    from summarizer.store.location import StoreLocation

    loc = StoreLocation("s3+ddb://bucket/db?ddbTableName=commits")
    assert loc.table_uri("summaries") == "s3+ddb://bucket/db/summaries.lance?ddbTableName=commits"
    assert StoreLocation("s3://bucket/db/").table_uri("state") == "s3://bucket/db/state.lance"
