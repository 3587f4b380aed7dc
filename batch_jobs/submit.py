"""spark-submit entry points.

``vista-submit [spark-submit options] JOB [job args]`` (a console script of this package)
runs ``spark-submit [options] batch_jobs/submit.py JOB ...`` from this environment: it finds
the Spark distribution inside the installed pyspark (``SPARK_HOME``, so no PATH set-up),
points the driver and the executors at this interpreter unless ``PYSPARK_PYTHON`` or
``--conf spark.pyspark.python`` says otherwise, and logs at WARN (``batch_jobs/spark_conf``
as ``SPARK_CONF_DIR``) unless ``--conf spark.log.level=...`` or ``SPARK_CONF_DIR`` is
given::

    vista-submit --master spark://host:7077 --config vista.toml validate --all
    vista-submit --master yarn --deploy-mode client summarize --incremental --date 2026-12-01

Run as a script (``spark-submit batch_jobs/submit.py JOB ...``) it runs the same jobs as
``vista job JOB ...``. A cluster needs vista-memory installed on its nodes, the model
folder, the event folders and the store where every node reaches them by the same URI,
and the config file (or ``VISTA_*`` variables) on the driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

JOBS = ("validate", "summarize", "publish", "cluster", "item-vectors")


def spark_home() -> str:
    """The Spark distribution to submit with: ``$SPARK_HOME``, else the installed pyspark's."""
    if os.environ.get("SPARK_HOME"):
        return os.environ["SPARK_HOME"]
    import pyspark

    return os.path.dirname(pyspark.__file__)


def submit_command(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The spark-submit command line and environment for ``vista-submit ARGS``."""
    at = next((i for i, a in enumerate(args) if a in JOBS), None)
    if at is None:
        raise SystemExit(
            f"usage: vista-submit [spark-submit options] {{{','.join(JOBS)}}} [job args]"
        )
    options, job = list(args[:at]), list(args[at:])
    if "--config" in options:  # ours, not spark-submit's: it goes before the job's name
        i = options.index("--config")
        job = options[i : i + 2] + job
        del options[i : i + 2]
    env = dict(os.environ)
    if not any("spark.log.level" in o for o in options) and "SPARK_CONF_DIR" not in env:
        # WARN from the first line (spark.log.level applies only once the context is up).
        env["SPARK_CONF_DIR"] = os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "spark_conf"
        )
    env["SPARK_HOME"] = spark_home()
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    script = os.path.abspath(__file__)
    return [os.path.join(env["SPARK_HOME"], "bin", "spark-submit"), *options, script, *job], env


def main(argv: Sequence[str] | None = None) -> int:
    """``vista-submit``: see the module docstring."""
    cmd, env = submit_command(sys.argv[1:] if argv is None else argv)
    return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == "__main__":
    from batch_jobs.cli import submit_main

    raise SystemExit(submit_main(sys.argv[1:]))
