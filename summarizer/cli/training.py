"""`vista train` and `vista evaluate`: train the configured model; compare it with the baselines."""

from __future__ import annotations

import argparse

from summarizer.config import VistaConfig


def cmd_train(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.store import SummaryStore
    from summarizer.training.workflow import train_and_save

    done = train_and_save(
        cfg,
        data_dir=args.data,
        out_dir=args.out,
        epochs=args.epochs,
        progress=not args.quiet,
        item_vectors=SummaryStore.training_item_vectors(cfg),
    )
    spec = done.spec
    print(
        f"trained {spec.kind} (K={spec.num_seeds}, d={spec.d_model}) on {done.n_events:,} "
        f"events of {done.n_users:,} users: {done.epochs_run} epochs in {done.seconds:.0f} s"
    )
    print(
        f"validation AUC {done.val.auc:.4f}, test AUC {done.test.auc:.4f} "
        f"(logloss {done.test.logloss:.4f})"
    )
    print(f"saved model version {done.version} to {done.model_dir}")
    if args.baseline:
        from summarizer.training import harness
        from summarizer.training.workflow import model_spec

        # The same split, targets and training budget, with no history module at all.
        none = harness.Variant("no history", model_spec(cfg, kind="none", ridge_dim=0, gsu_k=0))
        tc = cfg.train if args.epochs is None else cfg.train.replace(epochs=args.epochs)
        (row,) = harness.run(args.data or cfg.data.valid_dir, [none], tc, progress=False)
        print(
            f"test AUC {done.test.auc:.4f} for {spec.kind} vs {row.auc:.4f} with no history "
            f"(+{done.test.auc - row.auc:.4f}, same split and targets)"
        )
    return 0


def cmd_evaluate(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from summarizer.training import harness
    from summarizer.training.classic import CLASSIC_ROWS
    from summarizer.training.workflow import model_spec

    data = args.data or cfg.data.valid_dir
    variants = harness.default_variants(model_spec(cfg), last_k=cfg.model.last_k)
    classic = list(CLASSIC_ROWS)
    if args.models:
        wanted = [w.strip().lower() for w in args.models.split(",")]

        # Prefix match: a substring match made "DIN" pick "LinkedIn" too.
        def chosen(name: str) -> bool:
            return any(name.lower().startswith(w) for w in wanted)

        variants = [v for v in variants if chosen(v.name)]
        classic = [c for c in classic if chosen(c)]
        if not variants and not classic:
            raise ValueError(f"no model matches {args.models!r}")
    tc = cfg.train if args.epochs is None else cfg.train.replace(epochs=args.epochs)
    rows = harness.run(
        data,
        variants,
        tc,
        out_dir=args.out,
        progress=not args.quiet,
        classic_names=classic,
        seeds=args.seeds,
    )
    print(harness.format_table(rows))
    if args.out:
        print(f"wrote {args.out}/results.md, results.json and quality_vs_cost.png")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tr = subparsers.add_parser(
        "train", help="train the [model] end to end on validated events; save it"
    )
    tr.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    tr.add_argument("--out", help="model folder (default: model.model_dir)")
    tr.add_argument("--epochs", type=int, help="override train.epochs")
    tr.add_argument(
        "--baseline",
        action="store_true",
        help="also train the no-history model on the same split; print both test AUCs",
    )
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    ev = subparsers.add_parser(
        "evaluate", help="train and compare VISTA with the baselines; table and plot"
    )
    ev.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    ev.add_argument("--out", help="folder for results.md / results.json / quality_vs_cost.png")
    ev.add_argument(
        "--models", help="comma-separated name prefixes, e.g. 'no history,DIN,VISTA K=64'"
    )
    ev.add_argument("--epochs", type=int, help="override train.epochs")
    ev.add_argument(
        "--seeds", type=int, default=1, help="training seeds per model (train.seed, +1, ...)"
    )
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
