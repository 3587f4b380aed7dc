"""The `vista` command line.

The root parser knows only ``vista config show``; every other command group is
contributed by the package that owns it, through the ``vista.commands`` entry
points of pyproject.toml (summarizer's own groups under :mod:`summarizer.cli`,
``vista job`` from batch_jobs, ``vista score`` from online_scorer), so this
module imports none of its callers. Each entry point is a ``register(subparsers)``
function; a command is a ``(cfg, args) -> exit code`` handler set as ``func``.
Heavy imports happen inside the handlers so `vista --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from summarizer.config import ConfigError, VistaConfig, config_to_toml, load_config

COMMANDS_GROUP = "vista.commands"


def _cmd_config_show(cfg: VistaConfig, args: argparse.Namespace) -> int:
    if args.json:
        print(cfg.model_dump_json(indent=2))
    else:
        print(config_to_toml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vista",
        description="vista-memory: lifelong user memory for recommendation models.",
    )
    parser.add_argument(
        "--config", help="TOML config file (default: $VISTA_CONFIG or ./vista.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = sub.add_parser("config", help="show the effective configuration")
    config_sub = config.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    show = config_sub.add_parser("show", help="print defaults + file + VISTA_* overrides, as TOML")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(func=_cmd_config_show)

    # By name: setuptools writes entry points sorted, whatever pyproject.toml's order.
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, load the configuration, run the chosen handler; errors become exit codes."""
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(cfg, args))
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
