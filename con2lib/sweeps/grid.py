"""Sweeps: a grid file expanded into points, each point one ``con2 run``, all under one parent MLflow run.

A grid file (``params/sweeps/*.yaml``; docs/sweeps.md)::

    base: quickstart.yaml        # a params file, relative to params/ or to the grid file (optional)
    overrides: {epochs: 8}       # applied to every point (optional)
    grid:                        # crossed: one point per combination
      params: [a.yaml, b.yaml]   # special key: a params file per point (data-set specific settings)
      seed: [0, 1]

Every point is ``base <- params file <- overrides <- grid values`` and is validated with
``Config.from_params`` before anything starts. A point's key is a hash of its whole resolved config
(defaults included) and the sweep id a hash of the keys, so running the same grid again finds the
previous attempt's runs: FINISHED points are skipped, failed, killed and missing ones run. A point
whose config changed (a new default, an edited preset) runs again; a params file rewritten to train
the same config (a preset listing fewer redundant values) does not.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from con2lib.config import Config
from con2lib.paths import project_root, resolve

TAG_SWEEP, TAG_POINT, TAG_POINT_PARAMS = "con2.sweep_id", "con2.point", "con2.point_params"
TAG_ROLE, TAG_PARENT = "con2.sweep_role", "mlflow.parentRunId"
STATES = ("done", "running", "failed", "pending")
MAX_TAG = 8000  # MLflow's limit on a tag value


class GridError(ValueError):
    """A grid file or one of its points is invalid; nothing was started."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its grid values, its merged params and their stable hash."""

    index: int
    values: dict[str, Any]
    params: dict[str, Any]
    key: str
    experiment: str

    @property
    def label(self) -> str:
        """``params=octmnist/invert.yaml, seed=1``: what distinguishes this point in the grid."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class Sweep:
    """An expanded, validated grid file."""

    path: Path
    points: tuple[Point, ...]
    sweep_id: str

    def experiments(self) -> list[str]:
        """The experiments of the points, in order of first appearance."""
        return list(dict.fromkeys(p.experiment for p in self.points))

    def csv(self) -> str:
        """One row per point: index, point hash, grid values, then every parameter."""
        grid_keys = list(self.points[0].values)
        keys = sorted({k for p in self.points for k in p.params})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["index", "point", *(f"grid.{k}" for k in grid_keys), *keys])
        for p in self.points:
            writer.writerow([p.index, p.key, *(p.values[k] for k in grid_keys),
                             *(compact_json(p.params[k]) if k in p.params else "" for k in keys)])
        return out.getvalue()


def point_key(params: dict[str, Any]) -> str:
    """A stable hash of a point's parameters (key order and YAML formatting do not matter)."""
    return hashlib.sha256(compact_json(params).encode()).hexdigest()[:12]


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Reads a grid file, expands it into points and validates each of them.

    Raises:
        GridError: the file, a params file it names, or a point is invalid; the message names the
            point (its number and grid values) and the bad parameter.
    """
    from con2lib.paramfiles import load_params

    path = Path(path) if Path(path).is_file() else resolve(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GridError(f"grid file {path} is not valid YAML: {' '.join(str(err).split())}") from err
    keys = {"base", "overrides", "grid"}
    if not isinstance(spec, dict) or set(spec) - keys:
        extra = ", ".join(map(repr, sorted(set(spec) - keys))) if isinstance(spec, dict) else ""
        raise GridError(f"grid file {path}: expected a mapping with keys base, overrides, grid"
                        + (f"; unknown key(s) {extra}" if extra else ""))
    grid, overrides = spec.get("grid"), spec.get("overrides") or {}
    if not isinstance(grid, dict) or not grid:
        raise GridError(f"grid file {path}: 'grid' must map parameter names to lists of values")
    if not isinstance(overrides, dict):
        raise GridError(f"grid file {path}: 'overrides' must be a mapping of parameter: value")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"grid file {path}: grid key {name!r} must be a non-empty list of values, "
                            f"got {values!r}")
    try:
        base = load_params(_find(spec["base"], path, "base")) if spec.get("base") else {}
        files = {name: load_params(_find(name, path, "params file")) for name in grid.get("params", [])}
    except ValueError as err:
        raise GridError(f"grid file {path}: {err}") from err
    combos = list(itertools.product(*grid.values()))
    points: dict[str, Point] = {}
    for index, combo in enumerate(combos, start=1):
        values = dict(zip(grid, combo, strict=True))
        params = {**base, **files.get(values.get("params"), {}), **overrides,
                  **{k: v for k, v in values.items() if k != "params"}}
        label = ", ".join(f"{k}={v}" for k, v in values.items())
        try:
            if "run_id" in params:
                raise ValueError("parameter run_id cannot be set in a sweep: each point gets its own run")
            cfg = Config.from_params(params)
        except ValueError as err:
            raise GridError(f"point {index} of {len(combos)} ({label}): {err}") from err
        key = point_key(cfg.to_dict())  # what trains, not how the files spell it
        points.setdefault(key, Point(len(points) + 1, values, params, key, cfg.experiment))  # duplicates: once
    sweep_id = hashlib.sha256("\n".join(sorted(points)).encode()).hexdigest()[:12]
    return Sweep(path, tuple(points.values()), sweep_id)


def _find(name: Any, grid_file: Path, what: str) -> Path:
    """A params file named in a grid file: absolute, or relative to params/, then to the grid file."""
    if not isinstance(name, str):
        raise GridError(f"grid file {grid_file}: {what} {name!r} must be a params file path")
    given = Path(name).expanduser()
    candidates = [given] if given.is_absolute() else [project_root() / "params" / given, grid_file.parent / given]
    found = next((c for c in candidates if c.is_file() and c.resolve() != grid_file.resolve()), None)
    if found is None:
        raise GridError(f"grid file {grid_file}: {what} {name!r} not found (looked for "
                        f"{', '.join(map(str, candidates))})")
    return found


# --- the sweep's runs in MLflow -----------------------------------------------------------------------

def sweep_runs(client: Any, sweep: Sweep, experiment_ids: list[str]) -> list[Any]:
    """Every run tagged with this sweep's id (parent and children), across the given experiments."""
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, f"tags.`{TAG_SWEEP}` = '{sweep.sweep_id}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    return runs


def point_states(sweep: Sweep, runs: list[Any]) -> dict[str, tuple[str, Any]]:
    """Each point's state (done, running, failed, pending) and its most telling run.

    A point is done when any of its runs FINISHED; running when one is RUNNING with a live process
    (runs of other hosts are taken at their word); failed when its runs all FAILED or were KILLED.
    """
    from con2lib.runs.tracking import TAG_HOST, TAG_PID, _alive

    host = socket.gethostname()

    def live(run: Any) -> bool:
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            return True
        return _alive(int(tags[TAG_PID]))

    by_point: dict[str, list[Any]] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):  # latest first
        if TAG_POINT in run.data.tags:
            by_point.setdefault(run.data.tags[TAG_POINT], []).append(run)
    states = {}
    for point in sweep.points:
        found = by_point.get(point.key, [])
        finished = [r for r in found if r.info.status == "FINISHED"]
        running = [r for r in found if r.info.status == "RUNNING" and live(r)]
        if finished:
            states[point.key] = ("done", finished[0])
        elif running:
            states[point.key] = ("running", running[0])
        else:
            states[point.key] = ("failed", found[0]) if found else ("pending", None)
    return states


def summary(sweep: Sweep, states: dict[str, tuple[str, Any]]) -> str:
    """``con2 sweep 3f2a...: 18 points: 5 done, 2 running, 1 failed, 10 pending``."""
    counts = Counter(state for state, _ in states.values())
    return (f"con2 sweep {sweep.sweep_id}: {len(sweep.points)} point{'' if len(sweep.points) == 1 else 's'}: "
            + ", ".join(f"{counts[s]} {s}" for s in STATES))


def compact_json(value: Any) -> str:
    """Compact, key-sorted JSON (a string stays as it is): stable hashes, short tags and CSV cells."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def display_path(path: Path) -> str:
    """A path relative to the project root when it is inside it."""
    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def show(sweep: Sweep, plan: str | None = None) -> None:
    """Prints each point with its state (read-only: creates no store, experiment or run)."""
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    uri, runs = tracking.tracking_uri(), []
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():
        client = MlflowClient(uri)
        found = [client.get_experiment_by_name(name) for name in sweep.experiments()]
        runs = sweep_runs(client, sweep, [e.experiment_id for e in found if e is not None])
    states = point_states(sweep, runs)
    print(f"con2 sweep {sweep.sweep_id}: {display_path(sweep.path)}, {len(sweep.points)} points, all valid ({uri})")
    if plan:
        print(plan)
    for point in sweep.points:
        state, run = states[point.key]
        if plan:
            state = "run" if state in ("failed", "pending") else "skip"
        extra = f"  run {run.info.run_id} {run.info.status}" if run is not None else ""
        failure = run.data.tags.get("con2.failure") if run is not None and run.info.status != "FINISHED" else None
        print(f"  {state:8} #{point.index:<4} {point.key}  {point.label}{extra}"
              + (f"  ({failure})" if failure else ""))
    print(summary(sweep, states))
    if plan:
        count = sum(state in ("failed", "pending") for state, _ in states.values())
        print(f"dry run: {count} point(s) would run; nothing was started")
