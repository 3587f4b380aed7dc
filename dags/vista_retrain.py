"""vista_retrain: train a new model, and serve it only if it is not worse than the serving one.

Weekly, or on demand (``airflow dags trigger vista_retrain``):

    train -> compare (same test window as serving) -> gate -> resummarize -> switch

``gate`` stops the run (downstream tasks skipped) when the candidate's AUC is
more than ``pipeline.retrain_margin`` below the serving model's. Otherwise
every user is re-summarized under the candidate (a full job, published but
not served), then ``switch`` moves the ``serving`` tag to those summaries and
makes the candidate ``model.model_dir``. The old summaries stay readable
until the switch; scorers refuse tokens of a model they do not hold, so they
reload the model when the tag moves.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import Asset, dag, task

log = logging.getLogger("vista.dags")

SUMMARIES = Asset("vista://summaries")


def log_failure(context: dict[str, Any]) -> None:
    ti = context.get("task_instance")
    log.error(
        "vista_retrain failed: task %s (run %s): %s",
        getattr(ti, "task_id", "?"),
        context.get("run_id", "?"),
        context.get("exception"),
    )


@dag(
    dag_id="vista_retrain",
    schedule="@weekly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=10),
        "on_failure_callback": log_failure,
    },
    tags=["vista"],
    doc_md=__doc__,
)
def vista_retrain() -> None:
    @task
    def train(**context: Any) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        name = context["run_id"].replace(":", "_").replace("+", "_")
        return dag_tasks.train_candidate(dag_tasks.config(), name)

    @task
    def compare(candidate: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        result = dag_tasks.compare_with_serving(dag_tasks.config(), candidate["model_dir"])
        log.info("retrain gate: %s", result["reason"])
        return {**result, "model_dir": candidate["model_dir"]}

    @task.short_circuit
    def gate(comparison: dict[str, Any]) -> bool:
        if not comparison["accept"]:
            log.warning("candidate refused, serving model kept: %s", comparison["reason"])
        return bool(comparison["accept"])

    @task
    def resummarize(comparison: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        out = dag_tasks.resummarize(dag_tasks.config(), comparison["model_dir"])
        return {"model_dir": comparison["model_dir"], **out["publish"]}

    @task(outlets=[SUMMARIES])
    def switch(published: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        return dag_tasks.switch_model(
            dag_tasks.config(), published["model_dir"], published["summaries_version"]
        )

    comparison = compare(train())
    go = gate(comparison)
    summaries = resummarize(comparison)
    go >> summaries
    switch(summaries)


vista_retrain()
