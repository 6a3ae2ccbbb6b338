"""Guards of the method itself (issue 22, items 4 and 5), each checked against the paper's formulas.

Most tests guard plumbing; these fail when the method is mis-wired while everything still runs:

* which loss term ``context_only`` and ``content_only`` train (the ablation of the paper's Figure 4),
  and that ``con2`` trains L_context + alpha L_content (eq. 8), against a literal eq. 1 / 5 / 7 loss;
* the value alpha takes at each step of ``fit`` (appendix C: linear from ``alpha_start`` to ``alpha_end``),
  computed here from the formula;
* the horizontal-flip probability of T pinned in the paper protocol (a change of ``Config.hflip_p``'s
  default would otherwise change every paper run silently);
* ``evaluate``'s S_NND and S_LH against eqs. 12-16 written out view by view;
* the readings of docs/paper.md where the paper is silent.

Everything runs on tiny tensors on the CPU (the whole file takes a few seconds on one core).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from con2lib.analysis.paper import PROTOCOL, READINGS, READINGS_BEGIN, READINGS_END, load_config, mismatches
from con2lib.config import Config
from con2lib.data import OneClassData
from con2lib.method.augment import ContentAugment, context_augment, normalize
from con2lib.method.device import seed_everything
from con2lib.method.evaluate import evaluate
from con2lib.method.models import Con2Model, build_model
from con2lib.method.train import fit, train_step
from con2lib.method.views import content_augment_for, make_views, tta_views
from con2lib.paths import project_root

CPU = torch.device("cpu")
# a tiny model and run: 8 px images, ResNet18 at 1/8 width (64 features), no MLflow, no data files
TINY = {"dataset": "digits", "image_size": 8, "width": 0.125, "proj_dim": 16, "device": "cpu",
        "temperature": 0.5, "eval_batch_size": 64}


# ---------------------------------------------------------------------------------------------------
# 1. which term each loss trains (eqs. 1, 5, 7, 8; Figure 4's ablation)
# ---------------------------------------------------------------------------------------------------


def _paper_loss(z: torch.Tensor, labels: list[int], temperature: float) -> tuple[torch.Tensor, int]:
    """Eqs. 1, 5 and 7 written out pair by pair: the mean of l(z_a, z_b, Z) over ordered positive pairs.

    l(z_a, z_b, Z) = -log exp(sim(z_a, z_b) / tau) / sum_{k != a} exp(sim(z_a, z_k) / tau), with the
    cosine similarity ``sim``. Deliberately a Python loop and not :func:`con2lib.method.losses.supcon_loss`:
    the reference must not share the code it checks.

    Args:
        z: (M, D) projections (not normalised).
        labels: M labels; a pair (a, b), a != b, is positive when its labels are equal.
        temperature: tau.

    Returns:
        The loss and the number of positive ordered pairs (K of eq. 5, 12N of eq. 7).
    """
    unit = z / z.norm(dim=1, keepdim=True)
    sim = unit @ unit.T / temperature
    terms = []
    for a in range(len(z)):
        others = [k for k in range(len(z)) if k != a]
        log_denominator = torch.logsumexp(sim[a, others], dim=0)
        terms += [log_denominator - sim[a, b] for b in others if labels[a] == labels[b]]
    return torch.stack(terms).mean(), len(terms)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Every parameter's gradient (None where the backward never reached it)."""
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}


def _flat(grads: dict[str, torch.Tensor | None], prefix: str) -> torch.Tensor:
    """The gradients of the parameters under ``prefix`` as one vector (a missing gradient counts as zeros)."""
    return torch.cat([g.flatten() for name, g in grads.items() if name.startswith(prefix) and g is not None]
                     or [torch.zeros(1)])


def _reference_gradients(model: Con2Model, views: torch.Tensor, n: int, temperature: float
                         ) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor | None]]]:
    """Value and parameter gradients of L_context (eq. 5) and of L_content (eq. 7), each term alone.

    The labels are written from the paper, not taken from the code: views [t(x), t'(x), t(x^c), t'(x^c)]
    of N images, context 0 for the views of x and 1 for those of x^c (eq. 2), and the source image's
    index as the content label (Lambda(x) of eq. 6: the four views of x and x^c).
    """
    contexts = [0] * (2 * n) + [1] * (2 * n)
    ids = list(range(n)) * 4
    out = {}
    for term, head, labels, pairs in (("context", 1, contexts, 4 * n * (2 * n - 1)), ("content", 2, ids, 12 * n)):
        model.zero_grad(set_to_none=True)
        # the same memory layout as train_step's input: the convolutions then round alike
        z = model(views.contiguous(memory_format=torch.channels_last))[head].float()
        loss, count = _paper_loss(z, labels, temperature)
        assert count == pairs  # the normalisation constants of eqs. 5 and 7
        loss.backward()
        out[term] = (loss.detach(), _grads(model))
    model.zero_grad(set_to_none=True)
    return out


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-3) -> bool:
    """Vectors equal up to float rounding, relative to the reference's size."""
    return float((got - want).norm()) <= rtol * float(want.norm()) + 1e-12


@pytest.fixture(scope="module")
def step_inputs() -> tuple[Config, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tiny config, a seeded model's state, and one batch of 4N = 16 views with the code's labels."""
    cfg = Config.from_params({**TINY, "batch_size": 4})
    seed_everything(0)
    model = build_model(cfg, 3)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    views, contexts, ids = make_views(images, cfg, content_augment_for(cfg), torch.Generator().manual_seed(2))
    # the code labels its views as the paper does (the reference below writes them independently)
    assert contexts.tolist() == [0] * 8 + [1] * 8 and ids.tolist() == [0, 1, 2, 3] * 4
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}, views, contexts, ids


def _train_step_gradients(cfg: Config, state: dict[str, torch.Tensor], views: torch.Tensor, contexts: torch.Tensor,
                          ids: torch.Tensor, alpha: float) -> tuple[torch.Tensor, dict[str, torch.Tensor | None],
                                                                     Con2Model]:
    """train_step's returned parts and the gradients it left on a fresh copy of the model.

    SGD with learning rate 0 leaves the parameters as they were, so the gradients that
    ``train_step``'s backward wrote are read afterwards against the same parameters.
    """
    model = build_model(cfg, 3)
    model.load_state_dict(state)
    parts = train_step(cfg, model, torch.optim.SGD(model.parameters(), lr=0.0), views, contexts, ids, alpha,
                       measure=False)
    grads = _grads(model)
    model.load_state_dict(state)  # BatchNorm's running statistics moved: back to the batch's model
    return parts, grads, model


@pytest.mark.parametrize(("loss", "trained", "untrained_head"), [("context_only", "context", "content_head"),
                                                                ("content_only", "content", "context_head")])
def test_each_ablation_trains_its_own_term_alone(step_inputs, loss: str, trained: str, untrained_head: str) -> None:
    """Figure 4's ablations: ``context_only`` descends L_context (eq. 5), ``content_only`` L_content (eq. 7).

    Swapping the two (or training the sum) keeps every loss finite and moves the parameters, so only
    the gradient tells them apart: it must equal the literal term's gradient on the encoder and on
    the term's own head, differ from the other term's, and leave the other head untouched.
    """
    base, state, views, contexts, ids = step_inputs
    cfg = base.replace(loss=loss)
    parts, grads, model = _train_step_gradients(cfg, state, views, contexts, ids, alpha=0.7)
    reference = _reference_gradients(model, views, n=4, temperature=cfg.temperature)
    other = "content" if trained == "context" else "context"
    value, want = reference[trained]
    # the loss optimised is the term itself: alpha (0.7 here) does not enter
    assert float(parts[0]) == pytest.approx(float(value), rel=1e-4)
    # the logged terms are the literal L_context and L_content, whatever is trained
    assert (float(parts[1]), float(parts[2])) == pytest.approx(
        (float(reference["context"][0]), float(reference["content"][0])), rel=1e-4)
    own_head = f"{trained}_head."
    for prefix in ("encoder.", own_head):
        assert _close(_flat(grads, prefix), _flat(want, prefix)), prefix
    # the encoder's gradient is not the other term's (nor their sum's): a swap or a mix is caught
    encoder = _flat(grads, "encoder.")
    assert not _close(encoder, _flat(reference[other][1], "encoder."), rtol=0.1)
    both = _flat(want, "encoder.") + _flat(reference[other][1], "encoder.")
    assert not _close(encoder, both, rtol=0.1)
    # the other term's head gets no gradient at all (the ablated term is computed for logging only)
    assert all(g is None for name, g in grads.items() if name.startswith(f"{untrained_head}."))


def test_con2_trains_context_plus_alpha_times_content(step_inputs) -> None:
    """Eq. 8: L = L_context + alpha L_content, alpha weighting the content term (not the context term)."""
    cfg, state, views, contexts, ids = step_inputs
    alpha = 0.3
    parts, grads, model = _train_step_gradients(cfg, state, views, contexts, ids, alpha)
    reference = _reference_gradients(model, views, n=4, temperature=cfg.temperature)
    (l_context, g_context), (l_content, g_content) = reference["context"], reference["content"]
    assert float(parts[0]) == pytest.approx(float(l_context + alpha * l_content), rel=1e-4)
    want_encoder = _flat(g_context, "encoder.") + alpha * _flat(g_content, "encoder.")
    assert _close(_flat(grads, "encoder."), want_encoder)
    # each head gets its own term's gradient only, the content head's scaled by alpha
    assert _close(_flat(grads, "context_head."), _flat(g_context, "context_head."))
    assert _close(_flat(grads, "content_head."), alpha * _flat(g_content, "content_head."))
    # alpha on the wrong term would give this instead: far from what was trained
    assert not _close(_flat(grads, "encoder."),
                      alpha * _flat(g_context, "encoder.") + _flat(g_content, "encoder."), rtol=0.1)


# ---------------------------------------------------------------------------------------------------
# 2. the value of alpha at each step of fit (appendix C)
# ---------------------------------------------------------------------------------------------------


def _alpha(step: int, total_steps: int, start: float, end: float) -> float:
    """Appendix C's schedule as the paper states it: linear from ``start`` at the first of ``total_steps``
    steps to ``end`` at the last (written here, not taken from :mod:`con2lib.method.schedules`)."""
    return start + (end - start) * step / (total_steps - 1)


@pytest.mark.parametrize(("n_images", "batch_size", "epochs"), [(8, 8, 4), (16, 8, 3)])
def test_fit_logs_alpha_of_the_schedule_and_trains_with_it(n_images: int, batch_size: int, epochs: int) -> None:
    """Each epoch logs the alpha of its last step, on the linear schedule from alpha_start to alpha_end.

    With one step per epoch the logged total is that step's loss, so it must equal
    L_context + alpha L_content with the logged alpha exactly (eq. 8): an alpha frozen, reset every
    epoch, off by one step or applied to the wrong term fails here. The bound of tests/test_wiring.py
    (loss <= L_context + L_content) holds for any alpha in [0, 1] and catches none of these.
    """
    start, end = 0.2, 0.8  # not the defaults: a schedule that ignores the config's ends fails too
    cfg = Config.from_params({**TINY, "batch_size": batch_size, "epochs": epochs, "alpha_start": start,
                              "alpha_end": end})
    seed_everything(0)
    images = torch.randint(0, 256, (n_images, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    history = fit(cfg, build_model(cfg, 1), images, progress=False)
    steps = n_images // batch_size
    total = steps * epochs
    assert [h.epoch for h in history] == list(range(1, epochs + 1))
    want = [_alpha(e * steps - 1, total, start, end) for e in range(1, epochs + 1)]
    assert [h.alpha for h in history] == pytest.approx(want, abs=1e-12)
    assert want[-1] == pytest.approx(end)  # the schedule ends at alpha_end on the last step
    if steps == 1:
        for h in history:
            assert h.loss == pytest.approx(h.loss_context + h.alpha * h.loss_content, rel=1e-5), h


# ---------------------------------------------------------------------------------------------------
# 3. the horizontal flip of T is part of the paper protocol
# ---------------------------------------------------------------------------------------------------


def test_paper_files_flip_horizontally_with_simclrs_probability() -> None:
    """SimCLR's T (eq. 3, App. C: "the set of augmentations introduced by Chen et al. (2020)") flips
    horizontally with probability 0.5, at 32 px and at 224 px; the paper files inherit it from Config."""
    for path in ("cifar10/flip.yaml", "breastmnist/invert.yaml", "imagenet30/invert.yaml"):
        cfg = load_config(project_root() / "params" / path)
        assert cfg.hflip_p == 0.5, path
        assert content_augment_for(cfg).hflip_p == 0.5, path  # and it reaches the augmentation
    cfg = load_config(project_root() / "params" / "kvasir" / "invert.yaml")
    assert mismatches(cfg.replace(hflip_p=0.0)) == ["hflip_p=0.0 (paper: 0.5, eq. 3, App. C)"]


def test_every_content_augmentation_parameter_is_in_the_paper_protocol() -> None:
    """Every Config field that changes T is pinned by PROTOCOL, so a changed default cannot pass unseen.

    Found by changing each numeric field in turn and comparing the resulting ContentAugment; a new
    augmentation parameter without a protocol item fails here.
    """
    base = Config.from_params({})
    pinned = {item.param for item in PROTOCOL}
    changing = set()
    for field in dataclasses.fields(Config):
        value = getattr(base, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        candidates = (value + 2,) if isinstance(value, int) else (value * 0.5, 0.25, 0.75)
        for candidate in (c for c in candidates if c != value):
            try:
                other = base.replace(**{field.name: candidate})
            except ValueError:  # out of the field's range: try the next value
                continue
            if content_augment_for(other) != content_augment_for(base):
                changing.add(field.name)
            break
    assert {"crop_scale_min", "hflip_p", "jitter_strength", "jitter_p", "grayscale_p", "blur_p"} <= changing
    assert changing - {"image_size"} <= pinned, changing - pinned  # image_size: appendix D's sizes


# ---------------------------------------------------------------------------------------------------
# 4. evaluate against eqs. 12-16 written out view by view
# ---------------------------------------------------------------------------------------------------


def _features(encoder: torch.nn.Module, image: torch.Tensor, context: str, augment: ContentAugment | None,
              seed: int) -> torch.Tensor:
    """g(t(x)) or g(t(t_c(x))) of one uint8 (C, H, W) image: its context, then the view's fixed transformation.

    The transformation t is the same for every image: its random parameters come from a generator
    seeded with the view's seed, drawn once per image here (one image at a time, no batching).
    """
    x = image[None].float() / 255.0
    if context:
        x = context_augment(x, context)
    if augment is not None:
        x = augment(x, torch.Generator().manual_seed(seed), shared=True)
    with torch.no_grad():
        return encoder(normalize(x).contiguous(memory_format=torch.channels_last))[0].double()


def _s_nnd(z: torch.Tensor, bank: list[torch.Tensor]) -> float:
    """Eq. 12: minus the largest cosine similarity of ``z`` to any feature of the bank."""
    return -max(float(z @ b / (z.norm() * b.norm())) for b in bank)


def _s_lh(z: torch.Tensor, bank: list[torch.Tensor], shrinkage: float, ridge: float) -> float:
    """Eqs. 13-15: minus the log-density of the normalised ``z`` under the Gaussian of the normalised bank.

    Sigma is the empirical covariance (divisor n - 1) of eq. 14, shrunk as ``lh_shrinkage`` sets,
    (1 - lambda) Sigma + lambda tr(Sigma) / D I, plus ``ridge`` tr(Sigma') / D I (the ladder ridge
    the scorer chose, 0 unless the covariance is singular); float64 throughout.
    """
    units = torch.stack([b / b.norm() for b in bank])
    n, d = units.shape
    mean = units.mean(0)
    centred = units - mean
    sigma = centred.T @ centred / (n - 1)
    sigma = (1 - shrinkage) * sigma + shrinkage * torch.trace(sigma) / d * torch.eye(d, dtype=sigma.dtype)
    sigma = sigma + ridge * torch.trace(sigma) / d * torch.eye(d, dtype=sigma.dtype)
    diff = z / z.norm() - mean
    mahalanobis = float(diff @ torch.linalg.solve(sigma, diff))
    _, log_det = torch.linalg.slogdet(sigma)
    return 0.5 * (mahalanobis + float(log_det) + d * math.log(2 * math.pi))


def _literal_scores(cfg: Config, encoder: torch.nn.Module, train: torch.Tensor, test: torch.Tensor, ridge: float
                    ) -> tuple[list[float], list[float]]:
    """Eq. 16 for every test image: the mean over the A views of s_NND and s_LH, the first A/2 on x, the
    rest on x^c, each view's bank and Gaussian from the training images under that view (context and
    transformation: docs/paper.md, "Readings where the paper is silent")."""
    encoder.eval()
    augment = content_augment_for(cfg)
    a = cfg.n_views
    per_view_nnd, per_view_lh = [], []
    for i, view in enumerate(tta_views(cfg)):
        context = "" if i < a // 2 else cfg.context  # eq. 16: t_1 ... t_{A/2} on x, the rest on x^c
        t = augment if view.augment else None
        bank = [_features(encoder, image, context, t, view.seed) for image in train]
        queries = [_features(encoder, image, context, t, view.seed) for image in test]
        per_view_nnd.append([_s_nnd(z, bank) for z in queries])
        per_view_lh.append([_s_lh(z, bank, cfg.lh_shrinkage, ridge) for z in queries])
    nnd = [sum(view[j] for view in per_view_nnd) / a for j in range(len(test))]
    lh = [sum(view[j] for view in per_view_lh) / a for j in range(len(test))]
    return nnd, lh


@pytest.mark.parametrize(("shrinkage", "n_train", "tta_identity"), [(0.1, 12, True), (0.0, 200, False)])
def test_evaluate_scores_are_eq16_of_eqs12_and_15(shrinkage: float, n_train: int, tta_identity: bool) -> None:
    """``evaluate``'s S_NND and S_LH equal eq. 16 computed view by view from eqs. 12-15.

    Two settings: the recommended shrinkage 0.1 with a bank smaller than the 64 feature dimensions,
    and the paper's plain covariance (shrinkage 0, more training images than dimensions) with every
    view a draw from T (``tta_identity: false``).
    """
    cfg = Config.from_params({**TINY, "tta": 4, "tta_identity": tta_identity, "lh_shrinkage": shrinkage,
                              "context": "invert", "crop_scale_min": 0.5})
    views = tta_views(cfg)
    assert [v.context for v in views] == ["", "", "invert", "invert"]  # eq. 16's halves, A = 4
    seed_everything(0)
    model = build_model(cfg, 3)  # random initialisation: the formulas hold for any encoder
    rng = torch.Generator().manual_seed(5)
    train = torch.randint(0, 256, (n_train, 3, 8, 8), dtype=torch.uint8, generator=rng)
    test = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=rng)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    data = OneClassData(train=train, test=test, test_labels=labels, test_classes=labels, class_names=("a", "b"),
                        normal_classes=("a",), anomalous_classes=("b",))
    result = evaluate(cfg, model.encoder, data, CPU)
    if shrinkage > 0:
        assert result.scorer.ridge == 0.0  # shrinkage makes the covariance full rank: no ridge
    nnd, lh = _literal_scores(cfg, model.encoder, train, test, result.scorer.ridge)
    torch.testing.assert_close(result.scores_nnd.double(), torch.tensor(nnd, dtype=torch.float64), rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(result.scores_lh.double(), torch.tensor(lh, dtype=torch.float64), rtol=1e-4,
                               atol=1e-3)
    # the scores tell the test images apart: equal scores would pass for the wrong reasons
    assert float(result.scores_nnd.std()) > 1e-4 and float(result.scores_lh.std()) > 1e-2


# ---------------------------------------------------------------------------------------------------
# 5. docs/paper.md states the code's readings where the paper is silent
# ---------------------------------------------------------------------------------------------------


def test_docs_paper_states_the_readings_where_the_paper_is_silent() -> None:
    """The two readings of issue 22, item 5, generated from con2lib.analysis.paper.READINGS into docs/paper.md."""
    text = " ".join((project_root() / "docs" / "paper.md").read_text().split())  # line breaks as spaces
    generated = text.split(READINGS_BEGIN, 1)[1].split(READINGS_END, 1)[0]
    # (a) the bank of a context view: the training images under that context
    assert "t_i(t_c(X_train))" in generated and "S_NND bank of a context view" in generated
    # (b) ImageNet30's random 224 crop: the stored centre crop, then T's random resized crop
    assert "ImageNet30's random 224 crop is a centre crop plus the random resized crop of T" in generated
    assert "no random 224 crop is taken" in generated
    assert all(" ".join(r.text.split()) in generated for r in READINGS)
