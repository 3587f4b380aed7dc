"""Past one machine, for real: the nightly chain on a Spark standalone master and worker with
events, validated days, runs, the model and the store all on an S3-compatible server (moto,
127.0.0.1), against the same chain on local[2] and local folders: the stored tables are
equal bit for bit. validate goes through `vista-submit` (spark-submit from the venv, no PATH
set-up); the rest runs in one driver session per master (tests/batch_jobs/chain.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from summarizer.config import ModelSpec, SynthConfig, VistaConfig, config_to_toml
from summarizer.data import files, synth
from summarizer.data.events import dataset, list_days
from summarizer.model import artifacts
from summarizer.model.vista_model import VistaModel
from summarizer.store import MEMORY_BANK, STATE, SUMMARIES, SummaryStore
from tests.helpers import REPO
from tests.servers import s3_server, standalone_spark

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.slow]

SYNTH = SynthConfig(
    n_users=16,
    n_topics=10,
    items_per_topic=4,
    min_events=20,
    max_events=300,
    span_days=4,
    end_date="2026-11-20",
    bad_row_fraction=0.02,
    seed=5,
)
SPEC = ModelSpec(
    num_seeds=4, d_model=16, num_heads=2, feature_dim=8, num_layers=1, item_buckets=1024, gsu_k=4
)


def chain_config(
    root: str, master: str, options: dict[str, str], conf: dict[str, str] | None = None
) -> VistaConfig:
    return VistaConfig.model_validate(
        {
            "data": {
                "events_dir": files.join(root, "events"),
                "valid_dir": files.join(root, "valid"),
                "quarantine_dir": files.join(root, "quarantine"),
                "runs_dir": files.join(root, "runs"),
                "storage_options": options,
            },
            "store": {"uri": files.join(root, "store"), "storage_options": options},
            "model": {"model_dir": files.join(root, "model")},
            "spark": {
                "master": master,
                "conf": {
                    "spark.sql.shuffle.partitions": "4",
                    "spark.driver.memory": "1g",
                    "spark.executor.memory": "1g",
                    **(conf or {}),
                },
            },
        }
    )


def run(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{cmd[:3]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def table(store: SummaryStore, name: str) -> pa.Table:
    return store.location.open(name).to_table().sort_by("user_id")


def test_nightly_chain_on_a_standalone_cluster_and_s3_equals_local(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISTA_")}
    # The worker offers one GPU (address 0) and each executor and task asks for a share of
    # it, as a GPU cluster is configured: every summarize task is handed address 0.
    gpu_conf = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.5"}
    with (
        s3_server(tmp_path) as s3,
        standalone_spark(tmp_path / "spark", gpus=("0",)) as master,
    ):
        local = chain_config(str(tmp_path / "local"), "local[2]", {})
        remote = chain_config(s3.uri("nightly"), master, s3.options, gpu_conf)
        torch.manual_seed(0)
        model = VistaModel(SPEC)
        versions = set()
        for cfg in (local, remote):
            synth.generate(
                SYNTH, cfg.data.events_dir, progress=False, options=cfg.data.storage_options
            )
            versions.add(
                artifacts.save(model, cfg.model.model_dir, options=cfg.data.storage_options)
            )
        assert len(versions) == 1  # the same model, by its hash
        days = list_days(remote.data.events_dir, remote.data.storage_options)
        assert days == list_days(local.data.events_dir) and len(days) >= 3
        configs = {}
        for name, cfg in (("local", local), ("remote", remote)):
            configs[name] = tmp_path / f"{name}.toml"
            configs[name].write_text(config_to_toml(cfg))

        # validate on the cluster through vista-submit (spark-submit from the venv).
        submit = str(Path(sys.executable).with_name("vista-submit"))
        log = run(
            [submit, "--master", master, "--config", str(configs["remote"]), "validate", "--all"],
            env,
            timeout=240,
        )
        assert "validated" in log and " INFO " not in log  # spark-submit logs at WARN
        times = {}
        for name, extra in (("remote", ["--skip-validate"]), ("local", [])):
            out = tmp_path / f"times-{name}.json"
            run(
                [sys.executable, "-m", "tests.batch_jobs.chain", str(configs[name])]
                + [days[-2], days[-1], str(out), *extra],
                env,
                timeout=300,
            )
            times[name] = json.loads(out.read_text())
        print(json.dumps(times, indent=2))  # the BENCHMARKS figures (pytest -s)

        # The validated days are the same rows.
        for sub in ("valid_dir", "quarantine_dir"):
            a = dataset(getattr(local.data, sub)).to_table()
            b = dataset(getattr(remote.data, sub), remote.data.storage_options).to_table()
            keys = [(c, "ascending") for c in ("dt", "user_id", "ts", "item_id", "action")]
            assert a.num_rows and a.sort_by(keys).equals(b.sort_by(keys))
        # Every stored table is the same, bit for bit.
        ls = SummaryStore.from_config(local.store)
        rs = SummaryStore.from_config(remote.store)
        for name in (SUMMARIES, STATE, MEMORY_BANK):
            a, b = table(ls, name), table(rs, name)
            assert (
                a.num_rows == len(pa.compute.unique(a["user_id"]))
                and a.num_rows >= SYNTH.n_users - 2
            ), name
            assert a.equals(b), name
        assert ls.serving_version() is not None and rs.serving_version() is not None
        # The run folders are on the object store.
        runs = files.list_dir(remote.data.runs_dir, remote.data.storage_options)
        assert {n for n, _ in runs} >= {f"full-{days[-2]}", f"incremental-{days[-1]}"}
        # Every summarize task saw the GPU Spark gave it; it folds there when torch has that
        # CUDA device, and on the CPU with the reason in the run report when not (here).
        for run_name in (f"full-{days[-2]}", f"incremental-{days[-1]}"):
            report_uri = files.join(remote.data.runs_dir, run_name, "summarize.json")
            devices = json.loads(files.read_text(report_uri, remote.data.storage_options))[
                "devices"
            ]
            assert devices["tasks"] >= 1
            if torch.cuda.is_available():
                assert devices["on_gpu"] == devices["tasks"], devices
            else:
                assert devices["gpu_unusable"] == devices["tasks"], devices
                assert "GPU 0: torch" in devices["gpu_unusable_reason"], devices
