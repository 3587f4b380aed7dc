"""Online reads of memory banks (GSU): one ``take`` per read, no table scan.

A :class:`MemoryBankReader` follows the latest version of the ``memory_bank``
table (banks are refreshed by their own job, not promoted with the summaries)
and re-checks it every ``refresh_interval_s``. Per version it keeps a sorted
user_id -> row map (8 bytes a user), so reading a few users' banks is one
random-access ``take`` of their rows instead of a filtered scan of every bank
(a scan of 100 users' 1000-token banks took ~50 ms here; see BENCHMARKS.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np

from summarizer.store.bank_records import MemoryBankRecord, memory_banks_from_table
from summarizer.store.location import StoreLocation
from summarizer.store.read import validate_user_ids
from summarizer.store.schema import KEY, MEMORY_BANK

_COLUMNS = [KEY, "model_version", "tokens", "sizes", "updated_at"]


@dataclass(frozen=True)
class _BankSnapshot:
    ds: lance.LanceDataset | None  # None: no memory-bank table yet
    version: int | None
    user_id: np.ndarray  # sorted
    row: np.ndarray  # dataset row of each sorted user


class MemoryBankReader:
    """Reads users' memory banks from the latest version, re-checked on an interval."""

    def __init__(
        self,
        location: StoreLocation,
        *,
        refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location, self.refresh_interval_s, self.clock = location, refresh_interval_s, clock
        self._lock = threading.Lock()
        self._snap = self._load()
        self._checked_at = clock()

    def _load(self) -> _BankSnapshot:
        if not self.location.exists(MEMORY_BANK):
            return _BankSnapshot(None, None, np.zeros(0, np.int64), np.zeros(0, np.int64))
        ds = self.location.open(MEMORY_BANK)
        uid = ds.to_table(columns=[KEY])[KEY].to_numpy()
        order = np.argsort(uid, kind="stable")
        return _BankSnapshot(ds, int(ds.version), uid[order], order.astype(np.int64))

    def refresh(self, force: bool = True) -> bool:
        """Re-check the table's latest version; True if the reader moved to a new one."""
        if not force and self.clock() - self._checked_at < self.refresh_interval_s:
            return False
        if not self._lock.acquire(blocking=force):
            return False  # another thread is refreshing; keep the current snapshot
        try:
            self._checked_at = self.clock()
            exists = self.location.exists(MEMORY_BANK)
            if exists and self._snap.ds is not None:
                if int(self.location.open(MEMORY_BANK).version) == self._snap.version:
                    return False
            elif not exists and self._snap.ds is None:
                return False
            self._snap = self._load()
            return True
        finally:
            self._lock.release()

    @property
    def version(self) -> int | None:
        return self._snap.version

    def get(self, user_ids: Any) -> dict[int, MemoryBankRecord]:
        """The banks of these users (users without one are absent), from one version."""
        ids = validate_user_ids(user_ids)
        self.refresh(force=False)
        snap = self._snap
        if snap.ds is None or not len(ids) or not len(snap.user_id):
            return {}
        pos = np.clip(np.searchsorted(snap.user_id, ids), 0, len(snap.user_id) - 1)
        hit = snap.user_id[pos] == ids
        rows = np.unique(snap.row[pos[hit]])
        if not len(rows):
            return {}
        table = snap.ds.take(rows, columns=_COLUMNS)
        return {r.user_id: r for r in memory_banks_from_table(table)}
