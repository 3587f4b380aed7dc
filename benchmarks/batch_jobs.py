"""Benchmark: the Spark summarize job on ~10^7 events over 10^4 users, local[2].

Steps (data and model are made once under --work and reused):
  1. synthetic events: --users users, a few forced to --max-events, validated
     in-process; the last days holding >= 1% of the events are held out and
     merged into one new day partition (one day's delivery);
  2. a default-size VISTA model (K=64, d=64; untrained: speed does not depend on weights;
     --readout state: the state read-out, whose tokens need no read-out network);
  3. the in-process summarizer over the same events (every user folded and read
     out, no Spark, no store), 1 and 2 torch threads: the events/s the job is held to;
  4. a warm-up (unless --cold): a full run over the first days and an incremental run of
     the next day into a scratch store, so the Spark application's one-off first-use
     costs (JIT, Python workers, model load, table opening) are not in the figures below;
  5. `summarize --full` + publish on Spark: seconds, events/s;
  6. the new day: `summarize --incremental` + publish: seconds.
Prints a table and writes benchmarks/out/batch_jobs.json.

    .venv/bin/python benchmarks/batch_jobs.py [--users 10000] [--max-events 1000000] [--readout state]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))


def make_data(
    work: Path, users: int, max_events: int, giants: int, min_events: int
) -> tuple[str, int]:
    """Synthetic events, validated; the last days holding ~1% of the events are held out
    and merged into one new day (a day's delivery) for the incremental run."""
    import numpy as np
    import pyarrow as pa

    from summarizer.config import SynthConfig
    from summarizer.data import synth
    from summarizer.data.events import dataset, day_path, list_days, write_day
    from summarizer.data.validation import validate_dataset

    events, valid_all, valid = work / "events", work / "valid_all", work / "valid"
    if not (work / "data.ok").exists():
        shutil.rmtree(work, ignore_errors=True)
        cfg = SynthConfig(
            n_users=users,
            min_events=min_events,
            max_events=max_events,
            giant_users=giants,
            bad_row_fraction=0.0,
        )
        synth.generate(cfg, events, progress=True)
        validate_dataset(events, valid_all, work / "quarantine", 8, progress=True)
        days = list_days(valid_all)
        counts = [dataset(day_path(valid_all, d)).count_rows() for d in days]
        total, k, tail = sum(counts), 0, 0
        while tail < 0.01 * total:
            k += 1
            tail += counts[-k]
        for d in days[:-k]:
            shutil.copytree(day_path(valid_all, d), day_path(valid, d))
        new_day = str(np.datetime64(days[-1]) + np.timedelta64(1, "D"))
        held = pa.concat_tables([dataset(day_path(valid_all, d)).to_table() for d in days[-k:]])
        write_day(held, work / "new_valid", new_day)
        (work / "data.ok").write_text(json.dumps({"new_day": new_day, "held_out_days": k}))
    info = json.loads((work / "data.ok").read_text())
    return info["new_day"], dataset(valid).count_rows()


def make_model(work: Path, readout: str) -> str:
    import torch

    from summarizer.config import ModelSpec
    from summarizer.model import artifacts
    from summarizer.model.vista_model import VistaModel

    spec = ModelSpec()
    if readout == "state":  # the state read-out as the demo runs it (K = 2 x 32 = 64 tokens)
        spec = ModelSpec(readout="state", values="events", feature_map="softmax")
    path = work / ("model" if readout == "transformer" else f"model-{readout}")
    if not (path / "config.json").exists():
        torch.manual_seed(0)
        artifacts.save(VistaModel(spec), path)
    return str(path)


def read_out(summ: Any, done: list[Any]) -> Any:
    """Tokens of finished users, read out as the Spark worker does: from their states
    converted once to the stored precision (float32), in one batched call."""
    import torch

    kv = torch.empty((len(done), *summ.state_shape), dtype=torch.float32)
    for j, st in enumerate(done):
        kv[j].copy_(st.kv)
    with torch.no_grad():
        return summ.readout_batch(kv, torch.tensor([st.n_events for st in done]))


def in_process_rate(work: Path, model_dir: str, threads: int) -> dict[str, float]:
    """The summarizer in one process over the same events the full job reads: every user
    folded (8192-event batches, in place) and read out (2048 users at a time, from float32
    states); no Spark, no store."""
    import pyarrow as pa
    import torch

    from batch_jobs.worker import FOLD_ORDER
    from summarizer.data.events import dataset
    from summarizer.model import artifacts
    from summarizer.model.encoder import EventBatch

    torch.set_num_threads(threads)
    model, _ = artifacts.load(model_dir)
    summ = model.require_summarizer()
    t0 = time.perf_counter()
    t = dataset(work / "valid").to_table().sort_by([(c, "ascending") for c in FOLD_ORDER])
    users = t.column("user_id").to_numpy()
    states: dict[int, object] = {}
    pending: list[object] = []
    for batch in t.to_batches(max_chunksize=8192):
        u = batch.column("user_id").to_numpy()
        starts = [0, *((u[1:] != u[:-1]).nonzero()[0] + 1).tolist(), len(u)]
        ids = [int(u[i]) for i in starts[:-1]]
        w = batch.column("weight").cast(pa.float32()).fill_null(float("nan")).to_numpy()
        ev = EventBatch.from_numpy(
            batch.column("item_id").to_numpy().copy(),
            batch.column("ts").to_numpy().copy(),
            batch.column("action").to_numpy().astype("int64"),
            w.copy(),
        )
        for i in ids:
            if i not in states:
                pending.append(i)
                states[i] = summ.empty_state()
        # In place, as the Spark worker folds (these states are this loop's own).
        summ.fold_segments([states[i] for i in ids], ev, starts, in_place=True)
        while len(pending) > 2048 + 1:  # users before the last are complete
            done, pending = pending[:2048], pending[2048:]
            read_out(summ, [states[i] for i in done])
            for i in done:
                states[i] = None  # type: ignore[assignment]
    read_out(summ, [states[i] for i in pending])
    seconds = time.perf_counter() - t0
    return {
        "events": len(users),
        "users": len(states),
        "seconds": seconds,
        "events_per_s": len(users) / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(HERE / "out" / "batch"))
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--max-events", type=int, default=1_000_000)
    ap.add_argument("--giants", type=int, default=3)
    ap.add_argument(
        "--min-events",
        type=int,
        default=90,
        help="Pareto scale of history lengths; 90 makes 10,126,445 events for 10^4 users "
        "(the issue's 10^7; the generator's default 50 made 7.4M)",
    )
    ap.add_argument("--master", default="local[2]")
    ap.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="summarize partitions (0: the job's default: 2 a core for full runs, 1 a core "
        "for incremental days)",
    )
    ap.add_argument(
        "--readout",
        choices=("transformer", "state"),
        default="transformer",
        help="the model's read-out: the default seeds, or the state read-out (no read-out network)",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="skip the warm-up job: the full run then also pays the JVM's and the workers' "
        "first-use costs (JIT, worker start, model load), a one-off per Spark application",
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    new_day, n_valid = make_data(work, args.users, args.max_events, args.giants, args.min_events)
    # A previous run of this script left the new day in valid/ (its incremental step):
    # every step before that one reads the days before it only.
    shutil.rmtree(work / "valid" / f"dt={new_day}", ignore_errors=True)
    model_dir = make_model(work, args.readout)
    single = in_process_rate(work, model_dir, 1)
    both = in_process_rate(work, model_dir, 2)
    best = max(single, both, key=lambda r: r["events_per_s"])
    print(
        f"in-process: {single['events_per_s']:,.0f} events/s (1 thread), "
        f"{both['events_per_s']:,.0f} (2 threads) over {single['events']:,} events"
    )

    from batch_jobs.publish import run_publish
    from batch_jobs.spark import build_session
    from batch_jobs.summarize import run_summarize
    from summarizer.config import VistaConfig
    from summarizer.data.events import dataset, day_path, list_days

    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(work / "runs", ignore_errors=True)
    cfg = VistaConfig.model_validate(
        {
            "data": {
                "events_dir": str(work / "events"),
                "valid_dir": str(work / "valid"),
                "quarantine_dir": str(work / "quarantine"),
                "runs_dir": str(work / "runs"),
            },
            "model": {"model_dir": model_dir},
            "store": {"uri": str(store)},
            "spark": {
                "master": args.master,
                "partitions": args.partitions,
                "conf": {"spark.driver.memory": "6g", "spark.ui.enabled": "false"},
            },
        }
    )
    spark = build_session(cfg.spark)
    spark.range(10).count()
    warmup_s = None
    if not args.cold:
        # Throughput is a per-event rate: the one-off first-use costs of a Spark application
        # (JIT of the read/shuffle/sort/Arrow paths, Python workers importing torch, loading
        # the model, opening and indexing the store's tables) are paid here, by one full
        # run over the first days and one incremental run of the next day into a scratch
        # store, so the full and the incremental run below are each the second of their
        # kind in this application: measured in the same warm state.
        warm = cfg.model_copy(deep=True)
        warm.store.uri = str(work / "store_warmup")
        warm.data.runs_dir = str(work / "runs_warmup")
        for d in (warm.store.uri, warm.data.runs_dir):
            shutil.rmtree(d, ignore_errors=True)
        # The first days holding >= 1% of the events: about the incremental day's size.
        days, rows = list_days(work / "valid"), 0
        for last in days[:-1]:  # (leaving a following day for the incremental warm-up)
            rows += dataset(day_path(work / "valid", last)).count_rows()
            if rows >= 0.01 * n_valid:
                break
        following = days[days.index(last) + 1]
        t0 = time.perf_counter()
        first = run_summarize(spark, warm, mode="full", day=last)
        run_publish(warm, first["run_dir"])
        nxt = run_summarize(spark, warm, mode="incremental", day=following)
        run_publish(warm, nxt["run_dir"])
        warmup_s = time.perf_counter() - t0
        shutil.rmtree(warm.store.uri)
        print(
            f"warm-up: full to {last} ({first['rows_read']:,} events) + incremental "
            f"{following} ({nxt['rows_read']:,} events): {warmup_s:.1f} s"
        )

    # Each timed run starts with the page cache written back (os.sync): the previous
    # step's hundreds of MB of fragments would otherwise be flushed during the next run.
    os.sync()
    t0 = time.perf_counter()
    full = run_summarize(spark, cfg, mode="full")
    full_pub = run_publish(cfg, full["run_dir"])
    full_s = time.perf_counter() - t0

    shutil.copytree(
        work / "new_valid" / f"dt={new_day}", Path(cfg.data.valid_dir) / f"dt={new_day}"
    )
    os.sync()
    t0 = time.perf_counter()
    inc = run_summarize(spark, cfg, mode="incremental", day=new_day)
    inc_pub = run_publish(cfg, inc["run_dir"])
    inc_s = time.perf_counter() - t0
    spark.stop()

    spark_rate = full["rows_read"] / full["seconds"]
    result = {
        "master": args.master,
        "partitions": args.partitions,
        "partitions_full": full.get("partitions"),
        "partitions_incremental": inc.get("partitions"),
        "readout": args.readout,
        "users": full["users_updated"],
        "events_full": full["rows_read"],
        "valid_events_total": n_valid,
        "in_process_1_thread": single,
        "in_process_2_threads": both,
        "warm_up": not args.cold,
        "warm_up_s": warmup_s,
        "full_summarize_s": full["seconds"],
        "full_publish_s": full_pub["seconds"],
        "full_total_s": full_s,
        "full_events_per_s": spark_rate,
        "spark_vs_in_process_best": spark_rate / best["events_per_s"],
        "max_events_held": max(full["max_events_held"], inc["max_events_held"]),
        "incremental_events": inc["rows_read"],
        "incremental_users": inc["users_updated"],
        "incremental_summarize_s": inc["seconds"],
        "incremental_publish_s": inc_pub["seconds"],
        "incremental_total_s": inc_s,
        "full_over_incremental": full_s / inc_s,
    }
    out = HERE / "out" / "batch_jobs.json"
    out.write_text(json.dumps(result, indent=2))
    for k, v in result.items():
        print(f"{k:32} {v}")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
