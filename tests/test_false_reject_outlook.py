"""What a threshold set on a few good images promises for new good parts, and the warning when they are too few."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defectmap import engine, training
from defectmap.cli import main
from defectmap.outputs import threshold_sentence
from defectmap.threshold import (
    calibrate,
    calibration_outlook,
    false_reject_outlook,
    images_for_rate,
    rejections_expected,
    threshold_at_false_reject,
    unreliable_rate_warning,
)
from tests.conftest import tiny_config


@pytest.mark.parametrize(("n", "rate"), [(30, 0.01), (76, 0.01), (200, 0.05)])
def test_the_promise_holds_for_new_good_images_of_the_same_kind(n, rate):
    # Uniform scores stand for any continuous score distribution: a new good image is above t with probability 1 - t.
    rng = np.random.default_rng(0)
    trials = rng.random((4000, n))
    thresholds = np.array([threshold_at_false_reject(scores, rate) for scores in trials])
    outlook = false_reject_outlook(trials[0], thresholds[0])
    assert outlook == false_reject_outlook(trials[1], thresholds[1])  # depends on n and the rank only
    rates = 1 - thresholds
    assert rates.mean() == pytest.approx(outlook["expected_false_reject_rate"], rel=0.03)
    assert rates.mean() > rate  # "at most r of the validation images above" rejects more than r of new ones
    assert (rates > outlook["false_reject_rate_95"]).mean() == pytest.approx(0.05, abs=0.012)
    # A test of 191 good images: the count above t, with both samplings, stays within the bound 95% of the time
    expected, most = rejections_expected(outlook["expected_false_reject_rate"], n, 191)
    counts = rng.binomial(191, rates)
    assert counts.mean() == pytest.approx(expected, rel=0.04)
    assert (counts <= most).mean() > 0.94 and (counts <= most - 1).mean() < 0.96  # the smallest bound with 95%


def _expected_rate(n: int, rate: float) -> float:
    scores = np.arange(n, dtype=float)
    return false_reject_outlook(scores, threshold_at_false_reject(scores, rate))["expected_false_reject_rate"]


def test_the_fewest_images_that_hold_a_rate_to_within_twice():
    for rate in (0.01, 0.005, 0.02, 0.05, 0.1):
        needed = images_for_rate(rate)
        assert _expected_rate(needed - 1, rate) > 2 * rate
        assert all(_expected_rate(n, rate) <= 2 * rate + 1e-12 for n in range(needed, int(20 / rate)))


def test_old_checkpoints_get_the_outlook_their_rule_implies():
    scores = list(np.random.default_rng(1).random(76))
    calibration = calibrate(scores, [np.zeros((2, 2))] * 76, 0.05)
    recorded = calibration_outlook(calibration)
    older = {k: v for k, v in calibration.items() if k not in recorded}
    assert calibration_outlook(older) == recorded
    assert calibration_outlook({**older, "threshold_rule": "max image F1 on 76 good and 5 defective"}) is None


def test_too_few_good_images_for_the_asked_rate_warn_with_what_to_do():
    warning = unreliable_rate_warning(30, 0.01)
    assert warning.startswith("30 good images cannot hold the false-reject rate to 1.00%: expect about 3.2%")
    assert "up to 9.5% at 95% confidence" in warning and "49 or more" in warning
    scores = list(np.linspace(0, 1, 30))
    assert calibrate(scores, [np.zeros((2, 2))] * 30, 0.01)["expected_false_reject_rate"] == pytest.approx(1 / 31)
    assert unreliable_rate_warning(49, 0.01) is None
    assert unreliable_rate_warning(1, 0.01).startswith("1 good image cannot hold")
    assert unreliable_rate_warning(5, 0.0) is None  # the maximum, asked for


def test_train_warns_and_test_compares_the_good_rejected_with_the_promise(tiny_dataset, tmp_path, capsys):
    with pytest.warns(UserWarning, match="2 good images cannot hold the false-reject rate to 1.00%") as caught:
        ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    assert len([w for w in caught if "cannot hold" in str(w.message)]) == 1  # once, before training
    calibration = engine.load(ckpt).calibration
    assert calibration["expected_false_reject_rate"] == pytest.approx(1 / 3)
    assert main(["test", str(ckpt), "--quiet"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # the table wraps long sentences
    assert "(the 2 good images it was set on promise about 1.0 of 3 good rejected, at most" in out


def _report(good_rejected: int) -> dict:
    return {"test_images": 191 + 392, "defective_images": 392, "good_rejected": good_rejected, "defects_missed": 7,
            "calibration_images": 30, **false_reject_outlook(np.arange(30.0), 29.0)}  # fmt: skip


def test_more_good_rejected_than_promised_says_the_good_images_differ():
    expected, most = rejections_expected(1 / 31, 30, 191)
    assert (round(expected, 1), most) == (6.2, 19)
    within, beyond = threshold_sentence(_report(most)), threshold_sentence(_report(most + 1))
    assert within.endswith(f"missed (the 30 good images it was set on promise about 6.2 of 191 good rejected, at most "
                           f"{most} at 95% confidence)")  # fmt: skip
    assert "more good parts rejected than promised" not in within
    assert "confidence); more good parts rejected than promised: the test's good images differ" in beyond
    older = {**_report(3), "expected_false_reject_rate": None, "false_reject_rate_95": None}
    assert threshold_sentence(older) == "at the calibrated threshold: 3 good rejected, 7 defects missed"


def test_calibration_shift_script_compares_the_validation_and_good_test_scores(tiny_dataset, tmp_path):
    ckpt = training.fit(tiny_config("ae", tiny_dataset, epochs=1), tmp_path / "run", progress=False)
    assert main(["test", str(ckpt), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    script = Path(__file__).resolve().parents[1] / "bench" / "calibration_shift.py"
    out = tmp_path / "shift.json"
    args = [sys.executable, str(script), str(ckpt), str(tmp_path / "run" / "metrics.json"), "--out", str(out)]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(out.read_text())
    assert row["validation"]["images"] == engine.load(ckpt).calibration["val_images"] == 2
    assert row["validation"]["above_threshold"] == 0  # the threshold is the validation maximum
    good = sorted(image["score"] for image in metrics["images"] if image["label"] == 0)
    assert row["test_good"]["images"] == 3 and row["test_good"]["median"] == pytest.approx(good[1])
    assert row["test_good"]["above_threshold"] == metrics["good_rejected"]
    assert 0 <= row["mann_whitney_p"] <= 1
    odd = subprocess.run(args[:3], capture_output=True, text=True)
    assert odd.returncode == 2 and "in pairs" in odd.stderr
