"""The validation protocol: defaults are chosen on a split carved from the training split, never the test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from con2lib.config import Config
from con2lib.data import load_dataset
from con2lib.data.base import one_class_split

from conftest import TINY


def _marked_split(validation: float, seed: int = 0):
    """10 training images per class (pixel value = 10 * class + index) and test images all 255."""
    classes = np.repeat(np.arange(3), 10)
    train = torch.from_numpy((10 * classes + np.tile(np.arange(10), 3)).astype(np.uint8)).view(-1, 1, 1, 1)
    train = train.expand(-1, 1, 2, 2).contiguous()
    test_classes = np.array([0] * 4 + [1] * 8 + [2] * 8)  # 4 normal, 16 anomalous: ratio 4
    test = torch.full((len(test_classes), 1, 2, 2), 255, dtype=torch.uint8)
    return one_class_split(train, classes, test, test_classes, [0], ("a", "b", "c"), {}, validation, seed)


def test_validation_split_uses_training_images_only() -> None:
    data = _marked_split(0.2)
    values = data.test[:, 0, 0, 0].tolist()
    assert 255 not in values  # no test image
    train_values = set(data.train[:, 0, 0, 0].tolist())
    normal_held = [v for v, y in zip(values, data.test_labels.tolist(), strict=True) if y == 0]
    assert len(normal_held) == 2 and set(normal_held).isdisjoint(train_values)
    assert train_values | set(normal_held) == set(range(10))  # every normal image: trained on or held out
    # ids name each image by its index in the loader's training split (here: its pixel value)
    assert data.train_ids == tuple(f"train[{v}]" for v in data.train[:, 0, 0, 0].tolist())
    anomalies = [v for v, y in zip(values, data.test_labels.tolist(), strict=True) if y == 1]
    assert len(anomalies) == 8 and all(v >= 10 for v in anomalies)  # the test split's ratio 4, from both classes
    assert sorted(data.test_classes[data.test_labels == 1].tolist()) == [1] * 4 + [2] * 4
    assert data.info["val_normal"] == 2 and data.info["val_anomalous"] == 8


def test_validation_split_is_seeded_and_test_split_unchanged_without_it() -> None:
    assert torch.equal(_marked_split(0.2, seed=1).test, _marked_split(0.2, seed=1).test)
    assert not torch.equal(_marked_split(0.2, seed=1).test, _marked_split(0.2, seed=2).test)
    plain = _marked_split(0.0)
    assert len(plain.train) == 10 and (plain.test == 255).all() and "val_normal" not in plain.info


def test_eval_split_reaches_the_loader_and_is_refused_where_no_validation_exists() -> None:
    cfg = Config.from_params({**TINY, "max_train": 0, "max_test": 0, "eval_split": "validation"})
    val, test = load_dataset(cfg), load_dataset(cfg.replace(eval_split="test"))
    assert len(val.train) < len(test.train) and val.info["val_fraction"] == 0.2
    with pytest.raises(ValueError, match=r"parameter eval_split='validation' is invalid.*'test' for data set 'folder'"):
        Config.from_params({**TINY, "dataset": "folder", "eval_split": "validation"})
    with pytest.raises(ValueError, match=r"parameter eval_split='train' is invalid"):
        Config.from_params({**TINY, "eval_split": "train"})
    with pytest.raises(ValueError, match=r"parameter val_fraction=1.0 is invalid"):
        Config.from_params({**TINY, "val_fraction": 1.0})


def test_val_fraction_names_itself_when_a_tiny_class_leaves_too_few_images() -> None:
    # within the config bounds, a class of 3 normal images still leaves 1 to train on: said now, not late
    classes = np.repeat(np.arange(2), 3)
    images = torch.zeros(len(classes), 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"parameter val_fraction=0\.5 leaves 1 of the 3 normal training image\(s\) "
                                         r"to train on; at least 2 are needed"):
        one_class_split(images, classes, images, classes, [0], ("a", "b"), {}, 0.5)
    with pytest.warns(UserWarning, match=r"val_fraction=0\.2 holds out 2 of the 10 normal training image\(s\) for "
                                         r"validation: the AUROC of so few images is not meaningful"):
        _marked_split(0.2)
