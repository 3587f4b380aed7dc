"""The worker half of a publish: check the data, write fragments, commit nothing.

A worker (a Spark task, or this process) turns record batches or record
objects into lance data files under the table's folder and returns a
:class:`StagedFragments`: the fragments' metadata as JSON and the user ids it
holds. Until the driver commits them (:mod:`summarizer.store.write`) the files
are invisible to every reader; if the run dies, version cleanup removes them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import write_fragments

from summarizer.store.bank_records import MemoryBankRecord, memory_banks_to_batch
from summarizer.store.errors import SchemaMismatchError, StoreError
from summarizer.store.location import StoreLocation
from summarizer.store.records import (
    StateRecord,
    SummaryRecord,
    states_to_batch,
    summaries_to_batch,
)
from summarizer.store.schema import (
    FILE_VERSIONS,
    KEY,
    META_MODEL,
    META_TABLE,
    STATE,
    SUMMARIES,
    TABLES,
    check_columns,
    check_summary_shape,
    conform_batch,
    kv_dtype_of,
    kv_shape_of,
    memory_bank_schema,
    memory_bank_shape,
    metadata_of,
    model_version_of,
    state_schema,
    summaries_schema,
    summary_moments,
    summary_shape,
)

RECORDS_PER_BATCH = 2048


@dataclass(frozen=True)
class StagedFragments:
    """Written but invisible fragments of one table, as a worker hands them to the driver.

    Plain data (JSON strings, a numpy array), so it pickles for Spark's collect()
    and round-trips through :meth:`to_json` for anything else.
    """

    table: str
    fragments: tuple[str, ...]
    user_ids: np.ndarray
    schema_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return int(len(self.user_ids))

    def to_json(self) -> str:
        return json.dumps(
            {
                "table": self.table,
                "fragments": list(self.fragments),
                "user_ids": self.user_ids.tolist(),
                "schema_metadata": self.schema_metadata,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> StagedFragments:
        raw = json.loads(text)
        return cls(
            raw["table"],
            tuple(raw["fragments"]),
            np.asarray(raw["user_ids"], dtype=np.int64),
            dict(raw["schema_metadata"]),
        )


def check_table(table: str) -> None:
    if table not in TABLES:
        raise StoreError(f"unknown table {table!r}; the store has {list(TABLES)}")


def canonical_schema(table: str, metadata: dict[str, str]) -> pa.Schema:
    """The table's schema rebuilt from its vista.* metadata (canonical types and nullability)."""
    probe = pa.schema([], metadata=metadata)
    mv = metadata.get(META_MODEL, "")
    if table == SUMMARIES:
        K, d = int(metadata["vista.K"]), int(metadata["vista.d"])
        return summaries_schema(K, d, mv, summary_moments(probe))
    if table == STATE:
        return state_schema(kv_shape_of(probe), mv, kv_dtype_of(probe))
    C, d = memory_bank_shape(probe)
    return memory_bank_schema(C, d, mv)


def _records_to_batch(
    records: list[Any], schema: pa.Schema | None, existing: pa.Schema | None = None
) -> pa.RecordBatch:
    first = records[0]
    if isinstance(first, SummaryRecord):
        shape = summary_shape(schema) if schema is not None else (None, None)
        return summaries_to_batch(records, *shape)
    if isinstance(first, StateRecord):
        # Stored in the existing table's precision (float64 for tables written before
        # float32 states), else the schema's, else the current default.
        like = schema if schema is not None else existing
        dtype = kv_dtype_of(like) if like is not None else "float32"
        return states_to_batch(
            records, kv_shape_of(schema) if schema is not None else None, kv_dtype=dtype
        )
    if isinstance(first, MemoryBankRecord):
        if schema is None:
            raise SchemaMismatchError(
                "memory-bank records need the capacity C: pass "
                "schema=memory_bank_schema(C, d, model_version) for the first publish"
            )
        return memory_banks_to_batch(records, *memory_bank_shape(schema))
    raise SchemaMismatchError(f"cannot publish {type(first).__name__} objects")


def _as_batches(
    data: Any, schema: pa.Schema | None, existing: pa.Schema | None = None
) -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        yield from data.to_batches(max_chunksize=RECORDS_PER_BATCH)
    elif isinstance(data, pa.RecordBatch):
        yield data
    elif isinstance(data, pa.RecordBatchReader):
        yield from data
    else:
        it = iter(data)
        while chunk := list(itertools.islice(it, RECORDS_PER_BATCH)):
            if isinstance(chunk[0], pa.RecordBatch):
                yield from chunk
            else:
                yield _records_to_batch(chunk, schema, existing)


def _target_schema(
    location: StoreLocation,
    table: str,
    first: pa.RecordBatch,
    schema: pa.Schema | None,
    existing: pa.Schema | None,
) -> pa.Schema:
    if schema is not None:
        meta = metadata_of(schema)
    elif metadata_of(first.schema).get(META_TABLE) == table:
        meta = metadata_of(first.schema)
    elif existing is not None:
        meta = metadata_of(existing)
        if first.num_rows:
            # Arrow from a batch job may carry no metadata: the rows say which model made them.
            meta[META_MODEL] = first.column("model_version")[0].as_py()
    else:
        raise SchemaMismatchError(
            f"table '{table}' does not exist and the data carries no shape metadata; "
            f"pass schema= (e.g. summaries_schema(K, d, model_version)) to the first publish"
        )
    if meta.get(META_TABLE) != table:
        raise SchemaMismatchError(f"data is for table {meta.get(META_TABLE)!r}, not {table!r}")
    target = canonical_schema(table, meta)
    if existing is not None:
        # Checked here, on the worker, so a wrong shape fails before any file is written.
        check_against_table(table, existing, target, location)
    return target


def check_against_table(
    table: str, existing: pa.Schema, target: pa.Schema, location: StoreLocation
) -> None:
    if table == SUMMARIES:
        check_summary_shape(existing, *summary_shape(target), summary_moments(target))
    check_columns(existing, target, f"table '{table}' at {location.table_uri(table)}")


def stage_fragments(
    location: StoreLocation,
    table: str,
    data: Any,
    *,
    schema: pa.Schema | None = None,
    max_rows_per_file: int = 1 << 20,
) -> StagedFragments:
    """Write data files for ``table`` without committing them (the worker half of a publish).

    ``data``: a pyarrow Table, RecordBatch or RecordBatchReader, or an iterable of
    record batches or of SummaryRecord / StateRecord / MemoryBankRecord. Every
    batch is checked (columns, types, nulls, non-negative ids, one model version)
    before it is written; a failure raises and nothing becomes visible.
    """
    check_table(table)
    existing = location.open(table).schema if location.exists(table) else None
    batches = _as_batches(data, schema, existing)
    first = next(batches, None)
    if first is None:
        return StagedFragments(table, (), np.zeros(0, np.int64), {})
    target = _target_schema(location, table, first, schema, existing)
    model_version = model_version_of(target)
    ids: list[np.ndarray] = []
    failure: list[BaseException] = []

    def checked() -> Iterator[pa.RecordBatch]:
        # lance wraps a Python exception raised inside the reader in an OSError;
        # keep the original so callers see a SchemaMismatchError, not an IO error.
        try:
            for batch in itertools.chain([first], batches):
                out = conform_batch(batch, target, f"publish to '{table}'")
                if (
                    out.num_rows
                    and not pc.all(pc.equal(out.column("model_version"), model_version)).as_py()
                ):
                    raise SchemaMismatchError(
                        f"publish to '{table}': rows of several model versions; "
                        f"one publish holds one ({model_version})"
                    )
                ids.append(out.column(KEY).to_numpy())
                yield out
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(target, checked())
    # A new table is created in its own file format (the commit takes the fragments');
    # an existing one's fragments are written in the format it has.
    version = FILE_VERSIONS[table] if existing is None else None
    try:
        fragments = write_fragments(
            reader,
            location.table_uri(table),
            schema=target,
            max_rows_per_file=max_rows_per_file,
            storage_options=dict(location.storage_options) or None,
            data_storage_version=version,  # None: the library's default (an existing table's)
        )
    except BaseException as exc:
        if failure:
            raise failure[0] from exc
        raise
    user_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return StagedFragments(
        table,
        tuple(json.dumps(f.to_json()) for f in fragments),
        user_ids.astype(np.int64, copy=False),
        metadata_of(target),
    )
