"""Benchmark (no GPU needed): what every Triton launch configuration needs on sm_80 and
sm_90 -- registers a thread, spill bytes and shared memory, from the triton wheel's ptxas
(kernels/aot.py). Prints a markdown table and writes benchmarks/out/kernels_ptx.json.

    env -u TRITON_INTERPRET .venv/bin/python benchmarks/kernels_ptx.py [--arch 90]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, action="append", help="sm_XX (default: 80 and 90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(HERE / "out"))
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    from kernels import aot

    archs = tuple(args.arch or aot.ARCHS)
    reports = aot.reports(archs, args.jobs)
    rows: dict[tuple[str, str], dict[int, aot.Report]] = {}
    for r in reports:
        key = (r.kernel, json.dumps({k: v for k, v in r.config.items()}))
        rows.setdefault(key, {})[r.arch] = r
    head = "| kernel | configuration | " + " | ".join(
        f"sm_{a} regs / spill B / smem KiB" for a in archs
    )
    print(head + " |")
    print("|---|---|" + "---:|" * len(archs))
    for (kernel, cfg), by_arch in rows.items():
        c = json.loads(cfg)
        shown = ", ".join(f"{k}={v}" for k, v in c.items() if k != "BLOCK_G" or v != 1)
        cells = []
        for a in archs:
            r = by_arch[a]
            cells.append(
                f"error: {r.error.splitlines()[0][:60]}"
                if r.error
                else f"{r.registers} / {r.spill_bytes} / {r.shared_bytes / 1024:.0f}"
            )
        print(f"| {kernel} | {shown} | " + " | ".join(cells) + " |")
    bad = [r for r in reports if not r.ok]
    print(f"\n{len(reports)} compiles, {len(bad)} with an error or spills")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_ptx.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in reports], indent=1)
    )


if __name__ == "__main__":
    main()
