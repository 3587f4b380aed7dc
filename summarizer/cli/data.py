"""`vista data synth|ingest-movielens|validate`: generate, ingest and validate event data."""

from __future__ import annotations

import argparse
import json
import sys

from summarizer.config import VistaConfig


def _print_counts(title: str, counts: dict[str, int]) -> None:
    print(title)
    if not counts:
        print("  (none)")
    for reason, count in counts.items():
        print(f"  {reason:<22} {count:>12,}")


def cmd_synth(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.data import synth

    flags = {"n_users": args.users, "max_events": args.max_events, "seed": args.seed}
    scfg = cfg.synth.replace(**{k: v for k, v in flags.items() if v is not None})
    out = args.out or cfg.data.events_dir
    summary = synth.generate(
        scfg,
        out,
        progress=not args.quiet,
        num_actions=cfg.data.num_actions,
        options=cfg.data.storage_options,
    )
    print(
        f"wrote {summary.n_events:,} events for {summary.n_users:,} users over "
        f"{len(summary.days)} days ({summary.days[0]} .. {summary.days[-1]}) to {out}"
    )
    print(f"longest history: user {summary.longest_user} with {summary.longest_events:,} events")
    _print_counts("bad rows injected (validation must quarantine them):", summary.injected_bad_rows)
    return 0


def cmd_ingest(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.data import movielens

    out = args.out or cfg.data.events_dir
    rows, days = movielens.ingest(args.path, out, cfg.data.storage_options)
    print(f"ingested {rows:,} ratings into {len(days)} day partitions under {out}")
    return 0


def cmd_validate(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.data.validation import EventSchemaError, validate_dataset

    src = args.input or cfg.data.events_dir
    try:
        report = validate_dataset(
            src,
            args.valid_out or cfg.data.valid_dir,
            args.quarantine_out or cfg.data.quarantine_dir,
            num_actions=cfg.data.num_actions,
            max_clock_skew_s=cfg.data.max_clock_skew_s,
            days=args.day or None,
            progress=not args.quiet,
            options=cfg.data.storage_options,
        )
    except EventSchemaError as exc:
        print(f"schema mismatch: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(
        f"validated {report.n_input:,} rows in {len(report.days)} day partitions "
        f"({report.seconds:.1f}s): {report.n_valid:,} valid, {report.n_quarantined:,} quarantined"
    )
    _print_counts("quarantined by reason:", report.counts)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    data = subparsers.add_parser("data", help="generate, ingest and validate event data")
    data_sub = data.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    syn = data_sub.add_parser(
        "synth", help="generate the synthetic lifelong dataset ([synth] config)"
    )
    syn.add_argument("--out", help="output folder (default: data.events_dir)")
    syn.add_argument("--users", type=int, help="override synth.n_users")
    syn.add_argument("--max-events", type=int, help="override synth.max_events")
    syn.add_argument("--seed", type=int, help="override synth.seed")
    syn.add_argument("--quiet", action="store_true", help="no progress bar")
    syn.set_defaults(func=cmd_synth)

    ing = data_sub.add_parser(
        "ingest-movielens", help="convert MovieLens ratings.csv / u.data / ratings.dat to events"
    )
    ing.add_argument("path", help="a ratings file or a MovieLens folder")
    ing.add_argument("--out", help="output folder (default: data.events_dir)")
    ing.set_defaults(func=cmd_ingest)

    val = data_sub.add_parser(
        "validate", help="split events into valid rows and a quarantine with reasons"
    )
    val.add_argument("--input", help="events folder (default: data.events_dir)")
    val.add_argument("--valid-out", help="default: data.valid_dir")
    val.add_argument("--quarantine-out", help="default: data.quarantine_dir")
    val.add_argument("--day", action="append", help="only this day (repeatable)")
    val.add_argument("--json", action="store_true", help="print the report as JSON")
    val.add_argument("--quiet", action="store_true", help="no progress bar")
    val.set_defaults(func=cmd_validate)
