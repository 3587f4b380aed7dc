"""``vista job publish``: commit a summarize run -- one commit per table, then the ledger row.

State first, then summaries (one commit each, see :mod:`summarizer.store.write`); the
run is appended to the ledger (:mod:`batch_jobs.ledger`). Readers see the new
summaries once the ``serving`` tag moves (``--promote`` or the DAG's check). A publish
retried after a crash recognises files it already committed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

from batch_jobs import ledger
from batch_jobs.runs import MANIFEST, JobError, read_json, write_json
from summarizer.config import VistaConfig
from summarizer.data import files
from summarizer.store import STATE, SUMMARIES, StagedFragments, SummaryStore


def _already_committed(store: SummaryStore, table: str, staged: list[StagedFragments]) -> bool:
    """Whether these staged files are part of the table already (a retried publish)."""
    files = {json.loads(j)["files"][0]["path"] for s in staged for j in s.fragments}
    if not files or not store.exists(table):
        return False
    ds = store.location.open(table)
    present = {f.path for frag in ds.get_fragments() for f in frag.data_files()}
    hit = files & present
    if hit and hit != files:
        raise JobError(
            f"table '{table}' holds some but not all of this run's files: it was changed "
            "after a partial publish; rerun summarize and publish"
        )
    return bool(hit)


def run_publish(
    cfg: VistaConfig, run_dir: str | os.PathLike[str], *, promote: bool = False
) -> dict[str, Any]:
    """Commit a summarize run: one commit per table, then the ledger row; optionally promote."""
    t0 = time.perf_counter()
    opts = cfg.data.storage_options
    run_dir = files.absolute(run_dir)
    path = files.join(run_dir, MANIFEST)
    skipped = files.join(run_dir, "summarize.json")
    if not files.exists(path, opts):
        if files.exists(skipped, opts):
            info = read_json(skipped, opts)
            if info.get("status") == "skipped":
                return {
                    "job": "publish",
                    "status": "skipped",
                    "reason": info["reason"],
                    "seconds": 0,
                }
        raise FileNotFoundError(f"no {MANIFEST} in {run_dir}; run `vista job summarize` first")
    manifest = read_json(path, opts)
    store = SummaryStore.from_config(cfg.store)
    loc = store.location
    report: dict[str, Any] = {"job": "publish", "run_id": manifest["run_id"], "tables": {}}
    if any(e.run_id == manifest["run_id"] for e in ledger.entries(loc)):
        report.update(status="skipped", reason=f"run {manifest['run_id']} is already published")
    else:
        versions: dict[str, int | None] = {}
        for table in (STATE, SUMMARIES):
            staged = [StagedFragments.from_json(j) for j in manifest["staged"][table]]
            if _already_committed(store, table, staged):
                versions[table] = store.latest_version(table)
                report["tables"][table] = {"status": "already committed"}
                continue
            result = store.commit_upsert(table, staged)
            versions[table] = result.version
            report["tables"][table] = {
                "version": result.version,
                "rows": result.rows,
                "inserted": result.inserted,
                "replaced": result.replaced,
            }
        ledger.append(
            loc,
            ledger.LedgerEntry(
                run_id=manifest["run_id"],
                mode=manifest["mode"],
                day=manifest["day"],
                model_version=manifest["model_version"],
                rows_read=int(manifest["rows_in_days"]),
                users=int(manifest["users_updated"]),
                state_version=versions[STATE],
                summaries_version=versions[SUMMARIES],
                finished_at=dt.datetime.now(dt.UTC),
            ),
        )
        report["status"] = "published"
    report["summaries_version"] = store.latest_version(SUMMARIES)
    if promote and report["summaries_version"] is not None:
        report["serving_version"] = store.promote(report["summaries_version"])
    report["seconds"] = round(time.perf_counter() - t0, 3)
    write_json(files.join(run_dir, "publish.json"), report, opts)
    return report
