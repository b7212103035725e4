"""Thin Prefect tasks over pmpo, with explicit cache policies, and the one MLflow adapter (tasks.mlflow)."""

from tasks.environment import configure as _configure

_configure()  # before any prefect or mlflow import below this package
