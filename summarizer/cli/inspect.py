"""`vista summarize USER` and `vista cluster USER`: one user's summary or TWIN-V2 memory
bank, computed in-process from the validated events with a saved model (to look at one
user; the batch jobs do everyone)."""

from __future__ import annotations

import argparse
import json
import time

from summarizer.config import VistaConfig


def cmd_summarize(cfg: VistaConfig, args: argparse.Namespace) -> int:
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


def cmd_cluster(cfg: VistaConfig, args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from kernels import topk
    from summarizer.data.histories import load_histories
    from summarizer.memory.clustering import cluster_history, engagement_levels
    from summarizer.model import artifacts

    model, version = artifacts.load(args.model or cfg.model.model_dir)
    hist = load_histories(args.data or cfg.data.valid_dir, users=[args.user])
    if hist.n_users == 0:
        print(f"user {args.user}: no events, no memory bank")
        return 0
    params = cfg.memory.replace(max_cluster_size=args.gamma, max_clusters=args.max_clusters)
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
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"user {args.user}: {report['n_events']:,} events -> {report['clusters']:,} clusters "
        f"(largest {report['largest_cluster']:,} events; per engagement level "
        f"{report['clusters_per_level']}) in {seconds * 1e3:.1f} ms, model {version[:12]}"
    )
    for hit in report.get("gsu", []):  # type: ignore[attr-defined]
        tops = ", ".join(
            f"cluster {t['cluster']} (score {t['score']}, {t['size']} events, item {t['rep_item']})"
            for t in hit["top"]
        )
        print(f"  candidate {hit['candidate']}: {tops}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sm = subparsers.add_parser(
        "summarize", help="summarize one user's history in-process and print token stats"
    )
    sm.add_argument("user", type=int, help="user id")
    sm.add_argument("--data", help="validated events folder (default: data.valid_dir)")
    sm.add_argument("--model", help="model folder (default: model.model_dir)")
    sm.set_defaults(func=cmd_summarize)

    cl = subparsers.add_parser(
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
    cl.add_argument("--json", action="store_true", help="print the whole report as JSON")
    cl.set_defaults(func=cmd_cluster)
