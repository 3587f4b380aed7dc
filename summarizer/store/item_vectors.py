"""The item-vectors table: pretrained item embeddings (``vista job item-vectors``), versioned.

One row per item: ``item_id`` (int64), ``vector`` (float32 x k) and ``bias`` (float32), and
in the schema's metadata what made them (factors, L2, the mean response they are centred
on, the last day of events read). Every write is a new lance version of the whole table,
so a model records the version it started from and any version can be read back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from summarizer.data.item_vectors import ItemVectors
from summarizer.store.errors import StoreError
from summarizer.store.location import StoreLocation

ITEM_VECTORS = "item_vectors"
META_ITEM_VECTORS = b"vista.item_vectors"


def item_vectors_table(
    item_ids: np.ndarray, vectors: np.ndarray, bias: np.ndarray, meta: dict[str, Any]
) -> pa.Table:
    """The table's Arrow form, checked: unique ids, (n, k) vectors, finite values."""
    ids = np.asarray(item_ids, dtype=np.int64)
    vec = np.asarray(vectors, dtype=np.float32)
    b = np.asarray(bias, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != ids.shape[0] or b.shape != ids.shape:
        raise ValueError(
            f"item vectors: {ids.shape[0]} ids need ({ids.shape[0]}, k) vectors and "
            f"({ids.shape[0]},) biases, got {vec.shape} and {b.shape}"
        )
    if len(np.unique(ids)) != len(ids):
        raise ValueError("item vectors: item_id values must be unique")
    if not (np.isfinite(vec).all() and np.isfinite(b).all()):
        raise ValueError("item vectors: vectors and biases must be finite")
    if "mean_response" not in meta:
        raise ValueError("item vectors: metadata must record the mean_response")
    k = vec.shape[1]
    schema = pa.schema(
        [
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), k), nullable=False),
            pa.field("bias", pa.float32(), nullable=False),
        ],
        metadata={META_ITEM_VECTORS: json.dumps({**meta, "factors": k}, sort_keys=True)},
    )
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), k)
    return pa.Table.from_arrays([pa.array(ids), flat, pa.array(b)], schema=schema)


def write_item_vectors(location: StoreLocation, table: pa.Table) -> int:
    """Write a new version of the whole table (an item_vectors_table); returns its version."""
    import lance

    mode = "overwrite" if location.exists(ITEM_VECTORS) else "create"
    ds = lance.write_dataset(
        table,
        location.table_uri(ITEM_VECTORS),
        mode=mode,
        storage_options=dict(location.storage_options) or None,
    )
    return int(ds.version)


def read_item_vectors(location: StoreLocation, version: int | None = None) -> ItemVectors:
    """One version of the table (default: the latest)."""
    ds = location.open(ITEM_VECTORS, version)
    raw = (ds.schema.metadata or {}).get(META_ITEM_VECTORS)
    if raw is None:
        raise StoreError(f"table '{ITEM_VECTORS}' at {location.uri} carries no vista metadata")
    t = ds.to_table()
    k = t.schema.field("vector").type.list_size
    vec = t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, k)
    return ItemVectors(
        t.column("item_id").to_numpy(),
        vec.astype(np.float32, copy=False),
        t.column("bias").to_numpy().astype(np.float32, copy=False),
        json.loads(raw),
        int(ds.version),
    )
