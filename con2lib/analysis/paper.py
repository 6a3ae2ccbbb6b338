"""The paper's protocol, item by item, and the generated parts of docs/paper.md.

:data:`PROTOCOL` transcribes what the paper states (appendices C and D, eqs. 8-16) as values of
:class:`con2lib.config.Config` fields; :data:`DATASET_SIZES` holds appendix D's image and batch
sizes. ``tests/test_paper.py`` checks every paper params file (``params/<dataset>/<context>.yaml``)
and every point of the paper grids against them, and that docs/paper.md's generated parts (the
table of the params files and :data:`READINGS`, what the code reads where the paper is silent) are
current::

    python -m con2lib.analysis.paper            # rewrites the generated parts of docs/paper.md
    python -m con2lib.analysis.paper --check    # exit 1 when they are out of date
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from con2lib.config import Config
from con2lib.paths import project_root

BEGIN, END = "<!-- paper-table:begin (python -m con2lib.analysis.paper) -->", "<!-- paper-table:end -->"
READINGS_BEGIN = "<!-- paper-readings:begin (python -m con2lib.analysis.paper) -->"
READINGS_END = "<!-- paper-readings:end -->"
LARGE = 64  # above this image side the sets are ImageNet-like (128/224 px): SimCLR's ImageNet recipe


@dataclass(frozen=True)
class Item:
    """One statement of the paper and the config value that implements it.

    Attributes:
        what: the paper's item, in words.
        where: its equation or appendix.
        param: the :class:`Config` field.
        expected: the value, or a function of the config for size-dependent items.
    """

    what: str
    where: str
    param: str
    expected: Any

    def value_for(self, cfg: Config) -> Any:
        """The paper's value of ``param`` for this config (its data set's image size)."""
        return self.expected(cfg) if callable(self.expected) else self.expected


def _imagenet_recipe(small: float, large: float) -> Callable[[Config], float]:
    """SimCLR's CIFAR value at 32 px, its ImageNet value for the 128/224 px sets."""
    return lambda cfg: large if cfg.image_size > LARGE else small


PROTOCOL: tuple[Item, ...] = (
    Item("objective L_CON2 = L_context + alpha L_content", "eq. 8", "loss", "con2"),
    Item("alpha annealed linearly from 0 ...", "App. C", "alpha_start", 0.0),
    Item("... to 1 over training", "App. C", "alpha_end", 1.0),
    Item("encoder: ResNet18 (full width)", "App. C", "width", 1.0),
    Item("projection heads: SimCLR's MLP (128-d output)", "App. C", "proj_dim", 128),
    Item("AdamW, learning rate 1e-3 (cosine schedule)", "App. C", "lr", 1e-3),
    Item("AdamW weight decay 1e-3 (betas 0.9, 0.999)", "App. C", "weight_decay", 1e-3),
    Item("2048 epochs", "App. C", "epochs", 2048),
    Item("T: SimCLR's random resized crop (scale 0.08-1)", "eq. 3, App. C", "crop_scale_min", 0.08),
    # SimCLR's T (Chen et al. 2020, appendix A) flips horizontally with probability 0.5; the paper files
    # take it from Config's default, so pinning it here makes a change of that default fail the tests
    Item("T: random horizontal flip with probability 0.5 (SimCLR)", "eq. 3, App. C", "hflip_p", 0.5),
    Item("T: colour jitter with probability 0.8", "eq. 3, App. C", "jitter_p", 0.8),
    Item("T: colour strength (CIFAR 0.5; ImageNet 1.0 at 128/224 px)", "eq. 3, App. C",
         "jitter_strength", _imagenet_recipe(0.5, 1.0)),
    Item("T: grayscale with probability 0.2", "eq. 3, App. C", "grayscale_p", 0.2),
    Item("T: Gaussian blur, probability 0.5 at 128/224 px (ImageNet recipe)", "eq. 3, App. C",
         "blur_p", _imagenet_recipe(0.0, 0.5)),
    Item("S_LH: the plain empirical covariance", "eq. 14", "lh_shrinkage", 0.0),
    Item("A = 40 test-time augmentations, half on x, half on x^c", "eq. 16, App. C", "tta", 40),
    Item("every test-time view is a draw from T", "eq. 16", "tta_identity", False),
    Item("trained on all normal training images (no hold-out)", "App. C (setting)", "calibration_fraction", 0.0),
)

# appendix D: (image side, batch size) of each data set of the paper
DATASET_SIZES: dict[str, tuple[int, int]] = {
    "breastmnist": (224, 64), "octmnist": (224, 128), "kvasir": (224, 128), "br35h": (224, 128),
    "pneumonia": (224, 128), "melanoma": (128, 128), "cifar10": (32, 512), "cifar100": (32, 512),
    "imagenet30": (224, 128), "dogsvscats": (128, 256), "muffinvschihuahua": (128, 256),
}
SIZE_ITEMS = (Item("image side (px)", "App. D", "image_size", None), Item("batch size", "App. D", "batch_size", None))
# paper grids (params/sweeps/) and the protocol parameters each deliberately sets otherwise (docs/paper.md)
PAPER_GRIDS: dict[str, frozenset[str]] = {
    "table1": frozenset(), "table1_simclr": frozenset(), "table2": frozenset(), "figure4": frozenset(),
    "cifar10": frozenset(), "cifar100": frozenset(), "imagenet30": frozenset(), "figure9": frozenset({"tta"}),
}




@dataclass(frozen=True)
class Reading:
    """How the code reads a point the paper leaves open (docs/paper.md, "Readings where the paper is silent").

    Attributes:
        title: the point, in a few words.
        where: the equation or appendix that leaves it open.
        text: what the paper says, what the code does and where.
    """

    title: str
    where: str
    text: str


READINGS: tuple[Reading, ...] = (
    Reading("The S_NND bank of a context view is the training images under that context", "eqs. 12 and 16",
            "Eq. 12 compares g(t(x)) with g(t(x')) for x' in X_train, and eq. 16 scores the context copy x^c "
            "with the views t_{A/2+1}, ..., t_A without saying which bank those views use. The code compares "
            "t_i(x^c) with the training images under the same context and the same augmentation, "
            "t_i(t_c(X_train)): `con2lib.method.evaluate.extract_features` applies each view's context to the "
            "training and the test images alike, and the S_LH Gaussian of that view (eqs. 13-15) is fitted on "
            "the same features. Each view is scored against its own bank, and eq. 16 averages the A per-view "
            "scores."),
    Reading("ImageNet30's random 224 crop is a centre crop plus the random resized crop of T", "App. D",
            "The paper resizes the shorter edge to 256 and crops a random 224 x 224 patch each time a training "
            "image is loaded. The loader (`con2lib.data.natural.load_imagenet30`) stores, for training and "
            "test images alike, the shorter edge resized to round(image_size * 256/224) (256 at 224 px) and "
            "its centre crop of image_size; no random 224 crop is taken. The randomness of the crop comes from "
            "T's random resized crop alone (`con2lib/method/augment/content.py`: area 0.08-1 of the stored centre "
            "crop, aspect ratio 3/4-4/3, resampled to image_size), drawn anew for every training view at every "
            "step (and once per test-time view), so the margin outside the centre crop (at 224 px: 16 px at "
            "each end of the shorter side, more along the longer one) is never seen. Muffin vs. Chihuahua "
            "(\"random 128 x 128 crops\" in App. D) is read the same way: the shorter edge resized to 128, its "
            "centre crop, and T's random resized crop."),
)


def paper_files(root: Path | None = None) -> list[Path]:
    """The per-data-set params files ``params/<dataset>/<context>.yaml``."""
    params = (root or project_root()) / "params"
    return sorted(p for p in params.glob("*/*.yaml") if p.parent.name not in ("sweeps", "presets"))


def load_config(path: Path) -> Config:
    """A params file resolved (``extends:`` followed) and validated."""
    from con2lib.paramfiles import load_params

    return Config.from_params(load_params(path))


def mismatches(cfg: Config, skip: frozenset[str] = frozenset()) -> list[str]:
    """Where ``cfg`` differs from the paper: ``"param=value (paper: value)"``, empty when it matches."""
    items = list(PROTOCOL)
    if cfg.dataset in DATASET_SIZES:
        size, batch = DATASET_SIZES[cfg.dataset]
        items += [Item(i.what, i.where, i.param, v) for i, v in zip(SIZE_ITEMS, (size, batch), strict=True)]
    out = []
    for item in items:
        value, want = getattr(cfg, item.param), item.value_for(cfg)
        if item.param not in skip and value != want:
            out.append(f"{item.param}={value!r} (paper: {want!r}, {item.where})")
    return out


def table(root: Path | None = None) -> str:
    """The markdown table: paper item, where, parameter, value in the paper files (grouped by data set)."""
    configs = [load_config(p) for p in paper_files(root)]
    rows = ["| paper item | where | parameter | value in params/<dataset>/<context>.yaml |", "|---|---|---|---|"]
    for item in (*PROTOCOL, *SIZE_ITEMS):
        by_value: dict[str, list[str]] = {}
        for cfg in configs:
            names = by_value.setdefault(_literal(getattr(cfg, item.param)), [])
            if cfg.dataset not in names:
                names.append(cfg.dataset)
        if len(by_value) == 1:
            cell = next(iter(by_value))
        else:
            cell = "; ".join(f"{value}: {', '.join(names)}" for value, names in by_value.items())
        rows.append(f"| {item.what} | {item.where} | `{item.param}` | {cell} |")
    return "\n".join(rows)


def _literal(value: Any) -> str:
    """YAML-style spelling of a parameter value (``false``, ``0.001``)."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def readings() -> str:
    """The markdown list of :data:`READINGS`, wrapped at 100 characters as the rest of docs/paper.md."""
    items = [textwrap.fill(f"- **{r.title} ({r.where}).** {r.text}", width=100, subsequent_indent="  ",
                           break_on_hyphens=False, break_long_words=False) for r in READINGS]
    return "\n".join(items)


def _between(document: str, begin: str, end: str, body: str) -> str:
    """``document`` with the text between the markers ``begin`` and ``end`` replaced by ``body``."""
    if begin not in document or end not in document:
        raise ValueError(f"docs/paper.md lacks the markers {begin!r} and {end!r}")
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render(document: str, root: Path | None = None) -> str:
    """``document`` with its generated parts current: the table and the readings, each between its markers."""
    return _between(_between(document, BEGIN, END, table(root)), READINGS_BEGIN, READINGS_END, readings())


def main(argv: list[str] | None = None) -> int:
    """Rewrites (or with ``--check`` verifies) the generated parts of docs/paper.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/paper.md's generated parts are out of date")
    args = parser.parse_args(argv)
    path = project_root() / "docs" / "paper.md"
    current = path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{path}: the table or the readings are out of date; run python -m con2lib.analysis.paper",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted)
    print(f"wrote the table and the readings of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
