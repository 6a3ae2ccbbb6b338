"""A trained CON2 model in plain torch: preprocessing, test-time views, S_NND / S_LH, calibrated threshold.

:class:`ScoringModel` holds the encoder, the S_NND bank (training features of every test-time view),
the fitted S_LH Gaussian, the data set's image preprocessing and the thresholds. It scores exactly as
:func:`con2lib.method.evaluate.evaluate` does (same views, features and score functions), so a test
image scores the same here as in the training run. :mod:`con2lib.serving.pyfunc_model` serves it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from con2lib.config import Config
from con2lib.data.images import Preprocess, prepare_image
from con2lib.method.checkpoint import check_finite
from con2lib.method.device import channels_last
from con2lib.method.evaluate import extract_features, nnd_bank
from con2lib.method.models import build_model
from con2lib.method.scores import GaussianScorer, nnd_index, nnd_score_views
from con2lib.method.views import tta_views
from con2lib.serving.calibration import (
    CalibrationWarning,
    loo_nnd_scores,
    rates,
    small_calibration_warning,
    threshold_at_fpr,
)
from con2lib.serving.model_inputs import decode, error_text

if TYPE_CHECKING:
    from con2lib.method.evaluate import Evaluation

SCORES = ("nnd", "lh")
STATE_FORMAT = 1
# How each data set's training images were resized (the loaders in con2lib/data): the in-memory sets
# with torch's resize, the paper's 256/224 centre crop, a plain square resize, or shorter edge + crop.
_PAPER_CROP = ("crop", 256 / 224)
PREPROCESSING: dict[str, tuple[str, float]] = {
    **dict.fromkeys(("digits", "mnist", "fashionmnist", "cifar10", "cifar100"), ("array", 1.0)),
    **dict.fromkeys(("breastmnist", "octmnist", "pneumoniamnist", "br35h", "pneumonia", "imagenet30"), _PAPER_CROP),
    **dict.fromkeys(("kvasir", "melanoma"), ("square", 1.0)),
    **dict.fromkeys(("dogsvscats", "muffinvschihuahua", "folder"), ("crop", 1.0)),
}
def preprocess_for(cfg: Config, channels: int) -> Preprocess:
    """The preprocessing that made ``cfg.dataset``'s training images, for images with ``channels`` (1 or 3)."""
    resize, ratio = PREPROCESSING[cfg.dataset]
    return Preprocess(cfg.image_size, "L" if channels == 1 else "RGB", resize, ratio)


@dataclasses.dataclass
class ScoringModel:
    """Everything needed to score new images as the training run scored its test set.

    Attributes:
        cfg: the run's config (context, TTA, view seeds, content augmentation, batch size).
        encoder: g, in eval mode on ``device``.
        bank: float32 (V, n, F) training features per test-time view (S_NND).
        gaussian: S_LH statistics fitted on ``bank``.
        prep: how an image file becomes a uint8 (C, S, S) input.
        thresholds: ``{"nnd": t, "lh": t}``; score > t is anomalous; None where not calibrated.
        threshold_source: how the thresholds were set (logged, shown by ``con2 score``).
        n_calibration, target_fpr: the held-out normal images the thresholds were set on (0: none) and
            the target, for :meth:`calibration_warning`.
        train_ids: the data set's id of each bank image (:attr:`con2lib.data.OneClassData.train_ids`);
            empty for models logged before ids were kept (then ``#<bank index>``).
    """

    cfg: Config
    encoder: torch.nn.Module
    bank: torch.Tensor
    gaussian: GaussianScorer
    prep: Preprocess
    device: torch.device
    thresholds: dict[str, float | None] = dataclasses.field(default_factory=lambda: {"nnd": None, "lh": None})
    threshold_source: str = "none"
    n_calibration: int = 0
    target_fpr: float = 0.05
    train_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.views = tta_views(self.cfg)
        self._bank = nnd_bank(self.bank.to(self.device))  # as evaluate() stores it on this device

    @classmethod
    def from_evaluation(cls, cfg: Config, encoder: torch.nn.Module, result: Evaluation, prep: Preprocess,
                        device: torch.device, train_ids: Sequence[str] = ()) -> ScoringModel:
        """The model of a finished evaluation: its training features and fitted S_LH, no recomputation.

        Args:
            train_ids: the training images' ids in the data set (``data.train_ids``), for ``nearest_train``.
        """
        return cls(cfg, encoder.eval(), result.train_features.float(), result.scorer, prep, device,
                   train_ids=tuple(train_ids))

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> ScoringModel:
        """Rebuilds the model from :meth:`state` (a ``weights_only`` checkpoint) on ``device``."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"CON2 model state format {state.get('format')!r}; this con2lib reads {STATE_FORMAT}")
        for key in ("encoder", "bank", "scorer", "thresholds", "calibration"):  # before anything is built on them
            check_finite(state.get(key), f"CON2 model state {key}")
        cfg = Config.from_params(state["config"])
        views = [[v.context, v.augment, v.seed] for v in tta_views(cfg)]
        if state.get("views", views) != views or ("views" not in state and _views_changed(cfg)):
            raise ValueError("this model's training bank was built with other test-time views than this con2lib "
                             "uses for its config (SimCLR scores x only, tta 0 is un-augmented since issue 14): "
                             "train it again")
        prep = Preprocess(**state["preprocess"])
        encoder = build_model(cfg, prep.channels).encoder
        encoder.load_state_dict(state["encoder"])
        encoder.to(device)
        if channels_last(device):  # the memory format training left it in (train.prepare_model)
            encoder.to(memory_format=torch.channels_last)
        gaussian = GaussianScorer(cfg.lh_shrinkage)
        gaussian.load_state_dict(state["scorer"])
        calibration = state.get("calibration", {})  # absent from models logged before it was added
        return cls(cfg, encoder.eval(), state["bank"], gaussian.to(device), prep, device,
                   dict(state["thresholds"]), state["threshold_source"], calibration.get("n", 0),
                   calibration.get("target_fpr", cfg.target_fpr), tuple(state.get("train_ids", ())))

    def state(self) -> dict[str, Any]:
        """Tensors and literals only: saved with :func:`con2lib.method.checkpoint.save_checkpoint`."""
        return {"format": STATE_FORMAT, "config": self.cfg.to_dict(), "preprocess": dataclasses.asdict(self.prep),
                "encoder": {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()},
                "bank": self.bank.detach().float().cpu().contiguous(),
                "scorer": {k: v.cpu() for k, v in self.gaussian.state_dict().items()},
                "thresholds": dict(self.thresholds), "threshold_source": self.threshold_source,
                "views": [[v.context, v.augment, v.seed] for v in self.views],
                "calibration": {"n": self.n_calibration, "target_fpr": self.target_fpr},
                "train_ids": list(self.train_ids)}

    def calibration_warning(self) -> str | None:
        """Said when the held-out images were too few for the target FPR (:func:`small_calibration_warning`)."""
        return small_calibration_warning(self.n_calibration, self.target_fpr)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """S_NND and S_LH averaged over the test-time views (eq. 16), as :func:`con2lib.method.evaluate.evaluate`.

        Args:
            images: uint8 (N, C, S, S) prepared images.

        Returns:
            ``nnd``, ``lh``: (N,) float32; ``nearest``: (N,) int64 index of the nearest training-bank
            image (first view); all on the CPU.
        """
        feats = extract_features(self.encoder, images, self.views, self.cfg, self.device)
        s_nnd = nnd_score_views(feats, self._bank)
        s_lh = self.gaussian.score(feats).mean(0)
        return {"nnd": s_nnd.cpu(), "lh": s_lh.cpu(), "nearest": nnd_index(feats[0], self._bank[0]).cpu()}

    def calibrate(self, images: torch.Tensor, target_fpr: float, test_labels: torch.Tensor | None = None,
                  test_scores: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Sets the thresholds at ``target_fpr`` and returns the metrics to log.

        Args:
            images: uint8 (K, C, S, S) held-out normal images; K = 0 falls back to the training
                bank's leave-one-out S_NND (no S_LH threshold).
            test_labels, test_scores: (T,) labels and ``{"nnd": (T,), "lh": (T,)}`` scores of the test
                set, for the achieved rates.

        Returns:
            ``threshold`` and ``threshold_lh`` (or ``threshold_loo`` for the fallback), ``target_fpr``,
            and with test data ``test_fpr``, ``test_tpr`` (S_NND) and ``test_fpr_lh``, ``test_tpr_lh``.
        """
        self.n_calibration, self.target_fpr = len(images), target_fpr
        if self.calibration_warning():
            warnings.warn(self.calibration_warning(), CalibrationWarning, stacklevel=2)
        if len(images):
            scores = self.score(images)
            self.thresholds = {k: threshold_at_fpr(scores[k], target_fpr) for k in SCORES}
            self.threshold_source = f"calibration: {len(images)} held-out normal images, target FPR {target_fpr}"
            metrics = {"threshold": self.thresholds["nnd"], "threshold_lh": self.thresholds["lh"]}
        else:
            self.thresholds = {"nnd": threshold_at_fpr(loo_nnd_scores(self.bank), target_fpr), "lh": None}
            self.threshold_source = (f"leave-one-out S_NND of the {self.bank.shape[1]} training images (no held-out "
                                     f"calibration images; optimistic), target FPR {target_fpr}")
            metrics = {"threshold_loo": self.thresholds["nnd"]}
        metrics["target_fpr"] = target_fpr
        for name, suffix in (("nnd", ""), ("lh", "_lh")):
            if test_labels is not None and test_scores is not None and self.thresholds[name] is not None:
                fpr, tpr = rates(test_labels, test_scores[name], self.thresholds[name])
                metrics[f"test_fpr{suffix}"], metrics[f"test_tpr{suffix}"] = fpr, tpr
        return metrics

    def predict(self, images: Sequence[Any], score: str = "nnd") -> pd.DataFrame:
        """Scores raw images (encoded bytes, base64 text, arrays); an unusable one becomes a row with ``error``.

        Returns:
            One row per image: ``score`` (the chosen one), ``anomaly`` (score > threshold), ``nearest_index``
            (training-bank image nearest in S_NND, -1 on error), ``nearest_train`` (that image's id in the data
            set, "" on error), ``score_nnd``, ``score_lh``, ``error`` ("" if fine).
        """
        threshold = self.thresholds.get(score)
        if threshold is None:
            raise ValueError(f"this model has no threshold for score {score!r} ({self.threshold_source}); use "
                             "score 'nnd', or train with calibration_fraction > 0")
        n = len(images)
        # anomaly: empty (NA), not False, where the image could not be read
        out = pd.DataFrame({"score": np.full(n, np.nan), "anomaly": pd.array([pd.NA] * n, dtype="boolean"),
                            "nearest_index": np.full(n, -1, np.int64), "nearest_train": [""] * n,
                            "score_nnd": np.full(n, np.nan),
                            "score_lh": np.full(n, np.nan), "error": [""] * n})
        ok, prepared = [], []
        for i, image in enumerate(images):
            try:
                prepared.append(torch.from_numpy(prepare_image(decode(image), self.prep)))
                ok.append(i)
            except Exception as err:  # noqa: BLE001 - any failure to read one image is that image's error
                out.loc[i, "error"] = error_text(err)
        if ok:
            s = self.score(torch.stack(prepared))
            chosen = s[score].numpy().astype(np.float64)
            out.loc[ok, "score"] = chosen
            out.loc[ok, "anomaly"] = chosen > threshold
            out.loc[ok, "nearest_index"] = s["nearest"].numpy()
            ids = self.train_ids or [f"#{j}" for j in range(self.bank.shape[1])]
            out.loc[ok, "nearest_train"] = [ids[j] for j in s["nearest"].tolist()]
            out.loc[ok, "score_nnd"] = s["nnd"].numpy().astype(np.float64)
            out.loc[ok, "score_lh"] = s["lh"].numpy().astype(np.float64)
        return out


def _views_changed(cfg: Config) -> bool:
    """A model saved without its views (before issue 14) whose views differ now: SimCLR scored the
    context copies, and ``tta: 0`` with ``tta_identity`` off was augmented."""
    return cfg.loss == "simclr" or (cfg.tta == 0 and not cfg.tta_identity)
