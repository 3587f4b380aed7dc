"""SummaryStore: the one facade over the LanceDB summary store.

    store = SummaryStore.from_config(cfg.store)
    store.publish(records)                 # atomic upsert of one run (stage + one commit)
    store.promote()                        # readers now see it
    batch = store.get([1, 2, 3])           # statuses, float16 (K, d) tokens, pinned version
    reader = store.open_reader()           # online: pinned to `serving`, refreshed on a timer

Distributed publish (Spark): workers call ``store.stage_fragments(table, batches)``
and return the StagedFragments; the driver calls ``store.commit_upsert(table,
staged)`` once. See :mod:`summarizer.store.write` for why that is atomic and
idempotent, :mod:`summarizer.store.read` for the read path and
:mod:`summarizer.store.versions` for tags, rollback and compaction.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from summarizer.config import StoreConfig, VistaConfig
from summarizer.store.bank_records import (
    MemoryBankRecord,
    memory_banks_from_table,
    memory_banks_to_batch,
)
from summarizer.store.banks import MemoryBankReader
from summarizer.store.errors import (
    ConcurrentWriteError,
    DuplicateUserError,
    InvalidUserIdError,
    NoServingVersionError,
    SchemaMismatchError,
    ShapeMismatchError,
    StoreError,
    StoreUnavailableError,
    TableNotFoundError,
    VersionNotFoundError,
)
from summarizer.store.item_vectors import (
    ITEM_VECTORS,
    ItemVectors,
    item_vectors_table,
    read_item_vectors,
    write_item_vectors,
)
from summarizer.store.location import StoreLocation
from summarizer.store.read import (
    SERVING_TAG,
    Lookup,
    SummaryBatch,
    SummaryReader,
    SummaryResult,
    SummaryStatus,
    validate_user_ids,
)
from summarizer.store.records import (
    StateColumns,
    StateRecord,
    SummaryRecord,
    state_batch,
    states_from_table,
    states_to_batch,
    summaries_from_table,
    summaries_to_batch,
    summary_batch,
)
from summarizer.store.schema import (
    KEY,
    MEMORY_BANK,
    STATE,
    SUMMARIES,
    TABLES,
    check_summary_shape,
    memory_bank_schema,
    state_schema,
    summaries_schema,
)
from summarizer.store.stage import StagedFragments, stage_fragments
from summarizer.store.versions import (
    MaintenanceResult,
    RollbackResult,
    StoreInfo,
    compact,
    promote,
    rollback,
    store_info,
    tag_versions,
)
from summarizer.store.write import PublishResult, commit_upsert

__all__ = [
    "ITEM_VECTORS",
    "ItemVectors",
    "item_vectors_table",
    "MEMORY_BANK",
    "SERVING_TAG",
    "STATE",
    "SUMMARIES",
    "ConcurrentWriteError",
    "DuplicateUserError",
    "InvalidUserIdError",
    "MaintenanceResult",
    "MemoryBankReader",
    "MemoryBankRecord",
    "NoServingVersionError",
    "PublishResult",
    "RollbackResult",
    "SchemaMismatchError",
    "ShapeMismatchError",
    "StagedFragments",
    "StateColumns",
    "StateRecord",
    "StoreError",
    "StoreInfo",
    "StoreLocation",
    "StoreUnavailableError",
    "SummaryBatch",
    "SummaryReader",
    "SummaryRecord",
    "SummaryResult",
    "SummaryStatus",
    "SummaryStore",
    "TableNotFoundError",
    "VersionNotFoundError",
    "memory_bank_schema",
    "memory_banks_from_table",
    "memory_banks_to_batch",
    "state_batch",
    "state_schema",
    "states_from_table",
    "states_to_batch",
    "summaries_from_table",
    "summaries_schema",
    "summaries_to_batch",
    "summary_batch",
    "validate_user_ids",
]

_TABLE_OF_RECORD = {SummaryRecord: SUMMARIES, StateRecord: STATE, MemoryBankRecord: MEMORY_BANK}


class SummaryStore:
    """Summaries, summarizer states and memory banks of every user, in one LanceDB database.

    Cheap to construct and picklable (it holds a URI, options and a clock), so
    Spark workers can build one to stage fragments.
    """

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        max_age_s: float = 3 * 86400,
        refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location = StoreLocation(str(uri), dict(storage_options or {}))
        self.max_age_s, self.refresh_interval_s, self.clock = max_age_s, refresh_interval_s, clock
        self._reader: SummaryReader | None = None
        self._reader_lock = threading.Lock()
        self._stale = False

    @classmethod
    def from_config(
        cls, cfg: StoreConfig, *, clock: Callable[[], float] = time.time
    ) -> SummaryStore:
        """A store from the ``[store]`` config section (uri, ages, storage options)."""
        return cls(
            cfg.uri,
            storage_options=cfg.storage_options,
            max_age_s=cfg.max_age_s,
            refresh_interval_s=cfg.refresh_interval_s,
            clock=clock,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"], state["_reader_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reader_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self.location.uri

    # -- tables ----------------------------------------------------------------------------
    def exists(self, table: str = SUMMARIES) -> bool:
        return self.location.exists(table)

    def schema(self, table: str = SUMMARIES) -> pa.Schema:
        """The table's Arrow schema, with its vista.* metadata (K, d, model version...)."""
        return self.location.open(table).schema

    def expect_shape(self, K: int, d: int, moments: int = 0) -> None:
        """Raise ShapeMismatchError unless stored summaries are K x d (with ``moments`` a row:
        a ridge read-out's) -- the check at model load."""
        check_summary_shape(self.schema(SUMMARIES), K, d, moments)

    # -- writes ----------------------------------------------------------------------------
    def stage_fragments(
        self, table: str, data: Any, *, schema: pa.Schema | None = None
    ) -> StagedFragments:
        """Worker half of a publish: write invisible fragments, return what the driver commits."""
        return stage_fragments(self.location, table, data, schema=schema)

    def commit_upsert(self, table: str, staged: Sequence[StagedFragments]) -> PublishResult:
        """Driver half of a publish: one commit replaces the staged users' rows."""
        try:
            return commit_upsert(self.location, table, staged)
        finally:
            self._written()

    def publish(
        self,
        data: Iterable[Any] | Any,
        *,
        table: str | None = None,
        schema: pa.Schema | None = None,
        promote: bool = False,
    ) -> PublishResult:
        """Upsert records or Arrow data atomically; ``promote`` also moves the serving tag.

        The table follows from the record type (SummaryRecord, StateRecord,
        MemoryBankRecord); Arrow data goes to ``table`` (default: summaries).
        """
        if table is None:
            if isinstance(data, Sequence) and data and type(data[0]) in _TABLE_OF_RECORD:
                table = _TABLE_OF_RECORD[type(data[0])]
            else:
                table = SUMMARIES
        staged = self.stage_fragments(table, data, schema=schema)
        result = self.commit_upsert(table, [staged])
        if promote and result.version is not None:
            self.promote(result.version, table=table)
            result = PublishResult(**{**result.__dict__, "promoted": True})
        return result

    # -- reads -----------------------------------------------------------------------------
    def open_reader(
        self,
        *,
        tag: str | None = SERVING_TAG,
        require_tag: bool = True,
        lookup: Lookup = "take",
        refresh_interval_s: float | None = None,
        version: int | None = None,
    ) -> SummaryReader:
        """An online reader pinned to the serving tag (or to ``version``); see SummaryReader."""
        interval = self.refresh_interval_s if refresh_interval_s is None else refresh_interval_s
        return SummaryReader(
            self.location,
            tag=tag,
            require_tag=require_tag,
            refresh_interval_s=interval,
            max_age_s=self.max_age_s,
            clock=self.clock,
            lookup=lookup,
            version=version,
        )

    def open_bank_reader(self, *, refresh_interval_s: float | None = None) -> MemoryBankReader:
        """An online reader of the memory banks (latest version, re-checked on an interval)."""
        interval = self.refresh_interval_s if refresh_interval_s is None else refresh_interval_s
        return MemoryBankReader(self.location, refresh_interval_s=interval, clock=self.clock)

    def get(self, user_ids: Any, *, version: int | None = None) -> SummaryBatch:
        """Summaries of one id or many in one read: the serving version, else the latest.

        ``version`` reads that exact version instead (audits, checks before promoting).
        """
        ids = validate_user_ids(user_ids)
        if version is not None:
            return self.open_reader(version=version, lookup="index").get(ids)
        with self._reader_lock:
            if self._reader is None:
                # Pinned like an online reader: the tag is re-read every refresh_interval_s,
                # not on every call (a tag read is a listing: ~25 ms on S3). This facade's
                # own writes re-pin it at once (_written).
                self._reader = self.open_reader(require_tag=False)
                self._stale = False
            reader, stale, self._stale = self._reader, self._stale, False
        if stale:
            reader.refresh(force=True)
        return reader.get(ids)

    def _written(self) -> None:
        """A write through this facade: its next read re-pins first (read-your-writes)."""
        with self._reader_lock:
            self._stale = True

    def _read_table(self, table: str, user_ids: Any, version: int | None = None) -> pa.Table:
        ids = validate_user_ids(user_ids)
        ds = self.location.open(table, version)
        return ds.to_table(filter=pc.field(KEY).isin(pa.array(ids, type=pa.int64())))

    def get_states(self, user_ids: Any, *, version: int | None = None) -> dict[int, StateRecord]:
        """Batch side: summarizer states of these users (missing users absent).

        The latest version, or ``version`` (a batch job pins the version it started
        from, so every worker reads the same states). ``record.to_summary_state()``
        gives the summarizer's SummaryState.
        """
        cols = self.get_state_columns(user_ids, version=version)
        if cols is None:
            return {}
        return {int(u): cols.record(i) for i, u in enumerate(cols.user_id)}

    def get_state_columns(
        self, user_ids: Any, *, version: int | None = None
    ) -> StateColumns | None:
        """:meth:`get_states` as columns, in no particular row order (None: no state
        table yet): what a batch job folds into, without a record object per user."""
        if version is None and not self.exists(STATE):
            return None
        return StateColumns.from_table(self._read_table(STATE, user_ids, version))

    def latest_version(self, table: str = SUMMARIES) -> int | None:
        """The table's latest committed version (None: no such table yet)."""
        return self.location.open(table).version if self.exists(table) else None

    def get_memory_banks(
        self, user_ids: Any, *, version: int | None = None
    ) -> dict[int, MemoryBankRecord]:
        """Memory-bank rows of these users (missing users absent), with their batch state:
        the latest version or ``version``. A filtered scan, for jobs and tools (online:
        ``open_bank_reader``)."""
        if version is None and not self.exists(MEMORY_BANK):
            return {}
        rows = self._read_table(MEMORY_BANK, user_ids, version)
        return {r.user_id: r for r in memory_banks_from_table(rows)}

    # -- item vectors ----------------------------------------------------------------------
    def write_item_vectors(self, table: pa.Table) -> int:
        """A new version of the item-vectors table (``item_vectors_table``); its version."""
        return write_item_vectors(self.location, table)

    def item_vectors(self, version: int | None = None) -> ItemVectors:
        """The pretrained item vectors at ``version`` (default: the latest)."""
        return read_item_vectors(self.location, version)

    @classmethod
    def training_item_vectors(cls, cfg: VistaConfig) -> ItemVectors | None:
        """The item vectors ``[train] pretrain_items = "table"`` starts a model from (the
        configured version, else the latest), or None when training does not read them."""
        if cfg.train.pretrain_items != "table":
            return None
        return cls.from_config(cfg.store).item_vectors(cfg.train.item_vectors_version)

    # -- versions --------------------------------------------------------------------------
    def serving_version(self, table: str = SUMMARIES) -> int | None:
        return tag_versions(self.location.open(table)).get(SERVING_TAG)

    def promote(self, version: int | None = None, *, table: str = SUMMARIES) -> int:
        """Move the serving tag to ``version`` (default: latest); readers follow on refresh."""
        try:
            return promote(self.location, version, table)
        finally:
            self._written()

    def rollback(
        self, version: int | None = None, *, restore_latest: bool = True, table: str = SUMMARIES
    ) -> RollbackResult:
        """Serve an earlier version again (default: the one before the last promote)."""
        try:
            return rollback(self.location, version, restore_latest=restore_latest, table=table)
        finally:
            self._written()

    def compact(
        self,
        *,
        cleanup_older_than: dt.timedelta | None = dt.timedelta(hours=1),
        tables: Sequence[str] = TABLES,
    ) -> list[MaintenanceResult]:
        """Compact files, re-index and remove old untagged versions of every existing table."""
        try:
            return [
                compact(self.location, t, cleanup_older_than=cleanup_older_than)
                for t in tables
                if self.exists(t)
            ]
        finally:
            self._written()

    def info(self) -> StoreInfo:
        """Tables, rows, versions, tags and sizes."""
        return store_info(self.location)
