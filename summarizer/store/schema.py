"""Table schemas of the summary store and the checks that keep data in them.

Three tables, one row per user each (the key is ``user_id``):

- ``summaries`` (serving): K x d float16 tokens flattened into a
  ``fixed_size_list<float16>[K*d]``; K, d and the model version are in the
  schema metadata so a reader can check them without reading a row.
- ``state`` (batch only): the summarizer's running state, float64, flattened;
  its shape is in the schema metadata.
- ``memory_bank`` (optional, for the GSU): up to C cluster tokens of width d
  per user, with the cluster sizes (what the scorer reads), plus what the
  nightly cluster job needs to add a day without re-clustering (batch only,
  nullable): each cluster's engagement level, representative item/action and
  float64 member sum, the user's event count, last event time and last day.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from summarizer.store.errors import SchemaMismatchError, ShapeMismatchError

SUMMARIES = "summaries"
STATE = "state"
MEMORY_BANK = "memory_bank"
TABLES = (SUMMARIES, STATE, MEMORY_BANK)
KEY = "user_id"

META_TABLE = "vista.table"
META_FORMAT = "vista.format"
META_MODEL = "vista.model_version"
META_K = "vista.K"
META_D = "vista.d"
META_C = "vista.C"
META_KV_SHAPE = "vista.kv_shape"
# Summaries of models with a ridge read-out also carry the summary's second moments:
# float32, this many values per row ((k+1) x (k+2)); absent or "0": no such column.
META_MOMENTS = "vista.moments"
# The state's storage precision, float32 for new tables: the fold runs in float64 in
# memory and rounds once per stored day (relative 6e-8, far below the float16 tokens
# served); half the bytes a batch job reads and writes per touched user. State tables
# without this key were written in float64 and keep being written that way.
META_KV_DTYPE = "vista.kv_dtype"
STATE_DTYPES = {"float32": pa.float32(), "float64": pa.float64()}
FORMAT_VERSION = "1"
# Lance file format a new table is created with (None: lance's default, 2.2 with pylance
# 14). The state table's rows are ~17 KB each (one float32 list of L*H*F*(D+1) values):
# lance 2.2 writes lists that wide at ~0.5 GB/s, 2.0 at ~1.3 GB/s, and filtered reads by
# user id take the same time in both (BENCHMARKS.md, issue 6). Every touched user's state
# is rewritten each day, so the batch side's table uses 2.0. A table keeps the format it
# was created with (lance writes new fragments in the dataset's format).
FILE_VERSIONS: dict[str, str | None] = {SUMMARIES: None, STATE: "2.0", MEMORY_BANK: None}

UTC_US = pa.timestamp("us", tz="UTC")


def _meta(table: str, model_version: str, **extra: str) -> dict[str, str]:
    return {META_TABLE: table, META_FORMAT: FORMAT_VERSION, META_MODEL: model_version, **extra}


def summaries_schema(K: int, d: int, model_version: str, moments: int = 0) -> pa.Schema:
    """Schema of the serving table for K tokens of width d (and, for a ridge read-out,
    ``moments`` float32 second moments a row, in float32: the request folds recent events
    into them, so float16 would not do)."""
    _check_positive(K=K, d=d)
    fields = [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("tokens", pa.list_(pa.float16(), K * d), nullable=False),
        pa.field("n_events", pa.int64(), nullable=False),
        pa.field("first_ts", pa.int64()),
        pa.field("last_ts", pa.int64()),
        pa.field("computed_at", UTC_US, nullable=False),
    ]
    meta = {META_K: str(K), META_D: str(d)}
    if moments:
        _check_positive(moments=moments)
        fields.append(pa.field("moments", pa.list_(pa.float32(), moments), nullable=False))
        meta[META_MOMENTS] = str(moments)
    return pa.schema(fields, metadata=_meta(SUMMARIES, model_version, **meta))


def summary_moments(schema: pa.Schema) -> int:
    """Second moments a summary row carries (0: none)."""
    return int(metadata_of(schema).get(META_MOMENTS, "0"))


def state_schema(
    kv_shape: tuple[int, ...], model_version: str, kv_dtype: str = "float32"
) -> pa.Schema:
    """Schema of the batch-only state table for a state tensor of ``kv_shape``."""
    _check_positive(**{f"kv_shape[{i}]": n for i, n in enumerate(kv_shape)})
    if kv_dtype not in STATE_DTYPES:
        raise SchemaMismatchError(
            f"kv_dtype must be one of {sorted(STATE_DTYPES)}, got {kv_dtype!r}"
        )
    return pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("kv", pa.list_(STATE_DTYPES[kv_dtype], math.prod(kv_shape)), nullable=False),
            pa.field("n_events", pa.int64(), nullable=False),
            pa.field("first_ts", pa.int64()),
            pa.field("last_ts", pa.int64()),
            pa.field("updated_at", UTC_US, nullable=False),
            # The last event-partition day folded in (batch jobs: a rerun of that day is a no-op).
            pa.field("through_day", pa.date32()),
        ],
        metadata=_meta(
            STATE,
            model_version,
            **{META_KV_SHAPE: json.dumps(list(kv_shape)), META_KV_DTYPE: kv_dtype},
        ),
    )


def memory_bank_schema(C: int, d: int, model_version: str) -> pa.Schema:
    """Schema of the memory bank: up to C cluster tokens of width d per user, with sizes."""
    _check_positive(C=C, d=d)
    return pa.schema(
        [
            pa.field("user_id", pa.int64(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
            pa.field("tokens", pa.list_(pa.list_(pa.float16(), d)), nullable=False),
            pa.field("sizes", pa.list_(pa.int64()), nullable=False),
            pa.field("updated_at", UTC_US, nullable=False),
            # Batch only (the incremental cluster job); online reads skip these columns.
            pa.field("levels", pa.list_(pa.int64())),
            pa.field("rep_item", pa.list_(pa.int64())),
            pa.field("rep_action", pa.list_(pa.int64())),
            pa.field("sums", pa.list_(pa.list_(pa.float64(), d))),
            pa.field("n_events", pa.int64()),
            pa.field("last_ts", pa.int64()),
            pa.field("through_day", pa.date32()),
        ],
        metadata=_meta(MEMORY_BANK, model_version, **{META_C: str(C), META_D: str(d)}),
    )


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SchemaMismatchError(f"{name} must be a positive integer, got {value!r}")


def metadata_of(schema: pa.Schema) -> dict[str, str]:
    """Schema metadata as str -> str (pyarrow keeps bytes)."""
    raw: Mapping[bytes, bytes] = schema.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def _meta_int(schema: pa.Schema, key: str, table: str) -> int:
    meta = metadata_of(schema)
    if key not in meta:
        raise SchemaMismatchError(
            f"table '{table}' has no '{key}' in its schema metadata; "
            "it was not written by this store (publish through SummaryStore)"
        )
    return int(meta[key])


def summary_shape(schema: pa.Schema) -> tuple[int, int]:
    """(K, d) of a summaries schema, cross-checked with the tokens column's width."""
    K, d = _meta_int(schema, META_K, SUMMARIES), _meta_int(schema, META_D, SUMMARIES)
    width = schema.field("tokens").type.list_size
    if width != K * d:
        raise SchemaMismatchError(
            f"table '{SUMMARIES}': tokens hold {width} values per user but metadata says "
            f"K={K}, d={d} ({K * d})"
        )
    return K, d


def kv_shape_of(schema: pa.Schema) -> tuple[int, ...]:
    """Shape of the state tensor recorded in a state schema."""
    meta = metadata_of(schema)
    if META_KV_SHAPE not in meta:
        raise SchemaMismatchError(f"table '{STATE}' has no '{META_KV_SHAPE}' in its metadata")
    return tuple(int(n) for n in json.loads(meta[META_KV_SHAPE]))


def kv_dtype_of(schema: pa.Schema) -> str:
    """The state table's storage precision (tables written before it was recorded: float64)."""
    return metadata_of(schema).get(META_KV_DTYPE, "float64")


def memory_bank_shape(schema: pa.Schema) -> tuple[int, int]:
    """(C, d) of a memory-bank schema."""
    return _meta_int(schema, META_C, MEMORY_BANK), _meta_int(schema, META_D, MEMORY_BANK)


def model_version_of(schema: pa.Schema) -> str | None:
    return metadata_of(schema).get(META_MODEL)


def check_summary_shape(schema: pa.Schema, K: int, d: int, moments: int = 0) -> None:
    """Raise ShapeMismatchError unless the stored tokens are K x d (and the rows carry the
    ``moments`` a ridge read-out needs)."""
    have_K, have_d = summary_shape(schema)
    have_m = summary_moments(schema)
    if (have_K, have_d, have_m) != (K, d, moments):
        extra = f" and {have_m} moments a row" if have_m or moments else ""
        want = f" and {moments} moments" if have_m or moments else ""
        raise ShapeMismatchError(
            f"the store holds summaries of K={have_K} tokens of width d={have_d}{extra}, but "
            f"the model makes K={K}, d={d}{want}; publish this model's summaries to another "
            "store.uri (or re-summarize everyone with it) before serving it"
        )


def check_columns(actual: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Every expected column present with the expected type, and nothing else.

    Types are compared without field names of nested items, so a list built by
    another Arrow writer (item name "element") still matches.
    """
    for f in expected:
        idx = actual.get_field_index(f.name)
        if idx < 0:
            raise SchemaMismatchError(f"{where}: column '{f.name}' ({f.type}) is missing")
        got = actual.field(idx).type
        if not _same_type(got, f.type):
            raise SchemaMismatchError(
                f"{where}: column '{f.name}' has type {got}, expected {f.type}"
            )
    extra = [name for name in actual.names if expected.get_field_index(name) < 0]
    if extra:
        raise SchemaMismatchError(f"{where}: unexpected column(s) {extra}")


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b):
        return a.list_size == b.list_size and _same_type(a.value_type, b.value_type)
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_type(a.value_type, b.value_type)
    return bool(a.equals(b))


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema, where: str) -> pa.RecordBatch:
    """Check a batch against the table schema; return it in the table's column order.

    Rejects nulls in required columns and negative user ids here, on the
    worker, so a bad row fails the run before anything is committed.
    """
    check_columns(batch.schema, schema, where)
    columns = []
    for f in schema:
        col = batch.column(batch.schema.get_field_index(f.name))
        if not f.nullable and col.null_count:
            raise SchemaMismatchError(f"{where}: column '{f.name}' has {col.null_count} null(s)")
        columns.append(col if col.type.equals(f.type) else col.cast(f.type))
    out = pa.RecordBatch.from_arrays(columns, schema=schema)
    ids = out.column(0)
    if len(ids) and pc.min(ids).as_py() < 0:
        raise SchemaMismatchError(f"{where}: user_id must be non-negative")
    return out
