"""Hostile parameters and params files (issues 16 and 21): every value that used to pass validation and fail
later (or never) is refused before the run exists, in one line naming the parameter or the file."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from con2lib import cli
from con2lib.config import Config
from con2lib.data.base import OneClassData, subsample

from conftest import TINY


@pytest.mark.parametrize("params,message", [
    ({"temperature": float("inf")}, r"parameter temperature=inf is invalid: expected a finite number"),
    ({"lr": float("inf")}, r"parameter lr=inf is invalid: expected a finite number"),
    ({"jitter_strength": float("nan")}, r"parameter jitter_strength=nan is invalid: expected a finite number"),
    ({"weight_decay": float("nan")}, r"parameter weight_decay=nan is invalid: expected a finite number"),
    ({"seed": 2**32}, r"parameter seed=4294967296 is invalid: expected an integer in \[0, 4294967295\]"),
    ({"split_seed": -1}, r"parameter split_seed=-1 is invalid: expected an integer in \[0, 4294967295\]"),
    ({"image_size": 100000}, r"parameter image_size=100000 is invalid: expected an integer in \[8, 1024\]"),
    ({"max_train": 1}, r"parameter max_train=1 is invalid: expected 0 \(all images\) or an integer >= 2"),
    ({"plot_points": 0}, r"parameter plot_points=0 is invalid: expected an integer > 0"),
])
def test_values_that_used_to_pass_are_refused_by_name(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config.from_params({**TINY, **params})


def test_bounds_themselves_are_accepted() -> None:
    cfg = Config.from_params({**TINY, "seed": 2**32 - 1, "split_seed": 0, "image_size": 1024, "max_train": 2,
                              "plot_points": 1})
    assert (cfg.seed, cfg.image_size, cfg.max_train) == (2**32 - 1, 1024, 2)


@pytest.mark.parametrize("text,message", [
    ("extends: [a.yaml]\nepochs: 2\n", r"params file \S+p\.yaml: extends=\['a\.yaml'\] is invalid: expected one "
                                       r"file name"),
    ("epochs: 2\nseed: 1\nepochs: 5\n", r"params file \S+p\.yaml is not valid YAML: .*key 'epochs' is given twice "
                                        r"\(line 3\)"),
])
def test_bad_params_files_name_the_file_in_one_line(fast_store, tmp_path: Path, capsys, text: str,
                                                    message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.fullmatch(f"con2 run: {message}.*", err), err


def test_a_non_utf8_params_file_is_named(fast_store, tmp_path: Path, capsys) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("run_name: caf\u00e9\n".encode("latin-1"))
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"con2 run: params file \S+latin1\.yaml is not UTF-8 text \(invalid continuation byte at "
                        r"byte 13\); save it as UTF-8", err), err


def test_overrides_and_merge_keys_may_still_repeat_a_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"epochs": 2, "nested": {"a": 1}}))
    assert cli.load_params(path, [("epochs", "3")])["epochs"] == 3
    path.write_text("base: &base {epochs: 2, seed: 1}\nrun:\n  <<: *base\n  epochs: 5\n")
    assert cli.load_params(path)["run"] == {"epochs": 5, "seed": 1}


def test_a_tiny_max_test_warns_that_the_auroc_means_little() -> None:
    data = OneClassData(train=torch.zeros(4, 1, 8, 8, dtype=torch.uint8), test=torch.zeros(40, 1, 8, 8, dtype=torch.uint8),
                        test_labels=torch.tensor([0] * 20 + [1] * 20), test_classes=torch.tensor([0] * 20 + [1] * 20),
                        class_names=("a", "b"), normal_classes=("a",), anomalous_classes=("b",))
    with pytest.warns(UserWarning, match=r"max_test=1 leaves 1 normal and 1 anomalous test image\(s\): the AUROC of "
                                         r"so few images is not meaningful"):
        subsample(data, 0, 1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(subsample(data, 0, 20, 0).test) == 20


# --- issue 21: integer bounds, val_fraction, YAML alias bombs ---------------------------------------------------


@pytest.mark.parametrize("name,top", [("eval_batch_size", 65_536), ("proj_dim", 16_384), ("batch_size", 65_536),
                                      ("epochs", 100_000), ("tta", 1_024), ("checkpoint_every", 100_000),
                                      ("plot_points", 100_000), ("max_train", 10**9), ("max_test", 10**9)])
def test_integers_have_an_upper_bound(name: str, top: int) -> None:
    # 1e20 used to train, then fail with "Overflow when unpacking long long" (or a TypeError for proj_dim)
    with pytest.raises(ValueError, match=rf"parameter {name}=100000000000000000000 is invalid: expected an "
                                         rf"integer <= {top:_}"):
        Config.from_params({**TINY, name: 10**20})
    assert getattr(Config.from_params({**TINY, name: top}), name) == top


@pytest.mark.parametrize("fraction", [0.001, 0.04, 0.51, 0.99])
def test_val_fraction_is_bounded_by_what_it_leaves(fraction: float) -> None:
    # 0.001: 1 normal validation image (AUROC 100.00); 0.99: trains on one image and fails late
    with pytest.raises(ValueError, match=rf"parameter val_fraction={fraction} is invalid: expected a number in "
                                         r"\[0\.05, 0\.5\] \(the share of the normal training images held out"):
        Config.from_params({**TINY, "eval_split": "validation", "val_fraction": fraction})
    for fine in (0.05, 0.5):
        assert Config.from_params({**TINY, "eval_split": "validation", "val_fraction": fine}).val_fraction == fine


def _alias_bomb(levels: int) -> str:
    """A ``context`` list whose items nest ``levels`` anchors of 9 aliases each: 9**(levels + 1) values once
    expanded, from a few hundred bytes of YAML (the issue's had 9 levels: 2.2 GB in 20 s)."""
    items = ['  - &l0 ["flip", "flip", "flip", "flip", "flip", "flip", "flip", "flip", "flip"]']
    for i in range(1, levels + 1):
        items.append(f"  - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "context:\n" + "\n".join(items) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(fast_store, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(6))  # 9**7 values: joined, 40 MB of text (kept small: the test must not eat memory)
    started = time.monotonic()
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 5
    assert "\n" not in err and re.match(r"con2 run: params file \S+bomb\.yaml is not valid YAML: it expands to more "
                                        r"than 10000 values \(anchors and aliases", err), err
    # small anchors stay usable, and a nested list reaching the config is refused before it is joined or printed
    path.write_text("base: &b [flip, invert]\ncontext: *b\n")
    assert cli.load_params(path)["context"] == ["flip", "invert"]
    nested = [[["flip"] * 9] * 9] * 9
    with pytest.raises(ValueError, match=r"parameter context=\[\[\[.{,80}\.\.\. is invalid: expected a list of 1 "
                                         r"to 7 context names"):
        Config.from_params({**TINY, "context": nested})
    with pytest.raises(ValueError, match=r"parameter epochs=\[\[\[.{,80}\.\.\. has type list; expected int"):
        Config.from_params({**TINY, "epochs": nested})
