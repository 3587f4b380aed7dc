"""Table versions: the serving tag, rollback, compaction, cleanup and a summary of it all.

Readers pin the ``serving`` tag. ``promote`` moves it and remembers where it was
in ``serving-previous``, so ``rollback()`` without a version undoes the last
promote. Cleanup never removes a tagged version nor the latest one.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

import lance

from summarizer.store.errors import NoServingVersionError, VersionNotFoundError
from summarizer.store.location import StoreLocation
from summarizer.store.read import SERVING_TAG
from summarizer.store.schema import SUMMARIES, TABLES, metadata_of

PREVIOUS_TAG = "serving-previous"


def tag_versions(ds: lance.LanceDataset) -> dict[str, int]:
    return {name: int(info["version"]) for name, info in ds.tags.list().items()}


def _set_tag(ds: lance.LanceDataset, tag: str, version: int) -> None:
    if tag in ds.tags.list():
        ds.tags.update(tag, version)
    else:
        ds.tags.create(tag, version)


def _check_version(ds: lance.LanceDataset, version: int, table: str) -> None:
    known = {int(v["version"]) for v in ds.versions()}
    if version not in known:
        raise VersionNotFoundError(
            f"table '{table}' has no version {version} (it has {min(known)}..{max(known)}, "
            "minus any removed by cleanup)"
        )


def promote(location: StoreLocation, version: int | None = None, table: str = SUMMARIES) -> int:
    """Point the serving tag at ``version`` (default: the latest). Returns the version."""
    ds = location.open(table)
    target = int(ds.version if version is None else version)
    _check_version(ds, target, table)
    tags = tag_versions(ds)
    if SERVING_TAG in tags and tags[SERVING_TAG] != target:
        _set_tag(ds, PREVIOUS_TAG, tags[SERVING_TAG])
    _set_tag(ds, SERVING_TAG, target)
    return target


@dataclass(frozen=True)
class RollbackResult:
    table: str
    serving_version: int  # what readers read now
    previous_serving: int | None
    restored_as: int | None  # the new latest version holding the same data, if restored


def rollback(
    location: StoreLocation,
    version: int | None = None,
    *,
    restore_latest: bool = True,
    table: str = SUMMARIES,
) -> RollbackResult:
    """Move serving back to ``version`` (default: where it was before the last promote).

    With ``restore_latest`` the table's latest version also becomes a copy of
    that version (a metadata-only commit), so the next incremental publish
    builds on the good data instead of the bad run.
    """
    ds = location.open(table)
    tags = tag_versions(ds)
    current = tags.get(SERVING_TAG)
    if version is None:
        if PREVIOUS_TAG not in tags:
            raise NoServingVersionError(
                f"table '{table}' has no earlier serving version to roll back to; "
                "pass the version explicitly (see `vista store info`)"
            )
        version = tags[PREVIOUS_TAG]
    _check_version(ds, int(version), table)
    restored = None
    if restore_latest and int(version) != ds.version:
        old = location.open(table, version=int(version))
        old.restore()
        restored = location.open(table).version
    if current is not None and current != int(version):
        _set_tag(ds, PREVIOUS_TAG, current)
    _set_tag(ds, SERVING_TAG, int(version))
    return RollbackResult(table, int(version), current, restored)


@dataclass(frozen=True)
class MaintenanceResult:
    table: str
    fragments_removed: int
    fragments_added: int
    versions_removed: int
    bytes_removed: int
    version: int


def compact(
    location: StoreLocation,
    table: str,
    *,
    cleanup_older_than: dt.timedelta | None = dt.timedelta(hours=1),
) -> MaintenanceResult:
    """Merge small fragments and drop deleted rows, re-index, then remove old versions.

    Versions newer than ``cleanup_older_than`` (None: skip cleanup), tagged
    versions and the latest are kept, so a reader pinned to `serving` (or that
    has not refreshed for less than that age) keeps working.
    """
    ds = location.open(table)
    metrics = ds.optimize.compact_files()
    ds = location.open(table)
    ds.optimize.optimize_indices()
    ds = location.open(table)
    removed_versions = removed_bytes = 0
    if cleanup_older_than is not None:
        stats = ds.cleanup_old_versions(
            older_than=cleanup_older_than, error_if_tagged_old_versions=False
        )
        removed_versions, removed_bytes = stats.old_versions, stats.bytes_removed
    return MaintenanceResult(
        table,
        int(metrics.fragments_removed),
        int(metrics.fragments_added),
        int(removed_versions),
        int(removed_bytes),
        location.open(table).version,
    )


@dataclass(frozen=True)
class TableInfo:
    name: str
    rows: int
    latest_version: int
    versions: int
    oldest_version: int
    tags: dict[str, int]
    data_bytes: int  # bytes of the latest version's data files (any backend)
    disk_bytes: int | None  # everything under the table folder, all versions (local only)
    metadata: dict[str, str] = field(default_factory=dict)
    indices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StoreInfo:
    uri: str
    tables: list[TableInfo]


def _folder_bytes(path: str) -> int | None:
    total = 0
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                total += os.path.getsize(os.path.join(root, name))
    except OSError:
        return None
    return total


def table_info(location: StoreLocation, table: str) -> TableInfo:
    ds = location.open(table)
    versions = ds.versions()
    latest_meta = versions[-1].get("metadata", {}) if versions else {}
    local = location.local_path()
    return TableInfo(
        table,
        ds.count_rows(),
        ds.version,
        len(versions),
        min(int(v["version"]) for v in versions),
        tag_versions(ds),
        int(latest_meta.get("total_files_size", 0)),
        _folder_bytes(str(local / f"{table}.lance")) if local is not None else None,
        {k: v for k, v in metadata_of(ds.schema).items() if k.startswith("vista.")},
        [f"{i.name} ({i.type_url.rsplit('/', 1)[-1]})" for i in ds.describe_indices()],
    )


def store_info(location: StoreLocation) -> StoreInfo:
    """Every store table that exists: rows, versions, tags, sizes."""
    location.check_reachable()
    return StoreInfo(location.uri, [table_info(location, t) for t in TABLES if location.exists(t)])
