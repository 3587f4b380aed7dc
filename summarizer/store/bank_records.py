"""Rows of the ``memory_bank`` table (TWIN-V2 cluster tokens for the GSU) and their
conversion to and from Arrow and from :class:`~summarizer.memory.clustering.MemoryBank`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from summarizer.memory.clustering import MemoryBank
from summarizer.store.errors import SchemaMismatchError
from summarizer.store.records import (
    fixed_lists,
    int_column,
    list_rows,
    one_model_version,
    timestamps_array,
)
from summarizer.store.schema import memory_bank_schema, memory_bank_shape


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

    @classmethod
    def from_bank(
        cls,
        bank: MemoryBank,
        user_id: int,
        model_version: str,
        updated_at: dt.datetime,
        *,
        last_ts: int | None = None,
        through_day: dt.date | None = None,
    ) -> MemoryBankRecord:
        """A TWIN-V2 bank's row: float16 tokens (the means) and sizes for the scorer, plus
        the exact sums, levels and representatives an incremental day needs."""
        return cls(
            int(user_id),
            model_version,
            bank.centroids.astype(np.float16),
            bank.sizes.copy(),
            updated_at,
            levels=bank.levels.copy(),
            rep_item=bank.rep_item.copy(),
            rep_action=bank.rep_action.copy(),
            sums=bank.sums.copy(),
            n_events=bank.n_events,
            last_ts=last_ts,
            through_day=through_day,
        )

    def to_bank(self) -> MemoryBank:
        """The stored bank back, to add events to (needs the batch-only columns)."""
        if not self.has_batch_state:
            raise ValueError(
                f"user {self.user_id}: this memory-bank row has no batch state (sums, "
                "levels); rebuild it with `vista job cluster --full`"
            )
        assert self.sums is not None and self.levels is not None
        assert self.rep_item is not None and self.rep_action is not None
        return MemoryBank(
            np.asarray(self.sums, dtype=np.float64).copy(),
            np.asarray(self.sizes, dtype=np.int64).copy(),
            np.asarray(self.levels, dtype=np.int64).copy(),
            np.asarray(self.rep_item, dtype=np.int64).copy(),
            np.asarray(self.rep_action, dtype=np.int64).copy(),
        )


_BANK_LISTS = ("levels", "rep_item", "rep_action")


def memory_banks_to_batch(
    records: Sequence[MemoryBankRecord], C: int, d: int, model_version: str | None = None
) -> pa.RecordBatch:
    """Records -> one record batch with the memory-bank schema (capacity C, width d).

    The batch-only columns are written for every record or for none (a job writes
    one kind): mixing would leave some users unable to take an incremental day."""
    if not records and model_version is None:
        raise SchemaMismatchError("an empty batch needs model_version")
    mv = one_model_version(records, model_version)
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
        offsets, fixed_lists(flat, d, np.float16), type=schema.field("tokens").type
    )
    size_flat = pa.array(np.concatenate(sizes) if sizes else np.zeros(0, np.int64))
    arrays = [
        int_column(records, "user_id"),
        pa.array([r.model_version for r in records], type=pa.string()),
        token_lists,
        pa.ListArray.from_arrays(offsets, size_flat, type=pa.list_(pa.int64())),
        timestamps_array([r.updated_at for r in records], "updated_at"),
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
            fixed_lists(np.concatenate(sums), d, np.float64),
            type=schema.field("sums").type,
        )
    )
    out.append(pa.array([r.n_events for r in records], type=pa.int64()))
    out.append(pa.array([r.last_ts for r in records], type=pa.int64()))
    out.append(pa.array([r.through_day for r in records], type=pa.date32()))
    return out


def memory_banks_from_table(table: pa.Table | pa.RecordBatch) -> list[MemoryBankRecord]:
    """Rows -> records. Lists are sliced out of each column's flat numpy values
    (``to_pylist`` of 10^3 nested tokens cost ~30 ms a user here). The batch-only
    columns are read when the table has them and they are not null."""
    _, d = memory_bank_shape(table.schema)
    n = table.num_rows
    tokens, t_at = list_rows(table.column("tokens"), np.float16, d)
    sizes, s_at = list_rows(table.column("sizes"), np.int64)
    cols = {name: table.column(name).to_pylist() for name in ("user_id", "model_version")}
    stamps = table.column("updated_at").to_pylist()
    names = table.schema.names
    batch: dict[str, Any] = {}
    if "sums" in names and table.column("sums").null_count < n:
        for name in _BANK_LISTS:
            batch[name] = list_rows(table.column(name), np.int64)
        batch["sums"] = list_rows(table.column("sums"), np.float64, d)
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
