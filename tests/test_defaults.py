"""One source of defaults: :class:`con2lib.config.Config`.

A run's config is built in two places: ``con2 run`` validates ``Config.from_params(params)`` (the resume
key, the run name), and the training notebook builds ``Config.from_namespace(globals())`` from its
parameters cell overwritten by the same params. The two agree for every params file only when each value
of the cell is the Config default, so the notebooks, the presets and the docs are checked against Config
here, and the resolved configs of the key params files are pinned.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from con2lib.config import Config
from con2lib.paramfiles import load_params
from con2lib.sweeps.grid import load_sweep

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PRESETS = sorted((ROOT / "params" / "presets").glob("*.yaml"))
FIELDS = {f.name for f in dataclasses.fields(Config)}
DEFAULTS = Config().to_dict()
# Parameters of a notebook that share a Config field's name but are the notebook's own: the line must say so
# in its comment ("not Config.<name>"); each is a different quantity from the training run's
NOT_CONFIG = {
    ("contexts.ipynb", "experiment"),  # the context check's own MLflow experiment
    ("efficiency.ipynb", "batch_size"),  # test features per scored batch, not training images per step
}

# Config's defaults: changing one changes every run whose params leave the field out (and the docs quote them)
PINNED_DEFAULTS: dict[str, Any] = {
    "dataset": "digits", "data_root": "../shared/data", "normal_class": 0, "image_size": 32, "max_train": 0,
    "max_test": 0, "strict": False, "cache_dir": "", "split_seed": 0, "eval_split": "test", "val_fraction": 0.2,
    "folder_train": "", "folder_test": "", "folder_normal": [], "folder_anomalous": [], "context": "invert",
    "loss": "con2", "temperature": 0.5, "alpha_start": 0.0, "alpha_end": 1.0, "width": 1.0, "stem": "auto",
    "proj_dim": 128, "crop_scale_min": 0.08, "hflip_p": 0.5, "jitter_strength": 0.5, "jitter_p": 0.8,
    "grayscale_p": 0.2, "blur_p": 0.0, "epochs": 30, "min_steps": 0, "batch_size": 64, "lr": 0.001,
    "weight_decay": 0.001, "compile": False, "tta": 2, "tta_identity": True, "lh_shrinkage": 0.1,
    "eval_batch_size": 256, "calibration_fraction": 0.1, "target_fpr": 0.05, "seed": 0, "device": "auto",
    "experiment": "con2", "run_name": "", "run_id": "", "plot_points": 300, "checkpoint_every": 10,
}
_CPU = {"image_size": 28, "context": "auto", "width": 0.25, "stem": "stride2", "crop_scale_min": 0.5, "hflip_p": 0.0,
        "jitter_strength": 0.0, "epochs": 20, "batch_size": 128, "tta": 8, "device": "cpu"}
# What each key file resolves to beyond PINNED_DEFAULTS, taken at commit a996cb8 (before the presets lost
# their entries equal to the defaults): the same runs, the same AUROCs for the same seed
PINNED_FILES: dict[str, dict[str, Any]] = {
    "presets/cpu.yaml": _CPU,
    "presets/gpu.yaml": {"stem": "cifar", "epochs": 200, "batch_size": 512, "tta": 8, "device": "cuda"},
    "quickstart.yaml": {**_CPU, "normal_class": 8, "image_size": 16, "epochs": 40, "batch_size": 32,
                        "experiment": "quickstart"},
    "fashionmnist.yaml": {**_CPU, "dataset": "fashionmnist", "epochs": 25, "experiment": "fashionmnist"},
    "folder_cpu.yaml": {**_CPU, "dataset": "folder", "folder_train": "data/mine/train",
                        "folder_test": "data/mine/test", "folder_normal": ["good"], "folder_anomalous": ["defect"],
                        "experiment": "folder"},
    "paper.yaml": {"epochs": 2048, "tta": 40, "tta_identity": False, "lh_shrinkage": 0.0,
                   "calibration_fraction": 0.0},
}


def parameters_cell(notebook: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The literal values and the source lines of the assignments in a notebook's ``parameters`` cell.

    Values are read with :func:`ast.literal_eval`: nothing of the notebook is executed.

    Raises:
        AssertionError: no cell is tagged ``parameters``, or it assigns something other than a literal.
    """
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook.name}: expected one cell tagged 'parameters', found {len(cells)}"
    source = cells[0].source
    lines = source.splitlines()
    values, text = {}, {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"{notebook.name}, line {node.lineno}: a parameters cell holds plain `name = literal` lines only")
        name = node.targets[0].id
        values[name] = ast.literal_eval(node.value)  # a non-literal raises ValueError naming the node
        text[name] = lines[node.lineno - 1]
    return values, text


def every_params() -> dict[str, dict[str, Any]]:
    """Every params file under params/ and every point of every grid, as the params ``con2 run`` passes on."""
    found = {}
    for path in sorted((ROOT / "params").rglob("*.yaml")):
        name = str(path.relative_to(ROOT / "params"))
        if path.parent.name == "sweeps":
            found.update({f"{name} ({p.label})": p.params for p in load_sweep(path).points})
        else:
            found[name] = load_params(path)
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_parameters_named_like_config_fields_hold_the_config_defaults(notebook: Path) -> None:
    values, text = parameters_cell(notebook)
    for name in sorted(FIELDS & set(values)):
        if (notebook.name, name) in NOT_CONFIG:
            assert f"not Config.{name}" in text[name], f"{notebook.name}: say in the comment of {text[name]!r} " \
                f"that it is not Config.{name}"
            continue
        default = getattr(Config(), name)
        assert values[name] == default and isinstance(values[name], bool) == isinstance(default, bool), (
            f"{notebook.name}: parameter {name} = {values[name]!r}, but the Config default is {default!r}; the "
            "defaults live in con2lib/config.py (a params file that needs another value sets it, with its reason)")


def test_the_training_notebook_builds_its_config_from_the_cell_and_config_defaults() -> None:
    """Fields the cell leaves out come from Config (``from_namespace``), so the cell need not list every field;
    a name that is no field would be dropped silently (a misspelt ``widht``)."""
    notebook = ROOT / "notebooks" / "train.ipynb"
    values, _ = parameters_cell(notebook)
    assert set(values) <= FIELDS, f"not Config fields: {sorted(set(values) - FIELDS)}"
    calls = [node for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code"
             for node in ast.walk(ast.parse(_python_only(cell.source))) if isinstance(node, ast.Call)]
    assert any(isinstance(c.func, ast.Attribute) and c.func.attr == "from_namespace"
               and isinstance(c.func.value, ast.Name) and c.func.value.id == "Config"
               and [ast.unparse(a) for a in c.args] == ["globals()"] for c in calls)


def _python_only(source: str) -> str:
    """A cell's source without IPython magics and shell lines, which ``ast`` cannot parse."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def test_every_params_file_trains_the_config_that_con2_run_validated() -> None:
    """The notebook's config (its cell, then the params) is the runner's (Config, then the params) for every
    params file and grid point: a params file that leaves a field out gets the Config default either way."""
    cell, _ = parameters_cell(ROOT / "notebooks" / "train.ipynb")
    for name, params in every_params().items():
        notebook = Config.from_namespace({**cell, **params, "run_id": ""}).to_dict()
        runner = Config.from_params({**params, "run_id": ""}).to_dict()
        differ = {k: (runner[k], notebook[k]) for k in runner if runner[k] != notebook[k]}
        assert not differ, f"{name}: con2 run validates, the notebook trains (field: (runner, notebook)): {differ}"


def test_config_defaults_are_pinned() -> None:
    assert DEFAULTS == PINNED_DEFAULTS, "a Config default changed: update PINNED_DEFAULTS, the README table, " \
        "and every params file that must keep the old value"


@pytest.mark.parametrize("name", PINNED_FILES)
def test_key_params_files_resolve_to_their_pinned_config(name: str) -> None:
    resolved = Config.from_params(load_params(ROOT / "params" / name)).to_dict()
    assert resolved == {**PINNED_DEFAULTS, **PINNED_FILES[name]}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_set_only_values_that_differ_from_the_defaults_each_with_its_reason(preset: Path) -> None:
    raw = yaml.safe_load(preset.read_text())
    assert "extends" not in raw, "a preset extends nothing: it is the first step above the Config defaults"
    cfg = Config.from_params(raw)
    redundant = sorted(k for k in raw if getattr(cfg, k) == getattr(Config(), k))
    assert not redundant, f"{preset.name} repeats Config defaults {redundant}: remove them (con2lib/config.py " \
        "is their one source)"
    lines = preset.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+:", line):  # a top-level key: its reason is its comment or the comment right above
            assert "#" in line or (i > 0 and lines[i - 1].startswith("#")), f"{preset.name}: {line!r} says no reason"


def test_readme_parameter_table_quotes_the_config_defaults() -> None:
    section = (ROOT / "README.md").read_text().split("### Parameters", 1)[1].split("\n#", 1)[0]
    rows = [row.split("|")[1:3] for row in section.splitlines() if row.startswith("| `")]
    assert len(rows) >= 10, "the README's parameter table was not found"
    for names_cell, defaults_cell in rows:
        names = re.findall(r"`(\w+)`", names_cell)
        quoted = [yaml.safe_load(v.strip().strip("`")) for v in defaults_cell.split(",")]
        quoted = quoted * len(names) if len(quoted) == 1 else quoted  # one value for all: `max_train`, `max_test` | 0
        assert len(quoted) == len(names), f"README row {names}: {len(names)} names, {len(quoted)} defaults"
        for name, value in zip(names, quoted, strict=True):
            assert value == getattr(Config(), name), f"README says {name} defaults to {value!r}; " \
                f"Config says {getattr(Config(), name)!r}"
