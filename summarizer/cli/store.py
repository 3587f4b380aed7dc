"""`vista summary ...` and `vista store ...`: inspect and operate the summary store.

``register(subparsers)`` adds the commands to the `vista` parser; every handler
is ``(cfg, args) -> exit code`` and reads ``cfg.store`` (uri, storage options,
max age). Store errors print one actionable line and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from summarizer.config import VistaConfig
from summarizer.store import SummaryStatus, SummaryStore
from summarizer.store.errors import StoreError
from summarizer.store.read import validate_user_ids

Handler = Callable[[VistaConfig, argparse.Namespace], int]


def _store_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def run(cfg: VistaConfig, args: argparse.Namespace) -> int:
        try:
            return handler(cfg, args)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _parse_user_id(raw: str) -> int:
    # Only a plain integer literal becomes an int; "1 OR 1=1", "1.5" and "true" stay
    # strings, so the validator rejects them with a message naming the value.
    text = raw.strip()
    value: object = int(text) if re.fullmatch(r"-?[0-9]+", text) else raw
    return int(validate_user_ids(value)[0])


def _iso(ts: int | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a (object storage)"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def summary_report(store: SummaryStore, user_id: int, version: int | None = None) -> dict[str, Any]:
    """What `vista summary get` prints, as a dict (also used by tests)."""
    batch = store.get(user_id, version=version)
    r = batch[0]
    report: dict[str, Any] = {
        "user_id": r.user_id,
        "status": r.status.value,
        "table_version": batch.version,
        "tag": batch.tag,
    }
    if r.tokens is None:
        return report
    tokens = r.tokens.astype(np.float32)
    norms = np.linalg.norm(tokens, axis=1)
    finite = bool(np.isfinite(tokens).all())
    age = store.clock() - r.computed_at.timestamp() if r.computed_at else None
    report.update(
        model_version=r.model_version,
        n_events=r.n_events,
        first_event=_iso(r.first_ts),
        last_event=_iso(r.last_ts),
        computed_at=r.computed_at.isoformat() if r.computed_at else None,
        age_s=None if age is None else round(age, 1),
        tokens={
            "shape": list(r.tokens.shape),
            "norm_mean": float(np.nanmean(norms)) if finite else None,
            "norm_max": float(np.nanmax(norms)) if finite else None,
            "finite": finite,
        },
    )
    return report


@_store_errors
def cmd_summary_get(cfg: VistaConfig, args: argparse.Namespace) -> int:
    """Print one user's stored summary: status, version, events, token stats."""
    store = SummaryStore.from_config(cfg.store)
    report = summary_report(store, _parse_user_id(args.user_id), version=args.version)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        pinned = f"{report['table_version']}" + (
            f" (tag {report['tag']})" if report["tag"] else " (latest; no serving tag yet)"
        )
        print(f"user {report['user_id']}: {report['status']} in table version {pinned}")
        if "tokens" in report:
            t = report["tokens"]
            print(f"  model version   {report['model_version']}")
            print(
                f"  events          {report['n_events']:,} "
                f"({report['first_event']} .. {report['last_event']})"
            )
            print(f"  computed at     {report['computed_at']} ({report['age_s']:.0f} s ago)")
            print(
                f"  tokens          {t['shape'][0]} x {t['shape'][1]} float16, finite={t['finite']}"
            )
            if t["finite"]:
                print(f"  L2 norm         mean {t['norm_mean']:.4f}, max {t['norm_max']:.4f}")
    if report["status"] == SummaryStatus.STALE.value:
        print(f"warning: older than store.max_age_s={cfg.store.max_age_s}", file=sys.stderr)
    return 0 if report["status"] != SummaryStatus.NOT_FOUND.value else 1


@_store_errors
def cmd_store_info(cfg: VistaConfig, args: argparse.Namespace) -> int:
    """Print tables, rows, versions, tags and sizes."""
    info = SummaryStore.from_config(cfg.store).info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info), indent=2))
        return 0
    print(f"store {info.uri}")
    if not info.tables:
        print("  (no tables yet; the first publish creates them)")
    for t in info.tables:
        print(
            f"  {t.name}: {t.rows:,} rows, version {t.latest_version} "
            f"({t.versions} kept, oldest {t.oldest_version})"
        )
        tags = ", ".join(f"{k}={v}" for k, v in sorted(t.tags.items())) or "none"
        print(f"    tags      {tags}")
        shape = {
            k.removeprefix("vista."): v
            for k, v in t.metadata.items()
            if k not in ("vista.table", "vista.format")
        }
        print(f"    metadata  {', '.join(f'{k}={v}' for k, v in sorted(shape.items()))}")
        print(f"    indices   {', '.join(t.indices) or 'none'}")
        print(
            f"    size      {_human_bytes(t.data_bytes)} live data; "
            f"{_human_bytes(t.disk_bytes)} on disk with all versions"
        )
    return 0


@_store_errors
def cmd_store_rollback(cfg: VistaConfig, args: argparse.Namespace) -> int:
    """Serve an earlier version again."""
    result = SummaryStore.from_config(cfg.store).rollback(
        args.version, restore_latest=not args.no_restore
    )
    print(f"serving version {result.serving_version} (was {result.previous_serving})")
    if result.restored_as is not None:
        print(f"latest version {result.restored_as} now holds the same rows")
    return 0


@_store_errors
def cmd_store_promote(cfg: VistaConfig, args: argparse.Namespace) -> int:
    """Move the serving tag."""
    version = SummaryStore.from_config(cfg.store).promote(args.version)
    print(f"serving version {version}")
    return 0


@_store_errors
def cmd_store_compact(cfg: VistaConfig, args: argparse.Namespace) -> int:
    """Compact, re-index and clean up old versions (tagged and latest are kept)."""
    keep = None if args.no_cleanup else dt.timedelta(hours=args.keep_hours)
    results = SummaryStore.from_config(cfg.store).compact(cleanup_older_than=keep)
    if not results:
        print("no tables to compact")
    for r in results:
        print(
            f"{r.table}: fragments -{r.fragments_removed} +{r.fragments_added}, "
            f"removed {r.versions_removed} old version(s) ({_human_bytes(r.bytes_removed)}), "
            f"now version {r.version}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `summary get` and `store info|promote|rollback|compact` to the vista parser."""
    summary = subparsers.add_parser("summary", help="read stored summaries")
    summary_sub = summary.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    get = summary_sub.add_parser(
        "get", help="one user's summary: status, version, events, token stats (exit 1: not found)"
    )
    get.add_argument("user_id", help="user id (non-negative integer)")
    get.add_argument("--version", type=int, help="read this table version, not serving")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(func=cmd_summary_get)

    store = subparsers.add_parser("store", help="inspect and operate the summary store")
    store_sub = store.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    info = store_sub.add_parser("info", help="tables, rows, versions, tags, size")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_store_info)

    prom = store_sub.add_parser("promote", help="point the serving tag at a version")
    prom.add_argument("version", type=int, nargs="?", help="default: the latest version")
    prom.set_defaults(func=cmd_store_promote)

    rb = store_sub.add_parser("rollback", help="serve an earlier summaries version again")
    rb.add_argument(
        "version", type=int, nargs="?", help="default: the version served before the last promote"
    )
    rb.add_argument(
        "--no-restore",
        action="store_true",
        help="only move the tag; leave the latest version (the base of the next publish) as is",
    )
    rb.set_defaults(func=cmd_store_rollback)

    cp = store_sub.add_parser("compact", help="compact files, re-index, remove old versions")
    cp.add_argument(
        "--keep-hours",
        type=float,
        default=1.0,
        help="keep untagged versions younger than this (readers may still pin them)",
    )
    cp.add_argument("--no-cleanup", action="store_true", help="compact only; keep all versions")
    cp.set_defaults(func=cmd_store_compact)
