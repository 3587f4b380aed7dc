"""Online reads: a reader pinned to the `serving` tag, with a status for every user.

A :class:`SummaryReader` holds one immutable snapshot (a lance dataset checked
out at the tagged version plus a sorted user_id -> row map). Every ``get``
takes the snapshot once and reads only from it, so one request never mixes
versions; a refresh builds a new snapshot and swaps the reference.

Lookups: ``take`` (default) keeps every user's small columns (id, row offset,
counts, timestamps, model version: about 50 bytes a user) in memory, built once
per pinned version, and reads only the tokens of the wanted rows with one
``take``: each extra column would cost one more random read per row. ``index``
keeps nothing and pushes an ``isin`` filter down to the BTREE index (for tables
too big for that map). Neither builds a filter string: ids are validated into
an int64 array first.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from summarizer.store.errors import InvalidUserIdError, NoServingVersionError
from summarizer.store.location import StoreLocation
from summarizer.store.records import fixed_list_values
from summarizer.store.schema import (
    KEY,
    SUMMARIES,
    check_summary_shape,
    summary_moments,
    summary_shape,
)

SERVING_TAG = "serving"
Lookup = Literal["take", "index"]
_INT64_MAX = np.iinfo(np.int64).max
_SCALARS = ["user_id", "model_version", "n_events", "first_ts", "last_ts", "computed_at"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
log = logging.getLogger(__name__)


class SummaryStatus(enum.StrEnum):
    """What a read found for one user (stale rows still carry their tokens)."""

    PRESENT = "present"
    NOT_FOUND = "not_found"
    STALE = "stale"


def _bad_id(value: object, why: str) -> InvalidUserIdError:
    return InvalidUserIdError(
        f"invalid user id {value!r} ({type(value).__name__}): {why}; "
        "user ids are non-negative integers"
    )


def _check_scalar(value: object) -> int:
    # bool is an int subclass, and True silently meaning user 1 is a bug, not a feature.
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise _bad_id(value, "not an integer")
    v = int(value)
    if v < 0:
        raise _bad_id(value, "negative")
    if v > _INT64_MAX:
        raise _bad_id(value, "larger than int64")
    return v


def validate_user_ids(user_ids: Any) -> np.ndarray:
    """One id or a sequence/array of ids -> int64 array; raises InvalidUserIdError otherwise.

    Runs before any query is built; nothing unchecked ever reaches a filter.
    """
    if isinstance(user_ids, np.ndarray):
        if user_ids.dtype.kind not in "iu" or user_ids.ndim > 1:
            raise _bad_id(user_ids.dtype, f"array of {user_ids.dtype} with {user_ids.ndim} dims")
        if user_ids.size and user_ids.min() < 0:
            raise _bad_id(int(user_ids.min()), "negative")
        if user_ids.dtype.kind == "u" and user_ids.size and user_ids.max() > _INT64_MAX:
            raise _bad_id(int(user_ids.max()), "larger than int64")
        return user_ids.astype(np.int64, copy=False).reshape(-1)
    if isinstance(user_ids, str | bytes | bytearray | float | dict | set):
        raise _bad_id(user_ids, "not an integer")
    if isinstance(user_ids, int | np.integer | np.bool_):
        return np.array([_check_scalar(user_ids)], dtype=np.int64)
    try:
        items = list(user_ids)
    except TypeError:
        raise _bad_id(user_ids, "not an integer") from None
    return np.array([_check_scalar(v) for v in items], dtype=np.int64)


@dataclass(frozen=True)
class SummaryResult:
    """One user's summary as read: tokens are float16 (K, d), or None when not found."""

    user_id: int
    status: SummaryStatus
    tokens: np.ndarray | None = None
    model_version: str | None = None
    n_events: int | None = None
    first_ts: int | None = None
    last_ts: int | None = None
    computed_at: dt.datetime | None = None
    moments: np.ndarray | None = None  # float32 (m,): a ridge read-out's second moments

    @property
    def found(self) -> bool:
        return self.status is not SummaryStatus.NOT_FOUND


@dataclass(frozen=True)
class SummaryBatch:
    """Results for the requested ids, in request order, all read from one table version."""

    version: int
    tag: str | None
    K: int
    d: int
    results: tuple[SummaryResult, ...]
    # The model versions whose tokens the read table version holds (empty: not known, for
    # an index lookup); a scorer scores users without a summary with that version's model.
    model_versions: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[SummaryResult]:
        return iter(self.results)

    def __getitem__(self, i: int) -> SummaryResult:
        return self.results[i]

    @property
    def statuses(self) -> list[SummaryStatus]:
        return [r.status for r in self.results]

    def tokens_array(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, K, d) float16 tokens (zeros where not found) and a (B,) found mask."""
        out = np.zeros((len(self.results), self.K, self.d), dtype=np.float16)
        found = np.zeros(len(self.results), dtype=bool)
        for i, r in enumerate(self.results):
            if r.tokens is not None:
                out[i], found[i] = r.tokens, True
        return out, found


# Columns of _Scalars.values; one int64 matrix so a read gathers a user's fields at once.
_N_EVENTS, _FIRST, _FIRST_OK, _LAST, _LAST_OK, _COMPUTED_US, _MODEL = range(7)


@dataclass(frozen=True)
class _Scalars:
    """The small columns of some rows, sorted by user_id.

    ``row`` is where each row's tokens are: its offset in the dataset version
    (take lookup) or its index in the table that was read (index lookup).
    ``values`` holds the other fields as int64 (see the _N_EVENTS.. columns);
    the model version is a code into ``model_versions``.
    """

    user_id: np.ndarray
    row: np.ndarray
    values: np.ndarray
    model_versions: list[str]

    @classmethod
    def from_table(cls, table: pa.Table) -> _Scalars:
        uid = table[KEY].to_numpy()
        order = np.argsort(uid, kind="stable")
        mv = pc.dictionary_encode(table["model_version"]).combine_chunks()
        columns = [
            table["n_events"].to_numpy(),
            pc.fill_null(table["first_ts"], 0).to_numpy(),
            table["first_ts"].is_valid().to_numpy(zero_copy_only=False),
            pc.fill_null(table["last_ts"], 0).to_numpy(),
            table["last_ts"].is_valid().to_numpy(zero_copy_only=False),
            table["computed_at"].cast(pa.int64()).to_numpy(),
            mv.indices.to_numpy(),
        ]
        values = np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)
        return cls(uid[order], order, values[order], mv.dictionary.to_pylist())


@dataclass(frozen=True)
class _Snapshot:
    ds: lance.LanceDataset
    version: int
    tag: str | None
    K: int
    d: int
    scalars: _Scalars | None  # every row's small columns (take lookup only)
    # take lookup: the version's fragments and the dataset row index each one starts at
    # (rows after deletions), so a read within one fragment skips dataset-level planning.
    fragments: tuple[Any, ...] = ()
    fragment_starts: np.ndarray | None = None
    moments: int = 0  # second moments a row carries (a ridge read-out's summaries), or 0
    model_versions: tuple[str, ...] = ()  # the models of its rows (take lookup; else empty)
    # take lookup: fragment index -> (a reader of its one data file, its lock), or None
    # where the fragment's own take must be used; filled on first read of each fragment.
    _files: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def payload(self) -> list[str]:
        """The per-row arrays a read fetches: the tokens, and the moments if there are."""
        return ["tokens", "moments"] if self.moments else ["tokens"]

    def take_payload(self, rows: np.ndarray) -> pa.Table:
        """The payload columns at sorted dataset row indices."""
        starts = self.fragment_starts
        if starts is not None and len(rows):
            first = int(np.searchsorted(starts, rows[0], side="right")) - 1
            if rows[-1] < starts[first + 1]:  # all in one fragment: about 2x faster
                local = (rows - starts[first]).tolist()
                file = self._file_reader(first)
                if file is not None:
                    reader, lock = file
                    with lock:  # a file reader serves one call at a time ("Already borrowed")
                        return reader.take_rows(local).to_table()
                return self.fragments[first].take(local, columns=self.payload)
        return self.ds.take(rows, columns=self.payload)

    def _file_reader(self, i: int) -> tuple[Any, threading.Lock] | None:
        """A reader of fragment ``i``'s data file and the lock its calls take, for a local
        store whose fragment is that one file as written (no overlays, and as many rows as
        the file holds: none deleted): its row offsets are the fragment's, and its take
        skips the dataset layer (benchmarks/take_path.py). None otherwise."""
        if i in self._files:
            return self._files[i]
        reader = None
        meta = self.fragments[i].metadata
        assert self.fragment_starts is not None
        rows = int(self.fragment_starts[i + 1] - self.fragment_starts[i])
        local = "://" not in self.ds.uri or self.ds.uri.startswith("file://")
        if (
            local
            and not getattr(meta, "overlays", None)
            and len(meta.files) == 1
            and meta.files[0].base_id is None
            and meta.physical_rows == rows
        ):
            from lance.file import LanceFileReader

            root = self.ds.uri.removeprefix("file://")
            try:
                reader = LanceFileReader(
                    os.path.join(root, "data", meta.files[0].path), columns=self.payload
                )
                if reader.metadata().num_rows != rows:
                    reader = None
            except (OSError, ValueError, RuntimeError) as exc:  # e.g. a v1 file
                log.debug("fragment %d: reading through the dataset (%s)", i, exc)
                reader = None
        file = None if reader is None else (reader, threading.Lock())
        self._files[i] = file
        return file


class SummaryReader:
    """Reads summaries from a pinned version; re-pins every ``refresh_interval_s``.

    ``tag=None`` follows the latest version. With ``require_tag=False`` a missing
    tag falls back to the latest version until the tag appears. ``version`` pins
    that exact version for good (audits, checks before promoting).
    """

    def __init__(
        self,
        location: StoreLocation,
        *,
        tag: str | None = SERVING_TAG,
        require_tag: bool = True,
        refresh_interval_s: float = 30.0,
        max_age_s: float = 3 * 86400,
        clock: Callable[[], float] = time.time,
        lookup: Lookup = "take",
        table: str = SUMMARIES,
        version: int | None = None,
    ) -> None:
        if lookup not in ("take", "index"):
            raise ValueError(f"lookup must be 'take' or 'index', got {lookup!r}")
        self.location, self.table, self.lookup = location, table, lookup
        self.tag, self.require_tag, self.fixed_version = tag, require_tag, version
        self.refresh_interval_s, self.max_age_s, self.clock = refresh_interval_s, max_age_s, clock
        self.last_refresh_error: BaseException | None = None
        self._refreshing = threading.Lock()
        self._snap = self._load(*self._target())
        self._checked_at = clock()

    # -- pinning -------------------------------------------------------------------------
    def _target(self) -> tuple[int, str | None]:
        if self.fixed_version is not None:
            return self.fixed_version, None
        latest = self.location.open(self.table)
        if self.tag is not None:
            tags = latest.tags.list()
            if self.tag in tags:
                return int(tags[self.tag]["version"]), self.tag
            if self.require_tag:
                raise NoServingVersionError(
                    f"table '{self.table}' at {self.location.uri} has no '{self.tag}' tag: "
                    "promote a published version first (SummaryStore.promote or "
                    "`vista store promote`)"
                )
        return int(latest.version), None

    def _load(self, version: int, tag: str | None) -> _Snapshot:
        ds = self.location.open(self.table, version=version)
        K, d = summary_shape(ds.schema)
        m = summary_moments(ds.schema)
        # The take lookup keeps every user's small columns in memory (about 50 bytes a
        # user) so a read fetches only the tokens column: each extra column is one
        # more random read per row.
        if self.lookup != "take":
            return _Snapshot(ds, version, tag, K, d, None, moments=m)
        scalars = _Scalars.from_table(ds.to_table(columns=_SCALARS))
        fragments = tuple(ds.get_fragments())
        starts = np.cumsum([0, *(f.count_rows() for f in fragments)]).astype(np.int64)
        codes = np.flatnonzero(
            np.bincount(scalars.values[:, _MODEL], minlength=len(scalars.model_versions))
        )
        used = tuple(sorted(scalars.model_versions[int(i)] for i in codes))
        return _Snapshot(ds, version, tag, K, d, scalars, fragments, starts, m, used)

    def refresh(
        self,
        force: bool = True,
        before_swap: Callable[[list[str]], None] | None = None,
    ) -> bool:
        """Re-read the tag now; swap to its version if it moved. True if the pin changed.

        ``before_swap``: called with the new version's model versions before readers see it
        (a server loads the models it needs there); if it raises, the pin stays."""
        if not force and self.clock() - self._checked_at < self.refresh_interval_s:
            return False
        # One refresher at a time; the others keep serving the current snapshot.
        if not self._refreshing.acquire(blocking=force):
            return False
        try:
            version, tag = self._target()
            self._checked_at = self.clock()
            if (version, tag) == (self._snap.version, self._snap.tag):
                return False
            snap = self._load(version, tag)
            if before_swap is not None:
                before_swap(self._model_versions(snap))
            self._snap = snap
            return True
        finally:
            self._refreshing.release()

    @staticmethod
    def _model_versions(snap: _Snapshot) -> list[str]:
        if snap.scalars is not None:
            return list(snap.model_versions)
        col = snap.ds.to_table(columns=["model_version"])["model_version"]
        return sorted(str(v) for v in pc.unique(col).to_pylist())

    def model_versions(self) -> list[str]:
        """The model versions whose tokens the pinned version holds."""
        return self._model_versions(self._snap)

    def _current(self) -> _Snapshot:
        try:
            self.refresh(force=False)
            self.last_refresh_error = None
        except Exception as exc:
            # Keep serving the pinned version through a storage blip; say so in the log.
            self.last_refresh_error = exc
            self._checked_at = self.clock()
            log.warning(
                "summary store refresh failed, still serving version %s: %s",
                self._snap.version,
                exc,
            )
        return self._snap

    @property
    def version(self) -> int:
        return self._snap.version

    def current_version(self) -> int:
        """The pinned version after re-checking the tag if the refresh interval has passed
        (what a read now would use; callers that cache reads key them by it)."""
        return self._current().version

    @property
    def pinned_tag(self) -> str | None:
        return self._snap.tag

    def expect_shape(self, K: int, d: int, moments: int = 0) -> None:
        """Raise ShapeMismatchError unless the pinned summaries are K x d (with ``moments``)."""
        check_summary_shape(self._snap.ds.schema, K, d, moments)

    # -- reads ---------------------------------------------------------------------------
    def _read(
        self, snap: _Snapshot, ids: np.ndarray
    ) -> tuple[_Scalars, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(scalars, position of each id in them, found mask, tokens and moments (None: the
        table has none) of the found ids)."""
        if snap.scalars is not None:
            sc = snap.scalars
        else:
            wanted = pa.array(np.unique(ids), type=pa.int64())
            table = snap.ds.to_table(
                columns=[*_SCALARS, *snap.payload], filter=pc.field(KEY).isin(wanted)
            )
            sc = _Scalars.from_table(table)
        n = len(sc.user_id)
        pos = np.minimum(np.searchsorted(sc.user_id, ids), max(n - 1, 0))
        hit = sc.user_id[pos] == ids if n else np.zeros(len(ids), dtype=bool)
        rows = sc.row[pos[hit]]
        if not len(rows):
            none = np.zeros((0, snap.moments), np.float32) if snap.moments else None
            return sc, pos, hit, np.zeros((0, snap.K, snap.d), np.float16), none
        if snap.scalars is None:
            tokens, moments = self._payload(snap, table)
            return sc, pos, hit, tokens[rows], None if moments is None else moments[rows]
        # One read for the whole batch, of the payload columns only. take returns rows
        # in the order asked: ask in sorted order, then map each id to its place.
        offsets = rows if len(rows) == 1 else np.unique(rows)
        tokens, moments = self._payload(snap, snap.take_payload(offsets))
        if len(offsets) == len(rows) and (len(rows) == 1 or np.array_equal(offsets, rows)):
            return sc, pos, hit, tokens, moments
        at = np.searchsorted(offsets, rows)
        return sc, pos, hit, tokens[at], None if moments is None else moments[at]

    @staticmethod
    def _payload(snap: _Snapshot, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
        tokens = fixed_list_values(table["tokens"], np.float16).reshape(-1, snap.K, snap.d)
        if not snap.moments:
            return tokens, None
        return tokens, fixed_list_values(table["moments"], np.float32).reshape(-1, snap.moments)

    def get(self, user_ids: Any) -> SummaryBatch:
        """Summaries of one id or many, in one read; a status for each requested id."""
        ids = validate_user_ids(user_ids)
        snap = self._current()
        sc, pos, hit, tokens, moments = self._read(snap, ids)
        fields = sc.values[pos[hit]].tolist()
        horizon_us = (self.clock() - self.max_age_s) * 1e6 if self.max_age_s > 0 else -np.inf
        results = []
        j = 0
        for u, h in zip(ids.tolist(), hit.tolist(), strict=True):
            if not h:
                results.append(SummaryResult(u, SummaryStatus.NOT_FOUND))
                continue
            f = fields[j]
            results.append(
                SummaryResult(
                    u,
                    SummaryStatus.STALE if f[_COMPUTED_US] < horizon_us else SummaryStatus.PRESENT,
                    tokens[j],
                    sc.model_versions[f[_MODEL]],
                    f[_N_EVENTS],
                    f[_FIRST] if f[_FIRST_OK] else None,
                    f[_LAST] if f[_LAST_OK] else None,
                    _EPOCH + dt.timedelta(microseconds=f[_COMPUTED_US]),
                    None if moments is None else moments[j],
                )
            )
            j += 1
        return SummaryBatch(
            snap.version, snap.tag, snap.K, snap.d, tuple(results), snap.model_versions
        )

    def get_one(self, user_id: int) -> SummaryResult:
        """The summary of one user."""
        return self.get(user_id).results[0]
