"""Benchmark: the online scorer with the memory bank (GSU) on and off, side by side.

A VISTA + GSU model (K=128 summary tokens, d=64, each candidate gathers its
top --gsu-k bank tokens) and a LanceDB store with summaries and memory banks
of C tokens per user (random float16 tokens, cluster sizes 1..256). For each
C in --banks, --requests requests of m=512 candidates are scored, alternating
memory on / off request by request (same scorer process, same users, same
candidates), so the ratio is measured side by side; end to end (store reads
included) and the model part alone (tokens and bank already in memory).

    .venv/bin/python benchmarks/scorer_memory.py [--users 100] [--banks 1000,10000]

Writes benchmarks/out/scorer_memory.json.
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


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def build(work: Path, users: int, C: int, gsu_k: int) -> tuple[str, str]:
    import numpy as np
    import torch

    from summarizer.config import ModelSpec
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel
    from summarizer.store import MemoryBankRecord, SummaryRecord, SummaryStore, memory_bank_schema

    shutil.rmtree(work, ignore_errors=True)
    torch.manual_seed(0)
    spec = ModelSpec(num_seeds=128, d_model=64, gsu_k=gsu_k)
    model_dir, store_uri = work / "model", work / "store"
    version = artifacts.save(VistaModel(spec), model_dir)
    store = SummaryStore(str(store_uri))
    rng = np.random.default_rng(0)
    now = dt.datetime.now(dt.UTC)
    ts = int(now.timestamp()) - 3600
    K, d = spec.num_seeds, spec.d_model
    store.publish(
        [
            SummaryRecord(
                u,
                version,
                rng.standard_normal((K, d)).astype(np.float16),
                10**5,
                1_700_000_000,
                ts,
                now,
            )
            for u in range(users)
        ],
        promote=True,
    )
    for lo in range(0, users, 20):  # a few MB a publish
        store.publish(
            [
                MemoryBankRecord(
                    u,
                    version,
                    rng.standard_normal((C, d)).astype(np.float16),
                    rng.integers(1, 257, C),
                    now,
                )
                for u in range(lo, min(lo + 20, users))
            ],
            schema=memory_bank_schema(C, d, version),
        )
    return str(model_dir), str(store_uri)


def measure(model_dir: str, store_uri: str, users: int, requests: int, m: int) -> dict:
    import numpy as np
    import torch

    from online_scorer import OnlineScorer

    on = OnlineScorer.open(store_uri, model_dir, max_candidates=4096)
    off = OnlineScorer.open(store_uri, model_dir, max_candidates=4096, memory=False)
    rng = np.random.default_rng(1)
    uids = rng.integers(0, users, requests)
    items = [rng.integers(0, 10**7, m) for _ in range(requests)]
    for i in range(3):
        on.score(int(uids[i]), items[i])
        off.score(int(uids[i]), items[i])
    e2e: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(requests):
        for name, sc in (("on", on), ("off", off)) if i % 2 else (("off", off), ("on", on)):
            t0 = time.perf_counter()
            r = sc.score(int(uids[i]), items[i])
            e2e[name].append((time.perf_counter() - t0) * 1e3)
            assert (r.memory_tokens > 0) == (name == "on")
    # Model part alone: summary and bank already read.
    model = on._models[on.model_version]
    summaries = [on.reader.get_one(int(u)) for u in uids]
    banks = [on._banks([int(u)], [on.model_version])[0][0] for u in uids]
    part: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(requests):
        cand = [torch.from_numpy(items[i])]
        for name in ("on", "off") if i % 2 else ("off", "on"):
            t0 = time.perf_counter()
            on._forward(
                model,
                [summaries[i]],
                cand,
                [None],
                time.time(),
                [banks[i]] if name == "on" else None,
            )
            part[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name in ("on", "off"):
        out[f"e2e_{name}_p50_ms"] = statistics.median(e2e[name])
        out[f"e2e_{name}_p99_ms"] = pct(e2e[name], 0.99)
        out[f"model_{name}_p50_ms"] = statistics.median(part[name])
        out[f"model_{name}_p99_ms"] = pct(part[name], 0.99)
    out["e2e_ratio_on_off_median"] = statistics.median(
        a / b for a, b in zip(e2e["on"], e2e["off"], strict=True)
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(HERE / "out" / "scorer_memory"))
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--banks", default="1000,10000", help="memory tokens C per user")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=512)
    ap.add_argument("--gsu-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = {}
    for C in (int(c) for c in args.banks.split(",")):
        work = Path(args.work) / f"C{C}"
        model_dir, store_uri = build(work, args.users, C, args.gsu_k)
        r = measure(model_dir, store_uri, args.users, args.requests, args.candidates)
        results[C] = r
        print(f"C={C:6}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    out = HERE / "out" / "scorer_memory.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"date": dt.date.today().isoformat(), "threads": args.threads, **vars(args)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
