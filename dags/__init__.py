"""Airflow DAGs (nightly, retrain): thin task wrappers over batch_jobs.dag_tasks. A package only so
that import-linter can check that nothing imports them; Airflow loads the files by path."""
