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
    memory_bank_schema,
    memory_bank_shape,
    state_schema,
    summaries_schema,
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


@dataclass(frozen=True)
class MemoryBankRecord:
    """Up to C cluster tokens of one user (GSU memory) with each cluster's size."""

    user_id: int
    model_version: str
    tokens: np.ndarray  # (c, d) float16, c <= C
    sizes: np.ndarray  # (c,) int64
    updated_at: dt.datetime
    # Batch only (None when not read or not kept): what an incremental day needs.
    levels: np.ndarray | None = None  # (c,) engagement level of each cluster
    rep_item: np.ndarray | None = None  # (c,) item of the member nearest the centroid
    rep_action: np.ndarray | None = None  # (c,) its action
    sums: np.ndarray | None = None  # (c, d) float64 member sums (exact means under additions)
    n_events: int | None = None
    last_ts: int | None = None
    through_day: dt.date | None = None

    @property
    def has_batch_state(self) -> bool:
        return self.sums is not None and self.levels is not None


def _timestamps(values: Sequence[dt.datetime], name: str) -> pa.Array:
    for v in values:
        if not isinstance(v, dt.datetime) or v.tzinfo is None:
            raise SchemaMismatchError(f"{name} must be a timezone-aware datetime, got {v!r}")
    return pa.array(values, type=UTC_US)


def _one_model_version(records: Sequence[Any], model_version: str | None) -> str:
    versions = {r.model_version for r in records}
    if model_version is not None:
        versions.add(model_version)
    if len(versions) != 1:
        raise SchemaMismatchError(
            f"one publish holds one model version, got {sorted(versions)[:5]}"
        )
    return versions.pop()


def _fixed_lists(values: np.ndarray, width: int, dtype: Any) -> pa.FixedSizeListArray:
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


def _ints(records: Sequence[Any], attr: str) -> pa.Array:
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
    mv = _one_model_version(records, model_version)
    return summary_batch(
        [r.user_id for r in records],
        mv,
        _stack(records, "tokens", (int(K), int(d)), np.float16),
        [r.n_events for r in records],
        [r.first_ts for r in records],
        [r.last_ts for r in records],
        [r.computed_at for r in records],
    )


def summary_batch(
    user_ids: Sequence[int] | np.ndarray,
    model_version: str,
    tokens: np.ndarray,
    n_events: Sequence[int] | np.ndarray,
    first_ts: Sequence[int | None],
    last_ts: Sequence[int | None],
    computed_at: Sequence[dt.datetime],
) -> pa.RecordBatch:
    """Columns -> one record batch with the summaries schema: what a batch job that holds
    its users' tokens as one (n, K, d) array writes, without a record object per user
    (one publish holds one model version: ``model_version`` on every row)."""
    n, K, d = tokens.shape
    mv = [model_version] * n
    arrays = [
        pa.array(user_ids, type=pa.int64()),
        pa.array(mv, type=pa.string()),
        _fixed_lists(tokens, K * d, np.float16),
        pa.array(n_events, type=pa.int64()),
        pa.array(first_ts, type=pa.int64()),
        pa.array(last_ts, type=pa.int64()),
        _timestamps(computed_at, "computed_at"),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=summaries_schema(K, d, model_version))


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
    cols = {name: table.column(name).to_pylist() for name in table.schema.names if name != "tokens"}
    return [
        SummaryRecord(
            cols["user_id"][i],
            cols["model_version"][i],
            tokens[i],
            cols["n_events"][i],
            cols["first_ts"][i],
            cols["last_ts"][i],
            cols["computed_at"][i],
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
    mv = _one_model_version(records, model_version)
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
        _fixed_lists(kv, int(np.prod(shape)), np.dtype(kv_dtype)),
        pa.array(n_events, type=pa.int64()),
        pa.array(first_ts, type=pa.int64()),
        pa.array(last_ts, type=pa.int64()),
        _timestamps(updated_at, "updated_at"),
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


_BANK_LISTS = ("levels", "rep_item", "rep_action")


def memory_banks_to_batch(
    records: Sequence[MemoryBankRecord], C: int, d: int, model_version: str | None = None
) -> pa.RecordBatch:
    """Records -> one record batch with the memory-bank schema (capacity C, width d).

    The batch-only columns are written for every record or for none (a job writes
    one kind): mixing would leave some users unable to take an incremental day."""
    if not records and model_version is None:
        raise SchemaMismatchError("an empty batch needs model_version")
    mv = _one_model_version(records, model_version)
    counts = np.zeros(len(records) + 1, dtype=np.int32)
    tokens, sizes = [], []
    for i, r in enumerate(records):
        t = np.asarray(r.tokens, dtype=np.float16).reshape(-1, d)
        s = np.asarray(r.sizes, dtype=np.int64).reshape(-1)
        if len(t) != len(s) or len(t) > C:
            raise SchemaMismatchError(
                f"user {r.user_id}: {len(t)} cluster tokens and {len(s)} sizes (capacity C={C})"
            )
        counts[i + 1] = len(t)
        tokens.append(t)
        sizes.append(s)
    offsets = pa.array(np.cumsum(counts, dtype=np.int32))
    flat = np.concatenate(tokens) if tokens else np.zeros((0, d), np.float16)
    schema = memory_bank_schema(C, d, mv)
    token_lists = pa.ListArray.from_arrays(
        offsets, _fixed_lists(flat, d, np.float16), type=schema.field("tokens").type
    )
    size_flat = pa.array(np.concatenate(sizes) if sizes else np.zeros(0, np.int64))
    arrays = [
        _ints(records, "user_id"),
        pa.array([r.model_version for r in records], type=pa.string()),
        token_lists,
        pa.ListArray.from_arrays(offsets, size_flat, type=pa.list_(pa.int64())),
        _timestamps([r.updated_at for r in records], "updated_at"),
        *_bank_batch_columns(records, offsets, counts, d, schema),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _bank_batch_columns(
    records: Sequence[MemoryBankRecord],
    offsets: pa.Array,
    counts: np.ndarray,
    d: int,
    schema: pa.Schema,
) -> list[pa.Array]:
    """The batch-only columns: all null, or every record's values (checked against c)."""
    names = [*_BANK_LISTS, "sums", "n_events", "last_ts", "through_day"]
    kept = [r.has_batch_state for r in records]
    if not any(kept):
        return [pa.nulls(len(records), schema.field(n).type) for n in names]
    if not all(kept):
        raise SchemaMismatchError(
            "some memory-bank records carry their batch state (levels, sums) and some do "
            "not; write one kind per batch"
        )
    out = []
    for name in _BANK_LISTS:
        parts = []
        for i, r in enumerate(records):
            v = np.asarray(getattr(r, name), dtype=np.int64).reshape(-1)
            if len(v) != counts[i + 1]:
                raise SchemaMismatchError(
                    f"user {r.user_id}: {len(v)} {name} for {counts[i + 1]} clusters"
                )
            parts.append(v)
        out.append(pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(parts))))
    sums = []
    for i, r in enumerate(records):
        v = np.asarray(r.sums, dtype=np.float64)
        if v.shape != (counts[i + 1], d):
            raise SchemaMismatchError(
                f"user {r.user_id}: sums {v.shape}, expected ({counts[i + 1]}, {d})"
            )
        sums.append(v)
    out.append(
        pa.ListArray.from_arrays(
            offsets,
            _fixed_lists(np.concatenate(sums), d, np.float64),
            type=schema.field("sums").type,
        )
    )
    out.append(pa.array([r.n_events for r in records], type=pa.int64()))
    out.append(pa.array([r.last_ts for r in records], type=pa.int64()))
    out.append(pa.array([r.through_day for r in records], type=pa.date32()))
    return out


def _list_rows(column: Any, dtype: Any, width: int = 0) -> tuple[np.ndarray, np.ndarray]:
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


def memory_banks_from_table(table: pa.Table | pa.RecordBatch) -> list[MemoryBankRecord]:
    """Rows -> records. Lists are sliced out of each column's flat numpy values
    (``to_pylist`` of 10^3 nested tokens cost ~30 ms a user here). The batch-only
    columns are read when the table has them and they are not null."""
    _, d = memory_bank_shape(table.schema)
    n = table.num_rows
    tokens, t_at = _list_rows(table.column("tokens"), np.float16, d)
    sizes, s_at = _list_rows(table.column("sizes"), np.int64)
    cols = {name: table.column(name).to_pylist() for name in ("user_id", "model_version")}
    stamps = table.column("updated_at").to_pylist()
    names = table.schema.names
    batch: dict[str, Any] = {}
    if "sums" in names and table.column("sums").null_count < n:
        for name in _BANK_LISTS:
            batch[name] = _list_rows(table.column(name), np.int64)
        batch["sums"] = _list_rows(table.column("sums"), np.float64, d)
        for name in ("n_events", "last_ts", "through_day"):
            batch[name] = table.column(name).to_pylist()

    def extra(i: int) -> dict[str, Any]:
        if not batch or batch["n_events"][i] is None:
            return {}
        out: dict[str, Any] = {}
        for name in (*_BANK_LISTS, "sums"):
            flat, at = batch[name]
            out[name] = flat[at[i] : at[i + 1]].copy()
        for name in ("n_events", "last_ts", "through_day"):
            out[name] = batch[name][i]
        return out

    return [
        MemoryBankRecord(
            cols["user_id"][i],
            cols["model_version"][i],
            tokens[t_at[i] : t_at[i + 1]].copy(),
            sizes[s_at[i] : s_at[i + 1]].copy(),
            stamps[i],
            **extra(i),
        )
        for i in range(n)
    ]
