"""Test-time augmented features and the final anomaly scores S_NND and S_LH (eq. 16).

View i of A test-time augmentations scores x itself for i < A/K and the context copies for the
rest, A/K views per context (K = 2 for CON2: half of the views see x, half x^c; K up to 8 with several
contexts, appendix E.2; K = 1 for the SimCLR baseline, which never trains on context copies and is
scored on x only, as the paper's kNN-on-SimCLR baseline). Each view is one fixed transformation:
its random content-augmentation parameters are drawn once (seeded) and applied to every image,
training bank and test set alike, so that a test feature is compared with training features "under
the same augmentation" (eq. 12). With ``tta_identity`` the first view of each context is the
un-augmented image (or context copy); the paper's files turn it off, so that all A views are draws
from T. The un-augmented pair (x, x^c) is kept apart for the diagnostics (no-TTA scores,
silhouette, Figure 1), extracted once more only when no scored view is that pair.

Speed: features are extracted in batches on the device (augmentations included, bf16 autocast on
CUDA); S_NND runs blocked with a float16 bank on CUDA (:func:`nnd_bank`), S_LH as batched matrix
operations over all views at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from con2lib.config import Config
from con2lib.method.augment import context_augment, normalize
from con2lib.method.device import to_layout
from con2lib.method.scores import GaussianScorer, nnd_index, nnd_score_views, pixel_knn_scores
from con2lib.method.views import View, content_augment_for, plain_view_indices, tta_views


class Split(Protocol):
    """What :func:`evaluate` reads of a data set (:class:`con2lib.data.OneClassData` is one).

    Attributes:
        train: uint8 (n, C, H, W) normal training images.
        test: uint8 (T, C, H, W) test images.
        test_labels: (T,) 1 = anomaly, 0 = normal.
    """

    train: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


@dataclass
class Evaluation:
    """Features, scores and AUROCs of one evaluation.

    Attributes:
        train_features: float (A, n, F) training-bank features per view.
        test_features: float (A, T, F) test features per view.
        plain_train: float (2, n, F) features of the un-augmented x and first context copy x^c.
        plain_test: float (2, T, F) the same for the test images (diagnostics only, never scored
            for SimCLR).
        scores_nnd, scores_lh: (T,) S_NND and S_LH, averaged over the A views.
        nearest: (T,) index of the nearest training image (S_NND, first view).
        auroc_nnd, auroc_lh: AUROCs in [0, 1].
        auroc_pixel_knn: AUROC of raw-pixel cosine 1-NN on the same split, the floor CON2 is read against.
    """

    views: list[View]
    train_features: torch.Tensor
    test_features: torch.Tensor
    plain_train: torch.Tensor
    plain_test: torch.Tensor
    scores_nnd: torch.Tensor
    scores_lh: torch.Tensor
    nearest: torch.Tensor
    auroc_nnd: float
    auroc_lh: float
    scorer: GaussianScorer
    auroc_pixel_knn: float = float("nan")


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, images: torch.Tensor, views: list[View], cfg: Config,
                     device: torch.device) -> torch.Tensor:
    """Encoder features of every image under every view.

    Args:
        encoder: g, switched to eval mode here.
        images: uint8 (N, C, H, W), on any device (moved to ``device`` in batches).
        views: the test-time augmentations.

    Returns:
        float32 (V, N, F) features on ``device``.
    """
    encoder.eval()
    augment = content_augment_for(cfg)
    out = []
    for view in views:
        feats = []
        for chunk in images.split(cfg.eval_batch_size):
            x = chunk.to(device, non_blocking=True).float().div_(255.0)
            if view.context:
                x = context_augment(x, view.context)
            if view.augment:
                # the same seed for every chunk: one transformation for the whole set
                gen = torch.Generator(device=device).manual_seed(view.seed)
                x = augment(x, gen, shared=True)
            x = to_layout(normalize(x))  # as in training (train.prepare_model)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                feats.append(encoder(x).float())
        out.append(torch.cat(feats))
    return torch.stack(out)


def auroc(labels: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); labels 1 = anomaly, higher scores = more anomalous."""
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


def nnd_bank(train_features: torch.Tensor) -> torch.Tensor:
    """The S_NND bank: float16 on CUDA (half the memory, tensor-core products; the AUROC moves by
    under 1e-3, tests/test_speed_paths.py), the features unchanged elsewhere (CPUs multiply float32
    fastest). Shape and device are kept."""
    return train_features.half() if train_features.device.type == "cuda" else train_features


def evaluate(cfg: Config, encoder: torch.nn.Module, data: Split, device: torch.device) -> Evaluation:
    """Scores the test set with S_NND and S_LH under test-time augmentation and measures the AUROC."""
    views = tta_views(cfg)
    train = extract_features(encoder, data.train, views, cfg, device)
    test = extract_features(encoder, data.test, views, cfg, device)
    plain_train, plain_test = _plain_features(cfg, encoder, data, train, test, device)
    bank = nnd_bank(train)
    s_nnd = nnd_score_views(test, bank).cpu()
    scorer = GaussianScorer(cfg.lh_shrinkage).fit(train)
    s_lh = scorer.score(test).mean(0).cpu()
    labels = data.test_labels.numpy()
    return Evaluation(
        views=views, train_features=train, test_features=test, plain_train=plain_train, plain_test=plain_test,
        scores_nnd=s_nnd, scores_lh=s_lh,
        nearest=nnd_index(test[0], bank[0]).cpu(),
        auroc_nnd=auroc(labels, s_nnd), auroc_lh=auroc(labels, s_lh), scorer=scorer,
        auroc_pixel_knn=auroc(labels, pixel_knn_scores(data.train.to(device), data.test.to(device)).cpu()),
    )


def _plain_features(cfg: Config, encoder: torch.nn.Module, data: Split, train: torch.Tensor,
                    test: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, n, F) and (2, T, F) features of the un-augmented x and x^c: scored views where they are
    among them (``tta_identity``), else extracted (an extra view costs one pass over the images)."""
    out = []
    for images, scored in ((data.train, train), (data.test, test)):
        pair = []
        for index, context in zip(plain_view_indices(cfg), ("", cfg.contexts[0]), strict=True):
            if index is not None:
                pair.append(scored[index])
            else:
                pair.append(extract_features(encoder, images, [View(context, False, 0)], cfg, device)[0])
        out.append(torch.stack(pair))
    return out[0], out[1]
