"""`vista score USER_ID ITEM_ID...`: score candidates for one user, from the store (in
process) or through a running service (``--url``); `vista serve`: run that service."""

from __future__ import annotations

import argparse
import json
import sys
import time

from summarizer.config import VistaConfig
from summarizer.store.errors import StoreError


def cmd_score(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from online_scorer.requests import InvalidRequestError
    from online_scorer.scorer import ModelVersionError, OnlineScorer

    try:
        user = int(args.user_id)
        items = [int(i) for i in args.item_ids]
    except ValueError as exc:
        print(f"error: ids must be integers ({exc})", file=sys.stderr)
        return 2
    try:
        if args.url:
            from online_scorer.client import ScorerClient, ServiceError

            with ScorerClient(args.url) as client:
                t0 = time.perf_counter()
                try:
                    result = client.score(user, items)
                except ServiceError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                ms = (time.perf_counter() - t0) * 1e3
        else:
            scorer = OnlineScorer.from_config(cfg, max_candidates=max(len(items), 1))
            t0 = time.perf_counter()
            result = scorer.score(user, items)
            ms = (time.perf_counter() - t0) * 1e3
    except InvalidRequestError as exc:  # bad input: a usage error, like ids that are not ints
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ModelVersionError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = {
        "user_id": user,
        "status": str(result.status),
        "cold_start": result.cold_start,
        "table_version": result.table_version,
        "model_version": result.model_version,
        "memory_tokens": result.memory_tokens,
        "memory_skipped": result.memory_skipped,
        "scores": {str(i): round(float(s), 6) for i, s in zip(items, result.scores, strict=True)},
        "ms": round(ms, 3),
        "via": args.url or "in-process",
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    flag = " (cold start: no summary, no-history path)" if result.cold_start else ""
    flag += " (stale summary)" if result.stale else ""
    if result.memory_tokens:
        flag += f"; GSU over a memory bank of {result.memory_tokens} cluster tokens"
    elif result.memory_skipped:
        flag += "; memory bank of another model version not used"
    print(
        f"user {user}: {result.status}{flag}; summaries version {result.table_version}, "
        f"model {result.model_version[:16]}; {len(items)} candidates in {ms:.2f} ms "
        + (
            f"through {args.url} (one call, connection set-up included)"
            if args.url
            else "(one cold call, imports included; warm figures: BENCHMARKS.md)"
        )
    )
    order = sorted(zip(items, result.scores, strict=True), key=lambda t: -float(t[1]))
    for item, score in order:
        print(f"  item {item:>12}  {float(score):.6f}")
    return 0


def cmd_serve(cfg: VistaConfig, args: argparse.Namespace) -> int:
    from online_scorer.service import serve

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "batching": False if args.no_batching else None,
        }.items()
        if v is not None
    }
    if overrides:
        from pydantic import ValidationError

        try:
            serve_cfg = cfg.serve.model_validate({**cfg.serve.model_dump(), **overrides})
        except ValidationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        cfg = cfg.model_copy(update={"serve": serve_cfg})
    serve(cfg)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sc = subparsers.add_parser(
        "score", help="score candidate items for a user (one amortized pass)"
    )
    sc.add_argument("user_id", help="user id (non-negative integer)")
    sc.add_argument("item_ids", nargs="+", help="candidate item ids")
    sc.add_argument("--url", help="score through a running `vista serve` at this address instead")
    sc.add_argument("--json", action="store_true", help="print JSON")
    sc.set_defaults(func=cmd_score)

    sv = subparsers.add_parser(
        "serve",
        help="serve the scorer over HTTP: POST /v1/score, GET /v1/summary/{id}, /healthz, "
        "/readyz, /metrics ([serve] config section)",
    )
    sv.add_argument("--host", help="address to listen on (default: serve.host)")
    sv.add_argument("--port", type=int, help="port (0: any free port; default: serve.port)")
    sv.add_argument("--workers", type=int, help="server processes (default: serve.workers)")
    sv.add_argument("--no-batching", action="store_true", help="score each request on its own")
    sv.set_defaults(func=cmd_serve)
