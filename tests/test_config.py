"""Parameter validation: every bad value named with what is allowed, before any heavy work."""

import pytest

from con2lib.config import Config
from con2lib.paramfiles import load_params


@pytest.mark.parametrize("params,message", [
    ({"epoch": 3}, r"unknown parameter\(s\) 'epoch'; allowed: .*epochs"),
    ({"dataset": "imagenet1k"}, r"dataset='imagenet1k' is invalid: expected one of .*digits"),
    ({"context": "rotate"}, r"context='rotate' is invalid: expected one of invert, flip, equalize"),
    ({"loss": "byol"}, r"loss='byol' is invalid"),
    ({"device": "tpu"}, r"device='tpu' is invalid"),
    ({"epochs": 0}, r"epochs=0 is invalid: expected an integer > 0"),
    ({"epochs": "10"}, r"epochs='10' has type str; expected int"),
    ({"epochs": 2.5}, r"epochs=2.5 has type float; expected int"),
    ({"batch_size": 1}, r"batch_size=1 is invalid: expected an integer >= 2"),
    ({"tta": 3}, r"tta=3 is invalid: expected a positive multiple of the 2 contexts"),
    ({"tta": -2}, r"tta=-2 is invalid: expected a positive multiple"),
    ({"temperature": 0}, r"temperature=0.0 is invalid: expected a number > 0"),
    ({"temperature": True}, r"temperature=True has type bool"),
    ({"image_size": 4}, r"image_size=4 is invalid"),
    ({"lh_shrinkage": 2}, r"lh_shrinkage=2.0 is invalid"),
    ({"width": 0}, r"width=0.0 is invalid"),
])
def test_bad_parameters_name_parameter_value_and_allowed(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config.from_params(params)


def test_ints_accepted_for_floats_lists_for_tuples_and_roundtrip() -> None:
    cfg = Config.from_params({"temperature": 1, "folder_normal": ["a", "b"], "normal_class": "3"})
    assert cfg.temperature == 1.0 and isinstance(cfg.temperature, float)
    assert cfg.folder_normal == ("a", "b") and cfg.normal_class == "3"
    assert Config.from_params(cfg.to_dict()) == cfg
    assert cfg.replace(epochs=7).epochs == 7


def test_from_namespace_ignores_other_globals() -> None:
    cfg = Config.from_namespace({"epochs": 4, "np": object(), "__name__": "x"})
    assert cfg.epochs == 4


def test_from_namespace_refuses_an_extends_it_cannot_follow() -> None:
    # papermill -f params/quickstart.yaml injects extends as a plain variable: the CPU preset would be lost
    with pytest.raises(ValueError, match=r"extends='presets/cpu.yaml'.*con2 run"):
        Config.from_namespace({"extends": "presets/cpu.yaml", "epochs": 3})


def test_params_files_extends_and_overrides(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("epochs: 5\nwidth: 0.5\n")
    (tmp_path / "run.yaml").write_text("extends: base.yaml\nepochs: 7\n")
    params = load_params(tmp_path / "run.yaml", [("seed", "3"), ("context", "flip")])
    assert params == {"epochs": 7, "width": 0.5, "seed": 3, "context": "flip"}
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_params(tmp_path / "loop.yaml")


def test_every_shipped_params_file_is_valid() -> None:
    from con2lib.paths import project_root

    files = sorted((project_root() / "params").rglob("*.yaml"))
    assert files
    for path in files:
        if "sweeps" in path.parts:
            continue
        Config.from_params(load_params(path))


def test_every_point_of_every_shipped_sweep_is_a_valid_config() -> None:
    from con2lib.paths import project_root
    from con2lib.sweeps.grid import load_sweep

    grids = sorted((project_root() / "params" / "sweeps").glob("*.yaml"))
    assert any(p.stem == "figure9" for p in grids)
    for path in grids:
        for point in load_sweep(path).points:
            Config.from_params(point.params)


def test_the_config_knows_every_data_set_the_registry_loads() -> None:
    from con2lib.config import DATASET_NAMES
    from con2lib.data import DATASETS

    assert tuple(DATASETS) == DATASET_NAMES
