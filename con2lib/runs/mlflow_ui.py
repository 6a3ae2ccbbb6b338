"""The MLflow UI on con2's runs: experiments shown as model training with the AUROC columns, and screenshots.

MLflow 3.17's UI opens every experiment as a GenAI app (an "Overview" of traces, all empty for con2)
unless it is in its *machine-learning* mode: the "GenAI / Model training" toggle at the top left,
remembered by the browser, or ``workflowType=machine_learning`` in the page's URL. It then reads the
experiment's kind from the UI mode, not from the experiment's ``mlflow.experimentKind`` tag; con2 still
sets that tag (:data:`KIND_TAG`), which earlier 3.x UIs read. The runs table shows no metric column by
default; a *shared view*, an experiment tag ``mlflow.sharedViewState.<key>`` opened with
``?viewStateShareKey=<key>``, selects columns. Every experiment con2 creates gets both tags
(:func:`con2lib.runs.store.ui_tags`), and :func:`ui_url` is the link that opens its runs table with the AUROCs.

    python -m con2lib.runs.mlflow_ui [--out runs/ui-screenshots]   # screenshots of the latest con2 experiment

starts ``mlflow ui`` on the project's store (``MLFLOW_TRACKING_URI`` when set), and writes with headless
Chromium (``apt-get install chromium``) ``experiment.png`` (the experiment as the link opens it: runs
table with the AUROC columns), ``run.png`` (its latest run: description with the AUROCs, metrics) and
``default.png`` (the same experiment opened without the link: MLflow's GenAI overview).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from con2lib.runs.store import KIND_TAG, KIND_TRAINING, VIEW_KEY

ML_MODE = "workflowType=machine_learning"


def ui_url(base: str, experiment_id: str) -> str:
    """The runs table of an experiment with con2's columns, in the UI's machine-learning mode.

    The runs tab itself, not the experiment: the UI keeps only ``workflowType`` when it redirects an
    experiment to its first tab, and the view key would be lost.
    """
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{ML_MODE}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI's machine-learning mode."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_MODE}"


def ui_command(uri: str, artifact_root: Path, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the store ``uri`` (with a SQLite store, its artifacts under ``artifact_root``)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", artifact_root.as_uri()]
    return cmd


def _wait_for(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()  # noqa: S310 - our own local server
            return
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow UI at {url} did not answer within {timeout_s:.0f} s ({err})") from err
            time.sleep(1)


def screenshot(chromium: str, url: str, path: Path, size: str = "1800,1000") -> None:
    """Writes a PNG of ``url`` as headless Chromium renders it (20 s of page time for the UI's requests)."""
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    """Screenshots of the latest experiment con2 created (see the module docstring); prints the files."""
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    parser = argparse.ArgumentParser(prog="python -m con2lib.runs.mlflow_ui", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(tracking.runs_root() / "ui-screenshots"), help="folder of the PNGs")
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.chromium:
        print("con2 ui screenshots: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    uri = tracking.tracking_uri()
    mine = [e for e in MlflowClient(uri).search_experiments(order_by=["creation_time DESC"])
            if e.tags.get(KIND_TAG) == KIND_TRAINING]
    runs = MlflowClient(uri).search_runs([mine[0].experiment_id], order_by=["attributes.start_time DESC"],
                                         max_results=1) if mine else []
    if not runs:
        print(f"con2 ui screenshots: no run in an experiment con2 created in {uri}; `make quickstart` first",
              file=sys.stderr)
        return 2
    out, base = Path(args.out), f"http://127.0.0.1:{args.port}"
    out.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(ui_command(uri, tracking.artifact_root(), "127.0.0.1", args.port),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(f"{base}/health", 120)
        experiment_id, run_id = mine[0].experiment_id, runs[0].info.run_id
        pages = {"experiment.png": (ui_url(base, experiment_id), "2200,700"),
                 "run.png": (run_url(base, experiment_id, run_id), "1800,1000"),
                 "default.png": (f"{base}/#/experiments/{experiment_id}", "1800,1000")}
        for name, (url, size) in pages.items():
            screenshot(args.chromium, url, out / name, size)
            print(f"{out / name}: {url}")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
