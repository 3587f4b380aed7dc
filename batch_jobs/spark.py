"""The SparkSession the batch jobs run on: ``local[*]`` by default, a cluster by config.

Everything about where Spark runs comes from the ``[spark]`` config section
(``master``, ``conf``); nothing in the jobs assumes local mode. Under
``spark-submit`` the submitter's master and conf win (``submitted=True``).

Settings the jobs rely on, applied unless the config sets them:

* Python workers run this interpreter (``PYSPARK_PYTHON``), so they import the
  same torch and vista-memory as the driver;
* Arrow batches of at most ``arrow_batch_rows`` rows: the most events a worker
  holds at once for one user (histories are folded chunk by chunk);
* AQE does not coalesce partitions: the summarize stage is CPU bound in Python
  and wants every core busy, not fewer, larger tasks;
* partition columns stay strings (``dt=YYYY-MM-DD``), timestamps in UTC;
* a master on this machine (``local[*]``, ``spark://127.0.0.1:7077``) keeps the driver on
  127.0.0.1; ``spark.python`` names the executors' interpreter.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from summarizer.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ARROW_BATCH_ROWS = 8192

JOB_DEFAULTS: dict[str, str] = {
    "spark.sql.adaptive.coalescePartitions.enabled": "false",
    "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",  # keeps each worker's loaded model across tasks
}


def python_env() -> dict[str, str]:
    """Environment that makes Spark's Python workers run this interpreter (unless
    ``spark.python`` names the executors' own, see :func:`session_conf`).

    Also quiets lance's Rust log to errors unless LANCE_LOG is set: every worker
    staging the first fragments of a new table would log that it creates it.
    """
    return {
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
        "LANCE_LOG": os.environ.get("LANCE_LOG", "error"),
    }


def on_loopback(master: str) -> bool:
    """Whether the master runs on this machine only (``local[...]``, or a standalone master
    on a loopback address)."""
    if master.startswith("local"):
        return True
    host = urlparse(master).hostname if "://" in master else None
    return host in ("127.0.0.1", "localhost", "::1")


def session_conf(cfg: SparkConfig, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Spark conf a job session gets: job defaults < config < ``extra``.

    ``spark.python`` becomes ``spark.pyspark.python`` (the executors' interpreter). A
    master on this machine binds the driver to 127.0.0.1 (without it the driver listens
    on the host's address, reachable from the network), unless the conf says otherwise."""
    conf = {**JOB_DEFAULTS, **cfg.conf, **(extra or {})}
    if cfg.python:
        conf.setdefault("spark.pyspark.python", cfg.python)
    if on_loopback(cfg.master):
        conf.setdefault("spark.driver.host", "127.0.0.1")
        conf.setdefault("spark.driver.bindAddress", "127.0.0.1")
    return conf


def build_session(
    cfg: SparkConfig,
    *,
    extra_conf: Mapping[str, str] | None = None,
    submitted: bool = False,
) -> SparkSession:
    """A SparkSession for the batch jobs (reuses the active one if there is one).

    ``submitted``: running under ``spark-submit``, so master and conf set there
    are kept; only job defaults the submitter did not set are added.
    """
    os.environ.update(python_env())
    if not submitted and on_loopback(cfg.master):
        # Spark's other services (block manager, UI) bind by SPARK_LOCAL_IP.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # py4j logs every connection close at INFO; under a root logger at INFO (Airflow's)
    # that floods the output, and at interpreter exit it fails on closed streams.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(cfg.app_name)
    if submitted:
        from pyspark import SparkConf

        given = SparkConf()  # what spark-submit passed (--master, --conf, defaults file)
        for key, value in JOB_DEFAULTS.items():
            if not given.contains(key):
                builder = builder.config(key, value)
        session = builder.getOrCreate()
        if not given.contains("spark.log.level"):  # vista-submit sets WARN from the start
            session.sparkContext.setLogLevel("WARN")
        return session
    builder = builder.master(cfg.master)
    for key, value in session_conf(cfg, extra_conf).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
