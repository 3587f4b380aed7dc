"""User histories for training and evaluation, read from the validated Parquet events.

``Histories`` holds users back to back (sorted by user, time, item) with
offsets. Data larger than memory is read in user buckets
(``user_id % n_buckets``), each bucket a streamed scan of the dataset with a
pushed-down filter, so only one bucket is in memory at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from summarizer.data.events import EVENT_SCHEMA, Action, Options, dataset, sort_events

RATING_POSITIVE = 4.0  # MovieLens: label = rating >= 4


@dataclasses.dataclass
class Histories:
    user_ids: np.ndarray  # (U,)
    offsets: np.ndarray  # (U+1,)
    item_id: np.ndarray
    ts: np.ndarray
    action: np.ndarray
    weight: np.ndarray  # float32, NaN where absent

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Binary label of every event (computed once; batches index into it)."""
        return event_labels(self.action, self.weight)

    @staticmethod
    def from_table(table: pa.Table) -> Histories:
        table = sort_events(table)
        user = table.column("user_id").to_numpy()
        starts = (
            np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
            if len(user)
            else np.zeros(0, np.int64)
        )
        w = (
            table.column("weight")
            .cast(pa.float32())
            .fill_null(float("nan"))
            .to_numpy(zero_copy_only=False)
        )
        return Histories(
            user_ids=user[starts] if len(user) else np.zeros(0, np.int64),
            offsets=np.r_[starts, len(user)].astype(np.int64),
            item_id=table.column("item_id").to_numpy(),
            ts=table.column("ts").to_numpy(),
            action=table.column("action").to_numpy().astype(np.int64),
            weight=np.asarray(w, dtype=np.float32),
        )


def event_labels(action: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Binary label of an event: a rating >= 4 for explicit ratings, else engaged (click or more)."""
    rated = action == Action.RATE
    with np.errstate(invalid="ignore"):
        return np.where(rated, weight >= RATING_POSITIVE, action >= Action.CLICK).astype(np.float32)


def _read(
    root: str | os.PathLike[str], filt: ds.Expression | None, options: Options = None
) -> pa.Table:
    scanner = dataset(root, options).scanner(
        columns=EVENT_SCHEMA.names, filter=filt, batch_size=1 << 17
    )
    return pa.Table.from_batches(scanner.to_batches(), schema=EVENT_SCHEMA)


def load_histories(
    root: str | os.PathLike[str], users: list[int] | None = None, options: Options = None
) -> Histories:
    """All (or the given) users' histories from a validated events folder (local or object
    storage)."""
    filt = ds.field("user_id").isin(users) if users is not None else None
    return Histories.from_table(_read(root, filt, options))


def iter_history_buckets(root: str | os.PathLike[str], n_buckets: int) -> Iterator[Histories]:
    """Histories one bucket of users at a time (``user_id % n_buckets == b``)."""
    uid = ds.field("user_id")
    for b in range(n_buckets):
        bucket = pc.subtract(uid, pc.multiply(pc.divide(uid, n_buckets), n_buckets))
        yield Histories.from_table(_read(root, bucket == b))


def temporal_split(
    root: str | os.PathLike[str], q: tuple[float, float] = (0.8, 0.9), options: Options = None
) -> tuple[int, int]:
    """Timestamp percentiles that split events 80/10/10 (train < t1 <= val < t2 <= test)."""
    scanner = dataset(root, options).scanner(columns=["ts"], batch_size=1 << 20)
    ts = np.concatenate([b.column(0).to_numpy() for b in scanner.to_batches()])
    if ts.size == 0:
        raise ValueError(f"no events under {root}")
    t1, t2 = np.quantile(ts, q, method="lower")
    return int(t1), int(t2)
