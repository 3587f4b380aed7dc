"""The event data contract: schema, actions, and day-partitioned Parquet I/O (local folders
or object storage, through :mod:`summarizer.data.files`).

One row per event: ``user_id int64, ts int64 (unix seconds), item_id int64,
action int16`` and an optional ``weight float32`` (rating, dwell, ...). On disk
events are Parquet files under ``dt=YYYY-MM-DD`` folders (the UTC day the
events were delivered, normally the day of ``ts``; late events land in a later
day's folder and keep their own ``ts``).
"""

from __future__ import annotations

import datetime as dt
import enum
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from summarizer.data import files

EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64()),
        pa.field("ts", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("action", pa.int16()),
        pa.field("weight", pa.float32()),
    ]
)
REQUIRED_COLUMNS = ("user_id", "ts", "item_id", "action")
OPTIONAL_COLUMNS = ("weight",)
PARTITION_KEY = "dt"
SECONDS_PER_DAY = 86_400
_MAX_TS = 253_402_214_400 - 1  # 9999-12-31T23:59:59Z: later (bad) timestamps share that day folder


class EventSchemaError(ValueError):
    """The input's columns do not match the event contract."""


class Action(enum.IntEnum):
    """Built-in action codes. Datasets may use any code in 0..num_actions-1."""

    IMPRESSION = 0  # shown, not engaged
    CLICK = 1
    LIKE = 2
    RATE = 3  # explicit rating; the value is in ``weight``


def day_bounds(day: str) -> tuple[int, int]:
    """[start, end) unix seconds of a UTC day given as YYYY-MM-DD."""
    try:
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise ValueError(f"not a day in YYYY-MM-DD form: {day!r}") from exc
    t0 = int(start.timestamp())
    return t0, t0 + SECONDS_PER_DAY


def days_of(ts: np.ndarray) -> np.ndarray:
    """UTC day strings for an array of unix seconds (vectorized)."""
    return np.datetime_as_string(ts.astype("datetime64[s]"), unit="D")


def conform(table: pa.Table) -> pa.Table:
    """Cast a table that already passed the schema check to EVENT_SCHEMA (adds a null weight)."""
    if "weight" not in table.column_names:
        table = table.append_column("weight", pa.nulls(table.num_rows, pa.float32()))
    return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)


Options = Mapping[str, str] | None  # object-store options of a data location (files.py)


def write_day(
    table: pa.Table,
    root: str | os.PathLike[str],
    day: str,
    name: str = "part-0",
    options: Options = None,
) -> str:
    """Write one day's events as ``root/dt=day/name.parquet``, replacing that file atomically
    (a local file is renamed into place; an object-store PUT completes whole or not at all).
    ``root`` is a local path or an object-store URI (:mod:`summarizer.data.files`)."""
    final = files.join(day_path(root, day), f"{name}.parquet")
    fs, path = files.filesystem(final, options)
    if files.is_remote(final):
        pq.write_table(table, path, filesystem=fs, compression="zstd")
        return final
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.parquet.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path


def write_partitioned(
    table: pa.Table,
    root: str | os.PathLike[str],
    name: str = "part-0",
    arrival_ts: np.ndarray | None = None,
    options: Options = None,
) -> list[str]:
    """Split a table by day and write one file per day. Returns the days.

    The day is that of ``arrival_ts`` (when the event was delivered) if given,
    else of ``ts``.
    """
    if table.num_rows == 0:
        return []
    if arrival_ts is None:
        # Rows without a usable ts are kept (in the epoch day) for validation to quarantine.
        arrival_ts = pc.fill_null(table.column("ts"), 0).to_numpy(zero_copy_only=False)
    day_index = np.clip(arrival_ts, 0, _MAX_TS) // SECONDS_PER_DAY
    order = np.argsort(day_index, kind="stable")
    table = table.take(pa.array(order))
    day_index = day_index[order]
    starts = np.flatnonzero(np.r_[True, day_index[1:] != day_index[:-1]])
    ends = np.r_[starts[1:], len(day_index)]
    days = days_of(day_index[starts] * SECONDS_PER_DAY)
    for day, a, b in zip(days, starts, ends, strict=True):
        write_day(table.slice(a, b - a), root, str(day), name, options)
    return [str(d) for d in days]


def list_days(root: str | os.PathLike[str], options: Options = None) -> list[str]:
    """Days present under a partitioned root (local or object storage), sorted."""
    prefix = f"{PARTITION_KEY}="
    return sorted(
        n[len(prefix) :] for n, folder in files.list_dir(str(root), options) if n.startswith(prefix)
    )


def day_path(root: str | os.PathLike[str], day: str) -> str:
    """The URI of a day's partition folder: ``root/dt=day``."""
    return files.join(str(root), f"{PARTITION_KEY}={day}")


def day_files(root: str | os.PathLike[str], day: str, options: Options = None) -> list[str]:
    """The day's Parquet files, sorted; FileNotFoundError if the partition is missing."""
    folder = day_path(root, day)
    if not files.exists(folder, options):
        raise FileNotFoundError(f"no events partition {folder}")
    return files.files_with_suffix(folder, ".parquet", options)


def read_day(root: str | os.PathLike[str], day: str, options: Options = None) -> pa.Table:
    """All rows of one day partition, with the file's own columns (not yet validated)."""
    folder = day_path(root, day)
    paths = day_files(root, day, options)
    if not paths:
        return EVENT_SCHEMA.empty_table()
    tables = []
    for f in paths:
        fs, path = files.filesystem(f, options)
        tables.append(pq.read_table(path, filesystem=fs))
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        types: dict[str, dict[str, str]] = {}  # column -> file -> type
        for f, t in zip(paths, tables, strict=True):
            for field in t.schema:
                types.setdefault(field.name, {})[files.name(f)] = str(field.type)
        clash = {c: by_file for c, by_file in types.items() if len(set(by_file.values())) > 1}
        detail = "; ".join(
            f"column {c!r}: " + ", ".join(f"{name} has {typ}" for name, typ in sorted(by.items()))
            for c, by in clash.items()
        )
        raise EventSchemaError(
            f"{folder}: its files' schemas cannot be combined ({detail or exc})"
        ) from exc


def dataset(root: str | os.PathLike[str], options: Options = None) -> ds.Dataset:
    """The partitioned events (local or object storage) as a pyarrow dataset (``dt`` as a
    string column)."""
    fs, path = files.filesystem(str(root), options)
    return ds.dataset(
        path,
        filesystem=fs,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive"),
        exclude_invalid_files=True,
    )


def iter_batches(
    root: str | os.PathLike[str],
    columns: list[str] | None = None,
    batch_size: int = 1 << 17,
    options: Options = None,
) -> Iterator[pa.RecordBatch]:
    """Stream a partitioned dataset in bounded record batches."""
    yield from dataset(root, options).to_batches(columns=columns, batch_size=batch_size)


def sort_events(table: pa.Table) -> pa.Table:
    """Order by user, then time, then item (the order summaries are folded in)."""
    idx = pc.sort_indices(
        table, sort_keys=[("user_id", "ascending"), ("ts", "ascending"), ("item_id", "ascending")]
    )
    return table.take(idx)
