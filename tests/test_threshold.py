"""Thresholds come from held-out images only; re-calibration and max-F1; predict writes decisions and masks."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectmap import engine, training
from defectmap.cli import main
from defectmap.threshold import threshold_at_false_reject, threshold_max_f1
from tests.conftest import tiny_config


def test_false_reject_threshold_allows_the_requested_share():
    scores = np.arange(100, dtype=float)
    t = threshold_at_false_reject(scores, 0.05)
    assert (scores > t).sum() == 5
    assert threshold_at_false_reject(scores, 0.0) == 99.0


def test_max_f1_threshold_separates_when_possible():
    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.35, 0.7])
    t = threshold_max_f1(labels, scores)
    assert 0.35 < t < 0.7
    assert ((scores > t) == (labels == 1)).all()
    with pytest.raises(ValueError):
        threshold_max_f1([0, 0], [1.0, 2.0])


@pytest.fixture
def guarded(monkeypatch):
    """Any read of a test-split image fails the test."""
    from defectmap.data import dataset, images

    real = images.load_image

    def guard(path, *args, **kwargs):
        assert "/test/" not in str(path), f"a threshold step read a test image: {path}"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images, "load_image", guard)
    monkeypatch.setattr(dataset, "load_image", guard)


def test_training_and_recalibration_never_read_test_images(tiny_dataset, tmp_path, guarded):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    before = engine.load(ckpt).calibration
    assert before["val_images"] == 2  # 25% of 8 good training images
    assert main(["threshold", str(ckpt), "--fpr", "0.5", "--quiet"]) == 0
    after = engine.load(ckpt).calibration
    assert after["threshold"] <= before["threshold"] and after["false_reject_rate"] == 0.5
    assert "false-reject rate 0.5" in after["threshold_rule"]
    saved = ckpt.read_bytes()
    assert main(["threshold", str(ckpt), "--fpr", "1.5"]) == 2  # out of range: refused, checkpoint untouched
    assert ckpt.read_bytes() == saved


def test_recalibrating_an_exported_model_is_refused_before_any_work(tiny_dataset, tmp_path, capsys, monkeypatch):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("defectmap.cli.recalibrate", lambda *a, **k: pytest.fail("re-calibrated an exported model"))
    assert main(["threshold", str(onnx), "--fpr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "exported model" in err and "model.ckpt, then export again" in err and err.count("\n") == 1


def test_max_f1_recalibration_with_user_defects(tiny_dataset, tmp_path):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    defects = tiny_dataset / "tiny" / "test" / "hole"  # here standing in for a user's validation defects
    assert main(["threshold", str(ckpt), "--defects", str(defects)]) == 0
    assert "max image F1" in engine.load(ckpt).calibration["threshold_rule"]


def test_recalibration_on_a_folder_of_good_images_needs_no_dataset(tiny_dataset, tmp_path):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    line = tmp_path / "line_good"  # good parts from the line, here the tiny test split's good images
    shutil.copytree(tiny_dataset / "tiny" / "test" / "good", line)
    shutil.rmtree(tiny_dataset)  # the training data is gone, as on a deployed line
    detector = engine.load(ckpt)
    scores = sorted(row["score"] for row in engine.predict(detector, sorted(line.iterdir()), progress=False))
    assert main(["threshold", str(ckpt), "--good", str(line), "--fpr", "0.4", "--quiet"]) == 0
    calibration = engine.load(ckpt).calibration
    assert calibration["threshold"] == pytest.approx(threshold_at_false_reject(np.array(scores), 0.4), rel=1e-6)
    assert calibration["threshold_rule"] == "false-reject rate 0.4 on 3 user-given good images"
    assert main(["threshold", str(ckpt), "--good", str(tmp_path / "missing")]) == 2  # one line, nothing changed
    assert engine.load(ckpt).calibration == calibration


def test_predict_writes_decisions_and_binary_masks(tiny_dataset, tmp_path):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    out = tmp_path / "pred"
    assert main(["predict", str(ckpt), str(tiny_dataset / "tiny" / "test"), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    calibration = engine.load(ckpt).calibration
    for row in rows:
        assert row["decision"] == ("defect" if float(row["score"]) > calibration["threshold"] else "good")
        mask = np.asarray(Image.open(out / row["mask"]))
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.shape == np.asarray(Image.open(row["path"])).shape[:2]
    assert not (out / "overlays").exists()  # only with --overlay


def test_predict_overlays_outline_the_predicted_defects(tiny_dataset, tmp_path):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    out = tmp_path / "pred"
    args = ["predict", str(ckpt), str(tiny_dataset / "tiny" / "test"), "--out", str(out), "--quiet", "--overlay"]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(Path(r["map"]).name for r in rows)
    outlined = 0
    for row in rows:
        image = np.asarray(Image.open(row["path"]).convert("RGB"))
        overlay = np.asarray(Image.open(out / "overlays" / Path(row["map"]).name))
        defect = np.asarray(Image.open(out / row["mask"])) > 0
        np.testing.assert_array_equal(overlay[~defect], image[~defect])  # untouched outside the predicted mask
        if defect.any():
            outlined += 1
            assert (overlay[defect] == [255, 0, 0]).all(axis=1).any()  # the outline is pure red
            assert (overlay[defect][:, 0] >= image[defect][:, 0]).all()  # the inside is tinted towards red
    assert outlined > 0


def test_the_python_api_refuses_to_recalibrate_an_export_too(tiny_dataset, tmp_path):
    from defectmap.checkpoint import update_calibration
    from defectmap.errors import CheckpointError

    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(ckpt), "--out", str(onnx)]) == 0
    saved = onnx.read_bytes()
    with pytest.raises(CheckpointError, match="exported model.*re-calibrate its model.ckpt, then export again"):
        update_calibration(onnx, engine.load(ckpt).calibration)
    assert onnx.read_bytes() == saved
