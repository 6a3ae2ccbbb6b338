"""``con2 sweep``: the command line of sweeps; the grid is :mod:`con2lib.sweeps.grid`, the execution
:mod:`con2lib.sweeps.backends` and :mod:`con2lib.sweeps.slurm` (this module sits above them, so neither imports
the other's caller)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from con2lib.sweeps.grid import load_sweep, show


def cmd_sweep(args: Any) -> int:
    """``con2 sweep``: 0 all points done, 1 some not, 2 nothing started (bad grid), 130 interrupted."""
    from con2lib.runs import tracking
    from con2lib.runs.runner import RunNotStarted
    from con2lib.sweeps.backends import LocalBackend, run_sweep
    from con2lib.sweeps.slurm import SlurmBackend

    try:
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers {args.workers}: expected an integer >= 1")
        sweep = load_sweep(args.grid)
        folder = tracking.runs_root() / "sweeps" / sweep.sweep_id
        if args.backend == "slurm":
            backend: Any = SlurmBackend(Path(args.submitit_folder) if args.submitit_folder else folder / "submitit",
                                        args.cluster, args.partition, args.time_min, args.gpus_per_job,
                                        args.cpus_per_job, args.array_parallelism)
            if not (args.status or args.dry_run):
                backend.check()
        else:
            backend = LocalBackend(folder, args.workers)
        plan = backend.describe(list(sweep.points))
    except ValueError as err:
        print(f"con2 sweep: {err}", file=sys.stderr)
        return 2
    if args.status or args.dry_run:
        show(sweep, plan if args.dry_run else None)
        return 0
    from con2lib.runs.store import brief_store_errors

    try:
        with brief_store_errors():  # a full disk is one line, not MLflow's traceback per call
            return run_sweep(sweep, backend, args.experiment, args.notebook, args.rerun_running)
    except RunNotStarted as err:
        print(f"con2 sweep: {err}", file=sys.stderr)
        return 2


def add_commands(sub: Any) -> None:
    """Registers ``con2 sweep`` on the ``con2`` command line."""
    sweep = sub.add_parser("sweep", help="run a grid of runs (params/sweeps/*.yaml) locally or on Slurm")
    sweep.add_argument("grid", help="grid file, e.g. params/sweeps/quickstart.yaml")
    sweep.add_argument("--backend", choices=("local", "slurm"), default="local")
    sweep.add_argument("--workers", type=int, help="local: parallel runs (default: one per GPU, else 1)")
    sweep.add_argument("--dry-run", action="store_true", help="list the points and what would run; start nothing")
    sweep.add_argument("--status", action="store_true", help="show done / running / failed / pending points")
    sweep.add_argument("--experiment", help="experiment of the parent run (default: the first point's)")
    sweep.add_argument("--notebook", default="notebooks/train.ipynb", help="notebook each point executes")
    sweep.add_argument("--rerun-running", action="store_true",
                       help="also run points whose run is RUNNING (e.g. left so by a job that died on another host)")
    slurm = sweep.add_argument_group("slurm backend (submitit)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time-min", type=int, default=1440, help="time limit per run in minutes (default 1440)")
    slurm.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per array task (default 1)")
    slurm.add_argument("--cpus-per-job", type=int, help="CPUs per array task (default: the cluster's)")
    slurm.add_argument("--array-parallelism", type=int, default=64, help="array tasks running at once (default 64)")
    slurm.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                       help="submitit executor: slurm, or local to run the array on this machine")
    slurm.add_argument("--submitit-folder", help="submitit's job files (default runs/sweeps/<id>/submitit; "
                                                 "must be on a file system the nodes share)")
    sweep.set_defaults(func=cmd_sweep)
