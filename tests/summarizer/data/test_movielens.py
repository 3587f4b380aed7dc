from __future__ import annotations

from pathlib import Path

import pytest

from summarizer.data import movielens
from summarizer.data.events import EVENT_SCHEMA, Action, dataset
from summarizer.data.validation import validate_dataset
from tests.helpers import SHARED_DATA


@pytest.mark.parametrize(
    ("name", "rows", "first"),
    [
        ("ratings.csv", 8, (1, 964982703, 1, 4.0)),
        ("u.data", 4, (196, 881250949, 242, 3.0)),
        ("ratings.dat", 3, (1, 978300760, 1193, 5.0)),
    ],
)
def test_read_each_layout(fixtures_dir: Path, name: str, rows: int, first: tuple) -> None:
    table = movielens.read_ratings(fixtures_dir / name)
    assert table.num_rows == rows
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["user_id"], row["ts"], row["item_id"], row["weight"]) == first
    assert row["action"] == Action.RATE


def test_ingest_then_validate(fixtures_dir: Path, tmp_path: Path) -> None:
    rows, days = movielens.ingest(fixtures_dir / "ratings.csv", tmp_path / "events")
    assert rows == 8 and days == ["2000-07-30", "2011-05-27", "2015-10-24"]
    table = dataset(tmp_path / "events").to_table(columns=EVENT_SCHEMA.names)
    assert sorted(table.column("weight").to_pylist()) == [0.5, 0.5, 0.5, 3.0, 4.0, 4.0, 4.0, 4.0]
    report = validate_dataset(
        tmp_path / "events", tmp_path / "v", tmp_path / "q", 8, progress=False
    )
    assert report.n_valid == 8 and report.n_quarantined == 0


def test_wrong_header_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ratings.csv"
    bad.write_text("user,item,score,time\n1,2,3,4\n")
    with pytest.raises(ValueError, match="header"):
        movielens.read_ratings(bad)
    with pytest.raises(FileNotFoundError, match="no ratings.csv"):
        movielens.resolve_ratings_file(tmp_path / "..")


@pytest.mark.skipif(
    not (SHARED_DATA / "ml-latest-small").exists(), reason="ml-latest-small not present"
)
def test_ml_latest_small(tmp_path: Path) -> None:
    rows, _ = movielens.ingest(SHARED_DATA / "ml-latest-small", tmp_path / "events")
    assert rows == 100_836  # GroupLens' README: 100836 ratings by 610 users
    report = validate_dataset(
        tmp_path / "events", tmp_path / "v", tmp_path / "q", 8, progress=False
    )
    assert report.n_valid + report.n_quarantined == rows
    table = dataset(tmp_path / "v").to_table(columns=["user_id"])
    assert len(set(table.column("user_id").to_pylist())) == 610
