"""Atomic, idempotent upserts: workers stage fragments, one commit publishes them.

Shape of a distributed publish (Spark or anything else)::

    # on each worker: write data files; nothing is visible yet
    staged = stage_fragments(location, "summaries", record_batches)
    # on the driver: one commit replaces those users' rows and adds the new ones
    result = commit_upsert(location, "summaries", collected_staged)

The commit is one lance ``Update`` transaction: deletion vectors for the rows
of users being replaced plus the new fragments. A run that dies while staging
or before the commit leaves the table at exactly its old version (the staged
files are unreferenced; version cleanup removes them). Publishing the same
input twice deletes the first copy's rows in the same commit that adds the
second, so a user is never in the table twice.

One committer per table: lance would rebase a concurrent append past our
deletions and could keep two rows for a user, so commits in this process take
a lock, and a commit that finds another writer's commit in between verifies
uniqueness and raises :class:`ConcurrentWriteError` if it was broken.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import FragmentMetadata

from summarizer.store.commit_guard import publish_lock, verify_staged
from summarizer.store.errors import (
    ConcurrentWriteError,
    DuplicateUserError,
    SchemaMismatchError,
    StoreError,
)
from summarizer.store.location import StoreLocation
from summarizer.store.schema import KEY, META_MODEL, model_version_of
from summarizer.store.stage import (
    StagedFragments,
    canonical_schema,
    check_against_table,
    check_table,
    stage_fragments,
)

# Below this many users, find their old rows through the BTREE index; above it a
# scan of the user_id column (8 bytes a row) is cheaper than a huge IN list.
INDEXED_LOOKUP_MAX = 4096

_commit_locks: dict[str, threading.Lock] = {}
_commit_locks_guard = threading.Lock()


def _commit_lock(table_uri: str) -> threading.Lock:
    with _commit_locks_guard:
        return _commit_locks.setdefault(table_uri, threading.Lock())


@dataclass(frozen=True)
class PublishResult:
    """What one commit did. ``version`` is the table version after re-indexing."""

    table: str
    version: int | None
    rows: int
    inserted: int
    replaced: int
    created: bool = False
    promoted: bool = False


def _merge_staged(
    table: str, staged: Sequence[StagedFragments]
) -> tuple[dict[str, str], np.ndarray]:
    for s in staged:
        if s.table != table:
            raise StoreError(f"staged fragments of table '{s.table}' passed for '{table}'")
    metas = {json.dumps(s.schema_metadata, sort_keys=True) for s in staged}
    if len(metas) != 1:
        raise SchemaMismatchError(
            f"staged fragments for '{table}' disagree on shape or model version: {sorted(metas)}"
        )
    ids = np.concatenate([s.user_ids for s in staged])
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1]
        raise DuplicateUserError(
            f"publish to '{table}' holds {len(dup)} user(s) more than once "
            f"(e.g. {dup[:5].tolist()}); the table keeps one row per user"
        )
    return dict(staged[0].schema_metadata), ids


def _old_rows(ds: lance.LanceDataset, ids: np.ndarray) -> np.ndarray:
    """Row addresses of the rows these users have now."""
    if len(ids) <= INDEXED_LOOKUP_MAX:
        found = ds.to_table(
            columns=[KEY],
            with_row_address=True,
            filter=pc.field(KEY).isin(pa.array(ids, type=pa.int64())),
        )
        return np.asarray(found["_rowaddr"].to_numpy(), dtype=np.uint64)
    scan = ds.to_table(columns=[KEY], with_row_address=True)
    hit = np.isin(scan[KEY].to_numpy(), ids)
    return np.asarray(scan["_rowaddr"].to_numpy(), dtype=np.uint64)[hit]


def _delete_old_rows(
    ds: lance.LanceDataset, addresses: np.ndarray
) -> tuple[list[FragmentMetadata], list[int]]:
    addresses = np.sort(addresses)  # groups each fragment's rows together
    frag_ids = (addresses >> np.uint64(32)).astype(np.int64)
    offsets = (addresses & np.uint64(0xFFFFFFFF)).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, frag_ids[1:] != frag_ids[:-1]]) if len(frag_ids) else None
    bounds: list[int] = [] if starts is None else [*starts.tolist(), len(frag_ids)]
    updated, removed = [], []
    for lo, hi in itertools.pairwise(bounds):
        fragment = ds.get_fragment(int(frag_ids[lo]))
        assert fragment is not None  # the addresses come from this very version
        # Writes a deletion file but commits nothing; the Update below makes it count.
        meta = fragment.delete_rows(offsets[lo:hi].tolist())
        if meta is None:
            removed.append(int(frag_ids[lo]))
        else:
            updated.append(meta)
    return updated, removed


def _check_unique(ds: lance.LanceDataset, ids: np.ndarray, table: str) -> None:
    keys = ds.to_table(columns=[KEY])[KEY].to_numpy()
    mine = keys[np.isin(keys, ids)]
    if len(np.unique(mine)) != len(mine):
        raise ConcurrentWriteError(
            f"another writer committed to '{table}' during this publish and some users now "
            "have two rows; run one committer per table, then rerun the publish (it is "
            "idempotent) to repair"
        )


def ensure_index(location: StoreLocation, table: str) -> lance.LanceDataset:
    """Create the BTREE index on user_id, or fold unindexed rows into it."""
    ds = location.open(table)
    if any(KEY in idx.field_names for idx in ds.describe_indices()):
        # Rows committed after the index was built are scanned until the index is optimized.
        ds.optimize.optimize_indices()
    else:
        from lancedb.index import BTree

        location.connect().open_table(table).create_index(KEY, config=BTree(), replace=True)
    return location.open(table)


def commit_upsert(
    location: StoreLocation, table: str, staged: Sequence[StagedFragments]
) -> PublishResult:
    """Make staged fragments visible in one commit, replacing those users' old rows.

    Every staged file is checked first (:func:`verify_staged`), and the commit holds the
    table's publish lock (:func:`publish_lock`)."""
    check_table(table)
    staged = [s for s in staged if s.num_rows]
    if not staged:
        version = location.open(table).version if location.exists(table) else None
        return PublishResult(table, version, 0, 0, 0)
    meta, ids = _merge_staged(table, staged)
    schema = canonical_schema(table, meta)
    fragments = [FragmentMetadata.from_json(j) for s in staged for j in s.fragments]
    verify_staged(location, table, fragments, len(ids))
    uri = location.table_uri(table)
    with _commit_lock(uri), publish_lock(location, table), _conflicts_named(table):
        return _commit(location, table, fragments, schema, meta, ids)


@contextlib.contextmanager
def _conflicts_named(table: str) -> Iterator[None]:
    """lance's commit-conflict errors as a ConcurrentWriteError that says what to do."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        if "conflict" not in str(exc).lower() or isinstance(exc, StoreError):
            raise
        raise ConcurrentWriteError(
            f"another publish committed to '{table}' while this one ran (one committer per "
            "table): nothing of this run is visible; rerun the publish"
        ) from exc


def _commit(
    location: StoreLocation,
    table: str,
    fragments: list[FragmentMetadata],
    schema: pa.Schema,
    meta: dict[str, str],
    ids: np.ndarray,
) -> PublishResult:
    uri = location.table_uri(table)
    options = dict(location.storage_options) or None
    if not location.exists(table):
        lance.LanceDataset.commit(
            uri, lance.LanceOperation.Overwrite(schema, fragments), storage_options=options
        )
        ds = ensure_index(location, table)
        return PublishResult(table, ds.version, len(ids), len(ids), 0, created=True)
    ds = location.open(table)
    check_against_table(table, ds.schema, schema, location)
    read_version = ds.version
    addresses = _old_rows(ds, ids)
    updated, removed = _delete_old_rows(ds, addresses)
    op = lance.LanceOperation.Update(
        removed_fragment_ids=removed, updated_fragments=updated, new_fragments=fragments
    )
    ds = lance.LanceDataset.commit(ds, op, read_version=read_version, storage_options=options)
    if ds.version != read_version + 1:
        _check_unique(ds, ids, table)
    if model_version_of(ds.schema) != meta.get(META_MODEL):
        ds.update_schema_metadata({META_MODEL: meta.get(META_MODEL, "")})
    ds = ensure_index(location, table)
    return PublishResult(table, ds.version, len(ids), len(ids) - len(addresses), len(addresses))


def publish_data(
    location: StoreLocation,
    table: str,
    data: Iterable[Any] | Any,
    *,
    schema: pa.Schema | None = None,
) -> PublishResult:
    """In-process publish: stage everything, then one commit (the same path as a Spark run)."""
    return commit_upsert(location, table, [stage_fragments(location, table, data, schema=schema)])
