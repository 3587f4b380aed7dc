from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from summarizer.data.events import EVENT_SCHEMA, day_bounds, read_day, write_day
from summarizer.data.validation import (
    REASONS,
    EventSchemaError,
    validate_dataset,
    validate_table,
)

DAY = "2024-03-01"
T0, T1 = day_bounds(DAY)
NUM_ACTIONS = 4


def _table(rows: list[tuple], with_weight: bool = True) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    data = {
        "user_id": pa.array(cols[0], pa.int64()),
        "ts": pa.array(cols[1], pa.int64()),
        "item_id": pa.array(cols[2], pa.int64()),
        "action": pa.array(cols[3], pa.int64()),
    }
    if with_weight:
        data["weight"] = pa.array(cols[4], pa.float64())
    return pa.table(data)


GOOD = [
    (1, T0 + 10, 100, 0, None),
    (1, T0 + 20, 101, 1, 4.5),
    (2, T0 + 30, 100, 3, 1.0),
]
BAD = [
    ((None, T0 + 1, 5, 0, None), "null_user_id"),
    ((3, None, 5, 0, None), "null_ts"),
    ((3, T0 + 1, None, 0, None), "null_item_id"),
    ((3, T0 + 1, 5, None, None), "null_action"),
    ((-3, T0 + 1, 5, 0, None), "negative_id"),
    ((3, T0 + 1, -5, 0, None), "negative_id"),
    ((3, -7, 5, 0, None), "negative_ts"),
    ((3, T1 + 10 * 3600, 5, 0, None), "future_ts"),
    ((3, T0 + 1, 5, NUM_ACTIONS, None), "action_out_of_range"),
    ((3, T0 + 1, 5, -1, None), "action_out_of_range"),
    ((3, T0 + 1, 5, 70000, None), "action_out_of_range"),  # would overflow int16
    ((3, T0 + 1, 5, 0, float("nan")), "invalid_weight"),
    ((3, T0 + 1, 5, 0, float("inf")), "invalid_weight"),
    ((1, T0 + 20, 101, 1, 4.5), "duplicate"),  # exact copy of GOOD[1]
    ((None, -1, None, 99, float("nan")), "null_user_id"),  # first reason wins
]


def test_every_kind_of_bad_row_is_quarantined_with_its_reason() -> None:
    rows = GOOD[:2] + [r for r, _ in BAD] + GOOD[2:]
    result = validate_table(
        _table(rows), reference_ts=T1, num_actions=NUM_ACTIONS, max_clock_skew_s=3600
    )
    assert result.n_input == len(rows)  # nothing lost
    assert result.valid.schema == EVENT_SCHEMA
    assert result.valid.num_rows == len(GOOD)
    assert sorted(result.valid.column("item_id").to_pylist()) == [100, 100, 101]
    assert result.quarantine.column("reason").to_pylist() == [why for _, why in BAD]
    expected: dict[str, int] = {}
    for _, why in BAD:
        expected[why] = expected.get(why, 0) + 1
    assert result.counts == expected
    assert set(result.counts) <= set(REASONS)
    # Quarantined rows keep their original values, out-of-range action included.
    q = result.quarantine.to_pylist()
    assert q[10]["action"] == 70000
    assert q[0]["user_id"] is None and q[0]["item_id"] == 5
    assert np.isnan(q[11]["weight"]) and q[12]["weight"] == float("inf")


def test_duplicates_keep_the_first_occurrence() -> None:
    rows = [GOOD[0]] * 4 + [GOOD[1]]
    result = validate_table(_table(rows), reference_ts=T1, num_actions=NUM_ACTIONS)
    assert result.valid.num_rows == 2
    assert result.counts == {"duplicate": 3}


def test_clock_skew_tolerance() -> None:
    rows = [(1, T1 + 100, 1, 0, None)]
    assert validate_table(_table(rows), T1, NUM_ACTIONS, max_clock_skew_s=3600).counts == {}
    assert validate_table(_table(rows), T1, NUM_ACTIONS, max_clock_skew_s=0).counts == {
        "future_ts": 1
    }


def test_weight_column_is_optional() -> None:
    result = validate_table(_table([r[:4] for r in GOOD], with_weight=False), T1, NUM_ACTIONS)
    assert result.valid.num_rows == 3
    assert result.valid.column("weight").null_count == 3


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        (
            pa.table({"user_id": [1], "ts": [1], "item_id": [1]}),
            "column 'action' is missing; expected int16",
        ),
        (
            pa.table({"user_id": ["a"], "ts": [1], "item_id": [1], "action": [0]}),
            "column 'user_id' has type string; expected int64",
        ),
        (
            pa.table({"user_id": [1], "ts": [1.5], "item_id": [1], "action": [0]}),
            "column 'ts' has type double; expected int64",
        ),
        (
            pa.table({"user_id": [1], "ts": [1], "item_id": [1], "action": [0], "weight": ["x"]}),
            "column 'weight' has type string; expected float",
        ),
    ],
)
def test_schema_mismatch_names_column_and_type(table: pa.Table, needle: str) -> None:
    with pytest.raises(EventSchemaError, match=needle):
        validate_table(table, T1, NUM_ACTIONS)


def test_validate_dataset_writes_outputs_and_is_idempotent(tmp_path: Path) -> None:
    events, valid, quarantine = tmp_path / "events", tmp_path / "valid", tmp_path / "q"
    rows = GOOD + [r for r, _ in BAD]
    write_day(_table(rows), events, DAY)
    write_day(_table(GOOD[:1]), events, "2024-03-02")
    report = validate_dataset(events, valid, quarantine, NUM_ACTIONS, progress=False)
    assert report.n_input == len(rows) + 1
    assert report.n_valid == len(GOOD) + 1
    assert report.n_quarantined == len(BAD)
    first = pq.read_table(valid / f"dt={DAY}").to_pylist()
    again = validate_dataset(events, valid, quarantine, NUM_ACTIONS, progress=False)
    assert again.to_dict()["quarantined_by_reason"] == report.to_dict()["quarantined_by_reason"]
    assert pq.read_table(valid / f"dt={DAY}").to_pylist() == first  # replaced, not appended
    assert read_day(quarantine, DAY).num_rows == len(BAD)


def test_validate_dataset_names_the_partition_on_schema_mismatch(tmp_path: Path) -> None:
    write_day(pa.table({"user_id": [1], "ts": [1]}), tmp_path / "events", DAY)
    with pytest.raises(EventSchemaError, match=f"dt={DAY}.*'item_id' is missing"):
        validate_dataset(
            tmp_path / "events", tmp_path / "v", tmp_path / "q", NUM_ACTIONS, progress=False
        )


def test_large_random_table_conserves_rows() -> None:
    rng = np.random.default_rng(0)
    n = 50_000
    user = rng.integers(-2, 1000, n)
    table = pa.table(
        {
            "user_id": pa.array(user, mask=rng.random(n) < 0.01),
            "ts": pa.array(rng.integers(-10, T1 + 20_000, n)),
            "item_id": pa.array(rng.integers(0, 50, n)),
            "action": pa.array(rng.integers(-1, NUM_ACTIONS + 1, n)),
        }
    )
    result = validate_table(table, T1, NUM_ACTIONS)
    assert result.valid.num_rows + sum(result.counts.values()) == n
    assert result.quarantine.num_rows == sum(result.counts.values())


def test_unsigned_ids_past_int64_are_quarantined_not_fatal() -> None:
    """A uint64 id of 2^64-1 used to abort the whole run ("Integer value ... not in range");
    it is a bad row like any other: quarantined (its bits kept, as int64) with its reason,
    and the rest of the table passes."""
    big = np.iinfo(np.uint64).max
    table = pa.table(
        {
            "user_id": pa.array([1, big, 2, 3], pa.uint64()),
            "ts": pa.array([T0 + 1, T0 + 2, T0 + 3, big], pa.uint64()),
            "item_id": pa.array([5, 5, big, 6], pa.uint64()),
            "action": pa.array([0, 0, 0, 0], pa.uint8()),
        }
    )
    result = validate_table(table, T1, NUM_ACTIONS)
    assert result.valid.column("user_id").to_pylist() == [1]
    assert result.quarantine.column("reason").to_pylist() == [
        "id_out_of_range",
        "id_out_of_range",
        "future_ts",
    ]
    assert result.quarantine.column("user_id").to_pylist() == [-1, 2, 3]  # 2^64-1's bits
    assert result.n_input == 4


def test_files_of_one_partition_whose_types_differ_name_the_files_and_column(
    tmp_path: Path,
) -> None:
    """Two files of one day whose user_id types cannot be combined used to end in a pyarrow
    ArrowTypeError traceback; it is a schema error naming the partition, the files and the
    column (exit 2 from the CLI), and nothing is written."""
    from summarizer.cli import main

    folder = tmp_path / "events" / f"dt={DAY}"
    folder.mkdir(parents=True)
    row = {"ts": [T0 + 1], "item_id": [1], "action": [0]}
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), **row}), folder / "a.parquet")
    pq.write_table(pa.table({"user_id": pa.array(["7"]), **row}), folder / "b.parquet")
    with pytest.raises(EventSchemaError, match=r"dt=2024-03-01.*'user_id'.*a\.parquet.*b\.parquet"):
        validate_dataset(
            tmp_path / "events", tmp_path / "v", tmp_path / "q", NUM_ACTIONS, progress=False
        )
    assert not (tmp_path / "v").exists()
    code = main(
        [
            "data",
            "validate",
            "--input",
            str(tmp_path / "events"),
            "--valid-out",
            str(tmp_path / "v"),
            "--quarantine-out",
            str(tmp_path / "q"),
        ]
    )
    assert code == 2
