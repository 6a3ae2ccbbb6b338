"""One frozen, typed configuration for a CON2 run, built from flat parameters.

Notebooks and params files speak in flat literals (``epochs: 30``); :func:`Config.from_params`
turns them into a validated :class:`Config` before any data is read or any model is built, so a
typo in a params file fails in the first second with a message that names the parameter, the bad
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from con2lib.checks import check_choice, check_not_system, check_positive, coerce, fail

# auto: chosen by the context check (con2lib.analysis.contexts)
CONTEXTS = ("invert", "flip", "equalize", "rot90", "rot180", "rot270", "hflip", "permute", "auto")
MAX_CONTEXTS = 8  # the original plus up to 7 context copies (appendix E.2: combinations of flip, invert, equalize)
LOSSES = ("con2", "context_only", "content_only", "simclr")
# Values of the dataset parameter; con2lib.data.DATASETS maps each to its loader (kept here so the
# config, below the data layer, validates without importing the loaders)
DATASET_NAMES = ("digits", "mnist", "fashionmnist", "cifar10", "breastmnist", "octmnist", "pneumoniamnist", "kvasir",
                 "br35h", "pneumonia", "melanoma", "cifar100", "imagenet30", "dogsvscats", "muffinvschihuahua",
                 "folder")
STEMS = ("auto", "cifar", "stride2", "imagenet")
DEVICES = ("auto", "cpu", "cuda", "mps")
EVAL_SPLITS = ("test", "validation")  # validation: carved from the training split (choose on it, report test)
# data sets whose loaders keep labelled training images of every class, so a validation split exists
VALIDATION_DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", "cifar100")
MAX_SEED = 2**32 - 1  # NumPy's seeds (and torch's generators as used here) take 32-bit unsigned integers
MAX_IMAGE_SIZE = 1024  # 4x the paper's largest input (224); beyond it a batch alone outgrows any GPU
MIN_TRAIN = 2  # fewest normal training images that give S_LH statistics (a mean and a covariance)
# Upper bounds of integer parameters: far above any sensible run, far below the 64-bit overflows (torch sizes,
# MLflow steps) that a value like 1e20 hits only after training
MAX_INTS = {"epochs": 100_000, "checkpoint_every": 100_000, "batch_size": 65_536, "eval_batch_size": 65_536,
            "proj_dim": 16_384, "tta": 1_024, "plot_points": 100_000, "max_train": 10**9, "max_test": 10**9,
            "min_steps": 10**7}  # min_steps: 500x the paper's one-class CIFAR-10 budget (2048 epochs of ~10 steps)
# val_fraction: below, a handful of validation normals (digits: 4); above, fewer images train than validate
VAL_FRACTION = (0.05, 0.5)


@dataclass(frozen=True)
class Config:
    """Every parameter of a training and evaluation run (names are the notebook's parameters)."""

    # data
    dataset: str = "digits"
    data_root: str = "../shared/data"
    normal_class: int | str = 0
    image_size: int = 32
    max_train: int = 0  # cap on normal training images, 0 = all (tiny test runs)
    max_test: int = 0  # cap on test images, 0 = all (stratified, seeded)
    strict: bool = False  # corrupt image files: error instead of skip-with-warning
    cache_dir: str = ""  # decoded-image cache, "" = <project>/.cache/con2
    split_seed: int = 0  # seeded train/test splits and subsets: fixed while the training seed varies
    eval_split: str = "test"  # "validation": score held-out training images instead (choosing defaults)
    val_fraction: float = 0.2  # eval_split validation: share of the normal training images held out
    folder_train: str = ""  # dataset "folder": folder of normal training images
    folder_test: str = ""  # dataset "folder": test folder with one sub-folder per class
    folder_normal: tuple[str, ...] = ()  # dataset "folder": normal test sub-folders
    folder_anomalous: tuple[str, ...] = ()  # dataset "folder": anomalous test sub-folders

    # method
    context: str = "invert"
    loss: str = "con2"
    temperature: float = 0.5
    alpha_start: float = 0.0
    alpha_end: float = 1.0

    # model
    width: float = 1.0
    stem: str = "auto"
    proj_dim: int = 128

    # content augmentation (SimCLR set)
    crop_scale_min: float = 0.08
    hflip_p: float = 0.5
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0  # Gaussian blur probability (SimCLR's ImageNet recipe: 0.5; params/paper_imagenet.yaml)

    # optimisation
    epochs: int = 30
    min_steps: int = 0  # at least this many optimiser steps: epochs are raised on small sets (0 = none)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    compile: bool = False  # torch.compile the model for training (CUDA: faster after a warm-up)

    # scoring
    tta: int = 2  # views per image, a multiple of the number of contexts; 0 = one un-augmented view per context
    tta_identity: bool = True  # first view of each context half is the un-augmented image
    lh_shrinkage: float = 0.1
    eval_batch_size: int = 256
    calibration_fraction: float = 0.1  # normal training images held out to calibrate the threshold, 0 = none
    target_fpr: float = 0.05  # false-positive rate on held-out normal images that sets the threshold

    # run
    seed: int = 0
    device: str = "auto"
    experiment: str = "con2"
    run_name: str = ""
    run_id: str = ""  # set by `con2 run`: continue this MLflow run instead of starting one
    plot_points: int = 300  # test samples drawn in the representation-space figure
    checkpoint_every: int = 10  # epochs between checkpoints (the last epoch is always saved)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # nan and inf pass every comparison below, or fail far too late
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                fail(field.name, value, "a finite number")
        check_choice("dataset", self.dataset, DATASET_NAMES)
        check_choice("eval_split", self.eval_split, EVAL_SPLITS)
        if self.eval_split == "validation" and self.dataset not in VALIDATION_DATASETS:
            fail("eval_split", self.eval_split, f"'test' for data set {self.dataset!r}: a validation split needs "
                  f"labelled training images of the anomalous classes ({', '.join(VALIDATION_DATASETS)})")
        low, high = VAL_FRACTION
        if not low <= self.val_fraction <= high:
            fail("val_fraction", self.val_fraction, f"a number in [{low}, {high}] (the share of the normal training "
                  f"images held out for validation: below {low} too few validation normals for an AUROC, above "
                  f"{high} fewer images train than validate)")
        for name, top in MAX_INTS.items():  # before the range checks below: they print the value
            if getattr(self, name) > top:
                fail(name, getattr(self, name), f"an integer <= {top:_}")
        for name in ("data_root", "folder_train", "folder_test"):
            check_not_system(name, getattr(self, name))
        _check_context(self.context)
        check_choice("loss", self.loss, LOSSES)
        check_choice("stem", self.stem, STEMS)
        check_choice("device", self.device, DEVICES)
        check_positive("epochs", self.epochs)
        if self.min_steps < 0:
            fail("min_steps", self.min_steps, "an integer >= 0 (0: train exactly `epochs`)")
        check_positive("proj_dim", self.proj_dim)
        check_positive("eval_batch_size", self.eval_batch_size)
        check_positive("checkpoint_every", self.checkpoint_every)
        if self.batch_size < 2:
            fail("batch_size", self.batch_size, "an integer >= 2 (contrastive losses need negatives)")
        if self.tta < 0 or self.tta % self.scored_contexts:
            fail("tta", self.tta, f"a positive multiple of the {self.scored_contexts} contexts (x and each "
                  "context copy get the same number of views; SimCLR scores x only), or 0 for one un-augmented "
                  "view per scored context")
        if not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            fail("image_size", self.image_size, f"an integer in [8, {MAX_IMAGE_SIZE}] (random resized crops need "
                  "pixels; larger images would not fit in memory)")
        if not self.temperature > 0:
            fail("temperature", self.temperature, "a number > 0")
        if not self.lr > 0:
            fail("lr", self.lr, "a number > 0")
        if self.weight_decay < 0:
            fail("weight_decay", self.weight_decay, "a number >= 0")
        if not 0 < self.width <= 4:
            fail("width", self.width, "a number in (0, 4] (channel multiplier of ResNet18)")
        if not 0 < self.crop_scale_min <= 1:
            fail("crop_scale_min", self.crop_scale_min, "a number in (0, 1]")
        if self.jitter_strength < 0:
            fail("jitter_strength", self.jitter_strength, "a number >= 0")
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "alpha_start", "alpha_end"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                fail(name, value, "a number in [0, 1]")
        if not 0 <= self.lh_shrinkage <= 1:
            fail("lh_shrinkage", self.lh_shrinkage, "a number in [0, 1] (weight of the scaled identity)")
        if not 0 <= self.calibration_fraction < 0.5:
            fail("calibration_fraction", self.calibration_fraction, "a number in [0, 0.5) (0 disables calibration)")
        if not 0 < self.target_fpr < 1:
            fail("target_fpr", self.target_fpr, "a number in (0, 1)")
        for name in ("max_train", "max_test"):
            if getattr(self, name) < 0:
                fail(name, getattr(self, name), "an integer >= 0")
        if 0 < self.max_train < MIN_TRAIN:
            fail("max_train", self.max_train, f"0 (all images) or an integer >= {MIN_TRAIN} (S_LH needs a mean and "
                  "a covariance of the training features)")
        check_positive("plot_points", self.plot_points)
        for name in ("seed", "split_seed"):
            if not 0 <= getattr(self, name) <= MAX_SEED:
                fail(name, getattr(self, name), f"an integer in [0, {MAX_SEED}] (2^32 - 1)")
        if not self.experiment.strip():
            fail("experiment", self.experiment, "a non-empty experiment name")

    @property
    def contexts(self) -> tuple[str, ...]:
        """The context augmentations: one name for CON2, several for appendix E.2's ablation; a name
        may compose transforms with ``+`` (``flip+invert``). ``("auto",)`` until resolved."""
        return tuple(c.strip() for c in self.context.split(","))

    @property
    def n_contexts(self) -> int:
        """Number of contexts, the original images included (2 for CON2)."""
        return len(self.contexts) + 1

    @property
    def scored_contexts(self) -> int:
        """Contexts the test-time views score: all ``n_contexts`` for CON2 and its ablations, 1 (x only)
        for the SimCLR baseline, which never trains on context copies (paper Table 1: kNN on SimCLR features)."""
        return 1 if self.loss == "simclr" else self.n_contexts

    @property
    def views_per_context(self) -> int:
        """Test-time views of x and of each scored context copy: view ``k * views_per_context`` is context k's first."""
        return self.n_views // self.scored_contexts

    @property
    def context_view(self) -> int | None:
        """Index of the first view of the (first) context copy; None when only x is scored (SimCLR)."""
        return self.views_per_context if self.scored_contexts > 1 else None

    @property
    def n_views(self) -> int:
        """A, the test-time views of eq. 16: ``tta``, or one per scored context for ``tta: 0``."""
        return self.tta or self.scored_contexts

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Config:
        """Builds a validated config from flat parameters (a params file or notebook globals).

        Raises:
            ValueError: on an unknown key, a wrong type or an out-of-range value; the message names
                the parameter, the bad value and what is allowed.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        if isinstance(params.get("context"), (list, tuple)):  # YAML list of contexts (appendix E.2)
            contexts = params["context"]
            # checked before joining: str() of nested lists (a YAML alias bomb) grows without bound
            if len(contexts) > MAX_CONTEXTS - 1 or not all(isinstance(c, str) and len(c) <= 100 for c in contexts):
                fail("context", contexts, f"a list of 1 to {MAX_CONTEXTS - 1} context names")
            params = {**params, "context": ",".join(contexts)}
        values = {name: coerce(name, value, hints[name]) for name, value in params.items()}
        return cls(**values)

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> Config:
        """Builds a config from the config-named entries of a namespace (a notebook's ``globals()``).

        Raises:
            ValueError: also when the namespace holds ``extends``: ``papermill -f params/x.yaml`` passes a
                params file's keys as they are and cannot follow its ``extends:`` chain, so the values of the
                files it extends would be dropped without a word.
        """
        if "extends" in namespace:
            raise ValueError(f"parameter extends={namespace['extends']!r}: the notebook cannot follow a params "
                             "file's extends: chain (papermill -f passes the file's keys as they are, and the "
                             "values it extends would be lost); run the file with `con2 run`")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_params({k: v for k, v in namespace.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Plain-literal dict (tuples as lists): safe for YAML, JSON, MLflow and ``weights_only`` loads."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def with_context(self, context: str) -> Config:
        """This config training ``context`` (``auto`` resolved), its ``tta`` rounded up to a multiple of the
        new number of scored contexts: 8 views stay 8 for two or four contexts, 2 become 4 for three copies."""
        k = self.replace(context=context, tta=0).scored_contexts  # tta 0 is valid for any number of contexts
        return self.replace(context=context, tta=-(-self.tta // k) * k)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some parameters changed."""
        return type(self).from_params({**self.to_dict(), **changes})


def _check_context(context: str) -> None:
    """One context (a name of CONTEXTS, or transforms joined by ``+``) or a comma list of distinct ones."""
    if not isinstance(context, str):
        return  # the type check in _coerce names it
    names = [c.strip() for c in context.split(",")]
    allowed = f"one of {', '.join(CONTEXTS)}, transforms joined by '+' (flip+invert), or a list of 1 to " \
              f"{MAX_CONTEXTS - 1} distinct such contexts (appendix E.2)"
    if "auto" in names and len(names) > 1 or len(set(names)) != len(names) or len(names) > MAX_CONTEXTS - 1:
        fail("context", context, allowed)
    for name in names:
        parts = name.split("+")
        if name != "auto" and (not all(p in CONTEXTS and p != "auto" for p in parts) or len(set(parts)) != len(parts)):
            fail("context", context, allowed)
