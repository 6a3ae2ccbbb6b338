"""New context augmentations against torch/torchvision, the context check on closed-form cases, its notebook."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import papermill
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.transforms import functional as F_v1

from con2lib.analysis import context_probe
from con2lib.analysis.contexts import (
    CANDIDATES,
    COLUMNS,
    HFLIP_REASON,
    NOVEL_PASS,
    ROTATIONS,
    SHAPE_PASS,
    check,
    recommend,
    resolve_context,
)
from con2lib.config import CONTEXTS, Config
from con2lib.method.augment import context_augment
from con2lib.method.augment.context import CONTEXT_AUGMENTATIONS, equalize

from conftest import ROOT

N, S = 200, 16  # synthetic images: enough for a stable held-out AUROC, about a second per check


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def gradient_images(seed: int = 0) -> torch.Tensor:
    """Top bright, bottom dark, plus noise: a strong canonical orientation. uint8 (N, 1, S, S)."""
    ramp = torch.linspace(1, 0, S).view(1, 1, S, 1)
    return as_uint8(0.7 * ramp + 0.3 * noise(N, 1, S, S, seed=seed))


# --- the new context augmentations -------------------------------------------------------------------

def test_rotations_hflip_permute_match_references() -> None:
    x = noise(4, 3, 12, 12)
    assert torch.equal(context_augment(x, "rot90"), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.allclose(context_augment(x, "rot90"), F_v1.rotate(x, 90))  # counter-clockwise, as torchvision
    assert torch.allclose(context_augment(x, "rot180"), F_v1.rotate(x, 180))
    assert torch.equal(context_augment(x, "rot180"), F_v1.vflip(F_v1.hflip(x)))
    assert torch.equal(context_augment(x, "hflip"), F_v1.hflip(x))
    assert torch.equal(context_augment(x, "permute"), x[:, [2, 0, 1]])  # RGB -> BRG
    gray = noise(4, 1, 12, 12)
    assert torch.equal(context_augment(gray, "permute"), gray)  # identity on one channel


@pytest.mark.parametrize("name", sorted(CONTEXT_AUGMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_context_keeps_dtype_device_shape_range(name: str, dtype: torch.dtype) -> None:
    x = noise(3, 3, 10, 10).to(dtype)
    y = context_augment(x, name)
    assert y.dtype == dtype and y.device == x.device and y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1


def test_auto_is_not_a_transform_and_config_accepts_the_new_names() -> None:
    with pytest.raises(ValueError, match="context 'auto' is not a transform: resolve it first"):
        context_augment(torch.zeros(1, 1, 4, 4), "auto")
    for name in ("rot90", "rot180", "rot270", "hflip", "permute", "auto"):
        assert Config.from_params({"context": name}).context == name
    assert Config.from_params({"context": ROTATIONS, "tta": 4}).contexts == ("rot90", "rot180", "rot270")
    # auto resolves to a list of contexts: the test-time views follow (rounded up to a multiple of the contexts)
    auto = Config.from_params({"context": "auto", "tta": 2})
    assert auto.with_context(ROTATIONS).tta == 4 and auto.with_context("rot90").tta == 2
    assert auto.replace(tta=8).with_context(ROTATIONS).tta == 8 and auto.replace(tta=0).with_context(ROTATIONS).tta == 0
    assert set(CONTEXTS) == {*CONTEXT_AUGMENTATIONS, "auto"}
    with pytest.raises(ValueError, match=r"context='rotate' is invalid: expected one of invert, .*permute, auto"):
        Config.from_params({"context": "rotate"})


# --- the check on cases whose answer is known ---------------------------------------------------------

def test_flip_is_distinct_on_images_with_a_vertical_gradient() -> None:
    table = check(gradient_images(), ("flip", "hflip")).set_index("candidate")
    assert table.loc["flip", "distinct_auroc"] > 0.9
    assert table.loc["flip", "reason"].startswith("distinct through shape (AUROC")
    assert abs(table.loc["hflip", "distinct_auroc"] - 0.5) < 0.1  # the gradient has no left or right
    assert table.loc["flip", "aligned_pixel"] == pytest.approx(1.0)  # an isometry of pixel space


def test_hflip_rejected_because_content_augmentations_flip_left_right() -> None:
    left_bright = gradient_images().transpose(-1, -2)  # a strong canonical left-right orientation
    raw = check(left_bright, ("hflip", "rot180"), content_hflip=0.0).set_index("candidate")
    assert raw.loc["hflip", "distinct_auroc"] > 0.9 and raw.loc["rot180", "distinct_auroc"] > 0.9
    # as training sees them (every view flipped left-right at random) neither is a new context
    table = check(left_bright, ("hflip", "rot180")).set_index("candidate")
    assert table.loc["hflip", "reason"] == HFLIP_REASON and table.loc["hflip", "score"] == 0
    assert abs(table.loc["rot180", "distinct_auroc"] - 0.5) < 0.1  # rot180 = flip o hflip: only a vertical flip left


def test_flip_is_not_distinct_on_vertically_symmetric_images() -> None:
    half = noise(N, 1, S // 2, S)
    symmetric = as_uint8(torch.cat([half, half.flip(-2)], dim=-2))
    row = check(symmetric, ("flip",)).iloc[0]
    assert row["distinct_auroc"] == 0.5 and row["distinct"] == 0 and row["score"] == 0
    assert row["reason"].startswith("not distinct")
    # symmetric only in distribution (each image upside down or not at random): the probe cannot tell either
    images = gradient_images()
    upside_down = torch.rand(N, generator=torch.Generator().manual_seed(1)) < 0.5
    mixed = torch.where(upside_down.view(-1, 1, 1, 1), images.flip(-2), images)
    row = check(mixed, ("flip",)).iloc[0]
    assert abs(row["distinct_auroc"] - 0.5) < 0.1 and row["reason"].startswith("not distinct: the contexts are")


def test_permute_rejected_on_grayscale_distinct_on_coloured_images() -> None:
    row = check(gradient_images(), ("permute",)).iloc[0]
    assert row["reason"] == "not distinct: identity on grayscale" and row["score"] == 0
    reddish = as_uint8(noise(N, 3, S, S) * torch.tensor([1.0, 0.5, 0.3]).view(1, 3, 1, 1))
    row = check(reddish, ("permute",)).iloc[0]
    assert row["distinct_auroc"] > 0.9  # but through the channels' global statistics alone, as invert
    assert row["intensity_auroc"] > 0.9 and row["reason"].startswith("distinct through intensity only")


def test_equalize_is_not_distinct_on_already_equalised_images() -> None:
    smooth = torch.nn.functional.avg_pool2d(noise(N, 1, S, S), 5, 1, 2)  # many grey levels, uneven histogram
    table = check(as_uint8(equalize(smooth)), ("equalize", "invert")).set_index("candidate")
    assert table.loc["equalize", "distinct_auroc"] < 0.6 and table.loc["equalize", "score"] < 0.2
    assert table.loc["equalize", "reason"].startswith("not distinct")
    assert table.loc["invert", "distinct_auroc"] > 0.9  # the same images are not symmetric under invert
    # the same images before equalisation: equalize is distinct there
    assert check(as_uint8(smooth), ("equalize",)).iloc[0]["distinct_auroc"] > 0.8


def test_ranking_recommend_and_errors() -> None:
    table = check(gradient_images(), ("hflip", "permute", "invert", "flip"), max_images=150, seed=3)
    assert list(table.columns) == list(COLUMNS)
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert np.allclose(table["score"], table["shape"] * table["aligned"].clip(lower=0))
    # flip is distinct through shape, invert through intensity only (the ramp's histogram is mirrored)
    assert table["candidate"].tolist()[:2] == ["flip", "invert"] and recommend(table) == "flip"
    assert set(table.iloc[2:]["candidate"]) == {"hflip", "permute"}
    assert table.equals(check(gradient_images(), ("hflip", "permute", "invert", "flip"), max_images=150, seed=3))
    with pytest.warns(UserWarning, match="no context candidate is distinct through shape"):
        assert recommend(check(gradient_images(), ("permute", "hflip"))) in ("permute", "hflip")
    with pytest.raises(ValueError, match="nothing to recommend"):
        recommend(table.iloc[:0])
    with pytest.raises(ValueError, match="unknown context candidate"):
        check(gradient_images(), ("invert", "rotate"))
    with pytest.raises(ValueError, match="at least 4 normal images"):
        check(gradient_images()[:3], ("invert",))


def test_resolve_context_fixed_and_auto() -> None:
    images = gradient_images()[:60]
    context, table = resolve_context(Config.from_params({"context": "flip"}), images)
    assert context == "flip" and table.empty and list(table.columns) == list(COLUMNS)
    context, table = resolve_context(Config.from_params({"context": "auto"}), images)
    assert context == recommend(table) and context in CANDIDATES and context != "permute"
    assert sorted(table["candidate"]) == sorted(CANDIDATES)


# --- distinct through shape, or through intensity only ------------------------------------------------

def bars(centred: bool, seed: int = 0) -> torch.Tensor:
    """A bright horizontal bar on a dark ground, plus noise. uint8 (N, 1, S, S).

    ``centred=False``: the bar lies in the top half at a random height (oriented: every rotation is a
    new shape); ``centred=True``: it crosses the centre (a half turn gives the same kind of image).
    """
    g = torch.Generator().manual_seed(seed)
    x = 0.15 * torch.rand(N, 1, S, S, generator=g)
    for i in range(N):
        length = 2 * int(torch.randint(S // 4, S // 2 - 1, (1,), generator=g))  # even: a centred bar is symmetric
        left = (S - length) // 2
        row = S // 2 - 1 if centred else int(torch.randint(1, S // 2 - 3, (1,), generator=g))
        x[i, 0, row:row + 2, left:left + length] = 0.9
    return as_uint8(x)


def discs(seed: int = 0) -> torch.Tensor:
    """Centred bright discs of random radius with isotropic noise: no orientation at all. uint8 (N, 1, S, S)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(S) - (S - 1) / 2, torch.arange(S) - (S - 1) / 2, indexing="ij")
    radius = 2 + 4 * torch.rand(N, 1, 1, 1, generator=g)
    return as_uint8((yy.hypot(xx) < radius).float() * 0.8 + 0.2 * torch.rand(N, 1, S, S, generator=g))


def test_invert_is_distinct_through_intensity_only() -> None:
    row = check(bars(centred=False), ("invert",), content_hflip=0.0).iloc[0]
    assert row["distinct_auroc"] > 0.95 and row["intensity_auroc"] > 0.95  # global statistics alone separate it
    assert row["shape"] < 0.1 and row["score"] < 0.1
    assert row["reason"].startswith("distinct through intensity only")


def test_rotating_oriented_shapes_is_distinct_through_shape() -> None:
    table = check(bars(centred=False), ("rot90", ROTATIONS, "invert"), content_hflip=0.0).set_index("candidate")
    for name in ("rot90", ROTATIONS):
        assert table.loc[name, "intensity_auroc"] == pytest.approx(0.5)  # a rotation keeps every global statistic
        assert table.loc[name, "shape"] > 0.9 and table.loc[name, "reason"].startswith("distinct through shape")
    assert table.loc[ROTATIONS, "contexts"] == 3 and table.loc[ROTATIONS, "rank"] == 1  # more contexts first
    assert table.loc[ROTATIONS, "teaches"] and table.loc["rot90", "teaches"] and not table.loc["invert", "teaches"]
    assert table.loc["invert", "rank"] == 3


def test_rotating_discs_is_not_distinct_and_auto_falls_back_to_invert() -> None:
    table = check(discs(), ("rot90", "rot180", ROTATIONS, "invert"), content_hflip=0.0).set_index("candidate")
    for name in ("rot90", "rot180", ROTATIONS):
        assert table.loc[name, "distinct"] < 0.2 and table.loc[name, "reason"].startswith("not distinct")
    with pytest.warns(UserWarning, match="no context candidate is distinct through shape"):
        assert recommend(table.reset_index()) == "invert"


def test_copies_that_look_normal_do_not_teach_however_distinct(monkeypatch) -> None:
    """The novelty gate: distinct through shape is not enough when a nearest neighbour finds the copies normal."""
    monkeypatch.setattr(context_probe, "novelty", lambda originals, copies: 0.6)
    table = check(bars(centred=False), ("rot90", ROTATIONS), content_hflip=0.0).set_index("candidate")
    assert (table["shape"] > 0.9).all() and (table["novel_auroc"] == 0.6).all()
    assert not table["teaches"].any() and (table["score"] < 0.25).all()  # 2 * 0.6 - 1 = 0.2 of the score
    with pytest.warns(UserWarning, match="no context candidate is distinct through shape, with copies unlike normal"):
        recommend(table.reset_index())


def test_a_list_of_contexts_is_judged_by_its_weakest_pair() -> None:
    """A centred bar is the same shape after a half turn: the rotation set fails on that pair, rot90 does not."""
    table = check(bars(centred=True), ("rot180", "rot90", ROTATIONS), content_hflip=0.0).set_index("candidate")
    assert table.loc["rot180", "distinct"] < 0.2
    assert table.loc[ROTATIONS, "distinct"] == pytest.approx(table.loc["rot180", "distinct"], abs=0.05)
    assert table.loc[ROTATIONS, "shape"] < SHAPE_PASS <= table.loc["rot90", "shape"]
    assert table.loc[ROTATIONS, "novel_auroc"] < NOVEL_PASS <= table.loc["rot90", "novel_auroc"]
    assert recommend(table.reset_index()) == "rot90"


def test_novelty_asks_whether_copies_look_like_normal_images() -> None:
    """Assumption 1 as a nearest-neighbour score sees it, on closed-form cases."""
    x = context_probe.nn_embedding(gradient_images()[:40].float() / 255)
    assert context_probe.novelty(x, x) == pytest.approx(0.5)  # copies that are the normal images themselves
    assert context_probe.novelty(x, -x) == 1.0  # the negated centred images: farther than any normal image
    # leave one out: a copy equal to its own original is scored against the *other* images, as the original is
    assert context_probe.novelty(x[:1].repeat(4, 1), x[:1].repeat(4, 1)) == pytest.approx(0.5)
    # images upside down or not at random: an upside-down copy is as close to the normal images as they are
    images = gradient_images()
    upside_down = torch.rand(N, generator=torch.Generator().manual_seed(1)) < 0.5
    mixed = torch.where(upside_down.view(-1, 1, 1, 1), images.flip(-2), images)
    assert abs(check(mixed, ("flip",), content_hflip=0.0).iloc[0]["novel_auroc"] - 0.5) < 0.1
    assert check(images, ("flip",), content_hflip=0.0).iloc[0]["novel_auroc"] > NOVEL_PASS


# --- the notebook ------------------------------------------------------------------------------------

def test_notebook_committed_clean_with_parameters() -> None:
    path = ROOT / "notebooks" / "contexts.ipynb"
    assert set(papermill.inspect_notebook(str(path))) == {
        "dataset", "data_root", "normal_class", "image_size", "candidates", "max_images", "seed", "experiment"}
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells[0]["metadata"]["tags"] == ["parameters"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in cells)


def test_notebook_runs_the_check_and_logs_it(fast_store, tmp_path) -> None:
    out = tmp_path / "contexts.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "contexts.ipynb"), str(out), cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False,
                               parameters={"dataset": "digits", "normal_class": 3, "image_size": 8,
                                           "candidates": ["invert", "flip", "permute", ROTATIONS], "max_images": 40,
                                           "experiment": "context-check"})
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("context-check").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["con2.context_check"] == "true" and run.info.status == "FINISHED"
    # distinct through shape (invert is distinct through intensity only, permute not at all on grayscale)
    assert run.data.params["recommended"] in ("flip", ROTATIONS) and "dataset" not in run.data.params
    assert run.data.params["check.dataset"] == "digits" and run.data.params["check.max_images"] == "40"
    assert {f"{p}_{n}" for p in ("distinct", "aligned") for n in ("invert", "flip", "permute")} <= set(run.data.metrics)
    assert run.data.metrics["distinct_permute"] == 0.0
    assert {"shape_rot90-rot180-rot270", "novel_auroc_rot90-rot180-rot270", "intensity_invert"} <= set(run.data.metrics)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "contexts")}
    assert files == {"contexts/ranking.csv", "contexts/ranking.html"}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/candidates.html", "figures/context_scores.html"}
    ranking = client.download_artifacts(run.info.run_id, "contexts/ranking.csv", str(tmp_path))
    assert open(ranking).readline().strip() == ",".join(COLUMNS)
    first = pd.read_csv(ranking).iloc[0]
    assert first["candidate"] == run.data.params["recommended"] and first["rank"] == 1
