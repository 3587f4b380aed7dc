"""Typed configuration: one TOML file, every field overridable by environment.

Precedence (lowest to highest): built-in defaults, the TOML file, environment
variables. A field ``section.name`` is overridden by ``VISTA_SECTION__NAME``;
nested tables add more ``__`` levels (``VISTA_SPARK__CONF__spark.driver.memory``
keeps the key's case after the section). Values are parsed as JSON when they
parse (numbers, booleans, lists, objects), else taken as strings, then
validated by the pydantic models below, so a bad value fails with the field's
name.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "VISTA_"
CONFIG_ENV = "VISTA_CONFIG"
DEFAULT_CONFIG_FILE = "vista.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where event data lives and what a valid event is."""

    events_dir: str = Field("data/events", description="day-partitioned Parquet (dt=YYYY-MM-DD)")
    valid_dir: str = Field("data/valid", description="validated events, same layout")
    quarantine_dir: str = Field("data/quarantine", description="rejected rows with a reason")
    runs_dir: str = Field("data/runs", description="batch-job manifests and JSON reports")
    num_actions: int = Field(8, ge=1, le=32767, description="valid actions are 0..num_actions-1")
    max_clock_skew_s: int = Field(
        3600, ge=0, description="timestamps this far past the reference time are still valid"
    )


class SynthConfig(_Section):
    """The synthetic lifelong-history generator (see summarizer/data/synth.py)."""

    n_users: int = Field(2000, ge=1)
    n_topics: int = Field(400, ge=4)
    items_per_topic: int = Field(50, ge=1)
    min_events: int = Field(50, ge=1)
    max_events: int = Field(200_000, ge=1)
    giant_users: int = Field(1, ge=0, description="users forced to max_events")
    length_alpha: float = Field(1.1, gt=0, description="Pareto tail index of history lengths")
    n_old_interests: int = Field(24, ge=1)
    n_current_interests: int = Field(2, ge=1)
    early_fraction: float = Field(0.5, gt=0, lt=1)
    early_focus_weight: float = Field(0.8, ge=0, le=1)
    focus_weight: float = Field(0.2, ge=0, le=1)
    p_positive_interest: float = Field(0.85, ge=0, le=1)
    p_positive_other: float = Field(0.05, ge=0, le=1)
    end_date: str = Field("2026-11-20", description="last day of the generated history (UTC)")
    span_days: int = Field(365, ge=1, description="longest history span")
    bad_row_fraction: float = Field(0.001, ge=0, lt=1, description="corrupted rows appended")
    seed: int = 0


class ModelConfig(_Section):
    """Summarizer and ranker sizes."""

    num_seeds: int = Field(64, ge=1, le=512, description="K summary tokens")
    d_model: int = Field(64, ge=8, description="d, token width")
    num_heads: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1)
    item_buckets: int = Field(1 << 17, ge=16, description="hashed item-embedding rows")
    feature_dim: int = Field(32, ge=1, description="linear-attention features per head")
    feature_map: Literal["silu", "softmax", "seed"] = Field(
        "silu",
        description="VISTA's SiLU (count-normalized), softmax slots (mass-normalized), or seed "
        "(each seed a softmax over the events)",
    )
    values: Literal["projected", "events"] = Field(
        "projected",
        description="what the state sums per event: a learned value projection per layer "
        "(VISTA) or the encoded event itself",
    )
    readout: Literal["transformer", "pool", "state"] = Field(
        "transformer",
        description="seed read-out: VISTA's layers (read, projection, self-attention, MLP), "
        "pool (the normalized read added to each seed, nothing learned after it), or state "
        "(no seeds: the tokens are the state rows and each candidate reads them itself; "
        "num_seeds = num_layers x feature_dim)",
    )
    chunk_size: int = Field(4096, ge=1, description="events per streamed chunk")
    last_k: int = Field(100, ge=1, description="window of the last-k baselines")
    memory: Literal["events", "clusters"] = Field(
        "events",
        description="what the GSU searches in training and evaluation: the raw earlier events "
        "(SIM) or TWIN-V2 cluster tokens of them (what the cluster job serves)",
    )
    gsu_softmax: Literal["separate", "shared"] = Field(
        "separate",
        description="GSU picks in their own softmax (added to the summary attention) or in "
        "the summary tokens' softmax",
    )
    gsu_gate: float | None = Field(
        None,
        description="a learnable per-head gate on the GSU's attention, started at this value "
        "(0: the summary alone at first); unset: no gate",
    )
    gsu_k: int = Field(
        0,
        ge=0,
        description="memory-bank tokens (TWIN-V2 clusters / raw events) each candidate gathers "
        "through the GSU besides the summary; 0 = off",
    )
    model_dir: str = "artifacts/model"


class TrainSection(_Section):
    """Training (mirrors summarizer.training.train.TrainConfig)."""

    epochs: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    targets_per_user: int = Field(128, ge=1)
    batch_events: int = Field(200_000, ge=1)
    batch_requests: int = Field(256, ge=1)
    recon_weight: float = Field(0.1, ge=0)
    rating_weight: float = Field(0.2, ge=0)
    negatives: int = Field(0, ge=0, description="sampled negatives per target (implicit data)")
    patience: int = Field(2, ge=1)
    eval_targets_per_user: int = Field(64, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0)
    bank_cluster_size: int = Field(
        32, ge=1, description="gamma of the TWIN-V2 banks of models with model.memory=clusters"
    )
    bank_max_clusters: int = Field(1000, ge=1, description="C of those banks")


class StoreConfig(_Section):
    """The LanceDB summary store."""

    uri: str = Field("data/store", description="local folder, s3://bucket/path or gs://...")
    max_age_s: int = Field(
        3 * 86400,
        ge=0,
        description="summaries older than this read as stale; 0 turns the check off",
    )
    refresh_interval_s: float = Field(30.0, ge=0, description="how often readers re-pin serving")
    storage_options: dict[str, str] = Field(default_factory=dict)


class SparkConfig(_Section):
    """Spark session settings; a cluster is a different master URL."""

    master: str = "local[*]"
    app_name: str = "vista-memory"
    partitions: int = Field(
        0,
        ge=0,
        description="summarize partitions (0: per core of the default parallelism, 2 for full "
        "runs, 1 for incremental days)",
    )
    users_per_flush: int = Field(
        2048, ge=1, description="users per staged fragment (bounds a worker's output buffer)"
    )
    conf: dict[str, str] = Field(
        default_factory=lambda: {
            "spark.sql.shuffle.partitions": "8",
            "spark.driver.memory": "4g",
        }
    )

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_values_as_strings(cls, value: Any) -> Any:
        # Spark takes strings; TOML and env give numbers and booleans too.
        if isinstance(value, Mapping):
            return {
                str(k): (str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in value.items()
            }
        return value


class PipelineConfig(_Section):
    """Checks and gates of the Airflow DAGs (dags/)."""

    max_quarantine_share: float = Field(
        0.01, ge=0, le=1, description="validate fails the run above this share of bad rows"
    )
    min_coverage: float = Field(
        1.0, ge=0, le=1, description="share of the day's active users that must have a summary"
    )
    max_norm_drift: float = Field(
        0.5, ge=0, description="largest relative change of the mean token norm vs serving"
    )
    retrain_margin: float = Field(
        0.002, ge=0, description="a retrained model may be this much AUC below serving"
    )
    cleanup_older_than_hours: float = Field(
        24.0, ge=0, description="compaction removes untagged versions older than this"
    )
    candidates_dir: str = Field("artifacts/candidates", description="retrained models")


class MemoryConfig(_Section):
    """TWIN-V2 memory banks for the GSU (summarizer/memory/clustering.py, `vista job cluster`)."""

    enabled: bool = Field(
        False, description="the nightly DAG adds the day to every active user's memory bank"
    )
    max_cluster_size: int = Field(256, ge=1, description="gamma: most events per cluster")
    max_clusters: int = Field(1000, ge=1, description="C: most cluster tokens per user")
    branching: int = Field(32, ge=2, description="most children per k-means split")
    iterations: int = Field(10, ge=1, description="k-means iterations per split")
    seed: int = 0
    users_per_flush: int = Field(256, ge=1, description="banks staged per lance fragment")


class VistaConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    store: StoreConfig = Field(default_factory=StoreConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)


class ConfigError(ValueError):
    """The configuration file or an environment override is invalid."""


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``VISTA_A__B__C=v`` into ``{"a": {"b": {"C": v}}}``."""
    tree: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        parts = key[len(ENV_PREFIX) :].split("__")
        if len(parts) < 2 or not all(parts):
            continue
        # Section and field names are lower-case; deeper keys (Spark conf) keep their case.
        path = [parts[0].lower(), parts[1].lower(), *parts[2:]]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {key} conflicts with another override")
        node[path[-1]] = _parse_env_value(raw)
    return tree


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def find_config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: the explicit path, else $VISTA_CONFIG, else ./vista.toml if present."""
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> VistaConfig:
    """Defaults, then the TOML file, then ``VISTA_*`` environment overrides."""
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {file}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
    merged = _deep_merge(raw, _env_overrides(env))
    try:
        return VistaConfig.model_validate(merged)
    except ValidationError as exc:
        source = f"{file} and VISTA_* environment" if file else "VISTA_* environment"
        raise ConfigError(f"invalid configuration ({source}):\n{exc}") from exc


def config_to_toml(cfg: VistaConfig) -> str:
    """Render the effective configuration as TOML (what `vista config show` prints)."""
    lines: list[str] = []
    for section, model in cfg:
        lines.append(f"[{section}]")
        nested: list[tuple[str, dict[str, Any]]] = []
        for name, value in model:
            if isinstance(value, dict):
                nested.append((name, value))
            elif value is None:  # TOML has no null: an unset option is written as a comment
                lines.append(f"# {name} = (unset)")
            else:
                lines.append(f"{name} = {json.dumps(value)}")
        for name, table in nested:
            lines.append(f"\n[{section}.{name}]")
            lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)
