"""Where Spark runs, decided before any JVM starts: the executors' interpreter, the driver
kept on loopback for a local master, and vista-submit's spark-submit command line."""

from __future__ import annotations

import os
import sys

import pytest

from batch_jobs.spark import on_loopback, session_conf
from batch_jobs.submit import submit_command
from summarizer.config import SparkConfig


@pytest.mark.parametrize(
    ("master", "loopback"),
    [
        ("local[*]", True),
        ("local[2]", True),
        ("spark://127.0.0.1:7077", True),
        ("spark://localhost:7077", True),
        ("spark://10.1.2.3:7077", False),
        ("yarn", False),
        ("k8s://https://10.0.0.1:443", False),
    ],
)
def test_a_master_on_this_machine_keeps_the_driver_on_loopback(master: str, loopback: bool) -> None:
    assert on_loopback(master) is loopback
    conf = session_conf(SparkConfig(master=master))
    assert (conf.get("spark.driver.host") == "127.0.0.1") is loopback
    assert (conf.get("spark.driver.bindAddress") == "127.0.0.1") is loopback


def test_the_config_wins_and_spark_python_names_the_executors_interpreter() -> None:
    cfg = SparkConfig(
        master="local[2]", python="/opt/venv/bin/python", conf={"spark.driver.host": "10.0.0.9"}
    )
    conf = session_conf(cfg)
    assert conf["spark.pyspark.python"] == "/opt/venv/bin/python"
    assert conf["spark.driver.host"] == "10.0.0.9"
    assert "spark.pyspark.python" not in session_conf(SparkConfig())


def test_vista_submit_runs_spark_submit_from_this_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("SPARK_HOME", "SPARK_CONF_DIR", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    cmd, env = submit_command(
        ["--master", "spark://h:7077", "--config", "c.toml", "summarize", "--full"]
    )
    import pyspark

    home = os.path.dirname(pyspark.__file__)
    assert cmd[0] == os.path.join(home, "bin", "spark-submit") and os.access(cmd[0], os.X_OK)
    script = cmd.index(next(c for c in cmd if c.endswith("batch_jobs/submit.py")))
    assert cmd[1:script] == ["--master", "spark://h:7077"]
    assert cmd[script + 1 :] == ["--config", "c.toml", "summarize", "--full"]
    assert env["SPARK_HOME"] == home and env["PYSPARK_PYTHON"] == sys.executable
    assert os.path.exists(os.path.join(env["SPARK_CONF_DIR"], "log4j2.properties"))
    # Asking for another log level keeps Spark's own configuration.
    _, env = submit_command(["--conf", "spark.log.level=INFO", "validate", "--all"])
    assert "SPARK_CONF_DIR" not in env
    with pytest.raises(SystemExit, match="usage"):
        submit_command(["--master", "local[2]"])
