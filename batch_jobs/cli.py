"""`vista job validate|summarize|publish|cluster`: the batch jobs from the command line.

The same parser serves ``spark-submit batch_jobs/submit.py JOB ...`` (then the
submitter's master and conf win over the ``[spark]`` config section). Each job
prints a short summary (``--json``: the whole report) and writes the report as
JSON (``--report``, default: the run folder), so a DAG task can check it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from summarizer.config import VistaConfig
from summarizer.store.errors import StoreError


def _human(report: dict[str, Any]) -> str:
    """A short summary of a job's report for people (the JSON goes to a file, or --json)."""
    g = report.get
    job = g("job", "job")
    secs = f"{g('seconds', 0):.1f} s"
    if g("status") == "skipped":
        return f"{job}: skipped ({g('reason', 'nothing to do')})"
    if job == "validate":
        lines = [
            f"validated {g('rows_read', 0):,} rows in {secs}: {g('rows_valid', 0):,} valid, "
            f"{g('rows_quarantined', 0):,} quarantined"
        ]
        for reason, n in sorted((g("quarantined_by_reason") or {}).items()):
            lines.append(f"  {reason:<30} {n:>8,}")
        return "\n".join(lines)
    if job == "summarize":
        return (
            f"summarize {g('mode')} through {g('day')}: {g('users_updated', 0):,} users "
            f"({g('new_users', 0):,} new), {g('rows_read', 0):,} events in {secs} "
            f"({g('events_per_s') or 0:,} events/s); staged in {g('run_dir')}, visible after "
            "`vista job publish`"
        )
    if job == "publish":
        out = f"published {g('run_id')}: summaries version {g('summaries_version')}"
        if g("serving_version") is not None:
            out += f", serving tag -> {g('serving_version')}"
        return out + f" ({secs})"
    if job == "cluster":
        return (
            f"cluster {g('mode')} through {g('day')}: {g('clusters_written', 0):,} clusters for "
            f"{g('users', 0):,} users from {g('rows_read', 0):,} events in {secs} ({g('status')})"
        )
    if job == "item-vectors":
        upto = f"through {g('through_day')}"
        before = g("before_ts")
        if before is not None:
            when = dt.datetime.fromtimestamp(int(before), dt.UTC)
            upto = f"before {when:%Y-%m-%d %H:%M} UTC (the training window)"
        return (
            f"item vectors version {g('version')}: {g('items', 0):,} items x {g('factors')} "
            f"from {g('events', 0):,} events {upto} ({secs})"
        )
    scalars = [f"{k} {v}" for k, v in sorted(report.items()) if isinstance(v, int | float | str)]
    return f"{job}: " + ", ".join(k for k in scalars if not k.startswith("job "))


def _emit(report: dict[str, Any], path: str, as_json: bool, cfg: VistaConfig) -> None:
    """Write the report whole as JSON (local or object storage); print it (--json) or a
    short summary of it."""
    from summarizer.data import files

    text = json.dumps(report, indent=2, sort_keys=True, default=str)
    files.write_text(path, text + "\n", cfg.data.storage_options)
    if as_json:
        print(text)
    else:
        print(_human(report))
        print(f"report: {path}")


def _session(cfg: VistaConfig, args: argparse.Namespace) -> Any:
    from batch_jobs.spark import build_session

    return build_session(cfg.spark, submitted=getattr(args, "submitted", False))


def _run(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from batch_jobs.cluster import run_cluster
    from batch_jobs.item_vectors import run_item_vectors
    from batch_jobs.publish import run_publish
    from batch_jobs.runs import JobError, default_run_dir, latest_run_dir
    from batch_jobs.summarize import run_summarize
    from batch_jobs.validate import run_validate
    from summarizer.data import files

    try:
        if args.job == "validate":
            spark = _session(cfg, args)
            report = run_validate(spark, cfg, None if args.all else args.day)
            name = "all" if args.all else max(args.day)
            report_path = args.report or files.join(
                default_run_dir(cfg, "validate", name), "validate.json"
            )
        elif args.job == "summarize":
            mode = "full" if args.full else "incremental"
            spark = _session(cfg, args)
            report = run_summarize(
                spark, cfg, mode=mode, day=args.date, model_dir=args.model, run_dir=args.run_dir
            )
            report_path = args.report
        elif args.job == "cluster":
            spark = _session(cfg, args)
            report = run_cluster(
                spark,
                cfg,
                mode="full" if args.full else "incremental",
                day=args.date,
                model_dir=args.model,
            )
            report_path = args.report
        elif args.job == "item-vectors":
            before = None
            if args.training_window:
                from summarizer.data.histories import temporal_split

                before = temporal_split(cfg.data.valid_dir, options=cfg.data.storage_options)[0]
            spark = _session(cfg, args)
            report = run_item_vectors(spark, cfg, day=args.date, before_ts=before)
            report_path = args.report
        else:
            if args.run_dir:
                run_dir = files.absolute(args.run_dir)
            elif args.date:
                run_dir = default_run_dir(cfg, args.mode, args.date)
            else:
                run_dir = latest_run_dir(cfg)
            report = run_publish(cfg, run_dir, promote=args.promote)
            report_path = args.report or files.join(run_dir, "publish.json")
    except (JobError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report_path is None:
        where = report.get("run_dir") or default_run_dir(
            cfg, args.job, str(report.get("day") or report.get("through_day") or "all")
        )
        report_path = files.join(str(where), f"{args.job}.json")
    _emit(report, report_path, args.json, cfg)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    job = subparsers.add_parser(
        "job", help="Spark batch jobs: validate, summarize, publish, cluster, item-vectors"
    )
    # Set by batch_jobs/submit.py: keep spark-submit's master and conf.
    job.add_argument("--submitted", action="store_true", help=argparse.SUPPRESS)
    job.add_argument(
        "--json", action="store_true", help="print the whole JSON report (it is always written)"
    )
    sub = job.add_subparsers(dest="job", required=True, metavar="JOB")

    val = sub.add_parser("validate", help="validate day partitions with Spark (one job)")
    which = val.add_mutually_exclusive_group(required=True)
    which.add_argument("--day", action="append", help="YYYY-MM-DD (repeatable)")
    which.add_argument("--all", action="store_true", help="every day under data.events_dir")
    val.add_argument("--report", help="JSON report path (default: runs_dir/validate-DAY/)")

    sm = sub.add_parser(
        "summarize", help="fold events into per-user states and stage summaries (not visible)"
    )
    how = sm.add_mutually_exclusive_group(required=True)
    how.add_argument("--full", action="store_true", help="every valid day (up to --date)")
    how.add_argument("--incremental", action="store_true", help="only --date, into stored states")
    sm.add_argument("--date", help="YYYY-MM-DD (incremental: required; full: last day to include)")
    sm.add_argument("--model", help="model folder (default: model.model_dir)")
    sm.add_argument("--run-dir", help="where the manifest goes (default: runs_dir/MODE-DAY)")
    sm.add_argument("--report", help="also write the report here")

    pub = sub.add_parser("publish", help="commit a summarize run: one commit per table")
    pub.add_argument(
        "--run-dir", help="the summarize run folder (default: the newest under data.runs_dir)"
    )
    pub.add_argument("--mode", choices=("full", "incremental"), default="incremental")
    pub.add_argument("--date", help="with --mode: finds runs_dir/MODE-DATE")
    pub.add_argument("--promote", action="store_true", help="then move the serving tag to it")
    pub.add_argument("--report", help="also write the report here")

    cl = sub.add_parser(
        "cluster", help="TWIN-V2 memory banks for the GSU: build (full) or add a day, one commit"
    )
    how = cl.add_mutually_exclusive_group(required=True)
    how.add_argument("--full", action="store_true", help="every valid day (up to --date)")
    how.add_argument("--incremental", action="store_true", help="add --date to each stored bank")
    cl.add_argument("--date", help="YYYY-MM-DD (incremental: required; full: last day)")
    cl.add_argument("--model", help="model folder (default: model.model_dir)")
    cl.add_argument("--report", help="also write the report here")

    iv = sub.add_parser(
        "item-vectors",
        help="pretrained item vectors by Spark ALS: a new version of the item_vectors table",
    )
    iv.add_argument("--date", help="YYYY-MM-DD: the last valid day to read (default: the last)")
    iv.add_argument(
        "--training-window",
        action="store_true",
        help="only events before the validation window of `vista train`'s temporal split",
    )
    iv.add_argument("--report", help="also write the report here")

    for p in (val, sm, pub, cl, iv):
        p.set_defaults(func=_run)


def submit_main(argv: list[str]) -> int:
    """``spark-submit batch_jobs/submit.py [--config FILE] JOB ARGS``: the `vista job`
    commands alone, keeping the submitter's master and conf."""
    from summarizer.cli import run

    parser = argparse.ArgumentParser(prog="submit.py", description="vista-memory batch jobs")
    parser.add_argument(
        "--config", help="TOML config file (default: $VISTA_CONFIG or ./vista.toml)"
    )
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    config: list[str] = []
    if argv[:1] == ["--config"] and len(argv) > 1:
        config, argv = argv[:2], argv[2:]
    return run(parser, [*config, "job", "--submitted", *argv])
