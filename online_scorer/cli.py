"""`vista score USER_ID ITEM_ID...`: score candidates for one user from the store."""

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
        "(one cold call, imports included; warm figures: BENCHMARKS.md)"
    )
    order = sorted(zip(items, result.scores, strict=True), key=lambda t: -float(t[1]))
    for item, score in order:
        print(f"  item {item:>12}  {float(score):.6f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sc = subparsers.add_parser(
        "score", help="score candidate items for a user from the store (one amortized pass)"
    )
    sc.add_argument("user_id", help="user id (non-negative integer)")
    sc.add_argument("item_ids", nargs="+", help="candidate item ids")
    sc.add_argument("--json", action="store_true", help="print JSON")
    sc.set_defaults(func=cmd_score)
