"""Benchmark: the LanceDB summary store at N users with K x d float16 tokens.

Measures, on a fresh local database:
  * publish throughput (stage fragments + one commit + index), first load and a
    10% upsert of changed users;
  * compaction time and size on disk;
  * point lookups (one random id) and batch lookups (--batch random ids), p50/p99,
    through several read paths: SummaryReader with `take` (in-memory id -> row map,
    what `get` uses by default) and with `index` (BTREE filter), and the raw lance
    dataset and LanceDB query APIs they are built on.
Prints a table and writes benchmarks/out/store.json.

    .venv/bin/python benchmarks/store.py [--users 100000] [--K 64] [--d 64] [--db /tmp/store-bench]
    .venv/bin/python benchmarks/store.py --users N --db /tmp/store-bench --reads-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# benchmarks/kernels.py would shadow the kernels package: keep this folder off sys.path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from summarizer.store import SUMMARIES, SummaryStore, summaries_schema  # noqa: E402

MV = "bench00000000000"


def batches(ids: np.ndarray, K: int, d: int, chunk: int, marker: int) -> Iterator[pa.RecordBatch]:
    """Arrow batches straight from numpy, as a Spark job would hand them over."""
    schema = summaries_schema(K, d, MV)
    pool = np.random.default_rng(0).standard_normal((256, K * d)).astype(np.float16)
    now = pa.scalar(dt.datetime.now(dt.UTC), type=pa.timestamp("us", tz="UTC"))
    for lo in range(0, len(ids), chunk):
        u = ids[lo : lo + chunk]
        tokens = pool[u % 256].copy()
        tokens[:, 0] = (u % 2048).astype(np.float16)  # distinct per user, checkable
        n = len(u)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(u, pa.int64()),
                pa.array([MV] * n, pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), K * d),
                pa.array(np.full(n, marker, np.int64)),
                pa.array(np.full(n, 1_600_000_000, np.int64)),
                pa.array(np.full(n, 1_700_000_000, np.int64)),
                pa.array(np.full(n, now.value, np.int64)).cast(pa.timestamp("us", tz="UTC")),
            ],
            schema=schema,
        )


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def latency(
    fn: Callable[[np.ndarray], object], warm: list[np.ndarray], draws: list[np.ndarray]
) -> dict[str, float]:
    for x in warm:  # other ids: warms lance's caches and thread pools, not these rows
        fn(x)
    gc.collect()
    gc.disable()  # a collection in the middle of one query is noise, not the store
    try:
        ts = []
        for x in draws:
            t = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t)
    finally:
        gc.enable()
    ms = np.array(ts) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def publish(store: SummaryStore, ids: np.ndarray, args: argparse.Namespace, marker: int) -> dict:
    t_stage, staged = timed(
        lambda: store.stage_fragments(SUMMARIES, batches(ids, args.K, args.d, args.chunk, marker))
    )
    t_commit, result = timed(lambda: store.commit_upsert(SUMMARIES, [staged]))
    total = t_stage + t_commit
    return {
        "users": len(ids),
        "stage_s": t_stage,
        "commit_s": t_commit,
        "users_per_s": len(ids) / total,
        "mb_per_s": len(ids) * args.K * args.d * 2 / total / 1e6,
        "version": result.version,  # type: ignore[attr-defined]
    }


def read_paths(store: SummaryStore, n: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (point lookup of one id, batch lookup of an id array)."""
    take = store.open_reader(lookup="take")
    index = store.open_reader(lookup="index")
    ds = store.location.open(SUMMARIES, version="serving")
    tbl = store.location.connect().open_table(SUMMARIES)
    tbl.checkout("serving")
    keys = ds.to_table(columns=["user_id"])["user_id"].to_numpy()
    order = np.argsort(keys)
    sorted_keys = keys[order]

    def offsets(x: np.ndarray) -> np.ndarray:
        return np.sort(order[np.searchsorted(sorted_keys, x)])

    def sql_in(x: np.ndarray) -> str:
        # Benchmark-generated int64 values only; the store itself never builds SQL strings.
        return "user_id IN (" + ",".join(str(int(v)) for v in x) + ")"

    return {
        "SummaryReader.get (take, default)": (take.get, take.get),
        "SummaryReader.get (index)": (index.get, index.get),
        # The floor of the default path: the same single read, no result objects.
        "lance ds.take(offsets, [tokens]) raw": (
            lambda x: ds.take(offsets(x), columns=["tokens"]),
            lambda x: ds.take(offsets(x), columns=["tokens"]),
        ),
        "lance ds.take(offsets) all columns": (
            lambda x: ds.take(offsets(x)),
            lambda x: ds.take(offsets(x)),
        ),
        "lance ds.to_table(filter) raw": (
            lambda x: ds.to_table(filter=pc.field("user_id") == int(x[0])),
            lambda x: ds.to_table(filter=pc.field("user_id").isin(pa.array(x))),
        ),
        "lancedb tbl.search().where() raw": (
            lambda x: tbl.search().where(f"user_id = {int(x[0])}").to_arrow(),
            lambda x: tbl.search().where(sql_in(x)).limit(len(x)).to_arrow(),
        ),
        # The default path again, last: shows how much of the spread is this machine's load.
        "SummaryReader.get (take) again": (take.get, take.get),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8192, help="rows per Arrow batch")
    ap.add_argument("--upsert-fraction", type=float, default=0.1)
    ap.add_argument("--points", type=int, default=2000, help="point lookups per read path")
    ap.add_argument("--batch", type=int, default=1000, help="ids per batch lookup")
    ap.add_argument("--batches", type=int, default=50, help="batch lookups per read path")
    ap.add_argument("--db", help="database folder (default: a fresh temp folder, removed after)")
    ap.add_argument("--out", default=str(HERE / "out" / "store.json"))
    ap.add_argument(
        "--reads-only",
        action="store_true",
        help="measure the read paths again on the store an earlier run left in --db",
    )
    args = ap.parse_args()
    if args.reads_only and not args.db:
        ap.error("--reads-only needs --db (a store an earlier run left there)")

    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="store-bench-"))
    rng = np.random.default_rng(1)
    ids = np.arange(args.users, dtype=np.int64)
    out: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args)}
    changed = np.sort(rng.choice(ids, int(args.users * args.upsert_fraction), replace=False))
    if args.reads_only:
        store = SummaryStore(str(db), max_age_s=10**9)
        rows = store.location.open(SUMMARIES, version="serving").count_rows()
        if rows != args.users:
            print(f"{db} holds {rows:,} users, not --users {args.users:,}", file=sys.stderr)
            return 2
    else:
        need = args.users * args.K * args.d * 2 * 3  # table + upsert + compaction rewrite
        free = shutil.disk_usage(db if db.exists() else db.parent).free
        print(f"database {db}: need ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        if free < need * 1.2:
            print("not enough free disk for this --users; lower it", file=sys.stderr)
            return 2
        if db.exists() and any(db.iterdir()):
            shutil.rmtree(db)
        store = SummaryStore(str(db), max_age_s=10**9)
        out["publish_first"] = publish(store, ids, args, marker=1)
        out["publish_upsert"] = publish(store, changed, args, marker=2)
        out["compact_s"], _ = timed(lambda: store.compact(cleanup_older_than=dt.timedelta(0)))
        store.promote()
    out["disk_bytes"] = folder_bytes(db / f"{SUMMARIES}.lance")
    # Compaction has just written the whole table again: let the OS write it back before
    # timing reads, or the first read path pays for the write-back (a serving host reads
    # a store that is not being rewritten under it).
    out["sync_s"], _ = timed(os.sync)

    # Reads are measured with the data in the OS page cache (a serving host's steady state).
    t_warm, _ = timed(
        lambda: sum(
            b.num_rows for b in store.location.open(SUMMARIES).to_batches(columns=["tokens"])
        )
    )
    out["warm_scan_s"] = t_warm
    reads = {}

    def draw_points() -> list[np.ndarray]:
        return [rng.integers(0, args.users, 1) for _ in range(args.points)]

    def draw_batches() -> list[np.ndarray]:
        return [rng.choice(args.users, args.batch, replace=False) for _ in range(args.batches)]

    for name, (point, batch) in read_paths(store, args.users).items():
        reads[name] = {
            "point": latency(point, draw_points(), draw_points()),
            "batch": latency(batch, draw_batches(), draw_batches()),
        }
    out["reads"] = reads
    check = store.get(changed[:5])
    assert all(r.n_events == 2 for r in check), "upserted users must read their new rows"
    out["env"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "lancedb": __import__("lancedb").__version__,
        "pylance": __import__("lance").__version__,
        "loadavg": os.getloadavg(),
    }

    print(
        f"\nN={args.users:,} users, K={args.K}, d={args.d} float16 "
        f"({args.K * args.d * 2 / 1024:.0f} KiB/user); load avg {os.getloadavg()[0]:.1f}"
    )
    if not args.reads_only:
        f, u = out["publish_first"], out["publish_upsert"]
        print(
            f"{'publish (stage + 1 commit + index)':<38} {'users/s':>10} {'MB/s':>8} "
            f"{'stage s':>8} {'commit s':>9}"
        )
        for label, p in (("first load", f), (f"upsert {u['users']:,} changed users", u)):
            print(
                f"  {label:<36} {p['users_per_s']:>10,.0f} {p['mb_per_s']:>8.1f} "
                f"{p['stage_s']:>8.2f} {p['commit_s']:>9.2f}"
            )
        print(f"  compact + cleanup: {out['compact_s']:.2f} s")
    print(
        f"  size on disk {out['disk_bytes'] / 1e6:,.1f} MB "
        f"({out['disk_bytes'] / args.users:,.0f} B/user); write-back wait {out['sync_s']:.2f} s"
    )
    print(
        f"\n{'read path':<36} {'point p50':>10} {'point p99':>10} "
        f"{f'{args.batch} p50':>10} {f'{args.batch} p99':>10}   (ms)"
    )
    for name, r in reads.items():
        print(
            f"  {name:<34} {r['point']['p50_ms']:>10.3f} {r['point']['p99_ms']:>10.3f} "
            f"{r['batch']['p50_ms']:>10.2f} {r['batch']['p99_ms']:>10.2f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.out}")
    if not args.db:
        shutil.rmtree(db, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
