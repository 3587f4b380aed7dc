"""MovieLens ingestion: ratings files -> the event contract (rating -> weight).

Supported layouts (GroupLens; cite Harper & Konstan, 2015, ACM TiiS 5(4)):
* ``ratings.csv`` with header ``userId,movieId,rating,timestamp`` (ml-latest,
  ml-latest-small, ml-20m, ml-25m, ml-32m);
* ``u.data``, tab-separated ``user item rating timestamp`` (ml-100k);
* ``ratings.dat``, ``::``-separated, same columns (ml-1m, ml-10m).

Every rating becomes one ``Action.RATE`` event. Rows are not filtered here:
`vista data validate` quarantines bad ones with a reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from summarizer.data.events import Action, write_partitioned

_RAW_TYPES = {
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "weight": pa.float32(),
    "ts": pa.int64(),
}
_NAMES = ["user_id", "item_id", "weight", "ts"]


def resolve_ratings_file(path: str | os.PathLike[str]) -> Path:
    """Accept a ratings file or a MovieLens folder holding one."""
    p = Path(path)
    if p.is_dir():
        for name in ("ratings.csv", "u.data", "ratings.dat"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"{p} holds no ratings.csv, u.data or ratings.dat")
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    return p


def read_ratings(path: str | os.PathLike[str]) -> pa.Table:
    """Read a MovieLens ratings file into the event contract's columns."""
    file = resolve_ratings_file(path)
    convert = pacsv.ConvertOptions(column_types=_RAW_TYPES)
    if file.suffix == ".csv":
        header = file.open().readline().strip().split(",")
        expected = ["userId", "movieId", "rating", "timestamp"]
        if header[:4] != expected:
            raise ValueError(f"{file}: header {header} is not {expected}")
        read = pacsv.ReadOptions(column_names=_NAMES, skip_rows=1)
        raw = pacsv.read_csv(file, read_options=read, convert_options=convert)
    elif file.suffix == ".dat":
        # pyarrow's CSV reader takes one-character delimiters only.
        text = file.read_bytes().replace(b"::", b"\t")
        read = pacsv.ReadOptions(column_names=_NAMES)
        parse = pacsv.ParseOptions(delimiter="\t")
        raw = pacsv.read_csv(
            pa.BufferReader(text), read_options=read, parse_options=parse, convert_options=convert
        )
    else:
        read = pacsv.ReadOptions(column_names=_NAMES)
        parse = pacsv.ParseOptions(delimiter="\t")
        raw = pacsv.read_csv(file, read_options=read, parse_options=parse, convert_options=convert)
    n = raw.num_rows
    return pa.table(
        {
            "user_id": raw["user_id"],
            "ts": raw["ts"],
            "item_id": raw["item_id"],
            "action": pa.array([int(Action.RATE)] * n, pa.int16())
            if n
            else pa.array([], pa.int16()),
            "weight": raw["weight"],
        }
    )


def ingest(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: Mapping[str, str] | None = None,
) -> tuple[int, list[str]]:
    """Convert a MovieLens ratings file into day-partitioned events under ``out_dir`` (local
    or object storage). Returns (rows, days)."""
    table = read_ratings(path)
    days = write_partitioned(table, out_dir, name="movielens", options=options)
    return table.num_rows, days
