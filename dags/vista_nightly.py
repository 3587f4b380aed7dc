"""vista_nightly: fold each day's events into every active user's summary, check, serve.

One run per event day D (the run's data interval is day D, so the run for D
starts after D ends; ``airflow dags test vista_nightly D`` runs it now):

    wait_for_events -> validate -> summarize -> publish -> check -> promote -> cluster -> compact

``cluster`` adds the day to every active user's TWIN-V2 memory bank (for the
GSU) when ``memory.enabled`` is set in the config, and does nothing otherwise.

Every task is idempotent for its day: a second run of D finds D in the run
ledger and changes nothing. Runs go strictly in date order
(``max_active_runs=1``, ``depends_on_past``), so a backfill folds the days in
order and ends with the same store as one full run. The work itself is in
:mod:`batch_jobs.dag_tasks`; configuration comes from ``$VISTA_CONFIG`` (a TOML
file) and ``VISTA_*`` variables on the workers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, PokeReturnValue, dag, task

log = logging.getLogger("vista.dags")

EVENTS = Asset("vista://events")
SUMMARIES = Asset("vista://summaries")


def log_failure(context: dict[str, Any]) -> None:
    """Failure callback: one line saying which task of which day failed, and why."""
    ti = context.get("task_instance")
    err = context.get("exception")
    log.error(
        "vista_nightly failed: task %s for %s: %s",
        getattr(ti, "task_id", "?"),
        context.get("ds", "?"),
        err,
    )


@contextlib.contextmanager
def _no_retry_on_check() -> Iterator[None]:
    """A failed data check fails the task at once: retrying cannot fix the data."""
    from airflow.sdk.exceptions import AirflowFailException

    from batch_jobs.dag_tasks import CheckFailed

    try:
        yield
    except CheckFailed as exc:
        raise AirflowFailException(str(exc)) from exc


def _day(context: dict[str, Any]) -> str:
    """The event day of this run: its logical date (scheduled runs: the start of the data
    interval; ``airflow dags test vista_nightly D``: D)."""
    when = context.get("logical_date") or context["data_interval_start"]
    return when.strftime("%Y-%m-%d")


DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
    "depends_on_past": True,
    "on_failure_callback": log_failure,
}


@dag(
    dag_id="vista_nightly",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["vista"],
    doc_md=__doc__,
)
def vista_nightly() -> None:
    @task.sensor(poke_interval=300, timeout=12 * 3600, mode="reschedule", retries=0)
    def wait_for_events(**context: Any) -> PokeReturnValue:
        from batch_jobs import dag_tasks

        day = _day(context)
        ready = dag_tasks.partition_ready(dag_tasks.config(), day)
        return PokeReturnValue(is_done=ready, xcom_value=day)

    @task(inlets=[EVENTS])
    def validate(day: str) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        with _no_retry_on_check():
            return dag_tasks.validate(dag_tasks.config(), day)

    @task
    def summarize(day: str, validated: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        log.info("validated %s: %s", day, validated.get("quarantined_by_reason"))
        return dag_tasks.summarize(dag_tasks.config(), day)

    @task(outlets=[SUMMARIES])
    def publish(staged: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        return dag_tasks.publish(dag_tasks.config(), staged["run_dir"])

    @task
    def check(day: str, published: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        log.info("publish: %s", published.get("status"))
        with _no_retry_on_check():
            return dag_tasks.check_summaries(dag_tasks.config(), day)

    @task
    def promote(day: str, checked: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        return dag_tasks.promote_day(dag_tasks.config(), day, checked["version"])

    @task
    def cluster(day: str, served: dict[str, Any]) -> dict[str, Any]:
        from batch_jobs import dag_tasks

        log.info("serving version %s (moved: %s)", served["serving_version"], served["moved"])
        return dag_tasks.cluster(dag_tasks.config(), day)

    @task
    def compact(clustered: dict[str, Any]) -> list[dict[str, Any]]:
        from batch_jobs import dag_tasks

        log.info("memory banks: %s", clustered.get("status"))
        return dag_tasks.compact(dag_tasks.config())

    day = wait_for_events()
    validated = validate(day)
    staged = summarize(day, validated)
    published = publish(staged)
    compact(cluster(day, promote(day, check(day, published))))


vista_nightly()
