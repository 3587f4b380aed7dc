"""The nightly chain in one Spark session, as the cluster test runs it against a master:

    python -m tests.batch_jobs.chain CONFIG FULL_DAY INCREMENTAL_DAY TIMES_JSON [--skip-validate]

validate every day -> summarize full through FULL_DAY -> publish (promote) -> summarize
INCREMENTAL_DAY -> publish (promote) -> cluster full; the wall time of each step goes to
TIMES_JSON (a local file)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from batch_jobs.cluster import run_cluster
    from batch_jobs.publish import run_publish
    from batch_jobs.spark import build_session
    from batch_jobs.summarize import run_summarize
    from batch_jobs.validate import run_validate
    from summarizer.config import load_config

    config, full_day, inc_day, out = argv[:4]
    cfg = load_config(config)
    spark = build_session(cfg.spark)
    times: dict[str, float] = {}

    def step(name: str, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        times[name] = round(time.perf_counter() - t0, 3)
        return result

    if "--skip-validate" not in argv:
        step("validate", run_validate, spark, cfg)
    full = step("summarize_full", run_summarize, spark, cfg, mode="full", day=full_day)
    step("publish_full", run_publish, cfg, full["run_dir"], promote=True)
    inc = step("summarize_incremental", run_summarize, spark, cfg, mode="incremental", day=inc_day)
    step("publish_incremental", run_publish, cfg, inc["run_dir"], promote=True)
    step("cluster_full", run_cluster, spark, cfg, mode="full", day=inc_day)
    spark.stop()
    Path(out).write_text(json.dumps(times, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
