"""The `vista` command line.

Each subcommand lives in a small ``_cmd_*`` function; heavy imports happen
inside them so `vista --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from summarizer.config import ConfigError, SynthConfig, VistaConfig, config_to_toml, load_config


def _print_counts(title: str, counts: dict[str, int]) -> None:
    print(title)
    if not counts:
        print("  (none)")
    for reason, count in counts.items():
        print(f"  {reason:<22} {count:>12,}")


def _cmd_config_show(cfg: VistaConfig, args: argparse.Namespace) -> int:
    if args.json:
        print(cfg.model_dump_json(indent=2))
    else:
        print(config_to_toml(cfg), end="")
    return 0


def _cmd_data_synth(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.data import synth

    flags = {"n_users": args.users, "max_events": args.max_events, "seed": args.seed}
    overrides = {k: v for k, v in flags.items() if v is not None}
    scfg = SynthConfig.model_validate({**cfg.synth.model_dump(), **overrides})
    out = args.out or cfg.data.events_dir
    summary = synth.generate(scfg, out, progress=not args.quiet, num_actions=cfg.data.num_actions)
    print(
        f"wrote {summary.n_events:,} events for {summary.n_users:,} users over "
        f"{len(summary.days)} days ({summary.days[0]} .. {summary.days[-1]}) to {out}"
    )
    print(f"longest history: user {summary.longest_user} with {summary.longest_events:,} events")
    _print_counts("bad rows injected (validation must quarantine them):", summary.injected_bad_rows)
    return 0


def _cmd_data_ingest(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.data import movielens

    out = args.out or cfg.data.events_dir
    rows, days = movielens.ingest(args.path, out)
    print(f"ingested {rows:,} ratings into {len(days)} day partitions under {out}")
    return 0


def _cmd_data_validate(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.data.validation import SchemaMismatchError, validate_dataset

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
        )
    except SchemaMismatchError as exc:
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


def _train_config(cfg: VistaConfig, args: argparse.Namespace) -> Any:
    from summarizer.training.train import TrainConfig

    tc = TrainConfig(**cfg.train.model_dump())
    if getattr(args, "epochs", None) is not None:
        tc = dataclasses.replace(tc, epochs=args.epochs)
    return tc


def _model_spec(cfg: VistaConfig, kind: str = "vista") -> Any:
    from summarizer.model.vista_model import ModelSpec

    m = cfg.model
    return ModelSpec(
        kind=kind,
        num_seeds=m.num_seeds,
        d_model=m.d_model,
        num_heads=m.num_heads,
        feature_dim=m.feature_dim,
        feature_map=m.feature_map,
        values=m.values,
        readout=m.readout,
        num_layers=m.num_layers,
        item_buckets=m.item_buckets,
        num_actions=cfg.data.num_actions,
        chunk_size=m.chunk_size,
        last_k=m.last_k,
        gsu_k=m.gsu_k if kind == "vista" else 0,
        memory=m.memory,
        gsu_softmax=m.gsu_softmax,
        gsu_gate=m.gsu_gate,
    )


def _cmd_train(cfg: VistaConfig, args: argparse.Namespace) -> int:
    import numpy as np

    from summarizer.data.histories import load_histories, temporal_split
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel
    from summarizer.training.train import Window, evaluate, train

    data = args.data or cfg.data.valid_dir
    out = args.out or cfg.model.model_dir
    t1, t2 = temporal_split(data)
    hist = load_histories(data)
    spec = _model_spec(cfg)
    spec = dataclasses.replace(spec, rating_head=bool(np.any(~np.isnan(hist.weight))))
    tc = _train_config(cfg, args)
    print(
        f"training VISTA (K={spec.num_seeds}, d={spec.d_model}) on {hist.n_events:,} events of {hist.n_users:,} users"
    )
    result = train(
        VistaModel(spec), hist, Window(-(2**62), t1), Window(t1, t2), tc, progress=not args.quiet
    )
    test = evaluate(result.model, hist, Window(t2, 2**62), tc)
    meta = {
        "val": result.val.to_dict(),
        "test": test.to_dict(),
        "split": [t1, t2],
        "data": str(data),
    }
    version = artifacts.save(result.model, out, metadata=meta)
    print(
        f"validation AUC {result.val.auc:.4f}, test AUC {test.auc:.4f} (logloss {test.logloss:.4f})"
    )
    print(f"saved model version {version} to {out}")
    return 0


def _cmd_evaluate(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.training import harness

    data = args.data or cfg.data.valid_dir
    variants = harness.default_variants(_model_spec(cfg), last_k=cfg.model.last_k)
    if args.models:
        wanted = [w.strip().lower() for w in args.models.split(",")]
        # Prefix match: a substring match made "DIN" pick "LinkedIn" too.
        variants = [v for v in variants if any(v.name.lower().startswith(w) for w in wanted)]
        if not variants:
            raise ValueError(f"no model matches {args.models!r}")
    rows = harness.run(
        data, variants, _train_config(cfg, args), out_dir=args.out, progress=not args.quiet
    )
    print(harness.format_table(rows))
    if args.out:
        print(f"wrote {args.out}/results.md, results.json and quality_vs_cost.png")
    return 0


def _cmd_summarize(cfg: VistaConfig, args: argparse.Namespace) -> int:
    import torch

    from summarizer.data.histories import load_histories
    from summarizer.model import artifacts
    from summarizer.model.encoder import EventBatch

    model, version = artifacts.load(args.model or cfg.model.model_dir)
    summ = model.require_summarizer()
    hist = load_histories(args.data or cfg.data.valid_dir, users=[args.user])
    if hist.n_users == 0:
        print(f"user {args.user}: no events; the cold-start summary would be used")
        return 0
    events = EventBatch.from_numpy(hist.item_id, hist.ts, hist.action, hist.weight)
    t0 = time.perf_counter()
    state, tokens = summ.summarize(events)
    seconds = time.perf_counter() - t0
    norms = tokens.norm(dim=1)
    report = {
        "user_id": args.user,
        "model_version": version,
        "n_events": state.n_events,
        "first_ts": state.first_ts,
        "last_ts": state.last_ts,
        "tokens_shape": list(tokens.shape),
        "token_norm_mean": float(norms.mean()),
        "token_norm_max": float(norms.max()),
        "finite": bool(torch.isfinite(tokens).all()),
        "seconds": round(seconds, 4),
    }
    print(json.dumps(report, indent=2))
    return 0


def _cmd_cluster(cfg: VistaConfig, args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from kernels.topk import topk
    from summarizer.data.histories import load_histories
    from summarizer.memory.clustering import ClusterParams, cluster_history, engagement_levels
    from summarizer.model import artifacts

    model, version = artifacts.load(args.model or cfg.model.model_dir)
    hist = load_histories(args.data or cfg.data.valid_dir, users=[args.user])
    if hist.n_users == 0:
        print(f"user {args.user}: no events, no memory bank")
        return 0
    params = ClusterParams(max_cluster_size=args.gamma, max_clusters=args.max_clusters)
    with torch.no_grad():  # the item embedding the candidates are scored with
        emb = model.items(torch.as_tensor(np.array(hist.item_id, dtype=np.int64))).numpy()
    level = engagement_levels(hist.action, hist.weight)
    t0 = time.perf_counter()
    bank = cluster_history(emb, hist.item_id, hist.action, level, params)
    seconds = time.perf_counter() - t0
    report: dict[str, object] = {
        "user_id": args.user,
        "model_version": version,
        "n_events": int(len(hist.item_id)),
        "clusters": len(bank),
        "largest_cluster": int(bank.sizes.max()),
        "clusters_per_level": {
            int(g): int((bank.levels == g).sum()) for g in np.unique(bank.levels)
        },
        "seconds": round(seconds, 3),
    }
    if args.candidates:
        with torch.no_grad():
            q = model.items(torch.tensor(args.candidates, dtype=torch.long)).numpy()
        scores, idx = topk(q, bank.centroids, args.k)
        report["gsu"] = [
            {
                "candidate": c,
                "top": [
                    {
                        "cluster": int(j),
                        "score": round(float(sc), 4),
                        "size": int(bank.sizes[j]),
                        "level": int(bank.levels[j]),
                        "rep_item": int(bank.rep_item[j]),
                    }
                    for sc, j in zip(scores[i], idx[i], strict=True)
                ],
            }
            for i, c in enumerate(args.candidates)
        ]
    print(json.dumps(report, indent=2))
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

    data = sub.add_parser("data", help="generate, ingest and validate event data")
    data_sub = data.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    syn = data_sub.add_parser(
        "synth", help="generate the synthetic lifelong dataset ([synth] config)"
    )
    syn.add_argument("--out", help="output folder (default: data.events_dir)")
    syn.add_argument("--users", type=int, help="override synth.n_users")
    syn.add_argument("--max-events", type=int, help="override synth.max_events")
    syn.add_argument("--seed", type=int, help="override synth.seed")
    syn.add_argument("--quiet", action="store_true", help="no progress bar")
    syn.set_defaults(func=_cmd_data_synth)

    ing = data_sub.add_parser(
        "ingest-movielens", help="convert MovieLens ratings.csv / u.data / ratings.dat to events"
    )
    ing.add_argument("path", help="a ratings file or a MovieLens folder")
    ing.add_argument("--out", help="output folder (default: data.events_dir)")
    ing.set_defaults(func=_cmd_data_ingest)

    val = data_sub.add_parser(
        "validate", help="split events into valid rows and a quarantine with reasons"
    )
    val.add_argument("--input", help="events folder (default: data.events_dir)")
    val.add_argument("--valid-out", help="default: data.valid_dir")
    val.add_argument("--quarantine-out", help="default: data.quarantine_dir")
    val.add_argument("--day", action="append", help="only this day (repeatable)")
    val.add_argument("--json", action="store_true", help="print the report as JSON")
    val.add_argument("--quiet", action="store_true", help="no progress bar")
    val.set_defaults(func=_cmd_data_validate)

    tr = sub.add_parser("train", help="train VISTA end to end on validated events; save the model")
    tr.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    tr.add_argument("--out", help="model folder (default: model.model_dir)")
    tr.add_argument("--epochs", type=int, help="override train.epochs")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser(
        "evaluate", help="train and compare VISTA with the baselines; table and plot"
    )
    ev.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    ev.add_argument("--out", help="folder for results.md / results.json / quality_vs_cost.png")
    ev.add_argument(
        "--models", help="comma-separated name prefixes, e.g. 'no history,DIN,VISTA K=64'"
    )
    ev.add_argument("--epochs", type=int, help="override train.epochs")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    sm = sub.add_parser(
        "summarize", help="summarize one user's history in-process and print token stats"
    )
    sm.add_argument("user", type=int, help="user id")
    sm.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    sm.add_argument("--model", help="model folder (default: model.model_dir)")
    sm.set_defaults(func=_cmd_summarize)

    cl = sub.add_parser(
        "cluster",
        help="TWIN-V2-cluster one user's history into a memory bank; optionally GSU-search it",
    )
    cl.add_argument("user", type=int, help="user id")
    cl.add_argument("--candidates", type=int, nargs="*", help="item ids to search the bank for")
    cl.add_argument("--k", type=int, default=3, help="memory tokens per candidate")
    cl.add_argument("--gamma", type=int, default=256, help="largest cluster (events)")
    cl.add_argument("--max-clusters", type=int, default=10_000, help="C, most clusters")
    cl.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    cl.add_argument("--model", help="model folder (default: model.model_dir)")
    cl.set_defaults(func=_cmd_cluster)

    from summarizer.store.cli import register as register_store

    register_store(sub)
    from batch_jobs.cli import register as register_jobs

    register_jobs(sub)
    from online_scorer.cli import register as register_score

    register_score(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":
    raise SystemExit(main())
