"""Errors of the summary store, each saying what to do about it.

Every error is a :class:`StoreError`; the ones caused by a bad argument are also
``ValueError`` and the "does not exist" ones ``LookupError``, so callers that
only know the builtin hierarchy still catch them sensibly.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every summary-store error."""


class StoreUnavailableError(StoreError):
    """The database URI cannot be read (missing folder, bad credentials, not a store)."""


class TableNotFoundError(StoreError, LookupError):
    """A table the operation needs does not exist yet."""

    def __init__(self, table: str, uri: str) -> None:
        self.table, self.uri = table, uri
        super().__init__(
            f"table '{table}' does not exist in the store at {uri}; "
            + (
                "`vista job item-vectors` creates it"
                if table == "item_vectors"
                else f"the first publish to '{table}' creates it"
            )
        )


class SchemaMismatchError(StoreError, ValueError):
    """Data or a table does not have the columns and types this code expects."""


class ShapeMismatchError(SchemaMismatchError):
    """Stored tokens have a different (K, d) than the model that wants to use them."""


class InvalidUserIdError(StoreError, ValueError):
    """A user id is not a non-negative integer."""


class DuplicateUserError(StoreError, ValueError):
    """A publish holds the same user twice; the table keeps one row per user."""


class VersionNotFoundError(StoreError, LookupError):
    """A table version or tag does not exist (never made, or cleaned up)."""


class NoServingVersionError(StoreError, LookupError):
    """Readers pin the `serving` tag, and no version has been promoted yet."""


class ConcurrentWriteError(StoreError):
    """Another writer committed to the table during a publish (one committer per table)."""


class StagedFilesError(StoreError):
    """A publish's staged files are missing or not what the run recorded; nothing was
    committed."""
