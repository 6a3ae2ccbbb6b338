"""Shared fixtures: an isolated MLflow store per test, so tests never touch the project's mlruns/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "normal_class": 1, "image_size": 8, "width": 0.125, "epochs": 2, "batch_size": 16,
        "max_train": 32, "max_test": 60, "tta": 2, "eval_batch_size": 64, "plot_points": 20, "device": "cpu"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An MLflow SQLite store and runs folder in tmp_path; returns the environment to run ``con2`` with."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "CON2_RUNS_DIR": str(tmp_path / "runs")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(uri)
    return {**os.environ, **env, "PYTHONUNBUFFERED": "1"}


def make_experiment(name: str, tmp_path: Path) -> str:
    """Creates the experiment with its artifacts under tmp_path (not the working directory)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient().create_experiment(name, artifact_location=(tmp_path / "artifacts" / name).as_uri())


def con2_command(*args: str) -> list[str]:
    """``con2 ...`` through the interpreter running the tests."""
    return [sys.executable, "-m", "con2lib.cli", *args]
