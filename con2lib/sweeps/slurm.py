"""The Slurm backend of ``con2 sweep``: one submitit job array task per point (docs/sweeps.md, "Slurm").

Each task runs :func:`con2lib.runs.runner.run_point`, the code path of ``con2 run``, like a local worker
(:class:`con2lib.sweeps.backends.LocalBackend`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from con2lib.runs.runner import run_point
from con2lib.sweeps.backends import OnDone


class SlurmBackend:
    """A submitit job array: one array task per point, each on its own GPU(s).

    ``cluster="local"`` runs the same jobs on this machine with submitit's local executor (tests, or a
    dry rehearsal before a cluster run).
    """

    def __init__(self, folder: Path, cluster: str = "slurm", partition: str | None = None, time_min: int = 1440,
                 gpus_per_job: int = 1, cpus_per_job: int | None = None, array_parallelism: int = 64,
                 poll_s: float | None = None) -> None:
        self.folder, self.cluster, self.partition = folder, cluster, partition
        self.time_min, self.gpus_per_job, self.cpus_per_job = time_min, gpus_per_job, cpus_per_job
        self.array_parallelism = array_parallelism
        self.poll_s = poll_s if poll_s is not None else (1.0 if cluster == "local" else 30.0)

    def check(self) -> None:
        """Raises ValueError when Slurm is asked for but not reachable from here."""
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--backend slurm needs sbatch on PATH (run on a Slurm login node), "
                             "or --cluster local to run the jobs on this machine")

    def describe(self, points: list[Any]) -> str:
        """One line: what will be submitted."""
        return (f"backend slurm ({self.cluster}): a job array of {len(points)} task(s), partition "
                f"{self.partition or '(default)'}, {self.time_min} min, {self.gpus_per_job} GPU(s) per task, "
                f"at most {self.array_parallelism} at once; submitit logs in {self.folder}")

    def run(self, tasks: list[dict[str, Any]], points: list[Any], on_done: OnDone) -> None:
        """Submits the array and reports each task as it ends; Ctrl-C stops waiting, not the jobs."""
        import submitit

        self.check()
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        options: dict[str, Any] = {"timeout_min": self.time_min, "gpus_per_node": self.gpus_per_job,
                                   "name": "con2-sweep", "slurm_array_parallelism": self.array_parallelism}
        if self.partition:
            options["slurm_partition"] = self.partition
        if self.cpus_per_job:
            options["cpus_per_task"] = self.cpus_per_job
        executor.update_parameters(**options)
        jobs = executor.map_array(run_point, [{**t, "gpu": self.gpus_per_job > 0} for t in tasks])
        print(f"con2 sweep: submitted {len(jobs)} job(s): {jobs[0].job_id.split('_')[0]}"
              f"{' (array)' if len(jobs) > 1 else ''}", flush=True)
        pending = dict(zip(jobs, tasks, strict=True))
        try:
            while pending:
                for job in [j for j in pending if j.done()]:
                    task = pending.pop(job)
                    try:
                        outcome = job.result()[1]
                    except Exception as err:  # noqa: BLE001 - a failed job is one failed point
                        outcome = f"job {job.job_id} failed: {(str(err).strip().splitlines() or ['?'])[-1][:300]}"
                    on_done(task, outcome)
                if pending:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            ids = sorted({j.job_id.split("_")[0] for j in pending})
            print(f"con2 sweep: stopped waiting; {len(pending)} job(s) keep running ({', '.join(ids)}; "
                  "scancel stops them)", flush=True)
            raise
