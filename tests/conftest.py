"""Shared fixtures: an isolated MLflow store per test, so tests never touch the project's mlruns/."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

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


def artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    """Every artifact file of a run, as paths relative to its artifact root."""
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def notebook_with_cell(tmp_path: Path, source: str, after: str) -> Path:
    """A copy of the training notebook with a code cell inserted after the first cell containing ``after``.

    A test injects a failure this way (``con2 run --notebook <copy>``) without changing library code.
    """
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "train.ipynb", as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and after in c.source)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    path = tmp_path / "injected.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="session")
def _migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema created (MLflow's migrations take seconds)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def fast_store(store: dict[str, str], tmp_path: Path, _migrated_db: Path) -> dict[str, str]:
    """``store``, its SQLite file copied from a migrated template: no schema migration per test."""
    shutil.copyfile(_migrated_db, tmp_path / "mlflow.db")
    return store


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory, _migrated_db: Path) -> dict[str, str]:
    """``fast_store`` shared by a whole test module (tests that reuse one trained run); the folder is
    ``Path(env["CON2_RUNS_DIR"]).parent``."""
    import mlflow

    folder = tmp_path_factory.mktemp("module-store")
    shutil.copyfile(_migrated_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "CON2_RUNS_DIR": str(folder / "runs")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        mlflow.set_tracking_uri(uri)
        yield {**os.environ, **env, "PYTHONUNBUFFERED": "1"}


# Tiny runs train on all max_train=32 images (2 steps per epoch, which tests/test_failures.py counts on):
# no held-out calibration images (the threshold then falls back to leave-one-out S_NND; con2lib/serving/calibration.py).
TINY["calibration_fraction"] = 0.0


def assert_writer_runs(client: Any, runs: list[Any], n_runs: int, n_params: int, n_metrics: int,
                       n_steps: int) -> None:
    """Every concurrent writer's run arrived whole: FINISHED, run ``writer-i`` with params ``p<k>`` = ``i-k``
    and metric ``m<k>`` = ``i * 1000 + step * 10 + k`` at every step (the stores' concurrency tests)."""
    assert sorted(r.info.run_name for r in runs) == sorted(f"writer-{i}" for i in range(n_runs))
    for run in runs:
        index = int(run.info.run_name.split("-")[1])
        assert run.info.status == "FINISHED"
        assert run.data.params == {f"p{k}": f"{index}-{k}" for k in range(n_params)}
        for k in range(n_metrics):
            history = client.get_metric_history(run.info.run_id, f"m{k}")
            assert sorted((m.step, m.value) for m in history) == \
                [(step, index * 1000 + step * 10 + k) for step in range(n_steps)]
