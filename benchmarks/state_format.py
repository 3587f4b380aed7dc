"""Benchmark: lance file formats for the state table (one wide float32 list per user).

Every touched user's state is rewritten each day, so the batch job's write speed for
rows of ~17 KB (L*H*F*(D+1) float32 values) matters. For each lance file format this
writes the same state rows through the store's own staging path, alternating formats
round by round (side by side on a shared machine), then commits them, builds the BTREE
index and reads random batches of users by id (the incremental job's base-state read).
Prints medians and writes benchmarks/out/state_format.json.

    .venv/bin/python benchmarks/state_format.py [--users 10000] [--rows 2175] [--dir /tmp/sf]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402

from summarizer.store import (  # noqa: E402
    STATE,
    SummaryStore,
    schema,  # noqa: E402
    state_batch,
)

SHAPE = (2, 4, 32, 17)  # the demo model's state (state read-out, d=64, 4 heads, F=32)


def states(ids: np.ndarray, seed: int) -> object:
    rng = np.random.default_rng(seed)
    n = len(ids)
    kv = rng.standard_normal((n, *SHAPE)).astype(np.float32)
    at = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    return state_batch(
        ids, "bench", kv, [100] * n, [1] * n, [2] * n, [at] * n, [dt.date(2026, 11, 29)] * n
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000, help="rows in each committed table")
    ap.add_argument("--rows", type=int, default=2175, help="rows per staged write (one flush)")
    ap.add_argument("--read", type=int, default=470, help="users per read (one Arrow batch)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dir", default="/tmp/vista-state-format")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    formats = ["2.0", "2.2"]
    default = schema.FILE_VERSIONS[STATE]
    stores, writes = {}, {f: [] for f in formats}
    ids = np.arange(args.users, dtype=np.int64)
    try:
        for f in formats:  # each store's table created in its format
            schema.FILE_VERSIONS[STATE] = f
            stores[f] = SummaryStore(root / f)
            stores[f].commit_upsert(STATE, [stores[f].stage_fragments(STATE, states(ids, 0))])
            assert stores[f].location.open(STATE).data_storage_version == f
    finally:
        schema.FILE_VERSIONS[STATE] = default
    batch = states(ids[: args.rows], 1)
    mb = batch.nbytes / 1e6
    for _ in range(args.rounds):
        for f in formats:
            t0 = time.perf_counter()
            stores[f].stage_fragments(STATE, batch)
            writes[f].append(time.perf_counter() - t0)
    rng = np.random.default_rng(2)
    reads = {f: [] for f in formats}
    for _ in range(args.rounds * 3):
        want = np.sort(rng.choice(ids, args.read, replace=False))
        for f in formats:
            t0 = time.perf_counter()
            cols = stores[f].get_state_columns(want)
            reads[f].append(time.perf_counter() - t0)
            assert cols is not None and len(cols.user_id) == args.read
    result = {
        "state_shape": SHAPE,
        "row_bytes": int(np.prod(SHAPE)) * 4,
        "rows_per_write": args.rows,
        "write_mb": mb,
        "users_per_read": args.read,
        "table_users": args.users,
    }
    for f in formats:
        w, r = statistics.median(writes[f]), statistics.median(reads[f])
        result[f] = {"write_s": w, "write_mb_per_s": mb / w, "read_s": r}
        print(
            f"lance {f}: stage {args.rows} rows ({mb:.0f} MB) {w * 1e3:.1f} ms "
            f"({mb / w:,.0f} MB/s); read {args.read} users by id {r * 1e3:.1f} ms"
        )
    out = HERE / "out" / "state_format.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
