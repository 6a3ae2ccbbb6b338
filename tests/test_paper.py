"""The paper files run the paper's protocol (con2lib.analysis.paper.PROTOCOL), and docs/paper.md's table is current."""

from __future__ import annotations

import pytest

from con2lib.analysis import paper
from con2lib.config import Config
from con2lib.paths import project_root
from con2lib.sweeps.grid import load_sweep


def test_every_paper_params_file_resolves_to_the_papers_values() -> None:
    files = paper.paper_files()
    assert len(files) >= 30
    seen = set()
    for path in files:
        cfg = paper.load_config(path)
        assert paper.mismatches(cfg) == [], path
        seen.add(cfg.dataset)
    assert set(paper.DATASET_SIZES) <= seen  # every data set of the paper has its files


def test_protocol_values_transcribed_from_the_paper() -> None:
    # appendix C / eq. 16 as the paper states them, independent of PROTOCOL's own spelling
    cfg = paper.load_config(project_root() / "params" / "breastmnist" / "invert.yaml")
    assert (cfg.tta, cfg.tta_identity, cfg.n_views // cfg.scored_contexts) == (40, False, 20)
    assert (cfg.lh_shrinkage, cfg.calibration_fraction, cfg.epochs, cfg.lr, cfg.weight_decay) == (0, 0, 2048, 1e-3, 1e-3)
    assert (cfg.image_size, cfg.batch_size, cfg.jitter_strength, cfg.blur_p) == (224, 64, 1.0, 0.5)
    cifar = paper.load_config(project_root() / "params" / "cifar10" / "flip.yaml")
    assert (cifar.image_size, cifar.batch_size, cifar.jitter_strength, cifar.blur_p, cifar.tta) == (32, 512, 0.5, 0, 40)


@pytest.mark.parametrize("grid", sorted(paper.PAPER_GRIDS))
def test_every_point_of_the_paper_grids_runs_the_protocol(grid: str) -> None:
    sweep = load_sweep(project_root() / "params" / "sweeps" / f"{grid}.yaml")
    for point in sweep.points:
        cfg = Config.from_params(point.params)
        # the grid's own axes (loss in Figure 4, contexts in Figure 9) and its documented differences
        skip = frozenset(point.values) | paper.PAPER_GRIDS[grid]
        assert paper.mismatches(cfg, skip) == [], point.label


def test_mismatches_names_a_broken_value() -> None:
    cfg = paper.load_config(project_root() / "params" / "kvasir" / "invert.yaml")
    assert paper.mismatches(cfg.replace(tta=2, blur_p=0.0)) == [
        "blur_p=0.0 (paper: 0.5, eq. 3, App. C)", "tta=2 (paper: 40, eq. 16, App. C)"]


def test_docs_paper_table_is_current() -> None:
    path = project_root() / "docs" / "paper.md"
    assert paper.render(path.read_text()) == path.read_text(), "run: python -m con2lib.analysis.paper"
