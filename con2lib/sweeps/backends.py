"""Running a sweep: its parent run, and the points on worker processes here or in a Slurm job array.

:func:`run_sweep` runs the points that are not done yet. Each point runs in a process of its own
through :func:`con2lib.runs.runner.execute_run`, the code path of ``con2 run``. A backend takes *tasks*
(plain dicts: params, tags, notebook, environment) and calls ``on_done(task, outcome)`` as each ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from con2lib.paths import project_root
from con2lib.runs.progress import StreamEcho
from con2lib.runs.run_info import auroc_summary
from con2lib.sweeps import grid as sw
from con2lib.sweeps.report import log_results, point_name, results, table

OnDone = Callable[[dict[str, Any], str], None]
STOP_GRACE_S = 120  # an interrupted worker ends its run KILLED and logs it; then it is killed


def run_sweep(sweep: sw.Sweep, backend: Any, experiment: str | None = None,
              notebook: str = "notebooks/train.ipynb", rerun_running: bool = False) -> int:
    """Runs the points that are not done yet; returns 0 when all are done, 1 if not, 130 on Ctrl-C.

    Raises:
        RunNotStarted: the store cannot be written or reached; nothing was started.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking
    from con2lib.runs.runner import RunNotStarted, interrupt_on_termination

    parent_experiment = experiment or sweep.experiments()[0]
    try:  # store and experiments exist before any worker starts: no worker races to create them
        ids = {name: tracking.setup(name) for name in dict.fromkeys([*sweep.experiments(), parent_experiment])}
    except (ValueError, MlflowException) as err:
        raise RunNotStarted(str(err)) from err
    client, experiment_ids = MlflowClient(), list(ids.values())
    for dead in tracking.mark_dead_runs_failed(experiment_ids):
        print(f"con2 sweep: run {dead} was left RUNNING by a process that died; marked FAILED", flush=True)
    runs = sw.sweep_runs(client, sweep, experiment_ids)
    parent = start_parent(client, sweep, ids[parent_experiment], runs)
    states = sw.point_states(sweep, runs)
    todo = [p for p in sweep.points
            if states[p.key][0] in ("failed", "pending") or (rerun_running and states[p.key][0] == "running")]
    print(f"con2 sweep {sweep.sweep_id}: parent MLflow run {parent} (experiment {parent_experiment!r})")
    print(backend.describe(todo) if todo else "con2 sweep: nothing to run")
    print(sw.summary(sweep, states), flush=True)
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           **{k: os.environ[k] for k in ("CON2_RUNS_DIR", "CON2_HOME") if os.environ.get(k)}}
    tasks = [{"key": p.key, "index": p.index, "label": p.label, "notebook": notebook, "env": env,
              "params": {**p.params, "run_name": point_name(p)},
              "tags": child_tags(sweep, p, parent)} for p in todo]
    ended: list[str] = []

    def on_done(task: dict[str, Any], outcome: str) -> None:
        ended.append(task["key"])
        now = sw.point_states(sweep, sw.sweep_runs(client, sweep, experiment_ids))
        state, run = now[task["key"]]
        failure = run.data.tags.get(tracking.TAG_FAILURE) if run is not None and state != "done" else None
        shown = auroc_summary(run.data.metrics) if run is not None and state == "done" else ""
        print(f"con2 sweep: [{len(ended)}/{len(todo)}] point {task['index']} ({task['label']}): {outcome}"
              + (f", run {run.info.run_id}" if run is not None else "") + (f", {shown}" if shown else "")
              + (f" ({failure})" if failure else ""))
        print(sw.summary(sweep, now), flush=True)

    restore = interrupt_on_termination()  # SIGTERM / SIGHUP stop the sweep like Ctrl-C
    try:
        if todo:
            backend.run(tasks, todo, on_done)
    except KeyboardInterrupt:
        client.set_terminated(parent, "KILLED")
        states = sw.point_states(sweep, sw.sweep_runs(client, sweep, experiment_ids))
        print(sw.summary(sweep, states), file=sys.stderr)
        print("con2 sweep: interrupted; run the same command again to complete the sweep", file=sys.stderr)
        return 130
    finally:
        restore()
    states = sw.point_states(sweep, sw.sweep_runs(client, sweep, experiment_ids))
    counts = Counter(state for state, _ in states.values())
    for state in sw.STATES:
        client.log_metric(parent, f"points_{state}", counts[state])
    complete = counts["done"] == len(sweep.points)
    rows = results(sweep, states)
    log_results(client, parent, sweep, rows)
    client.set_terminated(parent, "FINISHED" if complete else "FAILED")
    print(f"con2 sweep: results (AUROC in percent; also sweep/results.csv of the parent run)\n{table(rows)}")
    print(sw.summary(sweep, states), flush=True)
    return 0 if complete else 1


def start_parent(client: Any, sweep: sw.Sweep, experiment_id: str, runs: list[Any]) -> str:
    """Finds this sweep's parent run (or creates it), marks it RUNNING and logs the expanded grid."""
    from con2lib.runs.tracking import TAG_FAILURE, TAG_HOST, TAG_PID

    parents = [r for r in runs if r.data.tags.get(sw.TAG_ROLE) == "parent" and r.info.experiment_id == experiment_id]
    if parents:
        run_id = parents[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        if TAG_FAILURE in parents[0].data.tags:  # why an earlier attempt ended (its process died): no longer true
            client.delete_tag(run_id, TAG_FAILURE)
    else:
        run_id = client.create_run(experiment_id, run_name=f"sweep {sweep.path.stem} {sweep.sweep_id}",
                                   tags={sw.TAG_SWEEP: sweep.sweep_id, sw.TAG_ROLE: "parent"}).info.run_id
        client.log_param(run_id, "grid_file", sw.display_path(sweep.path))
        client.log_param(run_id, "points", len(sweep.points))
    # so that a sweep killed outright is marked FAILED by the next start, like any run
    client.set_tag(run_id, TAG_PID, str(os.getpid()))
    client.set_tag(run_id, TAG_HOST, socket.gethostname())
    client.log_text(run_id, sweep.csv(), "sweep/grid.csv")
    return run_id


def child_tags(sweep: sw.Sweep, point: sw.Point, parent_id: str) -> dict[str, str]:
    """The tags that make a run a point of this sweep (and nest it under the parent in the MLflow UI)."""
    return {sw.TAG_SWEEP: sweep.sweep_id, sw.TAG_POINT: point.key,
            sw.TAG_POINT_PARAMS: sw.compact_json(point.params)[: sw.MAX_TAG],
            sw.TAG_PARENT: parent_id, "con2.grid_file": sw.display_path(sweep.path)}


def visible_gpus() -> list[str]:
    """GPU ids this machine offers (``CUDA_VISIBLE_DEVICES`` when set); no torch import without a driver."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cpu_count() -> int:
    """Cores this process may use (the container's or Slurm's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class LocalBackend:
    """A pool of worker processes: one per GPU when there are GPUs, else ``workers`` CPU workers.

    CPU workers share the cores (``OMP_NUM_THREADS`` = cores // workers) so they do not oversubscribe
    them. Each worker's output goes to ``<log_dir>/<point>.log``.
    """

    def __init__(self, log_dir: Path, workers: int | None = None, gpus: list[str] | None = None) -> None:
        self.log_dir = log_dir
        self.gpus = visible_gpus() if gpus is None else gpus
        self.requested = workers

    def slots(self, points: list[Any]) -> list[dict[str, str]]:
        """The environment of each worker: its GPU, or its share of the cores.

        Raises:
            ValueError: a point asks for ``device: cuda`` and this machine has no GPU.
        """
        devices = {p.params.get("device", "auto") for p in points}
        if "cuda" in devices and not self.gpus:
            raise ValueError("a point has device=cuda but this machine has no GPU (CUDA_VISIBLE_DEVICES, nvidia-smi)")
        if self.gpus and devices <= {"auto", "cuda"}:
            gpus = self.gpus[: self.requested or len(self.gpus)]
            threads = str(max(1, cpu_count() // len(gpus)))
            return [{"CUDA_VISIBLE_DEVICES": g, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CON2_GPU": "1"}
                    for g in gpus]
        workers = max(1, self.requested or 1)
        threads = str(max(1, cpu_count() // workers))
        return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}] * workers

    def describe(self, points: list[Any]) -> str:
        """One line: how the points will be spread."""
        slots = self.slots(points)
        if slots[0].get("CON2_GPU"):
            return (f"backend local: {len(slots)} worker(s), one per GPU (CUDA_VISIBLE_DEVICES="
                    f"{','.join(s['CUDA_VISIBLE_DEVICES'] for s in slots)}), device cuda; logs in {self.log_dir}")
        return (f"backend local: {len(slots)} CPU worker(s), OMP_NUM_THREADS={slots[0]['OMP_NUM_THREADS']} each; "
                f"logs in {self.log_dir}")

    def run(self, tasks: list[dict[str, Any]], points: list[Any], on_done: OnDone) -> None:
        """Runs every task; on KeyboardInterrupt stops the workers (their runs end KILLED) and re-raises."""
        queue, lock, procs, stopping = deque(tasks), threading.Lock(), {}, threading.Event()
        self.log_dir.mkdir(parents=True, exist_ok=True)

        def worker(slot: dict[str, str]) -> None:
            while not stopping.is_set():
                with lock:
                    if not queue:
                        return
                    task = queue.popleft()
                outcome = self._run_one(task, slot, procs, lock, stopping)
                with lock:  # one report at a time
                    try:
                        if not stopping.is_set():
                            on_done(task, outcome)
                    except Exception as err:  # noqa: BLE001 - a report that fails must not stop the pool
                        print(f"con2 sweep: could not report point {task['index']}: {err}", file=sys.stderr)

        threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in self.slots(points)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # short waits: Ctrl-C (KeyboardInterrupt) is seen at once
        except KeyboardInterrupt:
            with lock:  # no worker starts after this
                stopping.set()
                running = list(procs.values())
            _stop(running)
            raise

    def _run_one(self, task: dict[str, Any], slot: dict[str, str], procs: dict[str, Any], lock: Any,
                 stopping: threading.Event) -> str:
        """One worker process for one task; returns its outcome (the run's status, or why there is none)."""
        stem = self.log_dir / f"point-{task['key']}"
        result = stem.with_suffix(".result.json")
        result.unlink(missing_ok=True)
        spec = {**task, "gpu": bool(slot.get("CON2_GPU")), "result": str(result), "parent_pid": os.getpid()}
        stem.with_suffix(".json").write_text(json.dumps(spec))
        env = {**os.environ, **slot, "PYTHONUNBUFFERED": "1"}
        log_path = stem.with_suffix(".log")
        offset = log_path.stat().st_size if log_path.is_file() else 0  # an earlier attempt's lines: not echoed
        with log_path.open("a") as log, lock:
            if stopping.is_set():
                return "not started (sweep interrupted)"
            # a session of its own: Ctrl-C reaches the sweep only, which stops each worker once
            proc = subprocess.Popen([sys.executable, "-m", "con2lib.runs.runner", str(stem.with_suffix(".json"))],
                                    cwd=project_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            procs[task["key"]] = proc
        code = _follow(proc, log_path, offset, f"con2 sweep: point {task['index']} ({task['label']}): ")
        with lock:
            procs.pop(task["key"], None)
        if result.is_file():
            return json.loads(result.read_text())["outcome"]
        return f"worker exited with code {code} (log: {stem.with_suffix('.log')})"


def _follow(proc: subprocess.Popen, log: Path, offset: int, label: str, poll_s: float = 0.5) -> int:
    """Waits for a worker, echoing the progress lines it writes to its log; returns its exit code.

    The worker writes to a file, not a pipe: a sweep that dies must not take the worker's output with it
    (the worker still has to end its run KILLED).
    """
    echo = StreamEcho(sys.stdout, label=label)
    with log.open() as reader:
        reader.seek(offset)
        while True:
            code = proc.poll()
            echo.write(reader.read())
            echo.flush()
            if code is not None:
                return code
            time.sleep(poll_s)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each worker (its run ends KILLED, notebook logged), SIGKILL after STOP_GRACE_S."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
