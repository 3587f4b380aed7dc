"""Real servers on 127.0.0.1 for the cluster tests and benchmarks: an S3-compatible object
store (moto's server mode) and a Spark standalone master with one worker (from the
pyspark distribution in the venv). Each is started on free ports, waited for with a bound,
and stopped by its PID (process group) on exit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUCKET = "vista"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    @property
    def options(self) -> dict[str, str]:
        """Storage options for the store and the data locations (LanceDB's keys)."""
        return {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "aws_region": "us-east-1",
            "aws_endpoint": self.endpoint,
            "allow_http": "true",
        }

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@contextlib.contextmanager
def s3_server(log_dir: Path, timeout_s: float = 60) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with one bucket."""
    import pyarrow.fs as pafs

    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto_server did not start: {log_dir / 'moto.log'}"
                    ) from None
                time.sleep(0.2)
        fs = pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        yield S3Server(endpoint, BUCKET)
    finally:
        _stop(proc)


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


@contextlib.contextmanager
def standalone_spark(
    work: Path, cores: int = 2, gpus: tuple[str, ...] = (), timeout_s: float = 120
) -> Iterator[str]:
    """A Spark standalone master and one worker on 127.0.0.1 (free ports, REST server off);
    yields the master URL. ``gpus``: the GPU addresses the worker offers, reported by a
    discovery script as Spark's resource scheduling expects (on a GPU machine that script
    asks nvidia-smi; here it names the given addresses, so tasks that ask for a GPU are
    scheduled and see one whether or not CUDA is there)."""
    work.mkdir(parents=True, exist_ok=True)
    home = spark_home()
    worker_opts = ""
    if gpus:
        script = work / "gpus.sh"
        found = json.dumps({"name": "gpu", "addresses": list(gpus)})
        script.write_text(f"#!/bin/sh\necho '{found}'\n")
        script.chmod(0o755)
        worker_opts = (
            f"-Dspark.worker.resource.gpu.amount={len(gpus)} "
            f"-Dspark.worker.resource.gpu.discoveryScript={script}"
        )
    env = {
        **os.environ,
        "SPARK_HOME": home,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        "SPARK_WORKER_OPTS": worker_opts,
        "PYSPARK_PYTHON": sys.executable,
    }
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = os.path.join(home, "bin", "spark-class")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(work / "master.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"]
                    + ["--port", str(port), "--webui-port", str(free_port())],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        with open(work / "worker.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [spark_class, "org.apache.spark.deploy.worker.Worker", url]
                    + ["--host", "127.0.0.1", "--webui-port", str(free_port())]
                    + ["--cores", str(cores), "--memory", "2g", "--work-dir", str(work / "apps")],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout_s
        while "Successfully registered with master" not in (work / "worker.log").read_text(
            errors="replace"
        ):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(f"the standalone cluster did not start: see {work}/*.log")
            time.sleep(0.3)
        yield url
    finally:
        for p in reversed(procs):
            _stop(p)
