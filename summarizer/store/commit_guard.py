"""Before a commit: the staged files are all there, and no other publish is committing.

* :func:`verify_staged` checks every data file a run staged -- it exists under the table's
  folder, has the size the worker recorded, and holds the rows its fragment says -- and
  that the fragments hold one row per staged user. A worker that wrote somewhere else
  (a relative ``store.uri`` resolved against an executor's own working folder) is caught
  here, before the commit would make the table point at files that are not there.
* :func:`publish_lock` makes a second committer to the same table fail at once with
  "another publish is in progress" on a local store (an ``O_EXCL`` lock file beside the
  tables, removed at the end; a lock whose process is gone is broken). Object stores
  without a conditional PUT give no such lock: there, one committer per table is the
  deployment's rule (one Airflow task), and lance's own commit check turns a race into a
  :class:`ConcurrentWriteError` instead of a mixed table.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator, Sequence

from lance.file import LanceFileReader
from lance.fragment import FragmentMetadata

from summarizer.data import files
from summarizer.store.errors import ConcurrentWriteError, StagedFilesError
from summarizer.store.location import StoreLocation

LOCK_DIR = "_vista_locks"


def _check_file(uri: str, expected_size: int | None, rows: int, options: dict[str, str]) -> str:
    """'' if the data file is as recorded, else what is wrong with it."""
    try:
        found = LanceFileReader(uri, storage_options=options or None).metadata().num_rows
    except (OSError, ValueError) as exc:
        return f"{uri} cannot be read ({str(exc).splitlines()[0][:200]})"
    if found != rows:
        return f"{uri} holds {found:,} rows, its fragment says {rows:,}"
    if expected_size:
        got = files.stat(uri, files.understood_options(options))
        if got is not None and got.size != expected_size:
            return f"{uri} is {got.size:,} bytes, the worker wrote {expected_size:,}"
    return ""


def verify_staged(
    location: StoreLocation, table: str, fragments: Sequence[FragmentMetadata], users: int
) -> None:
    """Raise :class:`StagedFilesError` unless every staged data file is under the table's
    folder as recorded and the fragments hold ``users`` rows (one a staged user)."""
    rows = sum(int(f.physical_rows) for f in fragments)
    if rows != users:
        raise StagedFilesError(
            f"the staged fragments of '{table}' hold {rows:,} rows for {users:,} staged users; "
            "the run's manifest does not match its files: rerun summarize"
        )
    data = files.join(location.table_uri(table), "data")
    checks = []
    for frag in fragments:
        sizes = {f.get("path"): f.get("file_size_bytes") for f in frag.to_json()["files"]}
        for f in frag.files:
            checks.append((files.join(data, f.path), sizes.get(f.path), int(frag.physical_rows)))
    options = dict(location.storage_options)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda c: _check_file(c[0], c[1], c[2], options), checks)
        problems = [p for p in found if p]
    if problems:
        raise StagedFilesError(
            f"{len(problems)} of the {len(checks)} staged files of '{table}' are not as the "
            f"run recorded, so nothing was committed: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + ". If the workers ran on a cluster, store.uri must be a location every executor "
            "reaches by the same name (an absolute path or s3://...); rerun summarize"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def publish_lock(location: StoreLocation, table: str) -> Iterator[None]:
    """Hold the table's publish lock for the duration (local stores; a no-op on object
    storage, see the module docstring)."""
    folder = location.local_path()
    if folder is None:
        yield
        return
    lock = folder / LOCK_DIR / f"{table}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": dt.datetime.now(dt.UTC)}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            stale = holder.get("host") == me["host"] and not _alive(int(holder.get("pid", 0)))
            if stale:
                lock.unlink(missing_ok=True)  # its process is gone: break it and retry
                continue
            raise ConcurrentWriteError(
                f"another publish is in progress on table '{table}' (process "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')} since "
                f"{holder.get('since', '?')}; one committer per table): wait for it, then "
                f"rerun. A lock left by a crash on another host: remove {lock}"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f, default=str)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
