"""Which runs may be pooled into one mean: those that differ in the seed alone.

A table cell "95.1 ± 3.7 (3)" must be three seeds of one configuration, never a 40-epoch run
averaged with two 3-epoch ones. :func:`config_of` is a run's configuration without its seed and
names; :func:`separate_configs` splits any group that mixes configurations and names what differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

# What runs pooled into one mean may differ in: the seed, and names. Params named data.* are facts the
# notebook logged about the data (sizes, class names), not settings.
POOLED_OVER = ("seed", "experiment", "run_name", "run_id")


def config_of(params: dict[str, str]) -> str:
    """A run's settings but the seed and names, as sorted JSON: equal for runs that may be pooled."""
    return json.dumps({k: v for k, v in sorted(params.items())
                       if k not in POOLED_OVER and not k.startswith("data.")})


def separate_configs(runs: pd.DataFrame, by: Sequence[str], pool_over: Sequence[str] = ()) -> pd.DataFrame:
    """Keeps runs of unlike configs apart: where a group of ``by`` holds runs that differ in more than
    the seed (and ``pool_over``), the settings they differ in are appended to the first ``by`` value of
    every run, e.g. ``fashionmnist [epochs=3]`` and ``fashionmnist [epochs=40]``.

    A mean over a group is then over seeds of one config (a frame without ``config``, not from
    :func:`load_runs`, is returned as it is).
    """
    by = [c for c in by if c in runs.columns]  # not "score": a run's metrics are one config's
    if "config" not in runs.columns or runs.empty or not by:
        return runs
    configs = runs["config"].map(json.loads)
    differ: set[str] = set()
    for _, index in runs.groupby(by, dropna=False, sort=False).groups.items():
        group = configs[index]
        names = {k for c in group for k in c} - set(pool_over)
        differ |= {k for k in names if len({c.get(k) for c in group}) > 1}
    if not differ:
        return runs
    out = runs.copy()
    label = configs.map(lambda c: ", ".join(f"{k}={c.get(k, '')}" for k in sorted(differ)))
    out[by[0]] = out[by[0]].astype(str) + " [" + label + "]"
    return out
