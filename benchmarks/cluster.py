"""Benchmark: past one machine, on this one -- an S3-compatible store and a standalone Spark.

Starts moto's S3 server and a Spark standalone master with one worker on 127.0.0.1 (the
cluster tests' servers, tests/servers.py), then, side by side in one run:

A. Point lookups of one user's summary (K=16 tokens of d=64, --users users): the pinned
   reader (``SummaryReader.get``, what the scorer uses), the ``SummaryStore.get`` facade
   (pinned, tag re-read on the refresh interval) and the facade as it was before (the
   tag re-read on every call), from the S3 server and from a local folder; p50/p99 over
   --lookups warm lookups, interleaved in rounds.
B. The nightly chain (validate -> summarize full -> publish -> summarize incremental ->
   publish -> cluster full, tests/batch_jobs/chain.py) on synthetic data (--users users):
   on the standalone master with everything on S3, and on local[2] with local folders
   (the same data and model); the wall time of each step.

Writes benchmarks/out/cluster.json.

    .venv/bin/python benchmarks/cluster.py [--users 10000] [--chain-users 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def lookups(s3_options: dict[str, str], s3_root: str, work: Path, users: int, n: int) -> dict:
    import importlib.util

    import numpy as np

    from summarizer.store import SummaryStore

    spec = importlib.util.spec_from_file_location("bench_scorer", HERE / "scorer.py")
    assert spec is not None and spec.loader is not None
    scorer_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer_bench)
    rng = np.random.default_rng(0)
    stores = {
        "s3": (f"{s3_root}/lookups", s3_options),
        "local": (str(work / "lookups"), {}),
    }
    readers = {}
    for where, (uri, opts) in stores.items():
        store = SummaryStore(uri, storage_options=opts)
        scorer_bench.publish_random(store, users, 16, 64, "0123456789abcdef")
        readers[f"{where}_pinned_reader"] = store.open_reader().get
        readers[f"{where}_facade"] = SummaryStore(uri, storage_options=opts).get
        readers[f"{where}_facade_tag_every_call"] = store.open_reader(
            require_tag=False, refresh_interval_s=0
        ).get
    ids = rng.integers(0, users, n).tolist()
    times: dict[str, list[float]] = {k: [] for k in readers}
    for get in readers.values():  # warm: pinned versions, first reads
        for u in ids[:5]:
            get(u)
    rounds = 5
    for r in range(rounds):
        for name, get in readers.items():
            for u in ids[r::rounds]:
                t0 = time.perf_counter()
                get(u)
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {
        k: {"p50_ms": statistics.median(v), "p99_ms": pct(v, 0.99), "n": len(v)}
        for k, v in times.items()
    }
    for k, v in out.items():
        print(f"lookup {k:32s} p50 {v['p50_ms']:7.3f} ms  p99 {v['p99_ms']:7.3f} ms")
    return out


def chain(s3, master: str, work: Path, users: int) -> dict:  # noqa: ANN001
    import torch

    from summarizer.config import SynthConfig, config_to_toml
    from summarizer.data import synth
    from summarizer.data.events import list_days
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel
    from tests.batch_jobs.test_standalone_s3 import SPEC, chain_config

    scfg = SynthConfig(
        n_users=users,
        n_topics=50,
        items_per_topic=20,
        min_events=50,
        max_events=5000,
        span_days=30,
        end_date="2026-11-20",
        seed=7,
    )
    torch.manual_seed(0)
    model = VistaModel(SPEC)
    configs = {
        "standalone_s3": chain_config(s3.uri("chain"), master, s3.options),
        "local2_local_folders": chain_config(str(work / "chain"), "local[2]", {}),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISTA_")}
    out = {}
    for name, cfg in configs.items():
        opts = cfg.data.storage_options
        summary = synth.generate(scfg, cfg.data.events_dir, progress=False, options=opts)
        artifacts.save(model, cfg.model.model_dir, options=opts)
        days = list_days(cfg.data.events_dir, opts)
        path = work / f"{name}.toml"
        path.write_text(config_to_toml(cfg))
        times = work / f"times-{name}.json"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tests.batch_jobs.chain", str(path), days[-2], days[-1]]
            + [str(times)],
            env=env,
            cwd=HERE.parent,
            check=True,
            capture_output=True,
        )
        out[name] = {
            "events": summary.n_events,
            "days": len(days),
            "process_s": round(time.perf_counter() - t0, 3),
            **json.loads(times.read_text()),
        }
        print(f"chain {name}: {out[name]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=10_000, help="users of the lookup store")
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--chain-users", type=int, default=200)
    ap.add_argument("--out", default=str(HERE / "out"))
    args = ap.parse_args()
    from tests.servers import s3_server, standalone_spark

    with tempfile.TemporaryDirectory(prefix="vista-bench-cluster-") as tmp:
        work = Path(tmp)
        with s3_server(work) as s3, standalone_spark(work / "spark") as master:
            results = {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "lookups": lookups(s3.options, s3.uri("bench"), work, args.users, args.lookups),
                "chain": chain(s3, master, work, args.chain_users),
            }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'cluster.json'}")


if __name__ == "__main__":
    main()
