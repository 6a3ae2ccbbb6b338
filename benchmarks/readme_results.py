"""README result tables from the MLflow store, so the numbers there are always those of real runs.

    python -m benchmarks.readme_results                    # print the table
    python -m benchmarks.readme_results --write README.md  # replace the table between its markers

For each params file the latest FINISHED run of that file's parameters (a run with ``-p`` overrides of
them is another experiment) gives one row: its AUROCs, its run time, the machine it ran on and its date. A params file
without such a run says how to make one. Run ``con2 run params/<file>.yaml`` for each, then this.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from con2lib.config import Config
from con2lib.paramfiles import load_params
from con2lib.paths import project_root
from con2lib.runs.run_info import TAG_MACHINE

PARAMS_FILES = ("params/quickstart.yaml", "params/fashionmnist.yaml")
START, END = "<!-- results:start (benchmarks/readme_results.py) -->", "<!-- results:end -->"
HEADER = ("| params file | AUROC S_NND / S_LH | without TTA | SSD baseline | raw-pixel 1-NN | run time | machine | date |\n"
          "|---|---|---|---|---|---|---|---|")


def latest_run(client: Any, cfg: Config, keys: set[str]) -> Any | None:
    """The latest FINISHED run whose logged params equal ``cfg``'s in ``keys`` (the params file's keys:
    the notebook fills the others with its own defaults), or None."""
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return None
    config = cfg.to_dict()
    wanted = {k: ",".join(map(str, config[k])) if isinstance(config[k], list) else str(config[k]) for k in keys}
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=500)
    return next((r for r in runs if all(r.data.params.get(k) == v for k, v in wanted.items())), None)


def row(path: str, cfg: Config, run: Any | None) -> str:
    """One markdown row: the params file and what its run measured, or how to get a run."""
    what = f"`{path}` ({cfg.dataset}, class {cfg.normal_class}, {cfg.context}, {cfg.epochs} epochs, seed {cfg.seed})"
    if run is None:
        return f"| {what} | no run yet: `con2 run {path}` | | | | | | |"
    resolved = run.data.params.get("context_resolved")  # context auto: what the check chose for this run
    if resolved:
        what = what.replace(f", {cfg.context},", f", {cfg.context} -> {resolved},")
    m = run.data.metrics

    def pair(a: str, b: str) -> str:
        return " / ".join(f"{100 * m[k]:.1f}" if k in m else "-" for k in (a, b))

    ssd, pixel = (f"{100 * m[k]:.1f}" if k in m else "-" for k in ("auroc_ssd", "auroc_pixel_knn"))
    minutes = (run.info.end_time - run.info.start_time) / 60_000
    date = _date(run.info.start_time)
    return (f"| {what} | {pair('auroc_nnd', 'auroc_lh')} | {pair('auroc_nnd_notta', 'auroc_lh_notta')} | {ssd} | {pixel} | "
            f"{minutes:.1f} min | {run.data.tags.get(TAG_MACHINE, 'not recorded')} | {date} |")


def _date(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def results_table(client: Any, params_files: tuple[str, ...] = PARAMS_FILES) -> str:
    """The markdown table, one row per params file (relative to the project root)."""
    rows = []
    for path in params_files:
        params = load_params(project_root() / path)
        cfg = Config.from_params(params)
        rows.append(row(path, cfg, latest_run(client, cfg, set(params))))
    return "\n".join([HEADER, *rows])


def replace_table(text: str, table: str) -> str:
    """``text`` with the part between :data:`START` and :data:`END` replaced by ``table``."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"no results markers in the file: add the lines {START} and {END} where the table goes")
    return pattern.sub(lambda _: f"{START}\n{table}\n{END}", text)


def main(argv: list[str] | None = None) -> int:
    """Prints the table, or writes it into ``--write``'s file between the markers."""
    from mlflow.tracking import MlflowClient

    from con2lib.runs import tracking

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="markdown file to update (e.g. README.md)")
    args = parser.parse_args(argv)
    table = results_table(MlflowClient(tracking.tracking_uri()))
    if args.write is None:
        print(table)
        return 0
    try:
        args.write.write_text(replace_table(args.write.read_text(), table))
    except ValueError as err:
        print(f"readme_results: {args.write}: {err}", file=sys.stderr)
        return 2
    print(f"readme_results: table written to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
