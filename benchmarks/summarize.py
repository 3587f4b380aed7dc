"""Benchmark: summarize one history of 10^3..10^6 events on this CPU.

For each n, a fresh subprocess (so peak RSS is per size) builds a random
history, loads a default-size VISTA model (K=64, d=64) and times:
  * a full summarize (fold from empty + read-out), median of --repeats;
  * folding 1% new events into the stored state + read-out, vs recomputing
    the whole history again (the incremental speed-up).
Prints a table and writes benchmarks/out/summarize.json.

    .venv/bin/python benchmarks/summarize.py [--sizes 1000 10000 100000 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/kernels.py would shadow the kernels package: keep this folder off sys.path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int, repeats: int, threads: int, feature_map: str = "silu") -> dict[str, float]:
    import numpy as np
    import torch

    from summarizer.config import ModelSpec
    from summarizer.model.encoder import EventBatch
    from summarizer.model.vista_model import VistaModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VistaModel(ModelSpec(feature_map=feature_map)).eval()
    summ = model.require_summarizer()
    rng = np.random.default_rng(n)
    total = n + max(n // 100, 1)
    events = EventBatch.from_numpy(
        rng.integers(0, 10**7, total),
        np.sort(rng.integers(1_500_000_000, 1_700_000_000, total)),
        rng.integers(0, 4, total),
        None,
    )
    history, new = events.slice(0, n), events.slice(n, total)
    summ.summarize(events.slice(0, min(n, 5000)))  # warm-up: allocator, kernels
    rss_before = rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = summ.summarize(history)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fold_t, full_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        summ.readout(summ.fold(state, new))
        fold_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        summ.summarize(events)
        full_t.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    fold_med, full_med = sorted(fold_t)[len(fold_t) // 2], sorted(full_t)[len(full_t) // 2]
    return {
        "n": n,
        "seconds": med,
        "events_per_s": n / med,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "fold_1pct_s": fold_med,
        "recompute_s": full_med,
        "fold_speedup": full_med / fold_med,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--feature-map", default="silu", choices=["silu", "softmax"])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.repeats, args.threads, args.feature_map)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(n),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
                "--feature-map",
                args.feature_map,
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"summarize one history, K=64 d=64, {args.feature_map} map, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print(
        f"{'events':>10} {'seconds':>9} {'events/s':>12} {'peak RSS MB':>12} {'fold 1% s':>10} {'recompute s':>12} {'speed-up':>9}"
    )
    for r in rows:
        print(
            f"{r['n']:>10,} {r['seconds']:>9.4f} {r['events_per_s']:>12,.0f} {r['peak_rss_mb']:>12.0f} "
            f"{r['fold_1pct_s']:>10.4f} {r['recompute_s']:>12.4f} {r['fold_speedup']:>8.0f}x"
        )
    if len(rows) > 1:
        print(
            f"peak RSS growth from {rows[0]['n']:,} to {rows[-1]['n']:,} events: {rows[-1]['peak_rss_mb'] - rows[0]['peak_rss_mb']:.0f} MB"
        )
    out_dir = Path(__file__).parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "summarize.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
