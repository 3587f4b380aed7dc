"""Benchmark: one user's tokens by dataset-level take, fragment-level take and the
fragment's data file, side by side.

The reader keeps every row's position; for a read inside one fragment it can
call that fragment's take instead of the dataset's, and where the fragment is one
data file as written, that file's reader (``SummaryReader``'s own path). All three
are timed on the same rows, interleaved, in one run. Uses the store made by
benchmarks/scorer.py.

    .venv/bin/python benchmarks/take_path.py [--store benchmarks/out/scorer/store]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=str(HERE / "out" / "scorer" / "store"))
    ap.add_argument("--reads", type=int, default=2000)
    args = ap.parse_args()
    from summarizer.store import SummaryStore

    snap = SummaryStore(args.store).open_reader()._snap  # the serving reader's snapshot
    ds, frags = snap.ds, snap.fragments
    starts = np.cumsum([0, *(f.count_rows() for f in frags)])
    rows = np.random.default_rng(0).integers(0, int(starts[-1]), args.reads)
    a, b, c = [], [], []
    for r in rows.tolist():
        t0 = time.perf_counter()
        x = ds.take([r], columns=["tokens"])
        a.append((time.perf_counter() - t0) * 1e3)
        i = int(np.searchsorted(starts, r, side="right")) - 1
        local = [r - int(starts[i])]
        t0 = time.perf_counter()
        y = frags[i].take(local, columns=["tokens"])
        b.append((time.perf_counter() - t0) * 1e3)
        assert x.equals(y)
        file = snap._file_reader(i)
        if file is not None:
            t0 = time.perf_counter()
            z = file[0].take_rows(local).to_table()
            c.append((time.perf_counter() - t0) * 1e3)
            assert x["tokens"].equals(z["tokens"])
    for name, xs in (("dataset.take", a), ("fragment.take", b), ("data file", c)):
        if not xs:
            print(f"{name:14} not taken (no fragment is one data file as written)")
            continue
        s = sorted(xs)
        print(f"{name:14} p50 {statistics.median(xs):.3f} ms  p99 {s[int(0.99 * len(s))]:.3f} ms")
    print(f"{len(frags)} fragment(s), {int(starts[-1]):,} rows, {args.reads} reads each")


if __name__ == "__main__":
    main()
