"""A shared tracking server, as docs/sweeps.md sets it up for many machines: ``mlflow server`` on
PostgreSQL with proxied artifacts, written to by concurrent runs.

Starts a throw-away PostgreSQL cluster on loopback (skipped when no PostgreSQL server binaries are
installed; ``.ci/run`` installs them) and an ``mlflow server`` on it, both stopped at the end.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from con2lib.runs import tracking

from conftest import assert_writer_runs

N_RUNS, N_STEPS, N_METRICS, N_PARAMS = 8, 25, 4, 20


def _postgres_bin() -> Path | None:
    """The newest PostgreSQL server bin folder (Debian's layout, else initdb on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: an MLflow server backed by a fresh PostgreSQL database."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary (requirements.txt) is not installed")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) found; install the postgresql package (.ci/run does)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="con2-pg-"))  # not under pytest's tmp: postgres must reach it
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else ["su", "postgres", "-c"]
    data, pg_port, port = folder / "data", _free_port(), _free_port()

    def pg(*args: str) -> None:
        command = [str(bin_dir / args[0]), *args[1:]]
        if as_user[-1:] == ["-c"]:
            command = [" ".join(command)]
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    mlflow_server = None
    try:
        pg("initdb", "-D", str(data), "-U", "con2", "-A", "trust", "--no-sync", "--no-locale", "-E", "UTF8")
        pg("pg_ctl", "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "-t", "60", "-o",
           f"-p {pg_port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=pg_port, user="con2", dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE mlflow")
        connection.close()
        log = (folder / "mlflow.log").open("w")
        mlflow_server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"postgresql+psycopg2://con2@127.0.0.1:{pg_port}/mlflow",
             "--artifacts-destination", str(folder / "artifacts"),
             "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if mlflow_server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(folder / 'mlflow.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if mlflow_server is not None:  # the server and its workers: a process group of their own
            for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, None)):
                try:
                    os.killpg(mlflow_server.pid, sig)
                    mlflow_server.wait(wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        if (data / "postmaster.pid").exists():
            try:
                pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
            except subprocess.SubprocessError as err:
                print(f"could not stop PostgreSQL in {data}: {err}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)


def test_concurrent_runs_through_a_postgres_backed_server_lose_nothing(store, server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    try:
        experiment_id = tracking.setup("shared")  # con2's own set-up, against the server
    finally:
        mlflow.set_tracking_uri(store["MLFLOW_TRACKING_URI"])  # MLflow's global URI: back to the test store
    client = MlflowClient(server)
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    errors: list[BaseException] = []

    def one_run(index: int) -> None:
        try:
            own = MlflowClient(server)
            run_id = own.create_run(experiment_id, run_name=f"writer-{index}").info.run_id
            own.log_batch(run_id, params=[Param(f"p{k}", f"{index}-{k}") for k in range(N_PARAMS)])
            for step in range(N_STEPS):
                now = int(time.time() * 1000)
                own.log_batch(run_id, metrics=[Metric(f"m{k}", index * 1000 + step * 10 + k, now, step)
                                               for k in range(N_METRICS)])
            own.log_text(run_id, f"run {index}\n", "notes/run.txt")  # through the server's artifact proxy
            own.set_terminated(run_id, "FINISHED")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=one_run, args=(i,)) for i in range(N_RUNS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    runs = client.search_runs([experiment_id])
    assert_writer_runs(client, runs, N_RUNS, N_PARAMS, N_METRICS, N_STEPS)
    for run in runs:
        index = int(run.info.run_name.split("-")[1])
        local = client.download_artifacts(run.info.run_id, "notes/run.txt", str(tmp_path))
        assert Path(local).read_text() == f"run {index}\n"
