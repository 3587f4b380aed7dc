"""Row types of the store's tables and their conversion to and from Arrow.

Batch jobs that already hold Arrow data can skip these dataclasses and write
record batches with the schemas of :mod:`summarizer.store.schema`; these
helpers are the reference for what such a batch looks like.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from summarizer.store.errors import SchemaMismatchError
from summarizer.store.schema import (
    UTC_US,
    kv_shape_of,
    state_schema,
    summaries_schema,
    summary_moments,
    summary_shape,
)

if TYPE_CHECKING:
    from summarizer.model.summarization import SummaryState


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SummaryRecord:
    """One user's serving summary: K x d tokens and what they summarize."""

    user_id: int
    model_version: str
    tokens: np.ndarray  # (K, d), stored as float16
    n_events: int
    first_ts: int | None
    last_ts: int | None
    computed_at: dt.datetime  # timezone-aware
    moments: np.ndarray | None = None  # float32 (m,): a ridge read-out's second moments


@dataclass(frozen=True)
class StateRecord:
    """One user's summarizer state (batch side): enough to fold new events in."""

    user_id: int
    model_version: str
    kv: np.ndarray  # (L, H, F, D+1): float64 when made; as stored when read (float32)
    n_events: int
    first_ts: int | None
    last_ts: int | None
    updated_at: dt.datetime
    through_day: dt.date | None = None  # last event-partition day folded in (batch jobs)

    @classmethod
    def from_summary_state(
        cls,
        user_id: int,
        model_version: str,
        state: SummaryState,
        updated_at: dt.datetime | None = None,
        through_day: dt.date | None = None,
    ) -> StateRecord:
        kv = state.kv.detach().to("cpu").double().numpy()
        return cls(
            user_id,
            model_version,
            kv,
            state.n_events,
            state.first_ts,
            state.last_ts,
            updated_at or utc_now(),
            through_day,
        )

    def to_summary_state(self) -> SummaryState:
        """The summarizer's state object (imports torch, so only the batch side pays for it)."""
        import torch

        from summarizer.model.summarization import SummaryState

        kv = torch.from_numpy(np.array(self.kv, dtype=np.float64, copy=True))
        return SummaryState(kv, int(self.n_events), self.first_ts, self.last_ts)


def timestamps_array(values: Sequence[dt.datetime], name: str) -> pa.Array:
    for v in values:
        if not isinstance(v, dt.datetime) or v.tzinfo is None:
            raise SchemaMismatchError(f"{name} must be a timezone-aware datetime, got {v!r}")
    return pa.array(values, type=UTC_US)


def one_model_version(records: Sequence[Any], model_version: str | None) -> str:
    versions = {r.model_version for r in records}
    if model_version is not None:
        versions.add(model_version)
    if len(versions) != 1:
        raise SchemaMismatchError(
            f"one publish holds one model version, got {sorted(versions)[:5]}"
        )
    return versions.pop()


def fixed_lists(values: np.ndarray, width: int, dtype: Any) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values, dtype=dtype).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _stack(records: Sequence[Any], attr: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    values = [np.asarray(getattr(r, attr)) for r in records]
    for r, value in zip(records, values, strict=True):
        if value.shape != shape:
            raise SchemaMismatchError(
                f"user {r.user_id}: {attr} has shape {value.shape}, expected {shape}"
            )
    if not values:
        return np.empty((0, *shape), dtype=dtype)
    # One copy, converted on the way (as item-wise assignment would: unsafe casting).
    return np.stack(values, dtype=dtype, casting="unsafe")


def int_column(records: Sequence[Any], attr: str) -> pa.Array:
    return pa.array([getattr(r, attr) for r in records], type=pa.int64())


def summaries_to_batch(
    records: Sequence[SummaryRecord],
    K: int | None = None,
    d: int | None = None,
    model_version: str | None = None,
) -> pa.RecordBatch:
    """Records -> one record batch with the summaries schema (K, d inferred from the first)."""
    if not records and (K is None or d is None or model_version is None):
        raise SchemaMismatchError("an empty batch needs K, d and model_version")
    if K is None or d is None:
        K, d = np.asarray(records[0].tokens).shape
    mv = one_model_version(records, model_version)
    with_moments = [r.moments is not None for r in records]
    if any(with_moments) and not all(with_moments):
        raise SchemaMismatchError("some summary records carry moments and some do not")
    moments = None
    if records and with_moments[0]:
        size = int(np.asarray(records[0].moments).size)
        moments = _stack(records, "moments", (size,), np.float32)
    return summary_batch(
        [r.user_id for r in records],
        mv,
        _stack(records, "tokens", (int(K), int(d)), np.float16),
        [r.n_events for r in records],
        [r.first_ts for r in records],
        [r.last_ts for r in records],
        [r.computed_at for r in records],
        moments,
    )


def summary_batch(
    user_ids: Sequence[int] | np.ndarray,
    model_version: str,
    tokens: np.ndarray,
    n_events: Sequence[int] | np.ndarray,
    first_ts: Sequence[int | None],
    last_ts: Sequence[int | None],
    computed_at: Sequence[dt.datetime],
    moments: np.ndarray | None = None,
) -> pa.RecordBatch:
    """Columns -> one record batch with the summaries schema: what a batch job that holds
    its users' tokens as one (n, K, d) array writes, without a record object per user
    (one publish holds one model version: ``model_version`` on every row). ``moments``
    (n, m): a ridge read-out's second moments, stored in float32."""
    n, K, d = tokens.shape
    mv = [model_version] * n
    arrays = [
        pa.array(user_ids, type=pa.int64()),
        pa.array(mv, type=pa.string()),
        fixed_lists(tokens, K * d, np.float16),
        pa.array(n_events, type=pa.int64()),
        pa.array(first_ts, type=pa.int64()),
        pa.array(last_ts, type=pa.int64()),
        timestamps_array(computed_at, "computed_at"),
    ]
    size = 0
    if moments is not None:
        size = int(np.prod(moments.shape[1:]))
        arrays.append(fixed_lists(moments.reshape(n, size), size, np.float32))
    schema = summaries_schema(K, d, model_version, size)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def fixed_list_values(column: pa.ChunkedArray | pa.Array, dtype: Any) -> np.ndarray:
    """The flat values of a fixed-size-list column as numpy (respects slicing).

    Reads each chunk's child array directly: on the online read path this is
    several times cheaper than ``combine_chunks().flatten()``.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        size = chunk.type.list_size
        values = chunk.values
        if chunk.offset or len(values) != len(chunk) * size:
            values = values.slice(chunk.offset * size, len(chunk) * size)
        parts.append(np.asarray(values.to_numpy(zero_copy_only=False), dtype=dtype))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def summaries_from_table(table: pa.Table | pa.RecordBatch) -> list[SummaryRecord]:
    """A summaries table (or batch) -> records, tokens as float16 (K, d) arrays."""
    K, d = summary_shape(table.schema)
    tokens = fixed_list_values(table.column("tokens"), np.float16).reshape(-1, K, d)
    lists = ("tokens", "moments")
    cols = {
        name: table.column(name).to_pylist() for name in table.schema.names if name not in lists
    }
    m = summary_moments(table.schema)
    moments = fixed_list_values(table.column("moments"), np.float32).reshape(-1, m) if m else None
    return [
        SummaryRecord(
            cols["user_id"][i],
            cols["model_version"][i],
            tokens[i],
            cols["n_events"][i],
            cols["first_ts"][i],
            cols["last_ts"][i],
            cols["computed_at"][i],
            None if moments is None else moments[i],
        )
        for i in range(table.num_rows)
    ]


def states_to_batch(
    records: Sequence[StateRecord],
    kv_shape: tuple[int, ...] | None = None,
    model_version: str | None = None,
    kv_dtype: str = "float32",
) -> pa.RecordBatch:
    """Records -> one record batch with the state schema (``kv`` stored as ``kv_dtype``)."""
    if not records and (kv_shape is None or model_version is None):
        raise SchemaMismatchError("an empty batch needs kv_shape and model_version")
    shape = tuple(kv_shape) if kv_shape is not None else tuple(np.asarray(records[0].kv).shape)
    mv = one_model_version(records, model_version)
    return state_batch(
        [r.user_id for r in records],
        mv,
        _stack(records, "kv", shape, np.dtype(kv_dtype)),  # straight into the stored precision
        [r.n_events for r in records],
        [r.first_ts for r in records],
        [r.last_ts for r in records],
        [r.updated_at for r in records],
        [r.through_day for r in records],
        kv_dtype=kv_dtype,
    )


def state_batch(
    user_ids: Sequence[int] | np.ndarray,
    model_version: str,
    kv: np.ndarray,
    n_events: Sequence[int] | np.ndarray,
    first_ts: Sequence[int | None],
    last_ts: Sequence[int | None],
    updated_at: Sequence[dt.datetime],
    through_day: Sequence[dt.date | None],
    kv_dtype: str = "float32",
) -> pa.RecordBatch:
    """Columns -> one record batch with the state schema, ``kv`` (n, *kv_shape) stored as
    ``kv_dtype`` (no copy when it already is, C-contiguous): what a batch job that keeps
    its users' states in one array writes, without a record object per user (one model
    version, on every row)."""
    shape = tuple(kv.shape[1:])
    mv = [model_version] * len(kv)
    arrays = [
        pa.array(user_ids, type=pa.int64()),
        pa.array(mv, type=pa.string()),
        fixed_lists(kv, int(np.prod(shape)), np.dtype(kv_dtype)),
        pa.array(n_events, type=pa.int64()),
        pa.array(first_ts, type=pa.int64()),
        pa.array(last_ts, type=pa.int64()),
        timestamps_array(updated_at, "updated_at"),
        pa.array(through_day, type=pa.date32()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=state_schema(shape, model_version, kv_dtype))


@dataclass(frozen=True)
class StateColumns:
    """Many users' stored states as columns (rows in the order read): what a batch job
    folds into, without a record object per user. ``kv`` is (n, *kv_shape) as stored."""

    user_id: np.ndarray
    model_version: list[str]
    kv: np.ndarray
    n_events: list[int]
    first_ts: list[int | None]
    last_ts: list[int | None]
    updated_at: list[dt.datetime]
    through_day: list[dt.date | None]

    @classmethod
    def from_table(cls, table: pa.Table | pa.RecordBatch) -> StateColumns:
        shape = kv_shape_of(table.schema)
        # As stored (float32; float64 in older tables): to_summary_state converts as it copies.
        column = table.column("kv")
        kv = fixed_list_values(column, column.type.value_type.to_pandas_dtype())
        return cls(
            np.asarray(table.column("user_id").to_numpy(), dtype=np.int64),
            table.column("model_version").to_pylist(),
            kv.reshape(-1, *shape),
            table.column("n_events").to_pylist(),
            table.column("first_ts").to_pylist(),
            table.column("last_ts").to_pylist(),
            table.column("updated_at").to_pylist(),
            table.column("through_day").to_pylist(),
        )

    def record(self, i: int) -> StateRecord:
        return StateRecord(
            int(self.user_id[i]),
            self.model_version[i],
            self.kv[i],
            self.n_events[i],
            self.first_ts[i],
            self.last_ts[i],
            self.updated_at[i],
            self.through_day[i],
        )


def states_from_table(table: pa.Table | pa.RecordBatch) -> list[StateRecord]:
    cols = StateColumns.from_table(table)
    return [cols.record(i) for i in range(len(cols.user_id))]


def list_rows(column: Any, dtype: Any, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (flat numpy values, per-row start offsets (rows+1,))."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    starts = np.asarray(column.offsets.to_numpy(), dtype=np.int64)
    starts = starts - starts[0]
    values = column.flatten()  # respects slicing
    if width:
        flat = fixed_list_values(values, dtype).reshape(-1, width)
    else:
        flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=dtype)
    return flat, starts
