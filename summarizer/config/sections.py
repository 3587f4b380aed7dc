"""The configuration sections besides ``[model]`` (:mod:`summarizer.config.model`).

Each class is one TOML table and the object its code takes: the training loop
takes :class:`TrainConfig`, TWIN-V2 clustering takes :class:`ClusterParams`
(``[memory]`` is one, plus the job's own switches), the store
:class:`StoreConfig`, the Spark session :class:`SparkConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from summarizer.config.section import Section


def values_as_strings(value: Any) -> Any:
    """A table of settings whose consumer takes strings (Spark conf, object-store options):
    TOML and environment overrides give numbers and booleans too (``allow_http = true``
    becomes ``"true"``)."""
    if isinstance(value, Mapping):
        return {
            str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()
        }
    return value


# Settings whose consumer takes strings (Spark conf, object-store options).
StringOptions = Annotated[dict[str, str], BeforeValidator(values_as_strings)]


class DataConfig(Section):
    """Where event data lives and what a valid event is."""

    events_dir: str = Field("data/events", description="day-partitioned Parquet (dt=YYYY-MM-DD)")
    valid_dir: str = Field("data/valid", description="validated events, same layout")
    quarantine_dir: str = Field("data/quarantine", description="rejected rows with a reason")
    runs_dir: str = Field("data/runs", description="batch-job manifests and JSON reports")
    storage_options: StringOptions = Field(
        default_factory=dict,
        description="object-store options of the folders above and of the model folder "
        "(s3://, gs://; LanceDB's keys: aws_access_key_id, aws_secret_access_key, "
        "aws_region, aws_endpoint, allow_http); empty: the SDK's environment",
    )
    num_actions: int = Field(8, ge=1, le=32767, description="valid actions are 0..num_actions-1")
    max_clock_skew_s: int = Field(
        3600, ge=0, description="timestamps this far past the reference time are still valid"
    )


class SynthConfig(Section):
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


class TrainConfig(Section):
    """Training and evaluation (summarizer/training/train.py)."""

    epochs: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW's, on every dense parameter")
    item_lr: float | None = Field(
        None, gt=0, description="learning rate of the sparse item tables (unset: lr)"
    )
    ridge_lr: float | None = Field(
        None,
        ge=0,
        description="learning rate of the ridge read-out's item tables (unset: item_lr; "
        "0: frozen at their pretrained start)",
    )
    item_l2: float = Field(
        0.0, ge=0, description="L2 on the item-table rows each batch looks up (sparse decay)"
    )
    targets_per_user: int = Field(128, ge=1)
    batch_events: int = Field(200_000, ge=1)
    batch_requests: int = Field(256, ge=1)
    next_action_weight: float = Field(
        0.1,
        ge=0,
        description="TransAct V2's next-action loss (model kind transact2; 0: off)",
    )
    recon_weight: float = Field(
        0.0,
        ge=0,
        description="VISTA's reconstruction loss (rebuild events from the tokens): off by "
        "default, it lowered test AUC on ml-latest-small (BENCHMARKS.md)",
    )
    rating_weight: float = Field(0.2, ge=0)
    pretrain_items: Literal["none", "cooccurrence", "mf", "table"] = Field(
        "cooccurrence",
        description="where a ridge read-out's item vectors start, fitted in process on the "
        "training window with L2s chosen on validation (summarizer/training/pretrain.py): the "
        "item co-occurrence SVD (who saw what) or MF of the labels; else the store's "
        "item_vectors table (`vista job item-vectors`, MF by ALS), or at random",
    )
    pretrain_item_table: Literal["none", "cooccurrence"] = Field(
        "none",
        description="where the shared item table (every model's events and candidates) "
        "starts: at random, or from the item co-occurrence SVD of the training window",
    )
    item_vectors_version: int | None = Field(
        None, ge=1, description="pretrain_items = 'table': the table version (unset: latest)"
    )
    ridge_weight: float = Field(
        1.0, ge=0, description="weight of the ridge read-out's own MSE on the response"
    )
    negatives: int = Field(0, ge=0, description="sampled negatives per target (implicit data)")
    patience: int = Field(3, ge=1, description="epochs without a better validation AUC")
    eval_targets_per_user: int = Field(64, ge=1)
    seed: int = 0
    threads: int = Field(0, ge=0, description="torch threads (0: torch's default)")
    bank_cluster_size: int = Field(
        32, ge=1, description="gamma of the TWIN-V2 banks of models with model.memory=clusters"
    )
    bank_max_clusters: int = Field(1000, ge=1, description="C of those banks")


class ClusterParams(Section):
    """TWIN-V2 hierarchical clustering of one history (summarizer/memory/clustering.py)."""

    max_cluster_size: int = Field(256, ge=1, description="gamma: most events per cluster")
    max_clusters: int = Field(1000, ge=1, description="C: most cluster tokens per user")
    branching: int = Field(32, ge=2, description="most children per k-means split")
    iterations: int = Field(10, ge=1, description="k-means iterations per split")
    seed: int = 0
    # 1 by default: the splits are small, and on a busy machine (a Spark worker per core)
    # spinning OpenMP threads made clustering 60x slower here.
    threads: int = Field(1, ge=1, description="FAISS OpenMP threads per clustering")


class MemoryConfig(ClusterParams):
    """The ``[memory]`` section: the cluster parameters of the users' memory banks (GSU),
    and the cluster job's switches (``vista job cluster``)."""

    enabled: bool = Field(
        False, description="the nightly DAG adds the day to every active user's memory bank"
    )
    users_per_flush: int = Field(256, ge=1, description="banks staged per lance fragment")


class ItemVectorsConfig(Section):
    """``vista job item-vectors``: item embeddings by Spark MLlib ALS of the valid events."""

    factors: int = Field(64, ge=1, description="vector width k (= the model's ridge_dim)")
    l2: float = Field(0.1, gt=0, description="ALS regParam (Spark scales it by each count)")
    bias_l2: float = Field(10.0, ge=0, description="shrinkage of each item's mean residual")
    iterations: int = Field(10, ge=1)
    seed: int = 0


class StoreConfig(Section):
    """The LanceDB summary store."""

    uri: str = Field("data/store", description="local folder, s3://bucket/path or gs://...")
    max_age_s: int = Field(
        3 * 86400,
        ge=0,
        description="summaries older than this read as stale; 0 turns the check off",
    )
    refresh_interval_s: float = Field(30.0, ge=0, description="how often readers re-pin serving")
    storage_options: StringOptions = Field(
        default_factory=dict,
        description="object-store options for LanceDB (credentials, endpoint, region, "
        "allow_http); numbers and booleans are passed as the strings lance expects",
    )


class SparkConfig(Section):
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
    conf: StringOptions = Field(
        default_factory=lambda: {
            "spark.sql.shuffle.partitions": "8",
            "spark.driver.memory": "4g",
        }
    )
    python: str = Field(
        "",
        description="the Python interpreter of the executors (spark.pyspark.python); empty: "
        "the driver's own (every node then needs the same venv at the same path)",
    )
    device: Literal["task", "cuda", "cpu"] = Field(
        "task",
        description="where summarize folds: task = on the GPU Spark assigns a task "
        "(spark.executor.resource.gpu.amount, spark.task.resource.gpu.amount), else the "
        "CPU; cuda = a CUDA device always (the task's, else cuda:0; local mode on a GPU "
        "machine); cpu = the CPU always",
    )


class PipelineConfig(Section):
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


class ServeConfig(Section):
    """``vista serve``: the scorer as an HTTP service (online_scorer/service.py)."""

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8080, ge=0, le=65535, description="0: any free port")
    workers: int = Field(
        1, ge=1, description="server processes; each loads the model and pins the store itself"
    )
    batching: bool = Field(
        True, description="score concurrent requests together in one jagged pass"
    )
    max_batch_delay_ms: float = Field(
        1.0,
        ge=0,
        description="longest a request waits for others to join its batch (only while "
        "requests arrive closer together than this; 0: never waits)",
    )
    max_batch_candidates: int = Field(
        8192, ge=1, description="a batch closes once it holds this many candidates"
    )
    max_candidates: int = Field(4096, ge=1, description="candidates one request may carry")
    max_body_bytes: int = Field(
        16 * 2**20, ge=1024, description="a larger POST body is refused (413) before parsing"
    )
    refresh_interval_s: float = Field(
        5.0,
        gt=0,
        description="how often the service re-reads the serving tag (loading any model the "
        "new version needs before it answers from it)",
    )
    max_models: int = Field(
        3, ge=1, description="models held at once (the serving ones first; older ones dropped)"
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="threads of a scoring pass (torch intra-op); 0: torch's default (one a "
        "core). With several workers, cores / workers each",
    )
