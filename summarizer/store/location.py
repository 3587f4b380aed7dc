"""Where the store lives, and opening its tables with errors a user can act on.

A LanceDB database is a folder (local or on object storage) holding one
``<table>.lance`` dataset per table. The data path goes through pylance
directly (faster point reads, fragment-level commits); LanceDB is used where
its API is the documented one (listing tables, creating the BTREE index).
Nothing here assumes a local path except :meth:`StoreLocation.local_path`,
whose callers fall back when it is ``None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lance

from summarizer.store.errors import StoreUnavailableError, TableNotFoundError, VersionNotFoundError

# Schemes LanceDB/lance read through object_store; anything else is a local path.
_REMOTE_SCHEMES = {"s3", "s3+ddb", "gs", "az", "abfs", "abfss", "memory", "file+uring", "oss", "hf"}


def _is_not_found(exc: BaseException) -> bool:
    text = str(exc)
    return "was not found" in text or "Not found:" in text or "NotFound" in text


@dataclass(frozen=True)
class StoreLocation:
    """A database URI plus the object-store options (credentials, endpoint, region)."""

    uri: str
    storage_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A local path is made absolute where the location is made (the driver): a Spark
        # executor resolves a relative one against its own working folder, and would stage
        # files in a store nobody reads.
        if not urlparse(self.uri).scheme or len(urlparse(self.uri).scheme) == 1:
            object.__setattr__(self, "uri", os.path.abspath(os.path.expanduser(self.uri)))

    @property
    def is_remote(self) -> bool:
        scheme = urlparse(self.uri).scheme
        return scheme in _REMOTE_SCHEMES or (len(scheme) > 1 and scheme != "file")

    def local_path(self) -> Path | None:
        """The database folder on this machine, or None for object storage."""
        if self.is_remote:
            return None
        parsed = urlparse(self.uri)
        return Path(parsed.path if parsed.scheme == "file" else self.uri)

    def table_uri(self, table: str) -> str:
        # LanceDB's own layout: <db>/<table>.lance, for local folders and buckets alike; a
        # query (s3+ddb://bucket/db?ddbTableName=commits) stays at the end.
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{table}.lance" + (f"?{query}" if query else "")

    def _options(self) -> dict[str, str] | None:
        return dict(self.storage_options) or None

    def check_reachable(self) -> None:
        """Fail early, naming the URI, when a local database folder is missing or a file."""
        path = self.local_path()
        if path is None:
            return
        if not path.exists():
            raise StoreUnavailableError(
                f"store folder {path} does not exist (check store.uri; a publish creates it)"
            )
        if not path.is_dir():
            raise StoreUnavailableError(f"store URI {path} is a file, not a database folder")
        if not os.access(path, os.R_OK | os.X_OK):
            raise StoreUnavailableError(f"store folder {path} is not readable by this user")

    def open(self, table: str, version: int | str | None = None) -> lance.LanceDataset:
        """Open a table at a version number, a tag, or the latest version."""
        self.check_reachable()
        try:
            return lance.dataset(
                self.table_uri(table), version=version, storage_options=self._options()
            )
        except (ValueError, OSError) as exc:
            missing_version = version is not None and (
                "Ref not found" in str(exc) or _is_not_found(exc)
            )
            if missing_version and self.exists(table):
                raise VersionNotFoundError(
                    f"table '{table}' has no version or tag {version!r} "
                    "(never made, or removed by cleanup)"
                ) from exc
            if _is_not_found(exc):
                raise TableNotFoundError(table, self.uri) from exc
            raise StoreUnavailableError(
                f"cannot read table '{table}' at {self.table_uri(table)}: {exc}"
            ) from exc

    def exists(self, table: str) -> bool:
        """Whether the table has at least one committed version."""
        try:
            lance.dataset(self.table_uri(table), storage_options=self._options())
        except (ValueError, OSError) as exc:
            if _is_not_found(exc):
                return False
            raise StoreUnavailableError(
                f"cannot read table '{table}' at {self.table_uri(table)}: {exc}"
            ) from exc
        return True

    def connect(self) -> Any:
        """A LanceDB connection; strong consistency, since admin calls must see every commit."""
        import datetime as dt

        import lancedb

        try:
            return lancedb.connect(
                self.uri,
                storage_options=self._options(),
                read_consistency_interval=dt.timedelta(0),
            )
        except (ValueError, OSError) as exc:
            raise StoreUnavailableError(f"cannot open the store at {self.uri}: {exc}") from exc
