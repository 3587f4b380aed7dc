"""SummaryStore on real LanceDB folders: round trips, statuses, ids, upserts, versions, errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import lance
import numpy as np
import pyarrow as pa
import pytest

from summarizer.store import (
    MEMORY_BANK,
    STATE,
    SUMMARIES,
    InvalidUserIdError,
    MemoryBankRecord,
    SchemaMismatchError,
    ShapeMismatchError,
    StateRecord,
    StoreLocation,
    StoreUnavailableError,
    SummaryRecord,
    SummaryStatus,
    SummaryStore,
    TableNotFoundError,
    memory_bank_schema,
    memory_banks_from_table,
    memory_banks_to_batch,
    states_from_table,
    states_to_batch,
    summaries_from_table,
    summaries_to_batch,
    validate_user_ids,
)
from tests.helpers import MV, T0, D, FakeClock, K, records, rows_of

pytestmark = pytest.mark.integration


# -- round trips ------------------------------------------------------------------------------
def test_tokens_round_trip_bit_exact(store: SummaryStore) -> None:
    recs = records(range(20))
    # float16 edge values must survive bit for bit: max, smallest subnormal, -0.0.
    edge = recs[0].tokens.copy()
    edge[0, :3] = [65504.0, 2.0**-24, -0.0]
    recs[0] = SummaryRecord(0, MV, edge, 7, None, None, T0)
    store.publish(recs)
    batch = store.get([r.user_id for r in recs])
    for rec, got in zip(recs, batch, strict=True):
        assert got.status is SummaryStatus.PRESENT
        assert got.tokens is not None and got.tokens.dtype == np.float16
        assert got.tokens.shape == (K, D)
        np.testing.assert_array_equal(got.tokens.view(np.uint16), rec.tokens.view(np.uint16))
        assert (got.model_version, got.n_events, got.first_ts, got.last_ts) == (
            rec.model_version,
            rec.n_events,
            rec.first_ts,
            rec.last_ts,
        )
        assert got.computed_at == rec.computed_at
    assert (batch.K, batch.d) == (K, D)


def test_record_conversions_round_trip() -> None:
    import torch

    recs = records(range(5))
    batch = summaries_to_batch(recs)
    assert batch.schema.field("tokens").type == pa.list_(pa.float16(), K * D)
    back = summaries_from_table(batch)
    assert [r.user_id for r in back] == list(range(5))
    np.testing.assert_array_equal(back[3].tokens, recs[3].tokens)

    kv = np.random.default_rng(1).standard_normal((2, 2, 3, 5))
    states = [StateRecord(u, MV, kv * u, u, None, 9, T0) for u in range(3)]
    stored = states_to_batch(states)  # float32 storage: the kv rounded once, read as float64
    assert stored.schema.field("kv").type.value_type == pa.float32()
    sback = states_from_table(stored)
    assert sback[2].kv.dtype == np.float32  # as stored; the fold's state is float64:
    assert sback[2].to_summary_state().kv.dtype == torch.float64
    np.testing.assert_array_equal(sback[2].kv, (kv * 2).astype(np.float32))
    legacy = states_from_table(states_to_batch(states, kv_dtype="float64"))
    np.testing.assert_array_equal(legacy[2].kv, kv * 2)
    bad = [*states[:2], StateRecord(7, MV, kv[:1], 1, None, 9, T0)]
    with pytest.raises(SchemaMismatchError, match="user 7: kv has shape"):
        states_to_batch(bad)
    with pytest.raises(SchemaMismatchError, match="kv_dtype"):
        states_to_batch(states, kv_dtype="float16")

    banks = [
        MemoryBankRecord(u, MV, np.full((u + 1, D), u, np.float16), np.arange(u + 1), T0)
        for u in range(3)
    ]
    bback = memory_banks_from_table(memory_banks_to_batch(banks, C=4, d=D))
    assert [b.tokens.shape for b in bback] == [(1, D), (2, D), (3, D)]
    np.testing.assert_array_equal(bback[2].sizes, [0, 1, 2])


def test_states_round_trip_to_summary_state(store: SummaryStore) -> None:
    import torch

    from summarizer.model.summarization import SummaryState

    kv = torch.randn(2, 4, 8, 17, dtype=torch.float64)
    state = SummaryState(kv, 1234, 10, 99)
    store.publish([StateRecord.from_summary_state(42, MV, state, T0)])
    got = store.get_states([42, 43])
    assert list(got) == [42]
    back = got[42].to_summary_state()
    assert back.kv.dtype == torch.float64
    assert torch.equal(back.kv, kv.float().double())  # stored in float32
    assert (back.n_events, back.first_ts, back.last_ts) == (1234, 10, 99)
    # Re-publishing replaces the state row.
    store.publish([StateRecord.from_summary_state(42, MV, SummaryState(kv * 2, 5, 1, 2), T0)])
    assert rows_of(store, STATE).num_rows == 1
    assert torch.equal(store.get_states(42)[42].to_summary_state().kv, (kv * 2).float().double())


def test_a_float64_state_table_keeps_its_precision(store: SummaryStore) -> None:
    """State tables written before float32 storage hold float64: later writes of records
    follow the table (no failed incremental run, no mixed column), exactly."""
    import torch

    from summarizer.model.summarization import SummaryState
    from summarizer.store import state_schema
    from summarizer.store.schema import kv_dtype_of

    kv = torch.randn(2, 4, 8, 17, dtype=torch.float64)
    store.publish(
        [StateRecord.from_summary_state(1, MV, SummaryState(kv, 3, 1, 2), T0)],
        schema=state_schema(tuple(kv.shape), MV, "float64"),
    )
    store.publish([StateRecord.from_summary_state(2, MV, SummaryState(kv * 3, 4, 1, 2), T0)])
    assert kv_dtype_of(store.schema(STATE)) == "float64"
    got = store.get_states([1, 2])
    assert torch.equal(got[1].to_summary_state().kv, kv)
    assert torch.equal(got[2].to_summary_state().kv, kv * 3)


def test_state_table_is_created_in_its_file_format(store: SummaryStore, tmp_path: Path) -> None:
    """A new state table uses lance format 2.0 (wide rows write faster); the serving table
    lance's default; a table created in another format keeps it for later fragments."""
    import torch

    from summarizer.model.summarization import SummaryState
    from summarizer.store.schema import FILE_VERSIONS

    def state(u: int) -> StateRecord:
        kv = torch.randn(2, 4, 8, 17, dtype=torch.float64)
        return StateRecord.from_summary_state(u, MV, SummaryState(kv, 3, 1, 2), T0)

    def file_versions(s: SummaryStore) -> set[tuple[int, int]]:
        ds = s.location.open(STATE)
        files = [f for frag in ds.get_fragments() for f in frag.data_files()]
        return {(f.file_major_version, f.file_minor_version) for f in files}

    store.publish([state(1)])
    store.publish([state(2)])  # appended to the existing table: its format
    store.publish(records([1]))
    assert FILE_VERSIONS[STATE] == "2.0"
    assert store.location.open(STATE).data_storage_version == "2.0"
    assert file_versions(store) == {(2, 0)}
    assert store.location.open(SUMMARIES).data_storage_version != "2.0"
    # A state table made in another format (here 2.1; lance's default is 2.2) stays in it.
    older = SummaryStore(tmp_path / "older")
    lance.write_dataset(
        states_to_batch([state(1)]), older.location.table_uri(STATE), data_storage_version="2.1"
    )
    older.publish([state(2)])
    assert older.location.open(STATE).data_storage_version == "2.1"
    assert file_versions(older) == {(2, 1)}
    assert sorted(older.get_states([1, 2])) == [1, 2]


def test_memory_bank_publish_and_read(store: SummaryStore) -> None:
    banks = [
        MemoryBankRecord(u, MV, np.ones((2, D), np.float16), np.array([3, 4]), T0) for u in (1, 2)
    ]
    store.publish(banks, schema=memory_bank_schema(8, D, MV))
    got = store.get_memory_banks([2, 5])
    assert list(got) == [2] and got[2].tokens.shape == (2, D)
    np.testing.assert_array_equal(got[2].sizes, [3, 4])
    assert store.exists(MEMORY_BANK)


# -- statuses ---------------------------------------------------------------------------------
def test_present_missing_stale_with_injected_clock(store: SummaryStore, clock: FakeClock) -> None:
    store.publish(records([1, 2]) + records([3], at=T0 - dt.timedelta(hours=2), seed=1))
    batch = store.get([3, 1, 999, 1])  # request order and repeats are kept
    assert batch.statuses == [
        SummaryStatus.STALE,
        SummaryStatus.PRESENT,
        SummaryStatus.NOT_FOUND,
        SummaryStatus.PRESENT,
    ]
    assert batch[0].tokens is not None  # stale rows still carry their tokens
    assert batch[2].tokens is None and not batch[2].found
    clock.t = (T0 + dt.timedelta(hours=1, seconds=1)).timestamp()
    assert store.get([1]).statuses == [SummaryStatus.STALE]
    tokens, found = store.get([1, 999]).tokens_array()
    assert tokens.shape == (2, K, D) and found.tolist() == [True, False]


def test_get_many_ids_is_one_read(store: SummaryStore) -> None:
    store.publish(records(range(50)), promote=True)
    reader = store.open_reader()
    calls = []
    snap = reader._snap
    for obj in (snap.ds, *snap.fragments):
        original = obj.take
        obj.take = lambda *a, _o=original, **k: calls.append(a) or _o(*a, **k)  # type: ignore[method-assign]
    file_reader = snap._file_reader

    def counted(i: int):  # noqa: ANN202  the data-file path counts too
        file = file_reader(i)
        if file is None:
            return None
        take_rows = file[0].take_rows
        wrapped = SimpleNamespace(take_rows=lambda *a, **k: calls.append(a) or take_rows(*a, **k))
        return wrapped, file[1]

    object.__setattr__(snap, "_file_reader", counted)
    batch = reader.get(list(range(0, 60, 3)))
    assert len(calls) == 1
    assert sum(r.found for r in batch) == 17


def b_reader_get(store: SummaryStore, user_id: int):  # noqa: ANN201
    return store.open_reader(lookup="index").get_one(user_id)


def test_index_lookup_matches_take_lookup(store: SummaryStore) -> None:
    store.publish(records(range(30)), promote=True)
    store.publish(records(range(20, 40), marker=1, seed=3), promote=True)
    ids = [0, 25, 39, 40, 5]
    take = store.open_reader(lookup="take")
    assert len(take._snap.fragments) > 1  # rows replaced: deletions, and reads span fragments
    a = take.get(ids)
    b = store.open_reader(lookup="index").get(ids)
    assert a.statuses == b.statuses
    for one in range(42):  # one id at a time: the single-fragment read path, deletions included
        x, y = take.get_one(one), b_reader_get(store, one)
        assert x.status == y.status
        if x.tokens is not None:
            np.testing.assert_array_equal(x.tokens, y.tokens)
    # Both single-fragment paths were taken: the data file of the fragment written whole,
    # the fragment's own take where rows were deleted.
    files = take._snap._files
    deleted = [f.metadata.deletion_file is not None for f in take._snap.fragments]
    assert any(deleted) and not all(deleted)
    assert all((files[i] is None) == deleted[i] for i in files) and len(files) == len(deleted)
    for x, y in zip(a, b, strict=True):
        assert x.n_events == y.n_events
        if x.tokens is not None:
            np.testing.assert_array_equal(x.tokens, y.tokens)


# -- ids --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        "1 OR 1=1",
        "1",
        -1,
        1.5,
        1.0,
        True,
        np.bool_(True),
        [1, "2"],
        [3, -4],
        np.array([1.5]),
        np.array([True]),
        2**63,
        None,
        {1: 2},
    ],
)
def test_bad_ids_rejected_before_any_query(tmp_path: Path, bad: object) -> None:
    # No table exists: reaching the query would raise TableNotFoundError instead.
    store = SummaryStore(str(tmp_path / "nothing"))
    with pytest.raises(InvalidUserIdError, match="non-negative integers"):
        store.get(bad)


def test_bad_id_message_names_the_value() -> None:
    with pytest.raises(InvalidUserIdError, match=r"'1 OR 1=1' \(str\)"):
        validate_user_ids("1 OR 1=1")
    with pytest.raises(InvalidUserIdError, match="negative"):
        validate_user_ids(-1)


def test_good_ids_accepted() -> None:
    assert validate_user_ids(5).tolist() == [5]
    assert validate_user_ids(np.int32(7)).tolist() == [7]
    assert validate_user_ids(np.array([1, 2], np.uint8)).tolist() == [1, 2]
    assert validate_user_ids([0, np.int64(3)]).dtype == np.int64
    assert validate_user_ids([]).size == 0


# -- upserts ----------------------------------------------------------------------------------
def test_publish_twice_is_idempotent(store: SummaryStore) -> None:
    recs = records(range(100))
    first = store.publish(recs)
    second = store.publish(recs)
    assert (first.inserted, second.inserted, second.replaced) == (100, 0, 100)
    table = rows_of(store)
    assert table.num_rows == 100
    assert sorted(table["user_id"].to_pylist()) == list(range(100))
    again = store.get(list(range(100)))
    for rec, got in zip(recs, again, strict=True):
        np.testing.assert_array_equal(got.tokens, rec.tokens)


def test_upsert_replaces_changed_users_only(store: SummaryStore) -> None:
    store.publish(records(range(10), marker=1))
    result = store.publish(records(range(5, 15), marker=2, seed=9))
    assert (result.inserted, result.replaced) == (5, 5)
    markers = {r.user_id: r.n_events for r in store.get(list(range(15)))}
    assert markers == {u: 1 if u < 5 else 2 for u in range(15)}


def test_new_rows_are_indexed_after_publish(store: SummaryStore) -> None:
    store.publish(records(range(10)))
    store.publish(records(range(10, 30)))
    ds = store.location.open(SUMMARIES)
    stats = ds.stats.index_stats("user_id_idx")
    assert stats["num_unindexed_rows"] == 0 and stats["num_indexed_rows"] == 30


def test_model_version_metadata_follows_publish(store: SummaryStore) -> None:
    store.publish(records(range(3)))
    store.publish(records(range(3), mv="fedcba9876543210"))
    meta = store.schema().metadata
    assert meta[b"vista.model_version"] == b"fedcba9876543210"
    assert (meta[b"vista.K"], meta[b"vista.d"]) == (b"4", b"8")


def test_file_uri_works(tmp_path: Path) -> None:
    store = SummaryStore(f"file://{tmp_path}/db")
    store.publish(records(range(3)), promote=True)
    assert store.open_reader().get(2)[0].found
    assert store.info().tables[0].disk_bytes


# -- errors -----------------------------------------------------------------------------------
def test_missing_table_says_which_and_how(store: SummaryStore, tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    with pytest.raises(TableNotFoundError, match="'summaries'.*first publish"):
        store.get(1)
    assert store.get_states([1]) == {}


def test_unreadable_uri(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        SummaryStore(str(tmp_path / "nope")).info()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreUnavailableError, match="is a file"):
        SummaryStore(str(tmp_path / "afile")).get(1)


def test_wrong_schema_names_the_column(store: SummaryStore) -> None:
    store.publish(records(range(3)))
    good = summaries_to_batch(records([7]))
    bad_type = good.set_column(2, "tokens", pa.array([[0.0] * (K * D)], pa.list_(pa.float32())))
    with pytest.raises(SchemaMismatchError, match="'tokens' has type list<item: float>"):
        store.publish(bad_type)
    with pytest.raises(SchemaMismatchError, match="'n_events'.*missing"):
        store.publish(good.drop_columns(["n_events"]))
    with pytest.raises(SchemaMismatchError, match="non-negative"):
        store.publish(summaries_to_batch([SummaryRecord(-5, MV, np.zeros((K, D)), 1, 1, 1, T0)]))
    assert rows_of(store).num_rows == 3


def test_shape_mismatch(store: SummaryStore) -> None:
    store.publish(records(range(3)), promote=True)
    store.expect_shape(K, D)
    with pytest.raises(ShapeMismatchError, match="K=4 tokens of width d=8.*K=8, d=8"):
        store.expect_shape(8, D)
    with pytest.raises(ShapeMismatchError):
        store.open_reader().expect_shape(K, 16)
    wide = [SummaryRecord(9, MV, np.zeros((8, D), np.float16), 1, 1, 1, T0)]
    with pytest.raises(ShapeMismatchError):
        store.publish(wide)
    assert rows_of(store).num_rows == 3


def test_location_is_not_local_for_buckets() -> None:
    loc = StoreLocation("s3://bucket/vista", {"region": "eu-west-1"})
    assert loc.is_remote and loc.local_path() is None
    assert loc.table_uri("summaries") == "s3://bucket/vista/summaries.lance"
    assert StoreLocation("gs://b/p/").table_uri("state") == "gs://b/p/state.lance"
    assert StoreLocation("/tmp/x").local_path() == Path("/tmp/x")


def test_lance_dataset_sees_store_layout(store: SummaryStore) -> None:
    store.publish(records(range(3)))
    ds = lance.dataset(store.location.table_uri(SUMMARIES))
    assert ds.count_rows() == 3


def test_upsert_through_full_key_scan(store: SummaryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from summarizer.store import write

    monkeypatch.setattr(write, "INDEXED_LOOKUP_MAX", 0)  # the path big publishes take
    store.publish(records(range(20), marker=1))
    store.publish(records(range(10, 30), marker=2, seed=4))
    store.publish(records(range(10, 30), marker=2, seed=4))
    table = rows_of(store)
    assert sorted(table["user_id"].to_pylist()) == list(range(30))
    assert sum(table["n_events"].to_pylist()) == 10 * 1 + 20 * 2
