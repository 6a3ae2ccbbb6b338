"""Using a trained run on new images: the logged MLflow model, calibration, `con2 score`, the registry, serving.

One tiny run is trained through `con2 run` for the whole module; every test reuses it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from test_datasets import CASES, _params  # the data sets' on-disk fixtures (tests/fixtures_data.py)

from con2lib.cli import main as con2_main
from con2lib.config import Config
from con2lib.data import DATASETS, OneClassData, load_dataset
from con2lib.data.images import list_images, prepare_image
from con2lib.method.evaluate import extract_features
from con2lib.serving.calibration import (
    CalibrationWarning,
    fpr_range,
    loo_nnd_scores,
    rates,
    small_calibration_warning,
    split_calibration,
    threshold_at_fpr,
)
from con2lib.serving.pyfunc_model import pip_requirements
from con2lib.serving.scoring_model import PREPROCESSING, ScoringModel, preprocess_for

from conftest import ROOT, TINY, con2_command, make_experiment

PARAMS = {**TINY, "calibration_fraction": 0.25, "experiment": "serving"}
SERVE_WAIT_S = 90


@pytest.fixture(scope="module")
def trained(module_store: dict[str, str]) -> SimpleNamespace:
    """One finished tiny run (32 normal images: 24 train, 8 calibrate) and its logged test scores."""
    folder = Path(module_store["CON2_RUNS_DIR"]).parent
    make_experiment("serving", folder)
    params = folder / "tiny.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    proc = subprocess.run(con2_command("run", str(params), "--quiet"), cwd=ROOT, env=module_store,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("serving").experiment_id])
    run_id = run.info.run_id
    scores = pd.read_csv(client.download_artifacts(run_id, "scores/test_scores.csv", str(folder)))
    cfg = Config.from_params({k: v for k, v in PARAMS.items() if k != "experiment"})
    return SimpleNamespace(run=run, run_id=run_id, uri=f"runs:/{run_id}/model", env=module_store, folder=folder,
                           scores=scores, data=load_dataset(cfg), client=client)


# --- calibration: closed forms ---------------------------------------------------------------------------


def test_threshold_at_fpr_is_the_linear_quantile() -> None:
    assert threshold_at_fpr(np.arange(100.0), 0.05) == pytest.approx(94.05)
    assert threshold_at_fpr(torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0]), 0.25) == pytest.approx(4.0)
    assert threshold_at_fpr([7.0], 0.5) == 7.0
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="at least one score"):
            threshold_at_fpr(bad, 0.05)
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_at_fpr([1.0, 2.0], 1.0)


@pytest.mark.parametrize("n", [9, 40])
def test_fpr_range_holds_the_fpr_of_thresholds_set_on_n_normal_scores(n: int) -> None:
    # normal scores uniform on (0, 1): a threshold t flags 1 - t of new normal images
    rng = np.random.default_rng(0)
    fprs = [1 - threshold_at_fpr(rng.random(n), 0.05) for _ in range(4000)]
    low, high = fpr_range(n, 0.05)
    # the linear quantile interpolates two order statistics; the Beta of one is close to it
    assert np.quantile(fprs, 0.05) == pytest.approx(low, abs=0.015)
    assert np.quantile(fprs, 0.95) == pytest.approx(high, abs=0.025)
    assert "(90% range)" in small_calibration_warning(n, 0.05)
    assert small_calibration_warning(200, 0.05) is None and small_calibration_warning(0, 0.05) is None


def test_rates_count_scores_strictly_above_the_threshold() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.4, 0.5, 0.9, 0.4, 0.6, 0.95]
    assert rates(labels, scores, 0.4) == (0.5, pytest.approx(2 / 3))  # 0.4 itself is not flagged
    assert rates(torch.tensor(labels), torch.tensor(scores), 1.0) == (0.0, 0.0)
    fpr, tpr = rates([1, 1], [0.0, 2.0], 1.0)
    assert np.isnan(fpr) and tpr == 0.5


def _numbered(n: int) -> OneClassData:
    """Training image i is filled with the value i: a split is read off the pixel values."""
    train = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()
    test = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    return OneClassData(train, test, torch.tensor([0, 1]), torch.tensor([0, 1]), ("a", "b"), ("a",), ("b",),
                        {"n_train": n})


def test_training_images_keep_their_data_set_ids_through_subsampling() -> None:
    data = load_dataset(Config.from_params(TINY))  # digits, 32 of the normal training images
    full = load_dataset(Config.from_params({**TINY, "max_train": 0}))
    assert len(set(data.train_ids)) == 32 and all(i.startswith("train[") for i in data.train_ids)
    for image_id, image in zip(data.train_ids, data.train):  # uint8 copies of the same images
        assert torch.equal(full.train[full.train_ids.index(image_id)], image)


def test_split_calibration_holds_out_a_seeded_disjoint_fraction() -> None:
    data = _numbered(40)
    rest, held = split_calibration(data, 0.25, seed=3)
    kept, out = rest.train[:, 0, 0, 0].tolist(), held[:, 0, 0, 0].tolist()
    assert len(out) == 10 and len(kept) == 30
    assert sorted(kept + out) == list(range(40)) and kept == sorted(kept)  # disjoint, complete, order kept
    assert rest.info == {"n_train": 30, "n_calibration": 10, "calibration_fraction": 0.25}
    assert rest.train_ids == tuple(f"#{i}" for i in kept)  # each image keeps its id in the data set
    assert torch.equal(split_calibration(data, 0.25, seed=3)[1], held)  # seeded
    assert not torch.equal(split_calibration(data, 0.25, seed=4)[1], held)
    assert rest.test is data.test
    assert len(split_calibration(data, 0.01, seed=0)[1]) == 1  # at least one image
    with pytest.raises(ValueError, match="0.5"):
        split_calibration(data, 0.5, seed=0)


@pytest.mark.parametrize(("n", "fraction", "why"), [(40, 0.0, "calibration_fraction is 0"), (9, 0.25, "only 9")])
def test_split_calibration_skips_with_a_warning(n: int, fraction: float, why: str) -> None:
    data = _numbered(n)
    with pytest.warns(CalibrationWarning, match=why):
        rest, held = split_calibration(data, fraction, seed=0)
    assert torch.equal(rest.train, data.train) and held.shape == (0, 1, 8, 8)


def test_leave_one_out_nnd_matches_brute_force() -> None:
    bank = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(bank, dim=-1)
    expected = [np.mean([-max(float(unit[v, i] @ unit[v, j]) for j in range(7) if j != i) for v in range(2)])
                for i in range(7)]
    torch.testing.assert_close(loo_nnd_scores(bank), torch.tensor(expected, dtype=torch.float32))


def test_config_validates_the_calibration_parameters() -> None:
    assert Config().calibration_fraction == 0.1 and Config().target_fpr == 0.05
    for key, value in (("calibration_fraction", 0.5), ("calibration_fraction", -0.1), ("target_fpr", 0),
                       ("target_fpr", 1.0)):
        with pytest.raises(ValueError, match=f"parameter {key}="):
            Config.from_params({key: value})


def test_every_data_set_has_a_preprocessing_rule() -> None:
    assert set(PREPROCESSING) == set(DATASETS)


@pytest.mark.parametrize("name", [n for n in CASES if n != "cifar100"])
def test_new_image_files_are_prepared_as_the_loaders_prepared_training_images(name: str, tmp_path: Path) -> None:
    CASES[name][0](tmp_path / "data")
    cfg = Config.from_params(_params(name, tmp_path))
    data = load_dataset(cfg)
    prep = preprocess_for(cfg, data.train.shape[1])
    assert prep.describe() == data.info["preprocessing"]
    normal_folder = {"folder": "mine/train", "pneumonia": "chest_xray/train/NORMAL",
                     "melanoma": "melanoma_cancer_dataset/train/benign"}.get(name)
    if normal_folder:  # official splits: the training images are the normal folder's files, in order
        files = list_images(tmp_path / "data" / normal_folder)
        prepared = np.stack([prepare_image(f, prep) for f in files])
        np.testing.assert_array_equal(prepared, data.train.numpy())
        np.testing.assert_array_equal(prepare_image(files[0].read_bytes(), prep), prepared[0])


def assert_same_nearest(model: ScoringModel, images: torch.Tensor, got: np.ndarray, want: np.ndarray) -> None:
    """Nearest training images found by two code paths: the same, or two bank images equally near.

    Features of other batch sizes differ in rounding, so a near tie may break either way.
    """
    differ = np.flatnonzero(got != want)
    if len(differ):
        feats = extract_features(model.encoder, images[differ], model.views, model.cfg, model.device)[0].cpu()
        sims = F.normalize(feats, dim=1) @ F.normalize(model.bank[0], dim=1).T
        rows = torch.arange(len(differ))
        torch.testing.assert_close(sims[rows, got[differ]], sims[rows, want[differ]], rtol=0, atol=1e-5)


# --- the logged model ------------------------------------------------------------------------------------


def test_model_is_logged_with_its_code_requirements_and_calibration(trained) -> None:
    info = mlflow.models.get_model_info(trained.uri)
    assert "python_function" in info.flavors and info.run_id == trained.run_id
    local = Path(mlflow.artifacts.download_artifacts(trained.uri, dst_path=str(trained.folder / "model")))
    assert (local / "code" / "con2lib" / "serving" / "pyfunc_model.py").is_file()  # the whole package
    assert (local / "artifacts" / "con2_model.pt").is_file()
    # a signature of the output table (inputs are free-form: files, base64 images, arrays) and an input example
    assert info.signature.inputs is None
    assert {"score", "anomaly", "nearest_index", "score_nnd", "error"} <= set(info.signature.outputs.input_names())
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["image"] and len(example["data"]) == 1
    requirements = (local / "requirements.txt").read_text().split()
    assert set(pip_requirements()) <= set(requirements)
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    model = mlflow.pyfunc.load_model(trained.uri)
    inner = model.unwrap_python_model()
    assert inner.score_name == "nnd" and inner.model.bank.shape[:2] == (TINY["tta"], 24)
    metrics, params = trained.run.data.metrics, trained.run.data.params
    assert params["data.n_calibration"] == "8" and params["data.n_train"] == "24"
    assert params["target_fpr"] == "0.05" and metrics["target_fpr"] == 0.05
    assert inner.model.thresholds["nnd"] == pytest.approx(metrics["threshold"])
    assert inner.model.thresholds["lh"] == pytest.approx(metrics["threshold_lh"])
    assert trained.run.data.tags["con2.threshold_source"].startswith("calibration: 8 held-out")
    scores = trained.scores
    fpr, tpr = rates(scores["label"], scores["score_nnd"], metrics["threshold"])
    assert metrics["test_fpr"] == pytest.approx(fpr) and metrics["test_tpr"] == pytest.approx(tpr)


def test_model_scores_equal_the_training_runs_test_scores(trained) -> None:
    model = mlflow.pyfunc.load_model(trained.uri)
    # (T, 1, 8, 8) uint8, as the run scored them; object columns (None where missing): cast for numpy
    out = model.predict(trained.data.test.numpy()).astype({"score": float, "score_nnd": float, "score_lh": float,
                                                           "nearest_index": int, "anomaly": bool})
    expected = trained.scores
    assert len(out) == len(expected) and (out["error"] == "").all()
    np.testing.assert_allclose(out["score_nnd"], expected["score_nnd"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["score_lh"], expected["score_lh"], rtol=1e-5, atol=1e-5)
    assert_same_nearest(model.unwrap_python_model().model, trained.data.test, out["nearest_index"].to_numpy(),
                        expected["nearest_index"].to_numpy())
    np.testing.assert_array_equal(out["score"], out["score_nnd"])
    threshold = trained.run.data.metrics["threshold"]
    np.testing.assert_array_equal(out["anomaly"], out["score"] > threshold)
    # float images in [0, 1] (H, W) and a DataFrame of base64 PNGs are prepared to the same pixels
    floats = model.predict([img[0].float().div(255).numpy() for img in trained.data.test[:3]])
    np.testing.assert_allclose(floats["score_nnd"].astype(float), expected["score_nnd"][:3], rtol=1e-5, atol=1e-5)
    pngs = model.predict(pd.DataFrame({"image": [_png_base64(img) for img in trained.data.test[:3]] + ["bad!"]}))
    np.testing.assert_allclose(pngs["score_nnd"][:3].astype(float), expected["score_nnd"][:3], rtol=1e-5, atol=1e-5)
    assert "not base64" in pngs["error"][3]
    assert pngs["score"][3] is None and pngs["anomaly"][3] is None and pngs["nearest_index"][3] == -1


def test_without_calibration_images_the_nnd_threshold_falls_back_to_leave_one_out(trained) -> None:
    model = mlflow.pyfunc.load_model(trained.uri).unwrap_python_model().model
    labels = torch.tensor(trained.scores["label"].to_numpy())
    scores = {k: torch.tensor(trained.scores[f"score_{k}"].to_numpy()) for k in ("nnd", "lh")}
    metrics = model.calibrate(torch.empty(0, 1, 8, 8, dtype=torch.uint8), 0.1, labels, scores)
    assert set(metrics) == {"threshold_loo", "target_fpr", "test_fpr", "test_tpr"}
    assert metrics["threshold_loo"] == pytest.approx(threshold_at_fpr(loo_nnd_scores(model.bank), 0.1))
    assert model.thresholds["lh"] is None and model.threshold_source.startswith("leave-one-out")
    with pytest.raises(ValueError, match="no threshold for score 'lh'"):
        model.predict(list(trained.data.test[:1].numpy()), score="lh")
    again = ScoringModel.from_state(model.state(), torch.device("cpu"))  # the fallback survives a save
    assert again.thresholds == model.thresholds and again.threshold_source == model.threshold_source


def test_model_loads_without_con2_installed(trained) -> None:
    local = mlflow.artifacts.download_artifacts(trained.uri, dst_path=str(trained.folder / "standalone"))
    script = f"""
import importlib.util, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
assert importlib.util.find_spec("con2lib") is None, "con2lib is importable before loading the model"
import mlflow, numpy as np
model = mlflow.pyfunc.load_model({local!r})
import con2lib
print(con2lib.__file__)
print(model.predict(np.zeros((2, 8, 8), np.uint8))["score"].tolist())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=trained.folder, env=trained.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, scores = proc.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(Path(local)) and len(json.loads(scores)) == 2


def _strict_json(text: str | bytes) -> object:
    """``json.loads`` as JavaScript's ``JSON.parse`` reads: the tokens NaN and Infinity are not JSON."""
    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _invoke(model, body: dict) -> tuple[int, object]:
    """The scoring server's /invocations, in process: (HTTP status, parsed JSON body)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import invocations

    try:
        response = invocations(json.dumps(body), "application/json", model, None)
    except MlflowException as err:  # what the server's handler answers with
        return err.get_http_status_code(), _strict_json(err.serialize_as_json())
    return response.status, _strict_json(response.response)


def test_served_error_rows_are_valid_json_with_null_scores(trained) -> None:
    model = mlflow.pyfunc.load_model(trained.uri)
    good, junk = _png_base64(trained.data.test[7]), base64.b64encode(b"not an image").decode()
    status, body = _invoke(model, {"dataframe_split": {"columns": ["image"], "data": [[good], [junk], ["!!"]]}})
    assert status == 200
    ok, not_image, not_base64 = body["predictions"]
    assert ok["error"] == "" and ok["score"] == pytest.approx(trained.scores["score_nnd"][7], rel=1e-5, abs=1e-5)
    for row in (not_image, not_base64):
        assert row["score"] is None and row["score_nnd"] is None and row["score_lh"] is None
        assert row["anomaly"] is None and row["nearest_index"] == -1 and row["nearest_train"] == ""
    assert not_image["error"] == "ValueError: not an image file (no image format recognised: PNG, JPEG, TIFF, ...)"
    assert "not base64" in not_base64["error"]
    # arrays smaller than the smallest accepted file are refused as files are; no object address in any text
    status, body = _invoke(model, {"inputs": np.zeros((1, 2, 2)).tolist()})
    assert status == 200 and body["predictions"][0]["error"] == ("ValueError: image too small (2x2 pixels; at least "
                                                                 "8x8 needed)")
    assert " at 0x" not in json.dumps(body)


@pytest.mark.parametrize(("columns", "message"), [
    (["path"], r"column 'path' is not accepted: the model opens no files .* send the image file's bytes, "
               r"base64-encoded, in column 'image'"),
    (["img"], r"expected a column 'image' \(base64 text of a PNG or JPEG file\), got columns \['img'\]"),
])
def test_served_model_opens_no_files_and_names_a_wrong_column(trained, tmp_path, columns, message) -> None:
    model = mlflow.pyfunc.load_model(trained.uri)
    image = tmp_path / "on-the-server.png"
    image.write_bytes(_png(trained.data.test[0]))
    status, body = _invoke(model, {"dataframe_split": {"columns": columns, "data": [[str(image)]]}})
    assert status == 400 and "stack_trace" not in body
    assert re.search(message, body["message"].splitlines()[-1]), body["message"]
    # nor from Python: a path object is an error row, not a file opened
    [row] = model.predict([image]).to_dict("records")
    assert row["score"] is None and "the model opens no files" in row["error"]


def _tampered(trained, folder: Path, change) -> Path:
    """A copy of the logged model whose state ``change`` edited (still a valid ``weights_only`` file)."""
    from con2lib.method.checkpoint import load_checkpoint, save_checkpoint

    local = Path(mlflow.artifacts.download_artifacts(trained.uri, dst_path=str(folder)))
    state = load_checkpoint(local / "artifacts" / "con2_model.pt")
    change(state)
    save_checkpoint(local / "artifacts" / "con2_model.pt", state)
    return local


@pytest.mark.parametrize(("part", "change"), [
    ("thresholds['nnd'] is nan", lambda s: s["thresholds"].update(nnd=float("nan"))),
    ("bank holds 1 NaN", lambda s: s["bank"].view(-1)[0].fill_(float("nan"))),
    ("scorer", lambda s: next(iter(s["scorer"].values())).fill_(float("inf"))),
])
def test_a_model_with_non_finite_values_is_refused_at_load(trained, tmp_path, capsys, part, change) -> None:
    local = _tampered(trained, tmp_path, change)
    (tmp_path / "a.png").write_bytes(_png(trained.data.test[0]))
    assert con2_main(["score", "--model", str(local), str(tmp_path / "a.png"), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "cannot load model" in err and f"CON2 model state {part}" in err, err


def test_a_model_logged_before_the_layer_packages_still_scores(trained, tmp_path, capsys) -> None:
    """Models logged before con2lib's packages name their pyfunc ``con2lib.pyfunc_model`` in their script;
    ``con2 score`` (con2lib already imported) resolves it to the current class, with the same scores."""
    local = Path(mlflow.artifacts.download_artifacts(trained.uri, dst_path=str(tmp_path / "old")))
    script = local / "con2_pyfunc.py"
    text = script.read_text()
    assert "from con2lib.serving.pyfunc_model import Con2PyfuncModel" in text
    script.write_text(text.replace("con2lib.serving.pyfunc_model", "con2lib.pyfunc_model"))
    (tmp_path / "a.png").write_bytes(_png(trained.data.test[0]))
    for model, out in ((trained.uri, "new.csv"), (str(local), "old.csv")):
        assert con2_main(["score", "--model", model, str(tmp_path / "a.png"), "--out", str(tmp_path / out)]) == 0
    capsys.readouterr()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "old.csv"), pd.read_csv(tmp_path / "new.csv"))


# --- con2 score and con2 register ---------------------------------------------------------------------------


def _png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0].numpy(), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _png_base64(image: torch.Tensor) -> str:
    return base64.b64encode(_png(image)).decode()


def test_con2_score_writes_a_row_per_image_and_reports_unreadable_files(trained, tmp_path, capsys) -> None:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / ("sub" if i == 2 else "") / f"img{i}.png").write_bytes(_png(trained.data.test[i]))
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not listed: not an image file")
    out = tmp_path / "scores.csv"
    model = mlflow.pyfunc.load_model(trained.uri).unwrap_python_model().model
    # in-process (the `con2 run` fixture covers the console entry point): a subprocess costs 10 s of imports
    code = con2_main(["score", "--model", trained.uri, str(folder), str(tmp_path / "missing.png"), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-3000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", "score", "score_nnd", "score_lh", "anomaly", "nearest_index",
                                   "nearest_train", "error"]
    assert len(table) == 5
    bad = table[table["error"] != ""]
    assert sorted(Path(p).name for p in bad["path"]) == ["broken.png", "missing.png"]
    assert "broken.png" in stderr and "missing.png" in stderr and "3 image(s) scored" in stderr
    # not scored: no decision and no nearest image either
    assert (bad["anomaly"] == "").all() and (bad["score"] == "").all() and (bad["nearest_train"] == "").all()
    # 8 calibration images for a 5% target: the FPR's uncertainty is said
    assert re.search(r"warning: the threshold was calibrated on 8 normal images .* 0\.0\d\d-0\.[23]\d\d \(90% range\)",
                     stderr), stderr
    good = table[table["error"] == ""].set_index(table[table["error"] == ""]["path"].map(lambda p: Path(p).name))
    for i in range(3):
        row = good.loc[f"img{i}.png"]
        assert float(row["score_nnd"]) == pytest.approx(trained.scores["score_nnd"][i], rel=1e-5, abs=1e-5)
        assert_same_nearest(model, trained.data.test[[i]], np.array([int(row["nearest_index"])]),
                            trained.scores["nearest_index"].to_numpy()[[i]])
        # the nearest image named by its id in the data set: the training split of digits, not the bank row
        assert row["nearest_train"] == model.train_ids[int(row["nearest_index"])]
        assert re.fullmatch(r"train\[\d+\]", row["nearest_train"])
        assert str(row["anomaly"]) == str(float(row["score"]) > trained.run.data.metrics["threshold"])


def test_con2_score_fails_cleanly(trained, tmp_path, capsys) -> None:
    (tmp_path / "broken.png").write_bytes(b"")
    assert con2_main(["score", "--model", trained.uri, str(tmp_path), "--out", str(tmp_path / "o.csv")]) == 1
    assert con2_main(["score", "--model", "runs:/0123456789abcdef/model", str(tmp_path)]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_con2_score_says_why_a_folder_gave_no_image(trained, tmp_path, capsys) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "x.txt").write_text("not an image")
    (tmp_path / "pipe").mkdir()
    os.mkfifo(tmp_path / "pipe" / "a.png")  # read, it would block for ever: it is not read
    out = tmp_path / "o.csv"
    assert con2_main(["score", "--model", trained.uri, str(tmp_path / "texts"), str(tmp_path / "pipe"),
                      "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.search(r"texts: folder holds no image files: x\.txt is not an image \(image files end in .*\.png", err)
    assert re.search(r"pipe/a\.png: not a regular file", err) and "0 image(s) scored" in err
    table = pd.read_csv(out, keep_default_na=False)
    assert (table["nearest_index"] == -1).all() and (table["score"] == "").all()  # error rows: documented -1


def test_register_sets_the_alias_and_the_alias_scores(trained, tmp_path, capsys) -> None:
    records = _MlflowLog()
    logging.getLogger("mlflow").addHandler(records)
    try:
        assert con2_main(["register", trained.run_id, "--name", "con2-digits"]) == 0
    finally:
        logging.getLogger("mlflow").removeHandler(records)
    assert "models:/con2-digits@champion" in capsys.readouterr().out
    # MLflow 3 warns that the run "has no artifacts at artifact path 'model'" when a runs:/ URI is registered
    assert not [m for m in records.messages if "no artifacts" in m], records.messages
    version = trained.client.get_model_version_by_alias("con2-digits", "champion")
    assert version.run_id == trained.run_id
    (tmp_path / "a.png").write_bytes(_png(trained.data.test[5]))
    out = tmp_path / "champion.csv"
    assert con2_main(["score", "--model", "models:/con2-digits@champion", str(tmp_path / "a.png"),
                      "--out", str(out)]) == 0
    score = pd.read_csv(out)["score_nnd"][0]
    assert score == pytest.approx(trained.scores["score_nnd"][5], rel=1e-5, abs=1e-5)
    assert con2_main(["score", "--model", "models:/con2-digits/1", str(tmp_path / "a.png"), "--out", str(out),
                      "--score", "lh"]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["score"] == row["score_lh"]
    assert row["anomaly"] == (row["score"] > trained.run.data.metrics["threshold_lh"])
    assert con2_main(["register", "feedfacefeedface", "--name", "con2-digits"]) == 2
    empty = trained.client.create_run(trained.run.info.experiment_id).info.run_id
    trained.client.set_terminated(empty)
    capsys.readouterr()
    assert con2_main(["register", empty, "--name", "con2-empty"]) == 2
    assert "has no model" in capsys.readouterr().err
    assert not trained.client.search_registered_models("name = 'con2-empty'")


class _MlflowLog(logging.Handler):
    """Collects the messages of MLflow's loggers (its own handler writes to the stderr of import time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# --- mlflow models serve ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_scores_a_posted_image(trained, tmp_path) -> None:
    port = _free_port()
    # mlflow starts the server as `uvicorn ...` through the shell: the venv's bin must be on PATH
    env = {**trained.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{trained.env.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", trained.uri, "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        junk = base64.b64encode(b"not an image").decode()  # an error row: strict JSON from the real server too
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[_png_base64(trained.data.test[7])], [junk]]}})
        deadline = time.monotonic() + SERVE_WAIT_S
        while True:
            if server.poll() is not None:
                text = (tmp_path / "serve.log").read_text()
                if "uvicorn: command not found" in text or "No module named 'uvicorn'" in text:
                    pytest.skip(f"mlflow's serving extras (uvicorn) are not installed here:\n{text[-1000:]}")
                pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{text[-3000:]}")
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    predictions = _strict_json(response.read())["predictions"]
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer within {SERVE_WAIT_S} s:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.5)
    finally:
        _stop(server)
        log.close()
    row, bad = predictions
    assert bad["score"] is None and bad["anomaly"] is None and bad["error"].startswith("ValueError: not an image")
    assert row["error"] == ""
    assert row["score"] == pytest.approx(trained.scores["score_nnd"][7], rel=1e-5, abs=1e-5)
    assert row["anomaly"] == (row["score"] > trained.run.data.metrics["threshold"])


def _stop(server: subprocess.Popen) -> None:
    """Ends the server and the uvicorn process it started: their whole process group, SIGKILL if need be."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            server.poll()  # reaps the leader, so a finished group stops answering signal 0
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
