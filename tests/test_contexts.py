"""New context augmentations against torch/torchvision, the context check on closed-form cases, its notebook."""

from __future__ import annotations

import json

import numpy as np
import papermill
import pytest
import torch
from conftest import ROOT
from mlflow.tracking import MlflowClient
from torchvision.transforms import functional as F_v1

from con2lib.augment import context_augment
from con2lib.augment.context import CONTEXT_AUGMENTATIONS, equalize
from con2lib.config import CONTEXTS, Config
from con2lib.contexts import CANDIDATES, COLUMNS, HFLIP_REASON, check, recommend, resolve_context

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
    for name in ("rot90", "rot180", "hflip", "permute", "auto"):
        assert Config.from_params({"context": name}).context == name
    assert set(CONTEXTS) == {*CONTEXT_AUGMENTATIONS, "auto"}
    with pytest.raises(ValueError, match=r"context='rotate' is invalid: expected one of invert, .*permute, auto"):
        Config.from_params({"context": "rotate"})


# --- the check on cases whose answer is known ---------------------------------------------------------

def test_flip_is_distinct_on_images_with_a_vertical_gradient() -> None:
    table = check(gradient_images(), ("flip", "hflip")).set_index("candidate")
    assert table.loc["flip", "distinct_auroc"] > 0.9
    assert table.loc["flip", "reason"].startswith("distinct (AUROC")
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
    assert abs(row["distinct_auroc"] - 0.5) < 0.1 and row["reason"].startswith("not distinct: originals and copies")


def test_permute_rejected_on_grayscale_distinct_on_coloured_images() -> None:
    row = check(gradient_images(), ("permute",)).iloc[0]
    assert row["reason"] == "not distinct: identity on grayscale" and row["score"] == 0
    reddish = as_uint8(noise(N, 3, S, S) * torch.tensor([1.0, 0.5, 0.3]).view(1, 3, 1, 1))
    row = check(reddish, ("permute",)).iloc[0]
    assert row["distinct_auroc"] > 0.9 and row["score"] > 0


def test_equalize_is_not_distinct_on_already_equalised_images() -> None:
    smooth = torch.nn.functional.avg_pool2d(noise(N, 1, S, S), 5, 1, 2)  # many grey levels, uneven histogram
    table = check(as_uint8(equalize(smooth)), ("equalize", "invert")).set_index("candidate")
    assert table.loc["equalize", "distinct_auroc"] < 0.6 and table.loc["equalize", "score"] < 0.2
    assert table.loc["equalize", "reason"].startswith("not distinct")
    assert table.loc["invert", "distinct_auroc"] > 0.9  # the same images are not symmetric under invert
    # the same images before equalisation: equalize is distinct there
    assert check(as_uint8(smooth), ("equalize",)).iloc[0]["distinct_auroc"] > 0.8


def test_ranking_recommend_and_errors() -> None:
    table = check(gradient_images(), ("hflip", "permute", "flip", "invert"), max_images=150, seed=3)
    assert list(table.columns) == list(COLUMNS)
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["score"].is_monotonic_decreasing
    assert np.allclose(table["score"], table["distinct"] * table["aligned"].clip(lower=0))
    assert recommend(table) == table.iloc[0]["candidate"] in ("flip", "invert")  # the only distinct ones
    assert set(table.iloc[2:]["candidate"]) == {"hflip", "permute"}
    assert table.equals(check(gradient_images(), ("hflip", "permute", "flip", "invert"), max_images=150, seed=3))
    with pytest.warns(UserWarning, match="no context candidate is distinct on these images"):
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
                                           "candidates": "invert,flip,permute", "max_images": 40,
                                           "experiment": "context-check"})
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("context-check").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["con2.context_check"] == "true" and run.info.status == "FINISHED"
    assert run.data.params["recommended"] in ("invert", "flip") and "dataset" not in run.data.params
    assert run.data.params["check.dataset"] == "digits" and run.data.params["check.max_images"] == "40"
    assert {f"{p}_{n}" for p in ("distinct", "aligned") for n in ("invert", "flip", "permute")} <= set(run.data.metrics)
    assert run.data.metrics["distinct_permute"] == 0.0
    files = {a.path for a in client.list_artifacts(run.info.run_id, "contexts")}
    assert files == {"contexts/ranking.csv", "contexts/ranking.html"}
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/candidates.html", "figures/context_scores.html"}
    ranking = client.download_artifacts(run.info.run_id, "contexts/ranking.csv", str(tmp_path))
    assert open(ranking).readline().strip() == ",".join(COLUMNS)
