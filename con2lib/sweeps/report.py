"""What a sweep reports: each point's AUROCs as it ends, a table of all points at the end, the same table
logged to the parent run, and child runs named as ``con2 run`` names them (docs/sweeps.md, "Results").
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from con2lib.config import Config
from con2lib.runs.run_info import TAG_DESCRIPTION, run_name
from con2lib.sweeps import grid as sw

# the columns of the results table: metric, header
COLUMNS = (("auroc_nnd", "S_NND"), ("auroc_lh", "S_LH"), ("auroc_ssd", "SSD"), ("auroc_pixel_knn", "pixel 1-NN"))
# grid keys the run name already shows (a params file shows through its data set and context)
_NAMED = ("dataset", "normal_class", "context", "loss", "seed", "params")


def point_name(point: sw.Point) -> str:
    """The run name of a point: ``digits-8-invert-s0`` as ``con2 run`` names it, then the grid values the
    name does not show, so points that differ only there stay apart (``digits-8-invert-s0 lr=0.01``).
    A ``run_name`` parameter of the point wins."""
    if point.params.get("run_name"):
        return str(point.params["run_name"])
    extra = [f"{key}={value}" for key, value in point.values.items() if key not in _NAMED]
    return " ".join([run_name(Config.from_params(point.params)), *extra])


def results(sweep: sw.Sweep, states: dict[str, tuple[str, Any]]) -> list[dict[str, Any]]:
    """One row per point: index, grid values, state, run name and id, AUROCs in percent (None: not logged)."""
    rows = []
    for point in sweep.points:
        state, run = states[point.key]
        metrics = run.data.metrics if run is not None else {}
        rows.append({"point": point.index, "grid": point.label, "state": state,
                     "run_name": run.info.run_name if run is not None else "",
                     "run_id": run.info.run_id if run is not None else "",
                     **{key: round(100 * metrics[key], 2) if key in metrics else None for key, _ in COLUMNS}})
    return rows


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r["state"] == "done" and r[key] is not None]
    return round(sum(values) / len(values), 2) if values else None


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table, with the mean AUROCs of the done points as the last line."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.2f}"
        return "-" if value is None else str(value)

    done = [r for r in rows if r["state"] == "done"]
    mean = {"point": "", "grid": f"mean of {len(done)} done", "state": "", "run_name": "",
            **{key: _mean(rows, key) for key, _ in COLUMNS}}
    headers = ["#", "grid values", "state", *(label for _, label in COLUMNS), "run"]
    lines = [[cell(r["point"]), r["grid"], r["state"], *(cell(r[key]) for key, _ in COLUMNS), r["run_name"]]
             for r in [*rows, mean]]
    widths = [max(len(line[i]) for line in [headers, *lines]) for i in range(len(headers))]
    numeric = {0, *range(3, 3 + len(COLUMNS))}  # right-aligned

    def join(line: list[str]) -> str:
        return "  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths)))

    return "\n".join(join(line).rstrip() for line in [headers, *lines])


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (the parent run's description in the MLflow UI)."""
    headers = ["#", "grid values", "state", *(label for _, label in COLUMNS), "run"]
    lines = [f"| {' | '.join(headers)} |", f"|{'---|' * len(headers)}"]
    for r in rows:
        values = [r["point"], r["grid"], r["state"], *("" if r[k] is None else f"{r[k]:.2f}" for k, _ in COLUMNS),
                  r["run_name"]]
        lines.append(f"| {' | '.join(str(v).replace('|', '/') for v in values)} |")
    return "\n".join(lines)


def log_results(client: Any, parent: str, sweep: sw.Sweep, rows: list[dict[str, Any]]) -> None:
    """Logs the results to the parent run: ``sweep/results.csv``, and the table as its description."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    client.log_text(parent, out.getvalue(), "sweep/results.csv")
    done = sum(r["state"] == "done" for r in rows)
    client.set_tag(parent, TAG_DESCRIPTION, f"Sweep `{sw.display_path(sweep.path)}` ({sweep.sweep_id}): "
                                            f"{done} of {len(rows)} points done. AUROC in percent.\n\n{markdown(rows)}")
