"""Which context augmentation for these normal images? Checked on the training images, before training.

CON2 needs a context augmentation t_c that is *distinct* (Assumption 1, eq. 9: a transformed normal
image does not look like a normal one) and *aligned* (Assumption 2, eq. 10: distances between normal
images survive the transform). The paper picks t_c by eye (Figures 5 and 8). :func:`check` measures
both on normal images only, in seconds on a CPU, and adds what decides whether a context *teaches*:

* **Distinct through shape, not intensity.** A copy that differs from the original in its global
  intensity statistics (``invert``: after normalisation the copy is ``-x``; ``equalize``: a new
  histogram) is separated by the first layer of the encoder within a few epochs; L_context then
  sits at its optimum and puts no gradient on the encoder (:mod:`con2lib.method.learning_signal`).
  ``intensity`` is how well a probe that sees only global statistics (per-channel histogram, mean,
  standard deviation) tells the copies from the originals; ``shape = distinct * (1 - intensity)`` is
  the part of the distinction that needs the layout of the image. Rotations of oriented shapes are
  distinct through shape; rotations of discs are not distinct at all.
* **Copies unlike normal images.** ``novel_auroc``: copies against held-out normal images, each scored
  by its cosine distance to the nearest other normal image (as S_NND scores): Assumption 1 (eq. 9)
  as a nearest-neighbour score sees it. A digit 0, 1 or 8 upside down is another 0, 1 or 8, although
  a linear probe still tells them apart by their slant; the three rotations trained worst there.
* **Several contexts.** A list of contexts (the three rotations, as GEOM and CSI use them) is a
  K-way context task; it is judged by its weakest pair of contexts, since one pair of contexts that
  look alike (a digit 8 and its half turn) makes the task unlearnable for that pair.

The ranking (validated in docs/contexts.md): candidates whose every pair of contexts is distinct
through shape (``shape >= SHAPE_PASS``) and unlike normal images (``novel_auroc >= NOVEL_PASS``) come
first, the one with the most contexts first, then by ``score``; the others follow (``invert`` is the
fallback where no geometric context passes, e.g. textures and rotation-invariant images).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from con2lib.analysis import context_probe as probe
from con2lib.method.augment.context import CONTEXT_AUGMENTATIONS, context_augment

if TYPE_CHECKING:
    from con2lib.config import Config

ROTATIONS = "rot90,rot180,rot270"  # three contexts (four with the original): GEOM's and CSI's rotation classes
CANDIDATES = ("invert", "flip", "equalize", "rot90", "rot180", "rot270", "hflip", "permute", ROTATIONS)
COLUMNS = ("candidate", "rank", "teaches", "contexts", "score", "shape", "novel_auroc", "distinct", "distinct_auroc", "intensity",
           "intensity_auroc", "aligned", "aligned_pixel", "reason")
NOT_DISTINCT = 0.2  # distinct score below which a candidate is labelled "not distinct" (AUROC within 0.4..0.6)
SHAPE_PASS = 0.5  # shape score a context (every pair of a list) needs to rank among those that teach
# novel_auroc a context (every pair of a list) needs to rank among those that teach. Set on the validation
# splits (docs/contexts.md, "Validation"): the half turns of digits 0 and 1 (0.72-0.77) trained worst with
# the three rotations, those of digits 2-7 and 9 (0.96-1.00) best; between them (digit 8, several
# Fashion-MNIST classes: 0.82-0.85) the choice is within the measure's noise
NOVEL_PASS = 0.8
HFLIP_REASON = "not distinct: the content augmentations flip left-right, so x and hflip(x) are views of each other"
CONTENT_HFLIP = 0.5  # SimCLR's ContentAugment.hflip_p: training flips every view left-right at random

__all__ = ["CANDIDATES", "COLUMNS", "NOVEL_PASS", "ROTATIONS", "SHAPE_PASS", "check", "recommend", "resolve_context"]


def check(images: torch.Tensor, candidates: Sequence[str] = CANDIDATES, max_images: int = 500,
          seed: int = 0, content_hflip: float = CONTENT_HFLIP) -> pd.DataFrame:
    """Scores each candidate context (or list of contexts) on normal images only.

    Distinctiveness (eq. 9): a logistic-regression probe tells one context from another on fixed
    features (the image downsampled to 16x16 per channel, a 32-bin intensity histogram per channel,
    row and column profiles of the mean and of the gradient magnitude). Five-fold cross-validation is
    grouped by image (an image and its copy never straddle folds); ``distinct = 2 |AUROC - 0.5|``.
    ``intensity`` is the same with a probe on global statistics only (histogram, mean, standard
    deviation per channel); ``shape = distinct * (1 - intensity)``. Both sides are flipped
    left-right at random with ``content_hflip`` first, as the content augmentations do in training:
    at 0.5, ``hflip`` is rejected without fitting (x and hflip(x) are then one distribution).

    A list of contexts (``"rot90,rot180,rot270"``) is measured on every pair of its contexts, the
    original included; the weakest pair gives ``shape``, ``distinct`` and ``aligned``, the strongest
    gives ``intensity``.

    Alignment (eq. 10): Spearman correlation between d(x, x') and d(t_c(x), t_c(x')) over all pairs
    of images, in the pooled features of a fixed, seeded, untrained 3-layer network (``aligned``,
    each set z-scored on its own) and in pixels (``aligned_pixel``: 1 for every isometry).

    Novelty (eq. 9 as S_NND sees it): ``novel_auroc`` (:func:`con2lib.analysis.context_probe.novelty`): each
    image and its copy scored by the cosine distance to the nearest *other* normal image (leave one
    out), copies against originals: 0.5 when copies look like normal images.

    Ranking: ``score = shape * max(2 novel_auroc - 1, 0) * max(aligned, 0)``. Candidates with
    ``shape >= SHAPE_PASS`` and ``novel_auroc >= NOVEL_PASS`` come first, more contexts first, then by score; the rest by ``distinct * max(aligned, 0)`` (the context task
    of an intensity-only context is solved at once, but it still gives the content term its extra
    positive: ``invert`` where nothing is distinct through shape). Rank 1 is what ``context: auto`` trains.

    Args:
        images: uint8 (N, C, H, W) normal images (``OneClassData.train``), C = 1 or 3, square.
        candidates: context names (``con2lib.method.augment.context``, ``+`` composes) or comma lists of them.
        max_images: at most this many images, a seeded random subset (0 = all).
        seed: subset, random flips and random feature network.
        content_hflip: the run's ``hflip_p`` (random left-right flip of every training view).

    Returns:
        One row per candidate, sorted by rank, with the columns of :data:`COLUMNS` (``contexts``: the
        number of context copies).

    Raises:
        ValueError: an unknown candidate, no candidates, or fewer than 4 images.
    """
    names = list(dict.fromkeys(candidates))
    parts = {name: [c.strip() for c in name.split(",")] for name in names}
    unknown = sorted({p for ps in parts.values() for c in ps for p in c.split("+") if p not in CONTEXT_AUGMENTATIONS})
    if unknown or not names:
        raise ValueError(f"unknown context candidate(s) {unknown or '(none given)'}; expected some of "
                         f"{', '.join(CONTEXT_AUGMENTATIONS)}, joined by '+' or listed with ','")
    x = _subset(images, max_images, seed)
    if len(x) < 4:
        raise ValueError(f"the context check needs at least 4 normal images, got {len(x)}")
    measures = _Measures(x, seed, content_hflip)
    rows = [measures.candidate(name, parts[name]) for name in names]
    table = pd.DataFrame(rows)
    table["score"] = (table["shape"] * (2 * table["novel_auroc"] - 1).clip(lower=0)
                      * table["aligned"].fillna(0).clip(lower=0))
    fallback = table["distinct"] * table["aligned"].fillna(0).clip(lower=0)
    table["teaches"] = (table["shape"] >= SHAPE_PASS) & (table["novel_auroc"] >= NOVEL_PASS)
    key = pd.DataFrame({"teaches": table["teaches"], "k": table["contexts"].where(table["teaches"], 0),
                        "value": table["score"].where(table["teaches"], fallback)})
    order = key.sort_values(["teaches", "k", "value"], ascending=False, kind="stable").index
    table = table.loc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table[list(COLUMNS)]


class _Measures:
    """The check's measures on one set of images, each context's features computed once."""

    def __init__(self, x: torch.Tensor, seed: int, content_hflip: float) -> None:
        self.x, self.content_hflip = x, content_hflip
        self.flips = torch.Generator().manual_seed(seed)
        self.net = probe.random_net(x.shape[1], seed)
        small = probe.resize(x, probe.EMBED_SIZE)
        self.d_pixel = probe.pair_distances(small.flatten(1))
        self.d_feat = probe.pair_distances(probe.standardise(probe.embed(self.net, small)))
        self.features: dict[str, tuple[np.ndarray, np.ndarray, torch.Tensor]] = {}
        self.pairs: dict[tuple[str, str], tuple[float, float, float]] = {}  # a list repeats its single contexts'
        self.aligned: dict[str, tuple[float, float]] = {}

    def _features(self, name: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """(probe features, global statistics, nearest-neighbour embedding) under context ``name`` ("": x)."""
        if name not in self.features:
            xc = self.x if not name else context_augment(self.x, name)
            flipped = _random_hflip(xc, self.content_hflip, self.flips)
            self.features[name] = (probe.probe_features(flipped), probe.global_features(flipped),
                                   probe.nn_embedding(flipped))
        return self.features[name]

    def _pair(self, a: str, b: str) -> tuple[float, float, float]:
        """Context a against b: held-out AUROC of the full probe, of the global-statistics probe, and the
        nearest-neighbour novelty of b's images among a's."""
        if (a, b) not in self.pairs:
            (fa, ga, ea), (fb, gb, eb) = self._features(a), self._features(b)
            self.pairs[a, b] = probe.separability(fa, fb), probe.separability(ga, gb), probe.novelty(ea, eb)
        return self.pairs[a, b]

    def _aligned(self, name: str, xc: torch.Tensor) -> tuple[float, float]:
        """Spearman rho of pair distances, originals against context ``name``'s copies ``xc``: random
        features, pixels."""
        if name not in self.aligned:
            small = probe.resize(xc, probe.EMBED_SIZE)
            self.aligned[name] = (
                probe.spearman(self.d_feat, probe.pair_distances(probe.standardise(probe.embed(self.net, small)))),
                probe.spearman(self.d_pixel, probe.pair_distances(small.flatten(1))))
        return self.aligned[name]

    def candidate(self, name: str, contexts: list[str]) -> dict[str, object]:
        """One row of the table: the weakest pair of ``["", *contexts]`` decides."""
        row: dict[str, object] = {"candidate": name, "contexts": len(contexts)}
        xcs = [context_augment(self.x, c) for c in contexts]
        if len(set(contexts)) < len(contexts) or any(torch.equal(xc, self.x) for xc in xcs) or any(
                torch.equal(a, b) for i, a in enumerate(xcs) for b in xcs[i + 1:]):
            # exact values, nothing to estimate: a context equals another (the identity on grayscale for permute)
            what = "identity on grayscale" if contexts == ["permute"] and self.x.shape[1] == 1 else \
                "the copies equal the originals (or each other) on every image"
            return {**row, "distinct": 0.0, "distinct_auroc": 0.5, "intensity": 0.0, "intensity_auroc": 0.5,
                    "shape": 0.0, "novel_auroc": 0.5, "aligned": 1.0, "aligned_pixel": 1.0,
                    "reason": f"not distinct: {what}"}
        aligned, aligned_pixel = zip(*(self._aligned(c, xc) for c, xc in zip(contexts, xcs, strict=True)))
        row |= {"aligned": _weakest(aligned), "aligned_pixel": _weakest(aligned_pixel)}
        if "hflip" in contexts and self.content_hflip == 0.5:
            # exact, nothing to estimate: randomly flipped x and randomly flipped hflip(x) are one distribution
            return {**row, "distinct": 0.0, "distinct_auroc": 0.5, "intensity": 0.0, "intensity_auroc": 0.5,
                    "shape": 0.0, "novel_auroc": 0.5, "reason": HFLIP_REASON}
        names = ["", *contexts]
        pairs = [self._pair(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        distinct = [min(1.0, 2 * abs(full - 0.5)) for full, _, _ in pairs]
        intensity = [min(1.0, 2 * abs(glob - 0.5)) for _, glob, _ in pairs]
        shape = [d * (1 - i) for d, i in zip(distinct, intensity, strict=True)]
        weakest, strongest = int(np.argmin(distinct)), int(np.argmax(intensity))
        row |= {"distinct": distinct[weakest], "distinct_auroc": pairs[weakest][0], "intensity": intensity[strongest],
                "intensity_auroc": pairs[strongest][1], "shape": min(shape), "novel_auroc": min(p[2] for p in pairs)}
        row["reason"] = _reason(row)
        return row


def recommend(table: pd.DataFrame) -> str:
    """The top-ranked candidate of a :func:`check` table (what ``context: auto`` trains).

    Warns when it does not teach (column ``teaches``): it is distinct through intensity only (its
    context task is solved at the first layer), its copies look like normal images, or it is not
    distinct at all.

    Raises:
        ValueError: an empty table.
    """
    if table.empty:
        raise ValueError("no candidates in the context ranking: nothing to recommend")
    best = table.sort_values("rank", kind="stable").iloc[0]
    if not best["teaches"]:
        warnings.warn(f"no context candidate is distinct through shape, with copies unlike normal images, on these "
                      f"images; {best['candidate']!r} is only "
                      f"the least bad ({best['reason']}): expect its context task to teach the encoder little "
                      "(docs/contexts.md)", stacklevel=2)
    return str(best["candidate"])


def resolve_context(cfg: Config, train_images: torch.Tensor) -> tuple[str, pd.DataFrame]:
    """The context to train with: ``cfg.context``, or for ``auto`` the top of :func:`check`.

    The check sees the training views' random left-right flips (``cfg.hflip_p``) and decides from the
    normal training images alone.

    Args:
        cfg: the run's configuration.
        train_images: uint8 (N, C, H, W) normal training images, as the run will train on them.

    Returns:
        (context, ranking table): a name or a comma list of names (a valid ``context`` parameter);
        the table is empty (columns only) unless ``cfg.context`` is ``auto``. The caller logs the
        table (``contexts/ranking.csv``) and the choice (param ``context_resolved``).
    """
    if cfg.context != "auto":
        return cfg.context, pd.DataFrame(columns=list(COLUMNS))
    table = check(train_images, CANDIDATES, max_images=500, seed=cfg.seed, content_hflip=cfg.hflip_p)
    return recommend(table), table


def _subset(images: torch.Tensor, max_images: int, seed: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (n, C, H, W) in [0, 1], a seeded subset of at most max_images."""
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    images = images.cpu()
    if 0 < max_images < len(images):
        keep = np.sort(np.random.default_rng(seed).choice(len(images), max_images, replace=False))
        images = images[torch.from_numpy(keep)]
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x.contiguous()


def _random_hflip(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each (N, C, H, W) image flipped left-right with probability p, as the content augmentations do."""
    flip = (torch.rand(len(x), generator=generator) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def _weakest(values: tuple[float, ...]) -> float:
    """The lowest correlation of a list's contexts; NaN only when none is measurable (constant distances)."""
    return float("nan") if np.isnan(values).all() else float(np.nanmin(values))


def _reason(row: dict[str, object]) -> str:
    """One line a user can read: how the candidate is distinct, whether it is aligned, with the values."""
    distinct, auroc, aligned = float(row["distinct"]), float(row["distinct_auroc"]), float(row["aligned"])
    pair = " (weakest pair of contexts)" if int(row["contexts"]) > 1 else ""
    if distinct < NOT_DISTINCT:
        return f"not distinct: the contexts are indistinguishable (AUROC {auroc:.2f}){pair}"
    if float(row["shape"]) >= SHAPE_PASS and float(row["novel_auroc"]) < NOVEL_PASS:
        how = (f"distinct through shape (AUROC {auroc:.2f}), but copies look like normal images to a nearest "
               f"neighbour (AUROC {float(row['novel_auroc']):.2f}){pair}")
    elif float(row["shape"]) < SHAPE_PASS:
        how = (f"distinct through intensity only (global-statistics AUROC {float(row['intensity_auroc']):.2f}): "
               "solved at the first layer, teaches little") if float(row["intensity"]) >= 0.5 else \
            f"weakly distinct through shape (AUROC {auroc:.2f}){pair}"
    else:
        how = f"distinct through shape (AUROC {auroc:.2f}){pair}"
    if np.isnan(aligned):
        return f"{how}; alignment not measurable (constant distances)"
    if aligned >= 0.8:
        return f"{how}; aligned (rho {aligned:.2f})"
    if aligned >= 0.5:
        return f"{how}; partly aligned (rho {aligned:.2f})"
    return f"{how}; not aligned: distances between images change (rho {aligned:.2f})"
